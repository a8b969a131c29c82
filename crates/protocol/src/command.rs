//! Client → server commands.
//!
//! A command is `{"id": N, "cmd": "NAME", ...fields}`. `id` is chosen by the client and echoed in
//! the reply; `pong` needs none. Parsing goes through one flat struct ([`Wire`]) so that `data`
//! stays raw JSON and every error names the request id and the field at fault.

use crate::{ErrorCode, Op, Position};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A resume point: `since` in `subscribe` and `history`.
pub type Since = Position;

/// A parsed command with its request id.
#[derive(Debug, Clone)]
pub struct Request {
    /// Echoed in the reply; `None` only for `pong`.
    pub id: Option<u64>,
    /// What to do.
    pub command: Command,
}

/// Every command of protocol v1.
#[derive(Debug, Clone)]
pub enum Command {
    /// Authenticate (token optional when the header or query carried one, or anonymous is allowed).
    Connect { token: Option<String>, name: Option<String> },
    /// Start receiving a channel; optionally resume from `since` or start with a `snapshot`.
    Subscribe { channel: String, since: Option<Since>, snapshot: bool },
    /// Stop receiving a channel.
    Unsubscribe { channel: String },
    /// Publish to a channel (when its namespace allows client publishes).
    Publish(PublishCommand),
    /// Application-level round trip; the reply is empty.
    Ping,
    /// Answer to the server's `ping` push.
    Pong,
    /// Replace the connection's token before it expires.
    Refresh { token: String },
    /// Read a channel's history.
    History(HistoryQuery),
    /// Read a keyed channel's state.
    State { channel: String },
}

/// Fields of a publish, shared by the client command and the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishCommand {
    /// Target channel.
    pub channel: String,
    /// Event type; `message` when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Payload (any JSON). Ignored for `op: delete` but still required to be JSON (`null` is fine).
    pub data: Box<RawValue>,
    /// Record key (keyed namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Record operation (keyed namespaces; `upsert` when a key is given without op).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// Publishes with the same key inside the dedupe window return the first result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Caller-chosen id carried into the publication's meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// Which part of the history to read. With neither `since` nor `before`: the latest `limit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Channel to read.
    pub channel: String,
    /// At most this many publications (capped by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Publications after this position, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// Publications with an offset below this one, for paging backwards (newest `limit`, returned
    /// oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// Why a line could not become a [`Request`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The request id, when it could be read.
    pub id: Option<u64>,
    /// `bad_request` or `unknown_command`.
    pub code: ErrorCode,
    /// What was wrong, for a human.
    pub message: String,
}

/// The flat wire form of every command.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(borrow)]
    cmd: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Position>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    snapshot: bool,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
}

/// A present `data` is `Some` even when it is `null` (a delete carries no value).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads just the id, to attach it to errors when the full parse fails.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

impl Request {
    /// Parses one message line.
    pub fn parse(line: &str) -> Result<Request, ParseError> {
        let wire: Wire<'_> = serde_json::from_str(line).map_err(|e| ParseError {
            id: serde_json::from_str::<IdOnly>(line).ok().and_then(|i| i.id),
            code: ErrorCode::BadRequest,
            message: format!("malformed command: {e}"),
        })?;
        let id = wire.id;
        let bad = |message: String| ParseError { id, code: ErrorCode::BadRequest, message };
        let need_channel =
            |c: Option<String>| c.ok_or_else(|| bad("missing field `channel`".into()));
        let command = match wire.cmd.as_ref() {
            "connect" => Command::Connect { token: wire.token, name: wire.name },
            "subscribe" => Command::Subscribe {
                channel: need_channel(wire.channel)?,
                since: wire.since,
                snapshot: wire.snapshot,
            },
            "unsubscribe" => Command::Unsubscribe { channel: need_channel(wire.channel)? },
            "publish" => Command::Publish(PublishCommand {
                channel: need_channel(wire.channel)?,
                kind: wire.kind,
                data: wire
                    .data
                    .map(|d| d.to_owned())
                    .ok_or_else(|| bad("missing field `data`".into()))?,
                key: wire.key,
                op: wire.op,
                idempotency_key: wire.idempotency_key,
                correlation_id: wire.correlation_id,
            }),
            "ping" => Command::Ping,
            "pong" => Command::Pong,
            "refresh" => Command::Refresh {
                token: wire.token.ok_or_else(|| bad("missing field `token`".into()))?,
            },
            "history" => Command::History(HistoryQuery {
                channel: need_channel(wire.channel)?,
                limit: wire.limit,
                since: wire.since,
                before: wire.before,
            }),
            "state" => Command::State { channel: need_channel(wire.channel)? },
            other => {
                return Err(ParseError {
                    id,
                    code: ErrorCode::UnknownCommand,
                    message: format!("unknown command {other:?}"),
                });
            }
        };
        if id.is_none() && !matches!(command, Command::Pong) {
            return Err(bad("missing field `id`".into()));
        }
        Ok(Request { id, command })
    }

    /// Serializes to one message line (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut w = Wire { id: self.id, ..Default::default() };
        match &self.command {
            Command::Connect { token, name } => {
                w.cmd = "connect".into();
                w.token = token.clone();
                w.name = name.clone();
            }
            Command::Subscribe { channel, since, snapshot } => {
                w.cmd = "subscribe".into();
                w.channel = Some(channel.clone());
                w.since = since.clone();
                w.snapshot = *snapshot;
            }
            Command::Unsubscribe { channel } => {
                w.cmd = "unsubscribe".into();
                w.channel = Some(channel.clone());
            }
            Command::Publish(p) => {
                w.cmd = "publish".into();
                w.channel = Some(p.channel.clone());
                w.kind = p.kind.clone();
                w.data = Some(&p.data);
                w.key = p.key.clone();
                w.op = p.op;
                w.idempotency_key = p.idempotency_key.clone();
                w.correlation_id = p.correlation_id.clone();
            }
            Command::Ping => w.cmd = "ping".into(),
            Command::Pong => w.cmd = "pong".into(),
            Command::Refresh { token } => {
                w.cmd = "refresh".into();
                w.token = Some(token.clone());
            }
            Command::History(q) => {
                w.cmd = "history".into();
                w.channel = Some(q.channel.clone());
                w.limit = q.limit;
                w.since = q.since.clone();
                w.before = q.before;
            }
            Command::State { channel } => {
                w.cmd = "state".into();
                w.channel = Some(channel.clone());
            }
        }
        serde_json::to_string(&w).expect("commands always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = Request {
            id: Some(7),
            command: Command::Publish(PublishCommand {
                channel: "tasks".into(),
                kind: Some("moved".into()),
                data: RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap(),
                key: Some("t1".into()),
                op: Some(Op::Merge),
                idempotency_key: None,
                correlation_id: Some("c".into()),
            }),
        };
        let line = req.to_json();
        let back = Request::parse(&line).unwrap();
        assert_eq!(back.id, Some(7));
        match back.command {
            Command::Publish(p) => {
                assert_eq!(p.data.get(), r#"{"a":[1,2]}"#);
                assert_eq!(p.op, Some(Op::Merge));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_carry_id_and_code() {
        let e = Request::parse(r#"{"id":3,"cmd":"fly"}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::UnknownCommand));
        let e = Request::parse(r#"{"id":4,"cmd":"subscribe"}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest));
        let e = Request::parse(r#"{"id":5,"cmd":"subscribe","channel":3}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(5), ErrorCode::BadRequest));
        let e = Request::parse("not json").unwrap_err();
        assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
        let null = Request::parse(
            r#"{"id":6,"cmd":"publish","channel":"c","data":null,"key":"k","op":"delete"}"#,
        );
        assert!(null.is_ok(), "{null:?}");
        let e = Request::parse(r#"{"cmd":"ping"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(Request::parse(r#"{"cmd":"pong"}"#).is_ok());
    }

    #[test]
    fn never_panics_on_garbage() {
        // A tiny deterministic fuzz over mutated valid commands; cargo-fuzz covers more.
        let seeds = [
            r#"{"id":1,"cmd":"subscribe","channel":"a:b","since":{"epoch":"e","offset":3}}"#,
            r#"{"id":2,"cmd":"publish","channel":"x","data":{"k":[1,"\n"]},"op":"merge"}"#,
        ];
        let mut state = 0x2545F4914F6CDD1Du64;
        for seed in seeds {
            let bytes = seed.as_bytes();
            for _ in 0..20_000 {
                let mut m = bytes.to_vec();
                for _ in 0..3 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = (state as usize) % m.len();
                    m[i] = (state >> 32) as u8;
                }
                if let Ok(s) = std::str::from_utf8(&m) {
                    let _ = Request::parse(s);
                }
            }
        }
    }
}
