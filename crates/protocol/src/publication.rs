//! What a channel carries.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A place in a channel's stream. The offset grows by exactly one per publication; the epoch is
/// replaced when the stream is lost, so "nothing missed" and "stream gone" stay distinguishable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Random token naming one incarnation of the channel's stream.
    pub epoch: String,
    /// Offset of the last publication (0 before the first).
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    /// Parses `EPOCH:OFFSET`, the form the CLI prints and accepts.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s.rsplit_once(':').ok_or("expected EPOCH:OFFSET")?;
        let offset = offset.parse().map_err(|_| "offset must be a number")?;
        Ok(Position { epoch: epoch.to_string(), offset })
    }
}

/// How a live publication relates to the last position a subscriber delivered. The one rule
/// every subscriber applies (hub sessions, the Rust and TypeScript clients): deliver the next
/// offset, drop what was already delivered, and never deliver around a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// `offset == last + 1` in the same epoch: deliver it.
    Next,
    /// Already delivered (or covered by a subscribe reply): drop it.
    Duplicate,
    /// A missing offset or another epoch: resubscribe with `since`.
    Gap,
}

impl Continuity {
    /// Classifies a publication at `(epoch, offset)` after the last delivered position
    /// `(last_epoch, last_offset)`.
    pub fn of(last_epoch: &str, last_offset: u64, epoch: &str, offset: u64) -> Continuity {
        if epoch != last_epoch {
            Continuity::Gap
        } else if offset <= last_offset {
            Continuity::Duplicate
        } else if offset == last_offset + 1 {
            Continuity::Next
        } else {
            Continuity::Gap
        }
    }
}

/// How a keyed publication changes the channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Replace the key's value with `data`.
    Upsert,
    /// Apply `data` as a JSON merge patch (RFC 7386) to the key's value.
    Merge,
    /// Remove the key.
    Delete,
}

impl Op {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Merge => "merge",
            Op::Delete => "delete",
        }
    }
}

impl std::str::FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upsert" => Ok(Op::Upsert),
            "merge" => Ok(Op::Merge),
            "delete" => Ok(Op::Delete),
            other => Err(format!("unknown op {other:?}: expected upsert, merge or delete")),
        }
    }
}

/// Who published and why; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// User id of the publishing connection (absent for API publishes unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where it came from: `client`, `api`, or what the API caller set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Caller-chosen id tying related events together (seed 001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The idempotency key the publish carried, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Meta {
    /// True when no field is set (then the field is left out of the JSON).
    pub fn is_empty(&self) -> bool {
        self.user.is_none()
            && self.source.is_none()
            && self.correlation_id.is_none()
            && self.idempotency_key.is_none()
    }

    /// Appends the JSON serde writes for this value (crate::json).
    pub fn write_json(&self, out: &mut String) {
        let mut first = true;
        out.push('{');
        for (name, value) in [
            ("user", &self.user),
            ("source", &self.source),
            ("correlation_id", &self.correlation_id),
            ("idempotency_key", &self.idempotency_key),
        ] {
            let Some(value) = value else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            crate::json::push_str(out, value);
        }
        out.push('}');
    }
}

/// One event in a channel. `data` stays raw JSON: the hub validates it once and never re-parses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// The channel it was published to.
    pub channel: String,
    /// The stream incarnation it belongs to.
    pub epoch: String,
    /// Its offset: previous + 1.
    pub offset: u64,
    /// Unique id (`EPOCH-OFFSET`), the seed-000 `eventId`.
    pub id: String,
    /// Application event type (default `message`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Application payload (any JSON).
    pub data: Box<RawValue>,
    /// Server time of acceptance, RFC 3339 / ISO 8601 UTC with milliseconds.
    pub time: String,
    /// Publisher metadata.
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    /// Record key on keyed channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What the publication does to the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// A truncated preview (subscribe `preview`): `data` is a string of the first bytes of the
    /// payload's JSON text, which was this many bytes long (protocol §18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<u64>,
}

/// A publication's id, `EPOCH-OFFSET` (made once per publish, without the formatting machinery).
pub fn publication_id(epoch: &str, offset: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let offset = digits.format(offset);
    let mut id = String::with_capacity(epoch.len() + 1 + offset.len());
    id.push_str(epoch);
    id.push('-');
    id.push_str(offset);
    id
}

impl Publication {
    /// Appends the JSON serde writes for this publication, written by hand: it runs once per
    /// publish (crate::json). Returns where `data` was written in `out`.
    pub fn write_json(&self, out: &mut String) -> std::ops::Range<usize> {
        use crate::json::{push_field, push_str, push_u64};
        out.reserve(96 + self.channel.len() + 2 * self.epoch.len() + self.data.get().len());
        out.push_str("{\"channel\":");
        push_str(out, &self.channel);
        push_field(out, "epoch", &self.epoch);
        out.push_str(",\"offset\":");
        push_u64(out, self.offset);
        push_field(out, "id", &self.id);
        push_field(out, "type", &self.kind);
        out.push_str(",\"data\":");
        let data = out.len()..out.len() + self.data.get().len();
        out.push_str(self.data.get());
        push_field(out, "time", &self.time);
        if !self.meta.is_empty() {
            out.push_str(",\"meta\":");
            self.meta.write_json(out);
        }
        if let Some(key) = &self.key {
            push_field(out, "key", key);
        }
        if let Some(op) = self.op {
            push_field(out, "op", op.as_str());
        }
        if let Some(truncated) = self.truncated {
            out.push_str(",\"truncated\":");
            push_u64(out, truncated);
        }
        out.push('}');
        data
    }

    /// The position right after this publication.
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), offset: self.offset }
    }
}

/// One live record of a keyed channel's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The record key.
    pub key: String,
    /// Its current value.
    pub value: Box<RawValue>,
    /// Offset of the publication that last changed it.
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9:._-]{0,12}", any::<String>()]
    }

    fn meta() -> impl Strategy<Value = Meta> {
        let s = || proptest::option::of(text());
        (s(), s(), s(), s()).prop_map(|(user, source, correlation_id, idempotency_key)| Meta {
            user,
            source,
            correlation_id,
            idempotency_key,
        })
    }

    proptest! {
        /// The hand-written JSON is serde's, byte for byte, for any publication.
        #[test]
        fn write_json_is_what_serde_writes(
            channel in text(),
            epoch in text(),
            offset in any::<u64>(),
            id in text(),
            kind in text(),
            data in prop_oneof![
                Just("null".to_string()),
                any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                proptest::collection::vec(any::<i64>(), 0..5).prop_map(|v| serde_json::to_string(&v).unwrap()),
            ],
            time in text(),
            meta in meta(),
            key in proptest::option::of(text()),
            op in proptest::option::of(prop_oneof![Just(Op::Upsert), Just(Op::Merge), Just(Op::Delete)]),
            truncated in proptest::option::of(any::<u64>()),
        ) {
            let p = Publication {
                channel, epoch, offset, id, kind,
                data: RawValue::from_string(data).unwrap(),
                time, meta, key, op, truncated,
            };
            prop_assert_eq!(publication_id(&p.epoch, p.offset), format!("{}-{}", p.epoch, p.offset));
            let mut out = String::from("prefix");
            let data = p.write_json(&mut out);
            prop_assert_eq!(&out[data], p.data.get());
            prop_assert_eq!(&out["prefix".len()..], serde_json::to_string(&p).unwrap());
            let mut out = String::new();
            p.meta.write_json(&mut out);
            prop_assert_eq!(out, serde_json::to_string(&p.meta).unwrap());
        }
    }

    #[test]
    fn continuity() {
        assert_eq!(Continuity::of("e", 5, "e", 6), Continuity::Next);
        assert_eq!(Continuity::of("e", 5, "e", 5), Continuity::Duplicate);
        assert_eq!(Continuity::of("e", 5, "e", 2), Continuity::Duplicate);
        assert_eq!(Continuity::of("e", 5, "e", 7), Continuity::Gap);
        assert_eq!(Continuity::of("e", 5, "x", 6), Continuity::Gap);
    }
}
