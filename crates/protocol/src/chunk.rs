//! Large publications in parts (protocol §18), and truncated previews.
//!
//! On a version 2 connection a publication whose `pub` frame is larger than the namespace's
//! `chunk_bytes` is sent as `chunk` pushes instead of one `pub` push: each carries a slice of the
//! publication's JSON text, in order, and the last completes it. The slices are cut at character
//! boundaries of the JSON text, so every part is valid UTF-8 and the text joined again is the
//! publication object byte for byte. One publication, one offset: its position counts only when
//! its last part arrives, so a connection cut mid-publication resumes from before it.

use crate::publication::Publication;
use serde::{Deserialize, Serialize};

/// One `chunk` push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The channel of the publication.
    pub channel: String,
    /// The publication's epoch.
    pub epoch: String,
    /// The publication's offset.
    pub offset: u64,
    /// This part's index, from 0.
    pub part: u32,
    /// How many parts the publication has.
    pub parts: u32,
    /// Length in bytes of the whole publication JSON text (for progress).
    pub bytes: u64,
    /// This part's slice of the publication JSON text.
    pub text: String,
}

/// The `chunk` push lines of a publication: `json` (the publication object) cut into slices of
/// at most `part_bytes` bytes (at least one character each).
pub fn chunk_lines<'a>(
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    json: &'a str,
    part_bytes: usize,
) -> impl Iterator<Item = String> + 'a {
    let cuts = cut_points(json, part_bytes.max(4));
    let parts = cuts.len() as u32;
    let bytes = json.len() as u64;
    let mut start = 0;
    cuts.into_iter().enumerate().map(move |(i, end)| {
        let text = &json[start..end];
        start = end;
        let mut line = String::with_capacity(text.len() + text.len() / 8 + channel.len() + 120);
        line.push_str(r#"{"push":"chunk","channel":"#);
        push_json_string(&mut line, channel);
        line.push_str(r#","epoch":"#);
        push_json_string(&mut line, epoch);
        use std::fmt::Write;
        let _ = write!(
            line,
            r#","offset":{offset},"part":{i},"parts":{parts},"bytes":{bytes},"text":"#
        );
        push_json_string(&mut line, text);
        line.push('}');
        line
    })
}

/// The ends of the slices: each at most `max` bytes past the previous, at a character boundary.
fn cut_points(s: &str, max: usize) -> Vec<usize> {
    let mut cuts = Vec::with_capacity(s.len() / max + 1);
    let mut at = 0;
    while at < s.len() {
        let mut end = floor_char_boundary(s, (at + max).min(s.len()));
        if end == at {
            // A character longer than `max` (max ≥ 4, so never): take it whole.
            end = (at + 1..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
        }
        cuts.push(end);
        at = end;
    }
    if cuts.is_empty() {
        cuts.push(0);
    }
    cuts
}

/// The largest character boundary of `s` at or before `i` (`str::floor_char_boundary` needs a
/// newer Rust than this crate's minimum).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    (0..=i).rev().find(|&b| s.is_char_boundary(b)).unwrap_or(0)
}

/// Appends `s` as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    // serde_json's escaping, written straight into `out`.
    let mut buf = std::mem::take(out).into_bytes();
    serde_json::to_writer(&mut buf, s).expect("a string serializes");
    *out = String::from_utf8(buf).expect("serde_json writes UTF-8");
}

/// Why a `chunk` push could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A part out of order (not the next of the publication being assembled, or a middle part
    /// with none begun): the connection lost the start, and the subscription should resume.
    #[error("chunk {part}/{parts} of offset {offset} out of order")]
    OutOfOrder { offset: u64, part: u32, parts: u32 },
    /// The parts joined are not a publication.
    #[error("chunked publication at offset {offset} does not parse: {message}")]
    Malformed { offset: u64, message: String },
}

/// Reassembles one channel's chunked publications (a client keeps one per subscription, and
/// drops it when the connection goes).
#[derive(Debug, Default)]
pub struct Assembler {
    /// The publication being assembled: (epoch, offset, next part, parts, text so far).
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    epoch: String,
    offset: u64,
    next: u32,
    parts: u32,
    text: String,
}

/// What a part did.
#[derive(Debug)]
pub enum Assembled {
    /// More parts to come: `received` of `bytes` so far.
    Progress { offset: u64, received: u64, bytes: u64 },
    /// The last part: the whole publication.
    Complete(Box<Publication>),
}

impl Assembler {
    /// Takes the next part.
    pub fn push(&mut self, chunk: Chunk) -> Result<Assembled, ChunkError> {
        let Chunk { epoch, offset, part, parts, bytes, text, .. } = chunk;
        let out_of_order = ChunkError::OutOfOrder { offset, part, parts };
        if part == 0 {
            self.partial = Some(Partial {
                epoch,
                offset,
                next: 0,
                parts,
                text: String::with_capacity(bytes.min(64 << 20) as usize),
            });
        }
        let Some(p) = self.partial.as_mut() else { return Err(out_of_order) };
        if p.offset != offset || p.next != part || p.parts != parts || part >= parts {
            self.partial = None;
            return Err(out_of_order);
        }
        p.text.push_str(&text);
        p.next += 1;
        if p.next < p.parts {
            return Ok(Assembled::Progress { offset, received: p.text.len() as u64, bytes });
        }
        let p = self.partial.take().expect("checked above");
        match serde_json::from_str::<Publication>(&p.text) {
            Ok(publication) if publication.offset == p.offset && publication.epoch == p.epoch => {
                Ok(Assembled::Complete(Box::new(publication)))
            }
            Ok(_) => Err(ChunkError::Malformed {
                offset,
                message: "position differs from its chunks'".into(),
            }),
            Err(e) => Err(ChunkError::Malformed { offset, message: e.to_string() }),
        }
    }

    /// Drops a publication begun (the connection went, or the subscription was replaced).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// True while a publication is half received.
    pub fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }
}

/// A truncated preview of a publication's JSON `json`: the same object with `data` replaced by
/// a JSON string of the first `max` bytes (at a character boundary) of its JSON text, and
/// `"truncated": BYTES` (the full `data` length) added. `None` when `data` is at most `max`
/// bytes (the publication goes whole).
pub fn preview(json: &str, max: usize) -> Option<String> {
    let mut p: Publication = serde_json::from_str(json).ok()?;
    let data = p.data.get();
    if data.len() <= max {
        return None;
    }
    let cut = floor_char_boundary(data, max);
    let mut short = String::with_capacity(cut + 16);
    push_json_string(&mut short, &data[..cut]);
    p.truncated = Some(data.len() as u64);
    p.data = serde_json::value::RawValue::from_string(short).expect("a JSON string");
    Some(serde_json::to_string(&p).expect("publications serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerMessage;
    use proptest::prelude::*;

    fn publication(data: &str) -> String {
        format!(
            r#"{{"channel":"c","epoch":"E","offset":7,"id":"E-7","type":"message","data":{data},"time":"2026-12-02T00:00:00.000Z"}}"#
        )
    }

    fn assemble(lines: Vec<String>) -> Result<Publication, ChunkError> {
        let mut a = Assembler::default();
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            let ServerMessage::Chunk(c) = ServerMessage::parse(&line).unwrap() else {
                panic!("not a chunk: {line}")
            };
            match a.push(c)? {
                Assembled::Complete(p) => {
                    assert_eq!(i + 1, n, "complete only at the last part");
                    return Ok(*p);
                }
                Assembled::Progress { received, bytes, .. } => assert!(received < bytes),
            }
        }
        panic!("never completed")
    }

    proptest! {
        #[test]
        fn parts_join_to_the_publication(text in "\\PC{0,300}", part in 4usize..64) {
            let json = publication(&serde_json::to_string(&text).unwrap());
            let lines: Vec<String> = chunk_lines("c", "E", 7, &json, part).collect();
            prop_assert_eq!(lines.len(), cut_points(&json, part).len());
            for l in &lines {
                prop_assert!(!l.contains('\n'));
            }
            let p = assemble(lines).unwrap();
            prop_assert_eq!(serde_json::to_string(&p).unwrap(), json);
        }
    }

    #[test]
    fn a_missing_first_part_or_a_skipped_one_is_out_of_order() {
        let json = publication(&format!("\"{}\"", "x".repeat(100)));
        let lines: Vec<String> = chunk_lines("c", "E", 7, &json, 40).collect();
        assert!(assemble(lines[1..].to_vec()).is_err());
        let mut skipped = lines.clone();
        skipped.remove(2);
        assert!(matches!(assemble(skipped), Err(ChunkError::OutOfOrder { part: 3, .. })));
    }

    #[test]
    fn preview_cuts_data_and_says_how_long_it_was() {
        let data = format!("\"{}é\"", "a".repeat(9));
        let json = publication(&data);
        assert_eq!(preview(&json, 200), None);
        let short: Publication = serde_json::from_str(&preview(&json, 10).unwrap()).unwrap();
        assert_eq!(short.truncated, Some(data.len() as u64));
        // 10 bytes of `"aaaaaaaaaé"` end inside `é`: the cut goes before it.
        assert_eq!(short.data.get(), r#""\"aaaaaaaaa""#);
        assert_eq!(short.offset, 7);
    }
}
