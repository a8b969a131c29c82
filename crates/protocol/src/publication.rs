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

impl Publication {
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

    #[test]
    fn continuity() {
        assert_eq!(Continuity::of("e", 5, "e", 6), Continuity::Next);
        assert_eq!(Continuity::of("e", 5, "e", 5), Continuity::Duplicate);
        assert_eq!(Continuity::of("e", 5, "e", 2), Continuity::Duplicate);
        assert_eq!(Continuity::of("e", 5, "e", 7), Continuity::Gap);
        assert_eq!(Continuity::of("e", 5, "x", 6), Continuity::Gap);
    }
}
