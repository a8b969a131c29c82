//! An HTTP/1.1 client that pipelines, for `herald bench --http --http-pipeline K`: reqwest
//! (hyper's client) waits for each answer before it sends the next request on a connection,
//! so requests written back to back need a client of their own. It does only what the bench
//! sends: `POST` with a JSON body, answers with a `Content-Length` body (what the hub writes
//! for the publish routes); parsing is httparse's.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Pipelined {
    /// The socket, `TCP_NODELAY`.
    stream: TcpStream,
    /// Read but not yet parsed bytes of the answers.
    buf: Vec<u8>,
}

/// One answer: status and body.
pub type Answer = (u16, Vec<u8>);

impl Pipelined {
    /// Opens a connection to the hub.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Pipelined> {
        let stream = TcpStream::connect(addr).await.context("connecting for HTTP publishing")?;
        stream.set_nodelay(true)?;
        Ok(Pipelined { stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// Writes one `POST path` per body in a single write, then reads as many answers, in order.
    pub async fn round(
        &mut self,
        host: &str,
        path: &str,
        api_key: &str,
        bodies: &[String],
    ) -> anyhow::Result<Vec<Answer>> {
        let size: usize = bodies.iter().map(|b| b.len() + 160).sum();
        let mut out = Vec::with_capacity(size);
        for body in bodies {
            out.extend_from_slice(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: {host}\r\nx-api-key: {api_key}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body.as_bytes());
        }
        self.stream.write_all(&out).await?;
        let mut answers = Vec::with_capacity(bodies.len());
        while answers.len() < bodies.len() {
            match parse(&self.buf)? {
                Some((answer, used)) => {
                    self.buf.drain(..used);
                    answers.push(answer);
                }
                None => {
                    self.buf.reserve(16 * 1024);
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("the hub closed the connection after {} answers", answers.len());
                    }
                }
            }
        }
        Ok(answers)
    }
}

/// The first whole answer in `buf` and how many bytes it took, or `None` if more is needed.
fn parse(buf: &[u8]) -> anyhow::Result<Option<(Answer, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .context("an answer without content-length")?;
    let status = response.code.unwrap_or(0);
    if buf.len() < head + length {
        return Ok(None);
    }
    Ok(Some(((status, buf[head..head + length].to_vec()), head + length)))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn answers_are_cut_at_their_content_length() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad";
        let ((status, body), used) = parse(two).unwrap().unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        let ((status, body), rest) = parse(&two[used..]).unwrap().unwrap();
        assert_eq!((status, body.as_slice(), used + rest), (400, &b"bad"[..], two.len()));
        assert!(parse(&two[..used - 1]).unwrap().is_none(), "a body cut short waits for more");
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length: refused");
    }
}
