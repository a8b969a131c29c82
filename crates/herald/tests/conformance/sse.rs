//! §13 Server-Sent Events fallback: events `subscribed`, `pub`, `error`, `disconnect`; resume
//! with `Last-Event-ID` and `?since=`.

use crate::client::{WAIT, offsets};
use crate::harness::{Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        subscribed_then_pub_events_with_ids,
        last_event_id_and_since_resume,
        refusals_are_error_events,
        kick_is_a_disconnect_event,
    ]
}

/// One event of a `text/event-stream`.
#[derive(Debug, Default)]
struct Event {
    event: String,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("§13: data is JSON ({e}): {self:?}"))
    }
}

/// An open SSE response, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(h: &Ctx, path: &str, token: Option<&str>, last_event_id: Option<&str>) -> Stream {
        let mut req = reqwest::Client::new().get(h.hub.http(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp =
            tokio::time::timeout(WAIT, req.send()).await.expect("SSE response in time").unwrap();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            ctype.starts_with("text/event-stream"),
            "§13: text/event-stream, got {ctype} ({})",
            resp.status()
        );
        Stream { resp, buf: String::new() }
    }

    /// The next event (comment lines skipped); None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Event::default();
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => e.event = value.into(),
                        "id" => e.id = Some(value.into()),
                        "data" => {
                            if !e.data.is_empty() {
                                e.data.push('\n');
                            }
                            e.data.push_str(value);
                        }
                        _ => {}
                    }
                }
                if e.event.is_empty() && e.data.is_empty() {
                    continue;
                }
                return Some(e);
            }
            let chunk =
                tokio::time::timeout(WAIT, self.resp.chunk()).await.expect("an SSE event in time");
            match chunk.expect("SSE body") {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Event {
        let e = self
            .next()
            .await
            .unwrap_or_else(|| panic!("§13: stream ended before a `{kind}` event"));
        assert_eq!(e.event, kind, "§13: {e:?}");
        e
    }
}

/// §13 `subscribed` (`id` `EPOCH:OFFSET` of the reply, data the SubscribeResult) then `pub`
/// (`id` `EPOCH:OFFSET`, data the Publication); token in `Authorization: Bearer`.
async fn subscribed_then_pub_events_with_ids(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let token = h.token(&h.unique("sse"), &[&ch]);
    let mut s = Stream::open(&h, &format!("/sse/{ch}"), Some(&token), None).await;
    let e = s.expect("subscribed").await;
    let r = e.json();
    assert_eq!((&r["channel"], &r["offset"]), (&json!(ch), &json!(0)), "{r}");
    let epoch = r["epoch"].as_str().unwrap().to_string();
    assert_eq!(e.id.as_deref(), Some(format!("{epoch}:0").as_str()), "§13 id of subscribed");
    h.publish(json!({"channel": ch, "data": {"n": 1}})).await;
    let e = s.expect("pub").await;
    let p = e.json();
    assert_eq!(
        (&p["channel"], &p["offset"], &p["data"]),
        (&json!(ch), &json!(1), &json!({"n": 1})),
        "{p}"
    );
    assert_eq!(e.id.as_deref(), Some(format!("{epoch}:1").as_str()), "§13 id of pub");
}

/// §13 "the resume point in `Last-Event-ID` … or `?since=EPOCH:OFFSET`"; token in `?token=`.
async fn last_event_id_and_since_resume(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let token = h.token(&h.unique("sse"), &[&ch]);
    let mut epoch = String::new();
    for n in 1..=4 {
        epoch = h.publish(json!({"channel": ch, "data": n})).await["epoch"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let path = format!("/sse/{ch}?token={token}");
    let mut s = Stream::open(&h, &path, None, Some(&format!("{epoch}:2"))).await;
    let r = s.expect("subscribed").await.json();
    assert_eq!((&r["recovered"], offsets(&r["publications"])), (&json!(true), vec![3, 4]), "{r}");
    let mut s = Stream::open(&h, &format!("{path}&since={epoch}:3"), None, None).await;
    let e = s.expect("subscribed").await;
    let r = e.json();
    assert_eq!((&r["recovered"], offsets(&r["publications"])), (&json!(true), vec![4]), "{r}");
    assert_eq!(e.id.as_deref(), Some(format!("{epoch}:4").as_str()), "§13 id of the reply");
    let mut s = Stream::open(&h, &format!("{path}&since=gone:3"), None, None).await;
    let r = s.expect("subscribed").await.json();
    assert_eq!((&r["recovered"], &r["reason"]), (&json!(false), &json!("epoch_changed")), "{r}");
}

/// §13 "`error` | | the Error object (bad token, forbidden, unknown namespace...); the stream
/// ends".
async fn refusals_are_error_events(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let token = h.token(&h.unique("sse"), &[]);
    let cases = [
        (format!("/sse/{ch}"), Some(token.clone()), 103),
        ("/sse/nowhere:1".to_string(), Some(token), 102),
        (format!("/sse/{ch}"), Some("not-a-jwt".to_string()), 101),
    ];
    for (path, token, code) in cases {
        let mut s = Stream::open(&h, &path, token.as_deref(), None).await;
        let e = s.expect("error").await;
        assert_eq!(e.json()["code"], code, "{path}: {e:?}");
        crate::client::check_error(&e.json());
        assert!(s.next().await.is_none(), "§13: the stream ends after `error`");
    }
}

/// §13 "`disconnect` | | `{code, reason, reconnect}` with a close code of §9; the stream ends".
async fn kick_is_a_disconnect_event(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let user = h.unique("ssek");
    let mut s = Stream::open(&h, &format!("/sse/{ch}"), Some(&h.token(&user, &[&ch])), None).await;
    s.expect("subscribed").await;
    let (status, r) = h.api("POST", "/api/disconnect", Some(json!({"user": user}))).await;
    assert_eq!((status, &r["disconnected"]), (200, &json!(1)), "{r}");
    let d = s.expect("disconnect").await.json();
    assert_eq!((&d["code"], &d["reconnect"]), (&json!(4503), &json!(false)), "{d}");
    assert!(d["reason"].is_string(), "{d}");
    assert!(s.next().await.is_none(), "§13: the stream ends after `disconnect`");
}
