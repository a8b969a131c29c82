//! Client → server commands.
//!
//! A command is `{"id": N, "cmd": "NAME", ...fields}`. `id` is chosen by the client and echoed in
//! the reply; `pong` needs none. Parsing goes through one flat struct ([`Wire`]) so that `data`
//! stays raw JSON and every error names the request id and the field at fault. Only a JSON object
//! is a message, and a field the command does not take is an error (107), never ignored.
//! `tests/fuzz_commands.rs` fuzzes this parser with proptest.

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
    /// Application-level round trip. The reply is `{}`, or `{"timestamp": T}` echoing the
    /// `timestamp` given (seed 000 measures round-trip time with it).
    Ping {
        /// A JSON number or string, kept raw so that it is echoed byte for byte.
        timestamp: Option<Box<RawValue>>,
    },
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

/// Every field any command may carry. Each is one bit of [`Wire::present`], so that one pass over
/// the object can say, per command, which field does not belong (protocol §2: unknown fields are
/// refused, not ignored: a misspelt `snapshot` or a forged `user` must not pass silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Cmd,
    Channel,
    Token,
    Name,
    Since,
    Snapshot,
    Type,
    Data,
    Key,
    Op,
    IdempotencyKey,
    CorrelationId,
    Limit,
    Before,
    Timestamp,
}

impl Field {
    /// In bit order.
    const ALL: [Field; 16] = [
        Field::Id,
        Field::Cmd,
        Field::Channel,
        Field::Token,
        Field::Name,
        Field::Since,
        Field::Snapshot,
        Field::Type,
        Field::Data,
        Field::Key,
        Field::Op,
        Field::IdempotencyKey,
        Field::CorrelationId,
        Field::Limit,
        Field::Before,
        Field::Timestamp,
    ];

    const fn bit(self) -> u32 {
        1 << self as u32
    }

    const fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Cmd => "cmd",
            Field::Channel => "channel",
            Field::Token => "token",
            Field::Name => "name",
            Field::Since => "since",
            Field::Snapshot => "snapshot",
            Field::Type => "type",
            Field::Data => "data",
            Field::Key => "key",
            Field::Op => "op",
            Field::IdempotencyKey => "idempotency_key",
            Field::CorrelationId => "correlation_id",
            Field::Limit => "limit",
            Field::Before => "before",
            Field::Timestamp => "timestamp",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The fields `cmd` takes besides `id` and `cmd` (the table of protocol §2); `None` for a
    /// command this protocol version does not know.
    fn allowed(cmd: &str) -> Option<&'static [Field]> {
        use Field::*;
        Some(match cmd {
            "connect" => &[Token, Name],
            "subscribe" => &[Channel, Since, Snapshot],
            "unsubscribe" => &[Channel],
            "publish" => &[Channel, Data, Type, Key, Op, IdempotencyKey, CorrelationId],
            "history" => &[Channel, Limit, Since, Before],
            "state" => &[Channel],
            "refresh" => &[Token],
            "ping" => &[Timestamp],
            "pong" => &[],
            _ => return None,
        })
    }
}

/// The flat wire form of every command. Deserialized by hand ([`WireSeed`]) so that only an
/// object is accepted (a derived struct also takes `[id, cmd, channel, ...]` arrays), duplicate and
/// unknown keys are seen, and `data` stays borrowed raw JSON.
#[derive(Debug, Default, Serialize)]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    cmd: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<Position>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    snapshot: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// `Some` whenever present, even as `null` (a delete carries no value).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    /// Seed 000's `ping {timestamp}`, echoed in the reply; kept raw so it comes back unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a RawValue>,
    /// Bit set of the [`Field`]s present.
    #[serde(skip)]
    present: u32,
    /// The first key that is no field of any command.
    #[serde(skip)]
    unknown: Option<String>,
}

/// What the parse had read when it failed: the id for the error reply, the field for the message.
#[derive(Default)]
struct Progress {
    id: Option<u64>,
    field: Option<&'static str>,
}

/// One object key: a [`Field`] or another name (kept only to name it in the error).
enum Key {
    Known(Field),
    Unknown(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(Field::from_name(s).map_or_else(|| Key::Unknown(s.to_owned()), Key::Known))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Deserializes a [`Wire`] from a JSON object, recording its progress as it goes.
struct WireSeed<'p>(&'p mut Progress);

impl<'de> serde::de::DeserializeSeed<'de> for WireSeed<'_> {
    type Value = Wire<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Wire<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for WireSeed<'_> {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        use serde::de::Error;
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Key>()? {
            let f = match key {
                Key::Known(f) => f,
                Key::Unknown(name) => {
                    w.unknown.get_or_insert(name);
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if w.present & f.bit() != 0 {
                // Two readers of one duplicated key may disagree on which value counts.
                return Err(A::Error::custom(format_args!("duplicate field `{}`", f.name())));
            }
            w.present |= f.bit();
            self.0.field = Some(f.name());
            match f {
                Field::Id => {
                    w.id = map.next_value()?;
                    self.0.id = w.id;
                }
                Field::Cmd => w.cmd = map.next_value::<Borrowed<'de>>()?.0,
                Field::Channel => w.channel = map.next_value()?,
                Field::Token => w.token = map.next_value()?,
                Field::Name => w.name = map.next_value()?,
                Field::Since => w.since = map.next_value()?,
                Field::Snapshot => w.snapshot = map.next_value()?,
                Field::Type => w.kind = map.next_value()?,
                Field::Data => w.data = Some(map.next_value()?),
                Field::Key => w.key = map.next_value()?,
                Field::Op => w.op = map.next_value()?,
                Field::IdempotencyKey => w.idempotency_key = map.next_value()?,
                Field::CorrelationId => w.correlation_id = map.next_value()?,
                Field::Limit => w.limit = map.next_value()?,
                Field::Before => w.before = map.next_value()?,
                Field::Timestamp => {
                    let raw: &'de RawValue = map.next_value()?;
                    // `null` is an absent timestamp, as for every other optional field.
                    w.timestamp = (raw.get() != "null").then_some(raw);
                }
            }
            self.0.field = None;
        }
        Ok(w)
    }
}

/// A string borrowed from the line when it has no escapes.
struct Borrowed<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Borrowed(s.into()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Borrowed(s.to_owned().into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads just the id of an object, to attach it to errors when it comes after the fault.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

/// The first `\uXXXX` escape in a JSON text that is half of a surrogate pair without its other
/// half. JSON's grammar allows them but they are no Unicode text: serde_json (and so the Rust
/// client and the hub's keyed-state code) refuses them where a browser keeps them, so two
/// subscribers of one channel would disagree. `json` must be valid JSON (escapes occur only inside
/// strings, so every `\` starts an escape).
pub fn lone_surrogate(json: &str) -> Option<u16> {
    let b = json.as_bytes();
    let hex = |i: usize| -> Option<u16> {
        let s = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    while let Some(at) = b.get(i..).and_then(|rest| rest.iter().position(|&c| c == b'\\')) {
        i += at;
        if b.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let unit = hex(i + 2)?;
        i += 6;
        match unit {
            0xD800..=0xDBFF => {
                let low = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') {
                    hex(i + 2)
                } else {
                    None
                };
                match low {
                    Some(0xDC00..=0xDFFF) => i += 6,
                    _ => return Some(unit),
                }
            }
            0xDC00..=0xDFFF => return Some(unit),
            _ => {}
        }
    }
    None
}

impl Request {
    /// Parses one message line.
    pub fn parse(line: &str) -> Result<Request, ParseError> {
        // §1: every message is an object; an array must not be read as `[id, cmd, ...]`.
        if !line.trim_start().starts_with('{') {
            return Err(ParseError {
                id: None,
                code: ErrorCode::BadRequest,
                message: "a message must be a JSON object".into(),
            });
        }
        let mut progress = Progress::default();
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed = serde::de::DeserializeSeed::deserialize(WireSeed(&mut progress), &mut de)
            .and_then(|w| de.end().map(|()| w));
        let wire = parsed.map_err(|e| ParseError {
            id: progress
                .id
                .or_else(|| serde_json::from_str::<IdOnly>(line).ok().and_then(|i| i.id)),
            code: ErrorCode::BadRequest,
            message: match progress.field {
                Some(field) => format!("bad field `{field}`: {e}"),
                None => format!("malformed command: {e}"),
            },
        })?;
        let id = wire.id;
        let bad = |message: String| ParseError { id, code: ErrorCode::BadRequest, message };
        if wire.present & Field::Cmd.bit() == 0 {
            return Err(bad("missing field `cmd`".into()));
        }
        let cmd = wire.cmd.as_ref();
        let Some(allowed) = Field::allowed(cmd) else {
            return Err(ParseError {
                id,
                code: ErrorCode::UnknownCommand,
                message: format!("unknown command {cmd:?}"),
            });
        };
        let takes = allowed.iter().fold(Field::Id.bit() | Field::Cmd.bit(), |m, f| m | f.bit());
        let stray = Field::ALL.into_iter().find(|f| wire.present & !takes & f.bit() != 0);
        if let Some(name) = wire.unknown.as_deref().or(stray.map(Field::name)) {
            let names: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
            let names = if names.is_empty() { "no fields".to_string() } else { names.join(", ") };
            return Err(bad(format!("unknown field {name:?} in {cmd} (it takes {names})")));
        }
        let need_channel =
            |c: Option<String>| c.ok_or_else(|| bad("missing field `channel`".into()));
        let unicode = |field: &str, raw: &RawValue| match lone_surrogate(raw.get()) {
            Some(unit) => Err(bad(format!(
                "bad field `{field}`: lone surrogate \\u{unit:04x} (strings must be Unicode text)"
            ))),
            None => Ok(()),
        };
        let command = match cmd {
            "connect" => Command::Connect { token: wire.token, name: wire.name },
            "subscribe" => Command::Subscribe {
                channel: need_channel(wire.channel)?,
                since: wire.since,
                snapshot: wire.snapshot,
            },
            "unsubscribe" => Command::Unsubscribe { channel: need_channel(wire.channel)? },
            "publish" => {
                let channel = need_channel(wire.channel)?;
                let data = wire.data.ok_or_else(|| bad("missing field `data`".into()))?;
                unicode("data", data)?;
                Command::Publish(PublishCommand {
                    channel,
                    kind: wire.kind,
                    data: data.to_owned(),
                    key: wire.key,
                    op: wire.op,
                    idempotency_key: wire.idempotency_key,
                    correlation_id: wire.correlation_id,
                })
            }
            "ping" => {
                if let Some(t) = wire.timestamp {
                    if !matches!(t.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) {
                        let msg = "bad field `timestamp`: expected a number or a string";
                        return Err(bad(msg.into()));
                    }
                    unicode("timestamp", t)?;
                }
                Command::Ping { timestamp: wire.timestamp.map(ToOwned::to_owned) }
            }
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
            other => unreachable!("{other:?} is in Field::allowed but not parsed"),
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
            Command::Ping { timestamp } => {
                w.cmd = "ping".into();
                w.timestamp = timestamp.as_deref();
            }
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
        let e = Request::parse(r#"{"id":1}"#).unwrap_err();
        assert_eq!((e.id, e.message.as_str()), (Some(1), "missing field `cmd`"));
    }

    fn err(line: &str) -> ParseError {
        Request::parse(line).expect_err(line)
    }

    #[test]
    fn only_objects_are_messages() {
        for line in [r#"[90,"subscribe","ch"]"#, "[]", "3", r#""ping""#, "null", "true", ""] {
            let e = err(line);
            assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest), "{line}");
            assert_eq!(e.message, "a message must be a JSON object", "{line}");
        }
        let e = err(r#"{"id":1,"cmd":"ping"} [2]"#);
        assert!(e.message.contains("trailing characters"), "{}", e.message);
    }

    #[test]
    fn unknown_and_foreign_fields_are_named() {
        let e = err(r#"{"id":1,"cmd":"subscribe","channel":"c","filter":"status != 1"}"#);
        assert_eq!((e.id, e.code), (Some(1), ErrorCode::BadRequest));
        assert!(e.message.starts_with(r#"unknown field "filter" in subscribe"#), "{}", e.message);
        let e = err(r#"{"id":2,"cmd":"publish","channel":"c","data":1,"user":"root"}"#);
        assert!(e.message.starts_with(r#"unknown field "user" in publish"#), "{}", e.message);
        // A field of another command is as unknown here.
        let e =
            err(r#"{"id":3,"cmd":"unsubscribe","channel":"c","since":{"epoch":"e","offset":1}}"#);
        assert_eq!(e.message, r#"unknown field "since" in unsubscribe (it takes channel)"#);
        let e = err(r#"{"cmd":"pong","x":1}"#);
        assert_eq!(e.message, r#"unknown field "x" in pong (it takes no fields)"#);
        let e = err(r#"{"id":4,"cmd":"connect","tokn":"t"}"#);
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest));
        // An unknown command is 104, whatever its fields.
        assert_eq!(err(r#"{"id":5,"cmd":"fly","wings":2}"#).code, ErrorCode::UnknownCommand);
        let e = err(r#"{"id":6,"cmd":"state","channel":"a","channel":"b"}"#);
        assert!(e.message.contains("duplicate field `channel`"), "{}", e.message);
        assert_eq!(e.id, Some(6));
    }

    #[test]
    fn the_id_is_kept_when_it_can_be_read() {
        // Before the fault, after it, and before malformed JSON.
        assert_eq!(err(r#"{"id":7,"cmd":"subscribe","channel":5}"#).id, Some(7));
        assert_eq!(err(r#"{"cmd":"subscribe","channel":5,"id":8}"#).id, Some(8));
        assert_eq!(err(r#"{"id":9,"cmd":"subscribe","channel":"#).id, Some(9));
        let e = err(r#"{"id":10,"cmd":"history","channel":"c","limit":"ten"}"#);
        assert!(e.message.starts_with("bad field `limit`: invalid type"), "{}", e.message);
        assert_eq!(err(r#"{"id":-1,"cmd":"ping"}"#).id, None);
    }

    #[test]
    fn ping_timestamp() {
        let ts = |line: &str| match Request::parse(line).unwrap().command {
            Command::Ping { timestamp } => timestamp.map(|t| t.get().to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(ts(r#"{"id":1,"cmd":"ping"}"#), None);
        assert_eq!(ts(r#"{"id":1,"cmd":"ping","timestamp":null}"#), None);
        let ms = ts(r#"{"id":1,"cmd":"ping","timestamp":1764000000123}"#);
        assert_eq!(ms.as_deref(), Some("1764000000123"));
        let iso = r#""2026-11-22T10:00:00.000Z""#;
        let line = format!(r#"{{"id":1,"cmd":"ping","timestamp":{iso}}}"#);
        assert_eq!(ts(&line).as_deref(), Some(iso));
        let e = err(r#"{"id":2,"cmd":"ping","timestamp":{"t":1}}"#);
        assert_eq!((e.id, e.code), (Some(2), ErrorCode::BadRequest));
        let req = Request { id: Some(3), command: Command::Ping { timestamp: None } };
        assert_eq!(req.to_json(), r#"{"id":3,"cmd":"ping"}"#);
    }

    #[test]
    fn lone_surrogates_are_refused() {
        assert_eq!(lone_surrogate(r#""\\ud800""#), None, "an escaped backslash, then text");
        assert_eq!(lone_surrogate(r#"["\ud83d\ude00","\n\u00e9"]"#), None);
        assert_eq!(lone_surrogate(r#""\ud800""#), Some(0xD800));
        assert_eq!(lone_surrogate(r#""\ud800\u0041""#), Some(0xD800));
        assert_eq!(lone_surrogate(r#""x\uDC00""#), Some(0xDC00));
        assert_eq!(lone_surrogate(r#""\ud800"#), Some(0xD800), "cut at the end");
        let e = err(r#"{"id":1,"cmd":"publish","channel":"c","data":{"a":"\udfff"}}"#);
        assert_eq!((e.id, e.code), (Some(1), ErrorCode::BadRequest));
        assert!(e.message.contains(r"lone surrogate \udfff"), "{}", e.message);
        // A typed string field: serde_json refuses it already.
        assert_eq!(err(r#"{"id":2,"cmd":"state","channel":"\ud800"}"#).code, ErrorCode::BadRequest);
    }
}
