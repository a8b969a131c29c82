//! A publication encoded once: the bytes every subscriber receives and the history keeps.
//!
//! Engines produce [`Encoded`] frames, the fan-out hands the same `Arc` to every subscriber's
//! outbox, and sessions write its bytes unchanged; nothing below the session re-serializes a
//! publication.

use axum::extract::ws::Utf8Bytes;
use herald_protocol::Publication;
use herald_protocol::compact::TailFields;
use herald_protocol::reply::PUB_PREFIX;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What a keyed write did to its record: the value before and after (absent: no record). Kept
/// with the publication on namespaces with views, so that a view decides insert, update or
/// delete from the old and the new record, live and when a resume replays the history.
#[derive(Debug)]
pub struct RecordChange {
    /// The record key.
    pub key: String,
    /// The record before the write.
    pub before: Option<Arc<RawValue>>,
    /// The record after the write (the merged value of a merge).
    pub after: Option<Arc<RawValue>>,
}

/// A publication as the hub moves it: its position and its ready-to-send push frame.
#[derive(Debug)]
pub struct Encoded {
    /// Channel name.
    pub channel: Arc<str>,
    /// Stream epoch.
    pub epoch: Arc<str>,
    /// Offset in the stream.
    pub offset: u64,
    /// `{"push":"pub","pub":{...}}`, shared by every subscriber.
    pub frame: Utf8Bytes,
    /// When this node got it, for the publish-to-write latency histogram.
    pub accepted: Instant,
    /// The keyed write's old and new record, on namespaces with views.
    pub change: Option<Arc<RecordChange>>,
    /// Protocol v2's compact form after `[N` (`herald_protocol::compact`), around the payload
    /// bytes `frame` already holds; made with the frame when the publication is at hand, else
    /// by the first v2 subscriber.
    pub compact: OnceLock<CompactTail>,
    /// Protocol v2's `chunk` frames of a large publication (§18), made by its first subscriber
    /// that takes it in parts and shared by the others. Only on the copy the fan-out delivers
    /// ([`Encoded::live_copy`]), so the history never keeps them.
    pub parts: OnceLock<Box<PartFrames>>,
}

/// A publication's `chunk` frames for one part size.
#[derive(Debug)]
pub struct PartFrames {
    /// The part size they were cut for.
    size: usize,
    /// One `{"push":"chunk",...}` line per frame, in order.
    frames: Box<[Utf8Bytes]>,
}

/// A publication's compact tail (`,OFFSET,TIME,DATA[,EXTRA]]`) without a second copy of its
/// payload: the text before and after `DATA`, and where `DATA` is in the v1 frame.
#[derive(Debug, Clone)]
pub struct CompactTail {
    /// `,OFFSET,TIME,` followed by `[,EXTRA]]`.
    text: Box<str>,
    /// Where the first part of `text` ends.
    split: u32,
    /// The payload's bytes in the v1 frame (empty: the payload is in `text`, after `split`).
    data: std::ops::Range<u32>,
}

impl CompactTail {
    /// The tail of `p`, whose v1 frame is `frame`, with `p`'s payload at `at` in it (checked:
    /// a wrong place only costs a copy of the payload).
    fn new(p: &TailFields<'_>, frame: &str, at: usize) -> CompactTail {
        let data = p.data.get();
        let at = Some(at).filter(|&i| frame.get(i..i.saturating_add(data.len())) == Some(data));
        let mut text = String::with_capacity(48);
        p.write_head(&mut text);
        let range = match at {
            Some(i) => i as u32..(i + data.len()) as u32,
            None => {
                text.push_str(data);
                0..0
            }
        };
        let split = text.len() as u32;
        p.write_end(&mut text);
        CompactTail { text: text.into_boxed_str(), split, data: range }
    }

    /// The three pieces to write after `[N`, in order.
    pub fn pieces<'a>(&'a self, frame: &'a str) -> [&'a str; 3] {
        let (head, end) = self.text.split_at(self.split as usize);
        [head, &frame[self.data.start as usize..self.data.end as usize], end]
    }
}

impl Encoded {
    /// Encodes a publication once. `channel` and `epoch` are the stream's shared names (no new
    /// allocations for them); the frame is written by hand (`herald_protocol::json`) into a
    /// per-thread buffer and copied once into an exactly sized allocation, since it is kept in
    /// the history.
    pub fn new(publication: &Publication, channel: Arc<str>, epoch: Arc<str>) -> Encoded {
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
        }
        let (frame, data) = SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            buf.push_str(PUB_PREFIX);
            let data = publication.write_json(buf);
            buf.push('}');
            (String::from(buf.as_str()), data.start)
        });
        let compact = OnceLock::new();
        let _ = compact.set(CompactTail::new(&TailFields::of(publication), &frame, data));
        Encoded {
            channel,
            epoch,
            offset: publication.offset,
            frame: frame.into(),
            accepted: Instant::now(),
            change: None,
            compact,
            parts: OnceLock::new(),
        }
    }

    /// The same publication with its record change attached.
    pub fn with_change(mut self, change: Option<Arc<RecordChange>>) -> Encoded {
        self.change = change;
        self
    }

    /// Wraps an already serialized publication (as an engine stored it).
    pub fn from_json(channel: &str, epoch: &str, offset: u64, json: &str) -> Encoded {
        let mut frame = String::with_capacity(PUB_PREFIX.len() + json.len() + 1);
        frame.push_str(PUB_PREFIX);
        frame.push_str(json);
        frame.push('}');
        Encoded {
            channel: channel.into(),
            epoch: epoch.into(),
            offset,
            frame: frame.into(),
            accepted: Instant::now(),
            change: None,
            compact: OnceLock::new(),
            parts: OnceLock::new(),
        }
    }

    /// The same publication for live delivery: shares the frame's bytes, with an empty cache of
    /// `chunk` frames that lives only as long as the subscribers' queues hold it.
    pub fn live_copy(&self) -> Encoded {
        let compact = OnceLock::new();
        if let Some(tail) = self.compact.get() {
            let _ = compact.set(tail.clone());
        }
        Encoded {
            channel: self.channel.clone(),
            epoch: self.epoch.clone(),
            offset: self.offset,
            frame: self.frame.clone(),
            accepted: self.accepted,
            change: self.change.clone(),
            compact,
            parts: OnceLock::new(),
        }
    }

    /// The `chunk` frames of this publication in parts of `size` bytes: cached on the first
    /// call, built afresh for another size.
    pub fn chunk_frames(&self, size: usize) -> std::borrow::Cow<'_, [Utf8Bytes]> {
        let build = || -> Box<[Utf8Bytes]> {
            herald_protocol::chunk::chunk_lines(
                &self.channel,
                &self.epoch,
                self.offset,
                self.publication_json(),
                size,
            )
            .map(Utf8Bytes::from)
            .collect()
        };
        let cached = self.parts.get_or_init(|| Box::new(PartFrames { size, frames: build() }));
        if cached.size == size {
            std::borrow::Cow::Borrowed(&cached.frames)
        } else {
            std::borrow::Cow::Owned(build().into_vec())
        }
    }

    /// The compact tail of protocol v2 (`,OFFSET,TIME,DATA[,EXTRA]]`) as three pieces.
    pub fn compact_tail(&self) -> [&str; 3] {
        let tail = self.compact.get_or_init(|| {
            let fields = TailFields::parse(self.publication_json())
                .expect("the hub's own publication JSON parses");
            // `data` is borrowed from the frame: its place is the distance between the two.
            let at = (fields.data.get().as_ptr() as usize)
                .checked_sub(self.frame.as_str().as_ptr() as usize)
                .unwrap_or(usize::MAX);
            CompactTail::new(&fields, self.frame.as_str(), at)
        });
        tail.pieces(self.frame.as_str())
    }

    /// The publication object alone (to embed in replies).
    pub fn publication_json(&self) -> &str {
        let s = self.frame.as_str();
        &s[PUB_PREFIX.len()..s.len() - 1]
    }
}

impl herald_protocol::reply::PublicationJson for Encoded {
    fn publication_json(&self) -> &str {
        Encoded::publication_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::Meta;
    use serde_json::value::RawValue;

    #[test]
    fn encoded_frame_embeds_publication() {
        let p = Publication {
            channel: "c".into(),
            epoch: "e".into(),
            offset: 3,
            id: "e-3".into(),
            kind: "t".into(),
            data: RawValue::from_string("[1]".into()).unwrap(),
            time: "2026-12-02T00:00:00.000Z".into(),
            meta: Meta::default(),
            key: None,
            op: None,
            truncated: None,
        };
        let enc = Encoded::new(&p, "c".into(), "e".into());
        let back: Publication = serde_json::from_str(enc.publication_json()).unwrap();
        assert_eq!(back.offset, 3);
        assert!(matches!(
            herald_protocol::ServerMessage::parse(enc.frame.as_str()).unwrap(),
            herald_protocol::ServerMessage::Publication(_)
        ));
    }

    #[test]
    fn the_compact_tail_points_into_the_frame_for_new_and_stored_publications() {
        use herald_protocol::Op;
        for (kind, data, key, op, user) in [
            ("message", r#"{"x":",\"data\":1","time":"2"}"#, None, None, None),
            ("t", "null", None, None, None),
            ("message", "[1,2]", None, None, None),
            // Escaped strings: read from the JSON as owned text.
            ("t\"x", r#""\u00e9""#, Some("k\n"), Some(Op::Merge), Some("a\"b")),
        ] {
            let p = Publication {
                channel: "c\"data\":".into(),
                epoch: "e".into(),
                offset: 3,
                id: "e-3".into(),
                kind: kind.into(),
                data: RawValue::from_string(data.into()).unwrap(),
                time: "2026-12-02T00:00:00.000Z".into(),
                meta: Meta {
                    source: Some("api".into()),
                    user: user.map(Into::into),
                    ..Meta::default()
                },
                key: key.map(Into::into),
                op,
                truncated: None,
            };
            let want = herald_protocol::compact::encode_tail(&p);
            let made = Encoded::new(&p, "c".into(), "e".into());
            assert_eq!(made.compact_tail().concat(), want);
            assert!(!made.compact.get().unwrap().data.is_empty(), "the payload is not copied");
            let stored = Encoded::from_json("c", "e", 3, made.publication_json());
            assert!(stored.compact.get().is_none(), "made lazily");
            assert_eq!(stored.compact_tail().concat(), want);
            assert!(!stored.compact.get().unwrap().data.is_empty(), "the payload is not copied");
        }
    }
}
