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
    /// `version` asks for a protocol version (1 when absent; 2: compact live publications, §17).
    Connect { token: Option<String>, name: Option<String>, version: Option<u32> },
    /// Start receiving a channel; optionally resume from `since` or start with a `snapshot`.
    /// With `view` set: a live view of the keyed channel's records (protocol §14). On a
    /// presence namespace the connection becomes a member; `presence` also follows the
    /// member list (protocol §15).
    Subscribe {
        channel: String,
        since: Option<Since>,
        snapshot: bool,
        view: ViewQuery,
        presence: PresenceQuery,
        /// Publications whose `data` is longer than this many bytes come as a truncated
        /// preview (protocol §18).
        preview: Option<u32>,
    },
    /// Stop receiving a channel (`sub` names a view subscription).
    Unsubscribe { channel: String, sub: Option<String> },
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
    /// Change this connection's presence `info` on a channel it is a member of.
    PresenceUpdate { channel: String, info: Box<RawValue> },
    /// List a channel's members, a page at a time (by member id, after `after`).
    Presence { channel: String, limit: Option<usize>, after: Option<String> },
    /// Member and user counts of a channel.
    PresenceStats { channel: String },
    /// An event for the channel's current subscribers only: no offset, no history.
    Volatile { channel: String, kind: Option<String>, data: Box<RawValue> },
}

/// What a subscriber asks of a channel's presence (protocol §15).
#[derive(Debug, Clone, Default)]
pub struct PresenceQuery {
    /// Follow the member list (`true`), only its counts (`"counts"`), or nothing (absent).
    pub mode: Option<PresenceMode>,
    /// Resume the member list from this presence position.
    pub since: Option<Position>,
    /// A member id the client keeps across reconnects (per tab); default: the connection id.
    pub member: Option<String>,
    /// This member's `info` (JSON) as it joins.
    pub info: Option<Box<RawValue>>,
}

/// How a subscriber follows presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    /// The member list, then join / leave / update events.
    Members,
    /// Member and user counts only, as they change.
    Counts,
}

/// What makes a `subscribe` a view subscription: a spec view, an ad-hoc filter, one key, or a
/// combination (a view's filter and the ad-hoc one are ANDed). All empty: a plain channel
/// subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewQuery {
    /// A view or subscription declared in a loaded spec (`ActiveTasks`, `TaskDetail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// An ad-hoc filter expression (`status != "done" and assignee == "u7"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// One record: a view of this key only (`Entity by id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The name of the subscription on this connection, carried by its events; several views
    /// of one channel need different names. Default: `CHANNEL#VIEW`, `CHANNEL#filter` or
    /// `CHANNEL#key:KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl ViewQuery {
    /// True when this is a plain channel subscription.
    pub fn is_empty(&self) -> bool {
        self.view.is_none() && self.filter.is_none() && self.key.is_none() && self.sub.is_none()
    }

    /// The subscription's name on the connection: `sub`, or the default derived from the
    /// channel and what is asked.
    pub fn name(&self, channel: &str) -> String {
        if let Some(s) = &self.sub {
            return s.clone();
        }
        match (&self.view, &self.filter, &self.key) {
            (Some(v), _, _) => format!("{channel}#{v}"),
            (None, Some(_), _) => format!("{channel}#filter"),
            (None, None, Some(k)) => format!("{channel}#key:{k}"),
            (None, None, None) => channel.to_string(),
        }
    }
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

/// Every field any command may carry, so that the parse can say, per command, which field does
/// not belong (protocol §2: unknown fields are refused, not ignored: a misspelt `snapshot` or a
/// forged `user` must not pass silently).
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
    View,
    Filter,
    Sub,
    Presence,
    PresenceSince,
    Member,
    Info,
    After,
    Version,
    Preview,
}

impl Field {
    /// In bit order.
    const ALL: [Field; 26] = [
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
        Field::View,
        Field::Filter,
        Field::Sub,
        Field::Presence,
        Field::PresenceSince,
        Field::Member,
        Field::Info,
        Field::After,
        Field::Version,
        Field::Preview,
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
            Field::View => "view",
            Field::Filter => "filter",
            Field::Sub => "sub",
            Field::Presence => "presence",
            Field::PresenceSince => "presence_since",
            Field::Member => "member",
            Field::Info => "info",
            Field::After => "after",
            Field::Version => "version",
            Field::Preview => "preview",
        }
    }

    /// The field of a key, read for every key of every command: the few common ones are
    /// matched first, without walking the whole table.
    fn from_name(name: &str) -> Option<Field> {
        match name {
            "id" => Some(Field::Id),
            "cmd" => Some(Field::Cmd),
            "channel" => Some(Field::Channel),
            "data" => Some(Field::Data),
            _ => Field::ALL.into_iter().find(|f| f.name() == name),
        }
    }

    /// The fields `cmd` takes besides `id` and `cmd` (the table of protocol §2); `None` for a
    /// command this protocol version does not know.
    fn allowed(cmd: &str) -> Option<&'static [Field]> {
        use Field::*;
        Some(match cmd {
            "connect" => &[Token, Name, Version],
            "subscribe" => &[
                Channel,
                Since,
                Snapshot,
                View,
                Filter,
                Key,
                Sub,
                Presence,
                PresenceSince,
                Member,
                Info,
                Preview,
            ],
            "presence_update" => &[Channel, Info],
            "presence" => &[Channel, Limit, After],
            "presence_stats" => &[Channel],
            "volatile" => &[Channel, Type, Data],
            "unsubscribe" => &[Channel, Sub],
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

/// The flat wire form of every command, for serializing. Parsing goes through [`Fields`].
#[derive(Debug, Default, Serialize)]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    cmd: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<&'a Position>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    snapshot: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_since: Option<&'a Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preview: Option<u32>,
}

/// One message object as read: `id` and `cmd` decoded, every other field kept as raw JSON until
/// the command is known, so that a field the command does not take is reported as such whatever
/// its value. Deserialized by hand ([`FieldsSeed`]) so that only an object is accepted (a derived
/// struct also takes `[id, cmd, channel, ...]` arrays) and duplicate and unknown keys are seen.
#[derive(Default)]
struct Fields<'de> {
    id: Option<u64>,
    cmd: Option<std::borrow::Cow<'de, str>>,
    /// Raw values by [`Field`] index (`id` and `cmd` unused).
    raw: [Option<&'de RawValue>; Field::ALL.len()],
    /// The first key that is no field of any command.
    unknown: Option<String>,
}

impl<'de> Fields<'de> {
    /// Decodes a field; `null` is an absent optional field.
    fn get<T: Deserialize<'de>>(&self, f: Field) -> Result<Option<T>, String> {
        self.raw[f as usize].map_or(Ok(None), |raw| decode(raw, f))
    }

    /// Decodes a string field: one without escapes is taken as it stands in the line (most are:
    /// channels, types, keys), anything else goes through [`decode`].
    fn get_string(&self, f: Field) -> Result<Option<String>, String> {
        match self.raw[f as usize] {
            Some(raw) => match plain_string(raw) {
                Some(s) => Ok(Some(s.to_owned())),
                None => decode(raw, f),
            },
            None => Ok(None),
        }
    }

    fn present(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL.into_iter().filter(|f| self.raw[*f as usize].is_some())
    }
}

/// The text of a JSON string with no escape (`"abc"` → `abc`), read without a parser: `raw` is
/// already validated JSON, so between its quotes there is no control character and no quote.
/// `None` for anything else (escapes, other types), which goes through serde_json.
pub fn plain_string(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A JSON number that is a small unsigned integer (the usual `id`), read without a parser.
fn plain_u64(raw: &RawValue) -> Option<u64> {
    let s = raw.get();
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes one field's raw value; `null` is `None`.
fn decode<'de, T: Deserialize<'de>>(raw: &'de RawValue, f: Field) -> Result<Option<T>, String> {
    decode_field(raw, f.name())
}

/// Decodes the raw value of the field `name` of an object; `null` is `None`. The error names
/// the field and leaves out serde_json's position, which would be inside the value, not the
/// message. (The HTTP API's publish objects are read with it too.)
pub fn decode_field<'de, T: Deserialize<'de>>(
    raw: &'de RawValue,
    name: &str,
) -> Result<Option<T>, String> {
    serde_json::from_str::<Option<T>>(raw.get()).map_err(|e| {
        let msg = e.to_string();
        let at = format!(" at line {} column {}", e.line(), e.column());
        let msg = msg.strip_suffix(&at).unwrap_or(&msg);
        format!("bad field `{name}`: {msg}")
    })
}

/// The id, as soon as it was read: an error later in the line still names it.
#[derive(Default)]
struct Progress {
    id: Option<u64>,
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

/// Deserializes [`Fields`] from a JSON object, recording the id as soon as it is read.
struct FieldsSeed<'p>(&'p mut Progress);

impl<'de> serde::de::DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        use serde::de::Error;
        let mut w = Fields::default();
        let mut seen = 0u32;
        while let Some(key) = map.next_key::<Key>()? {
            let f = match key {
                Key::Known(f) => f,
                Key::Unknown(name) => {
                    w.unknown.get_or_insert(name);
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if seen & f.bit() != 0 {
                // Two readers of one duplicated key may disagree on which value counts.
                return Err(A::Error::custom(format_args!("duplicate field `{}`", f.name())));
            }
            seen |= f.bit();
            let raw: &'de RawValue = map.next_value()?;
            match f {
                Field::Id => {
                    w.id = match plain_u64(raw) {
                        Some(id) => Some(id),
                        None => decode(raw, f).map_err(A::Error::custom)?,
                    };
                    self.0.id = w.id;
                }
                Field::Cmd => {
                    w.cmd = match plain_string(raw) {
                        Some(cmd) => Some(cmd.into()),
                        None => {
                            decode::<Borrowed<'de>>(raw, f).map_err(A::Error::custom)?.map(|c| c.0)
                        }
                    }
                }
                _ => w.raw[f as usize] = Some(raw),
            }
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

/// `since` as the wire carries it: exactly `{epoch, offset}` (an extra key is a 107 too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceWire {
    epoch: String,
    offset: u64,
}

impl From<SinceWire> for Position {
    fn from(s: SinceWire) -> Position {
        Position { epoch: s.epoch, offset: s.offset }
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
    // Most payloads have no backslash at all: `str::contains` of a char is a memchr.
    if !json.contains('\\') {
        return None;
    }
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
        let parsed = serde::de::DeserializeSeed::deserialize(FieldsSeed(&mut progress), &mut de)
            .and_then(|w| de.end().map(|()| w));
        let w = parsed.map_err(|e| {
            let message = e.to_string();
            ParseError {
                id: progress
                    .id
                    .or_else(|| serde_json::from_str::<IdOnly>(line).ok().and_then(|i| i.id)),
                code: ErrorCode::BadRequest,
                message: if message.starts_with("bad field") || message.starts_with("duplicate") {
                    message
                } else {
                    format!("malformed command: {message}")
                },
            }
        })?;
        let id = w.id;
        let bad = |message: String| ParseError { id, code: ErrorCode::BadRequest, message };
        let Some(cmd) = w.cmd.as_deref() else { return Err(bad("missing field `cmd`".into())) };
        let Some(allowed) = Field::allowed(cmd) else {
            return Err(ParseError {
                id,
                code: ErrorCode::UnknownCommand,
                message: format!("unknown command {cmd:?}"),
            });
        };
        let stray = w.present().find(|f| !allowed.contains(f));
        if let Some(name) = w.unknown.as_deref().or(stray.map(Field::name)) {
            let names: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
            let names = if names.is_empty() { "no fields".to_string() } else { names.join(", ") };
            return Err(bad(format!("unknown field {name:?} in {cmd} (it takes {names})")));
        }
        let get_str = |f: Field| w.get_string(f).map_err(bad);
        let channel =
            || get_str(Field::Channel)?.ok_or_else(|| bad("missing field `channel`".into()));
        let unicode = |f: Field, raw: &RawValue| match lone_surrogate(raw.get()) {
            Some(unit) => Err(bad(format!(
                "bad field `{}`: lone surrogate \\u{unit:04x} (strings must be Unicode text)",
                f.name()
            ))),
            None => Ok(()),
        };
        let since = || Ok(w.get::<SinceWire>(Field::Since).map_err(bad)?.map(Position::from));
        let command = match cmd {
            "connect" => {
                let version = w.get::<u32>(Field::Version).map_err(bad)?;
                if version == Some(0) {
                    return Err(bad("bad field `version`: versions start at 1".into()));
                }
                Command::Connect {
                    token: get_str(Field::Token)?,
                    name: get_str(Field::Name)?,
                    version,
                }
            }
            "subscribe" => Command::Subscribe {
                preview: match w.get::<u32>(Field::Preview).map_err(bad)? {
                    Some(0) => {
                        return Err(bad("bad field `preview`: at least 1 byte".into()));
                    }
                    p => p,
                },
                channel: channel()?,
                since: since()?,
                snapshot: w.get::<bool>(Field::Snapshot).map_err(bad)?.unwrap_or(false),
                view: ViewQuery {
                    view: get_str(Field::View)?,
                    filter: get_str(Field::Filter)?,
                    key: get_str(Field::Key)?,
                    sub: get_str(Field::Sub)?,
                },
                presence: PresenceQuery {
                    mode: match w.get::<serde_json::Value>(Field::Presence).map_err(bad)? {
                        None | Some(serde_json::Value::Bool(false)) => None,
                        Some(serde_json::Value::Bool(true)) => Some(PresenceMode::Members),
                        Some(serde_json::Value::String(s)) if s == "counts" => {
                            Some(PresenceMode::Counts)
                        }
                        Some(_) => {
                            return Err(bad(
                                "bad field `presence`: expected true, false or \"counts\"".into(),
                            ));
                        }
                    },
                    since: w
                        .get::<SinceWire>(Field::PresenceSince)
                        .map_err(bad)?
                        .map(Position::from),
                    member: get_str(Field::Member)?,
                    info: match w.raw[Field::Info as usize].filter(|i| i.get() != "null") {
                        Some(i) => {
                            unicode(Field::Info, i)?;
                            Some(i.to_owned())
                        }
                        None => None,
                    },
                },
            },
            "unsubscribe" => {
                Command::Unsubscribe { channel: channel()?, sub: get_str(Field::Sub)? }
            }
            "publish" => {
                let channel = channel()?;
                // A present `data` may be `null` (a delete carries no value).
                let data = w.raw[Field::Data as usize]
                    .ok_or_else(|| bad("missing field `data`".into()))?;
                unicode(Field::Data, data)?;
                Command::Publish(PublishCommand {
                    channel,
                    kind: get_str(Field::Type)?,
                    data: data.to_owned(),
                    key: get_str(Field::Key)?,
                    op: w.get::<Op>(Field::Op).map_err(bad)?,
                    idempotency_key: get_str(Field::IdempotencyKey)?,
                    correlation_id: get_str(Field::CorrelationId)?,
                })
            }
            "ping" => {
                let timestamp = w.raw[Field::Timestamp as usize].filter(|t| t.get() != "null");
                if let Some(t) = timestamp {
                    if !matches!(t.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) {
                        let msg = "bad field `timestamp`: expected a number or a string";
                        return Err(bad(msg.into()));
                    }
                    unicode(Field::Timestamp, t)?;
                }
                Command::Ping { timestamp: timestamp.map(ToOwned::to_owned) }
            }
            "pong" => Command::Pong,
            "refresh" => Command::Refresh {
                token: get_str(Field::Token)?.ok_or_else(|| bad("missing field `token`".into()))?,
            },
            "history" => Command::History(HistoryQuery {
                channel: channel()?,
                limit: w.get::<usize>(Field::Limit).map_err(bad)?,
                since: since()?,
                before: w.get::<u64>(Field::Before).map_err(bad)?,
            }),
            "state" => Command::State { channel: channel()? },
            "presence_update" => {
                let channel = channel()?;
                let info = w.raw[Field::Info as usize]
                    .ok_or_else(|| bad("missing field `info`".into()))?;
                unicode(Field::Info, info)?;
                Command::PresenceUpdate { channel, info: info.to_owned() }
            }
            "presence" => Command::Presence {
                channel: channel()?,
                limit: w.get::<usize>(Field::Limit).map_err(bad)?,
                after: get_str(Field::After)?,
            },
            "presence_stats" => Command::PresenceStats { channel: channel()? },
            "volatile" => {
                let channel = channel()?;
                let data = w.raw[Field::Data as usize]
                    .ok_or_else(|| bad("missing field `data`".into()))?;
                unicode(Field::Data, data)?;
                Command::Volatile { channel, kind: get_str(Field::Type)?, data: data.to_owned() }
            }
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
            Command::Connect { token, name, version } => {
                w.cmd = "connect";
                w.token = token.as_deref();
                w.name = name.as_deref();
                w.version = *version;
            }
            Command::Subscribe { channel, since, snapshot, view, presence, preview } => {
                w.cmd = "subscribe";
                w.preview = *preview;
                w.presence = presence.mode.map(|m| match m {
                    PresenceMode::Members => serde_json::Value::Bool(true),
                    PresenceMode::Counts => serde_json::Value::String("counts".into()),
                });
                w.presence_since = presence.since.as_ref();
                w.member = presence.member.as_deref();
                w.info = presence.info.as_deref();
                w.channel = Some(channel);
                w.since = since.as_ref();
                w.snapshot = *snapshot;
                w.view = view.view.as_deref();
                w.filter = view.filter.as_deref();
                w.key = view.key.as_deref();
                w.sub = view.sub.as_deref();
            }
            Command::Unsubscribe { channel, sub } => {
                w.cmd = "unsubscribe";
                w.channel = Some(channel);
                w.sub = sub.as_deref();
            }
            Command::Publish(p) => {
                w.cmd = "publish";
                w.channel = Some(&p.channel);
                w.kind = p.kind.as_deref();
                w.data = Some(&p.data);
                w.key = p.key.as_deref();
                w.op = p.op;
                w.idempotency_key = p.idempotency_key.as_deref();
                w.correlation_id = p.correlation_id.as_deref();
            }
            Command::Ping { timestamp } => {
                w.cmd = "ping";
                w.timestamp = timestamp.as_deref();
            }
            Command::Pong => w.cmd = "pong",
            Command::PresenceUpdate { channel, info } => {
                w.cmd = "presence_update";
                w.channel = Some(channel);
                w.info = Some(info);
            }
            Command::Presence { channel, limit, after } => {
                w.cmd = "presence";
                w.channel = Some(channel);
                w.limit = *limit;
                w.after = after.as_deref();
            }
            Command::PresenceStats { channel } => {
                w.cmd = "presence_stats";
                w.channel = Some(channel);
            }
            Command::Volatile { channel, kind, data } => {
                w.cmd = "volatile";
                w.channel = Some(channel);
                w.kind = kind.as_deref();
                w.data = Some(data);
            }
            Command::Refresh { token } => {
                w.cmd = "refresh";
                w.token = Some(token);
            }
            Command::History(q) => {
                w.cmd = "history";
                w.channel = Some(&q.channel);
                w.limit = q.limit;
                w.since = q.since.as_ref();
                w.before = q.before;
            }
            Command::State { channel } => {
                w.cmd = "state";
                w.channel = Some(channel);
            }
        }
        serde_json::to_string(&w).expect("commands always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_found_by_its_name() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::from_name("ID"), None);
    }

    proptest::proptest! {
        /// The parser-free readers agree with serde_json whenever they answer.
        #[test]
        fn plain_readers_agree_with_serde(s in proptest::prelude::any::<String>(), n in proptest::prelude::any::<u64>()) {
            let raw = RawValue::from_string(serde_json::to_string(&s).unwrap()).unwrap();
            if let Some(plain) = plain_string(&raw) {
                proptest::prop_assert_eq!(plain, s.as_str());
            }
            let raw = RawValue::from_string(n.to_string()).unwrap();
            proptest::prop_assert_eq!(plain_u64(&raw).unwrap_or(n), n);
            for other in ["null", "1.5", "-1", "1e3", "true", "[]", "{}", "\"a\\\"b\""] {
                let raw = RawValue::from_string(other.to_string()).unwrap();
                proptest::prop_assert_eq!(plain_u64(&raw), None);
                proptest::prop_assert!(other.starts_with('"') || plain_string(&raw).is_none());
            }
        }
    }

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
        let e = err(r#"{"id":1,"cmd":"subscribe","channel":"c","fliter":"status != 1"}"#);
        assert_eq!((e.id, e.code), (Some(1), ErrorCode::BadRequest));
        assert!(e.message.starts_with(r#"unknown field "fliter" in subscribe"#), "{}", e.message);
        let e = err(r#"{"id":2,"cmd":"publish","channel":"c","data":1,"user":"root"}"#);
        assert!(e.message.starts_with(r#"unknown field "user" in publish"#), "{}", e.message);
        // A field of another command is as unknown here.
        let e =
            err(r#"{"id":3,"cmd":"unsubscribe","channel":"c","since":{"epoch":"e","offset":1}}"#);
        assert_eq!(e.message, r#"unknown field "since" in unsubscribe (it takes channel, sub)"#);
        let e = err(r#"{"cmd":"pong","x":1}"#);
        assert_eq!(e.message, r#"unknown field "x" in pong (it takes no fields)"#);
        // Whatever the foreign field's value: it is not type-checked as another command's field.
        let e = err(r#"{"id":7,"cmd":"subscribe","channel":"c","limit":"many"}"#);
        assert!(e.message.starts_with(r#"unknown field "limit" in subscribe"#), "{}", e.message);
        let e = err(r#"{"id":"7","cmd":"ping"}"#);
        assert!(e.message.starts_with("bad field `id`: invalid type: string"), "{}", e.message);
        let e = err(r#"{"id":8,"cmd":"state","channel":["c"]}"#);
        assert_eq!(
            e.message, "bad field `channel`: invalid type: sequence, expected a string",
            "no position inside the value"
        );
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
