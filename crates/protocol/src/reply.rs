//! Server → client messages: replies (carry the request `id`) and pushes (carry `push`).

use crate::{ErrorCode, Position, Publication, Record};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The error object of a failed reply, an `error` push, or an HTTP error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code} ({name}): {message}")]
pub struct ErrorBody {
    /// Numeric code from the table in docs/protocol.md.
    pub code: u16,
    /// The code's stable name.
    pub name: String,
    /// What happened, for a human.
    pub message: String,
    /// The channel involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The request id involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
}

impl ErrorBody {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.code(),
            name: code.name().to_string(),
            message: message.into(),
            channel: None,
            request_id: None,
        }
    }

    /// Adds the channel to the context.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// The typed code, when known.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

/// Reply to `connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectResult {
    /// This connection's id.
    pub client: String,
    /// The authenticated user id (empty for anonymous).
    pub user: String,
    /// Server time, RFC 3339.
    pub time: String,
    /// The server sends `ping` this often; answer with `pong`.
    pub ping_interval_ms: u64,
    /// The server closes a connection that has not answered a ping within this.
    pub pong_timeout_ms: u64,
    /// Connected clients on the hub (seed 000's client count).
    pub clients: u64,
    /// Id of the node that serves this connection.
    pub node: String,
    /// Protocol version.
    pub version: u32,
    /// Token expiry (Unix seconds), when the token has one: refresh before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Why a resume was not recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotRecovered {
    /// The stream the position belongs to is gone (restart, flush).
    EpochChanged,
    /// Publications after the position have left the history (count or age bound).
    HistoryTrimmed,
    /// More publications were missed than the recovery cap allows.
    TooMany,
}

impl NotRecovered {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecovered::EpochChanged => "epoch_changed",
            NotRecovered::HistoryTrimmed => "history_trimmed",
            NotRecovered::TooMany => "too_many",
        }
    }
}

/// Reply to `subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The channel.
    pub channel: String,
    /// Current epoch.
    pub epoch: String,
    /// Current offset: the stream continues at `offset + 1`.
    pub offset: u64,
    /// Whether the namespace is keyed.
    #[serde(default)]
    pub keyed: bool,
    /// Present when `since` was given: whether every publication after it is in `publications`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Present when `recovered` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecovered>,
    /// Recovered publications, oldest first, ending at `offset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    /// The channel's records at `offset` (on `snapshot: true`, or on a keyed channel whose resume
    /// was not recovered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<Record>>,
    /// Protocol v2: the number this subscription's compact live publications carry (§17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

impl SubscribeResult {
    /// The position the reply corresponds to.
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), offset: self.offset }
    }
}

/// Reply to `publish` (and body of the HTTP publish response).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    /// The channel.
    pub channel: String,
    /// The epoch the publication went into.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
    /// Its id.
    pub id: String,
    /// Its server time.
    pub time: String,
    /// True when an earlier publish with the same idempotency key is being answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl PublishResult {
    /// Appends the JSON serde writes for this result, written by hand: it answers every
    /// publish (crate::json).
    pub fn write_json(&self, out: &mut String) {
        use crate::json::{push_field, push_str, push_u64};
        out.push_str("{\"channel\":");
        push_str(out, &self.channel);
        push_field(out, "epoch", &self.epoch);
        out.push_str(",\"offset\":");
        push_u64(out, self.offset);
        push_field(out, "id", &self.id);
        push_field(out, "time", &self.time);
        if self.duplicate {
            out.push_str(",\"duplicate\":true");
        }
        out.push('}');
    }

    /// The result as JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(
            64 + self.channel.len() + self.epoch.len() + self.id.len() + self.time.len(),
        );
        self.write_json(&mut out);
        out
    }
}

/// Reply to `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The channel.
    pub channel: String,
    /// Current epoch.
    pub epoch: String,
    /// Current offset.
    pub offset: u64,
    /// Publications, oldest first.
    pub publications: Vec<Publication>,
    /// Lowest offset still kept (0 when the history is empty).
    pub earliest: u64,
    /// When `since` was given and it cannot be served completely: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecovered>,
}

/// A publication already serialized as its JSON object, so a reply can embed it without
/// decoding and re-encoding it (the hub keeps publications encoded once).
pub trait PublicationJson {
    /// The publication object, exactly as it goes on the wire.
    fn publication_json(&self) -> &str;
}

impl<T: PublicationJson + ?Sized> PublicationJson for std::sync::Arc<T> {
    fn publication_json(&self) -> &str {
        (**self).publication_json()
    }
}

impl<T: PublicationJson + ?Sized> PublicationJson for &T {
    fn publication_json(&self) -> &str {
        (**self).publication_json()
    }
}

/// Publications embedded in a reply as they are (a JSON array of their objects).
pub struct RawPublications<'a, P>(pub &'a [P]);

impl<P: PublicationJson> Serialize for RawPublications<'_, P> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            let raw: &RawValue =
                serde_json::from_str(p.publication_json()).map_err(S::Error::custom)?;
            seq.serialize_element(raw)?;
        }
        seq.end()
    }
}

impl<P> RawPublications<'_, P> {
    /// Whether there are none (the subscribe reply then leaves the field out).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `subscribe` reply as the hub writes it: [`SubscribeResult`] with the publications raw.
#[derive(Serialize)]
#[serde(bound = "P: PublicationJson")]
pub struct SubscribeReply<'a, P> {
    /// The channel.
    pub channel: &'a str,
    /// Current epoch.
    pub epoch: &'a str,
    /// The stream continues at `offset + 1`.
    pub offset: u64,
    /// Whether the namespace is keyed.
    pub keyed: bool,
    /// Present when `since` was given: whether every publication after it is in `publications`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Present when `recovered` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecovered>,
    /// Recovered publications, oldest first, ending at `offset`.
    #[serde(skip_serializing_if = "RawPublications::is_empty")]
    pub publications: RawPublications<'a, P>,
    /// The channel's records at `offset`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<&'a [Record]>,
    /// Protocol v2: the number the subscription's compact live publications carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// The `history` reply as the hub writes it: [`HistoryResult`] with the publications raw; also
/// the HTTP history body.
#[derive(Serialize)]
#[serde(bound = "P: PublicationJson")]
pub struct HistoryReply<'a, P> {
    /// The channel.
    pub channel: &'a str,
    /// Current epoch.
    pub epoch: &'a str,
    /// Current offset.
    pub offset: u64,
    /// Lowest offset still kept (0 when the history is empty).
    pub earliest: u64,
    /// The page, oldest first.
    pub publications: RawPublications<'a, P>,
    /// When `since` was given and it cannot be served completely: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecovered>,
}

/// Reply to `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateResult {
    /// The channel.
    pub channel: String,
    /// Epoch of the state.
    pub epoch: String,
    /// Offset the records correspond to.
    pub offset: u64,
    /// Every live record, sorted by key.
    pub records: Vec<Record>,
}

/// Reply to `refresh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshResult {
    /// New expiry (Unix seconds), if the token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Reply to `ping`: `{}`, or the command's `timestamp` echoed unchanged (seed 000 measures the
/// round trip with it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingResult {
    /// The `timestamp` the ping carried, byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Box<RawValue>>,
}

/// A decoded server message (client side).
#[derive(Debug, Clone)]
pub enum ServerMessage {
    /// Reply to the command with this id.
    Reply { id: u64, result: Result<Box<RawValue>, ErrorBody> },
    /// A publication on a subscribed channel.
    Publication(Publication),
    /// Protocol v2: a live publication in compact form; the subscription numbered `n` gives it
    /// its channel and epoch ([`crate::compact::Compact::into_publication`]).
    Compact(crate::compact::Compact),
    /// Protocol v2: one part of a large publication ([`crate::chunk`]).
    Chunk(crate::chunk::Chunk),
    /// Heartbeat: answer with `{"cmd":"pong"}`.
    Ping,
    /// The server ended a subscription. `resubscribe` says whether to subscribe again (with
    /// `since`): true for a position gap. `sub` names a view subscription.
    Unsubscribe {
        channel: String,
        code: u16,
        reason: String,
        resubscribe: bool,
        sub: Option<String>,
    },
    /// An event of a view subscription (protocol §14).
    View(Box<ViewEvent>),
    /// A presence push (`presence`, `presence_list`, `presence_stats`, protocol §15) or a
    /// `volatile` event (§16), as its JSON object.
    Event { push: String, body: Box<serde_json::Value> },
    /// The server is about to close the connection with this close code.
    Disconnect { code: u16, reason: String, reconnect: bool },
    /// An error not tied to a request (for example malformed JSON).
    Error(ErrorBody),
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default)]
    id: Option<u64>,
    /// `Some` whenever present: `"result": null` is a result (of `()`), not a missing one.
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    push: Option<String>,
    #[serde(rename = "pub", default)]
    publication: Option<Publication>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    resubscribe: bool,
    #[serde(default)]
    reconnect: bool,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    operation: Option<ViewOperation>,
    #[serde(default)]
    key: Option<String>,
    #[serde(borrow, default)]
    record: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl ServerMessage {
    /// Decodes one message line.
    pub fn parse(line: &str) -> Result<ServerMessage, String> {
        if line.starts_with('[') {
            return crate::compact::Compact::parse(line).map(ServerMessage::Compact);
        }
        let w: WireMessage<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if let Some(push) = w.push {
            return match push.as_str() {
                "pub" => {
                    w.publication.map(ServerMessage::Publication).ok_or("pub without body".into())
                }
                "ping" => Ok(ServerMessage::Ping),
                "chunk" => serde_json::from_str(line)
                    .map(ServerMessage::Chunk)
                    .map_err(|e| format!("bad chunk: {e}")),
                "unsubscribe" => Ok(ServerMessage::Unsubscribe {
                    channel: w.channel.unwrap_or_default(),
                    code: w.code.unwrap_or(0),
                    reason: w.reason.unwrap_or_default(),
                    resubscribe: w.resubscribe,
                    sub: w.sub,
                }),
                "view" => {
                    let publication = w.publication.ok_or("view event without pub")?;
                    let reason = match w.reason.as_deref() {
                        None => None,
                        Some("left") => Some(LeaveReason::Left),
                        Some("deleted") => Some(LeaveReason::Deleted),
                        Some(other) => return Err(format!("unknown view delete reason {other:?}")),
                    };
                    Ok(ServerMessage::View(Box::new(ViewEvent {
                        sub: w.sub.ok_or("view event without sub")?,
                        operation: w.operation.ok_or("view event without operation")?,
                        key: w.key.ok_or("view event without key")?,
                        record: w.record.map(ToOwned::to_owned),
                        reason,
                        publication,
                    })))
                }
                "disconnect" => Ok(ServerMessage::Disconnect {
                    code: w.code.unwrap_or(0),
                    reason: w.reason.unwrap_or_default(),
                    reconnect: w.reconnect,
                }),
                "error" => {
                    w.error.map(ServerMessage::Error).ok_or("error push without error".into())
                }
                "presence" | "presence_list" | "presence_stats" | "volatile" => {
                    let body: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| e.to_string())?;
                    Ok(ServerMessage::Event { push, body: Box::new(body) })
                }
                other => Err(format!("unknown push {other:?}")),
            };
        }
        let id = w.id.ok_or("message with neither id nor push")?;
        match (w.result, w.error) {
            (_, Some(e)) => Ok(ServerMessage::Reply { id, result: Err(e) }),
            (Some(r), None) => Ok(ServerMessage::Reply { id, result: Ok(r.to_owned()) }),
            (None, None) => Err("reply with neither result nor error".into()),
        }
    }
}

/// What a keyed write did to a view's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewOperation {
    /// The record entered the view (it did not match before the write, it does after).
    Insert,
    /// The record was in the view and still is; `record` is its new value.
    Update,
    /// The record was in the view and is not any more (`reason` says why).
    Delete,
}

impl ViewOperation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewOperation::Insert => "insert",
            ViewOperation::Update => "update",
            ViewOperation::Delete => "delete",
        }
    }
}

/// Why a record left a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It still exists but no longer matches the view's filter.
    Left,
    /// It was deleted.
    Deleted,
}

impl LeaveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Deleted => "deleted",
        }
    }
}

/// One event of a view subscription: `{"push":"view","sub":..,"operation":..,"key":..,
/// "record"?:..,"reason"?:..,"pub":Publication}`. Also the elements of a view subscribe
/// reply's `events` (without `push`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewEvent {
    /// The subscription's name on the connection.
    pub sub: String,
    /// What happened to the view's rows.
    pub operation: ViewOperation,
    /// The record key.
    pub key: String,
    /// The record after the write (insert and update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<RawValue>>,
    /// Why it left (delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeaveReason>,
    /// The publication that made the change: its position (`epoch`, `offset`), type, time,
    /// meta, and `data` (the patch of a merge).
    #[serde(rename = "pub")]
    pub publication: Publication,
}

/// Reply to a view `subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewSubscribeResult {
    /// The subscription's name on the connection.
    pub sub: String,
    /// The channel.
    pub channel: String,
    /// Current epoch.
    pub epoch: String,
    /// The position the rows (or the replayed events) bring the subscriber to; events follow
    /// with higher offsets.
    pub offset: u64,
    /// The spec view or subscription, when one was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// The filter in force (the view's, the client's and the token's, ANDed), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The one key viewed, for a view of one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Present when `since` was given: whether `events` replays everything after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Present when `recovered` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecovered>,
    /// The matching records at `offset`, sorted by key (sent unless recovered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Vec<Record>>,
    /// When recovered: the view events after `since`, oldest first, ending at `offset` or
    /// before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ViewEvent>,
}

impl ViewSubscribeResult {
    /// The position the reply corresponds to.
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), offset: self.offset }
    }
}

/// Prefix of a publication push; the publication's own JSON follows, then `}`.
pub const PUB_PREFIX: &str = r#"{"push":"pub","pub":"#;

/// Builds a reply line with a result.
pub fn reply_ok<T: Serialize>(id: u64, result: &T) -> String {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        id: u64,
        result: &'a T,
    }
    serde_json::to_string(&Ok { id, result }).expect("results serialize")
}

/// The reply line of a `publish`: [`reply_ok`] with its result, written by hand.
pub fn reply_publish(id: u64, result: &PublishResult) -> String {
    let mut out = String::with_capacity(
        80 + result.channel.len() + result.epoch.len() + result.id.len() + result.time.len(),
    );
    out.push_str("{\"id\":");
    crate::json::push_u64(&mut out, id);
    out.push_str(",\"result\":");
    result.write_json(&mut out);
    out.push('}');
    out
}

/// Builds a reply line with an error.
pub fn reply_err(id: Option<u64>, error: &ErrorBody) -> String {
    #[derive(Serialize)]
    struct Err<'a> {
        id: Option<u64>,
        error: &'a ErrorBody,
    }
    match id {
        Some(_) => serde_json::to_string(&Err { id, error }).expect("errors serialize"),
        None => push_error(error),
    }
}

/// Builds an `error` push line.
pub fn push_error(error: &ErrorBody) -> String {
    serde_json::json!({ "push": "error", "error": error }).to_string()
}

/// Builds an `unsubscribe` push line.
pub fn push_unsubscribe(channel: &str, code: ErrorCode, reason: &str, resubscribe: bool) -> String {
    serde_json::json!({
        "push": "unsubscribe", "channel": channel, "code": code.code(), "name": code.name(),
        "reason": reason, "resubscribe": resubscribe,
    })
    .to_string()
}

/// Builds an `unsubscribe` push line for a view subscription named `sub`.
pub fn push_unsubscribe_view(
    channel: &str,
    sub: &str,
    code: ErrorCode,
    reason: &str,
    resubscribe: bool,
) -> String {
    serde_json::json!({
        "push": "unsubscribe", "channel": channel, "sub": sub, "code": code.code(),
        "name": code.name(), "reason": reason, "resubscribe": resubscribe,
    })
    .to_string()
}

/// Builds a `disconnect` push line.
pub fn push_disconnect(code: crate::CloseCode, reason: &str) -> String {
    serde_json::json!({
        "push": "disconnect", "code": code.code(), "name": code.name(), "reason": reason,
        "reconnect": code.reconnect(),
    })
    .to_string()
}

/// The `ping` push line.
pub const PUSH_PING: &str = r#"{"push":"ping"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written publish reply is serde's, byte for byte.
        #[test]
        fn the_publish_reply_is_what_serde_writes(
            channel in any::<String>(),
            epoch in "[a-zA-Z0-9]{0,12}",
            offset in any::<u64>(),
            id in any::<String>(),
            time in any::<String>(),
            duplicate in any::<bool>(),
            request in any::<u64>(),
        ) {
            let r = PublishResult { channel, epoch, offset, id, time, duplicate };
            prop_assert_eq!(r.to_json(), serde_json::to_string(&r).unwrap());
            prop_assert_eq!(reply_publish(request, &r), reply_ok(request, &r));
        }
    }

    #[test]
    fn parses_pushes_and_replies() {
        let line = format!(
            "{PUB_PREFIX}{}}}",
            r#"{"channel":"c","epoch":"e","offset":1,"id":"e-1","type":"t","data":{"x":1},"time":"now"}"#
        );
        match ServerMessage::parse(&line).unwrap() {
            ServerMessage::Publication(p) => {
                assert_eq!((p.offset, p.data.get()), (1, r#"{"x":1}"#))
            }
            other => panic!("{other:?}"),
        }
        let err = reply_err(Some(3), &ErrorBody::new(ErrorCode::Forbidden, "no").with_channel("c"));
        match ServerMessage::parse(&err).unwrap() {
            ServerMessage::Reply { id: 3, result: Err(e) } => assert_eq!(e.code, 103),
            other => panic!("{other:?}"),
        }
        let d = push_disconnect(crate::CloseCode::SlowConsumer, "queue full");
        assert!(matches!(
            ServerMessage::parse(&d).unwrap(),
            ServerMessage::Disconnect { code: 4001, reconnect: true, .. }
        ));
        assert!(matches!(ServerMessage::parse(PUSH_PING).unwrap(), ServerMessage::Ping));
    }

    #[test]
    fn a_null_result_is_a_result() {
        match ServerMessage::parse(&reply_ok(5, &())).unwrap() {
            ServerMessage::Reply { id: 5, result: Ok(r) } => assert_eq!(r.get(), "null"),
            other => panic!("{other:?}"),
        }
    }

    /// A stored publication, as the hub keeps it.
    struct Stored(&'static str);

    impl PublicationJson for Stored {
        fn publication_json(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn raw_replies_embed_publications_unchanged() {
        let p = r#"{"channel":"c","epoch":"e","offset":2,"id":"e-2","type":"t","data":{"x":1},"time":"now"}"#;
        let pubs = [std::sync::Arc::new(Stored(p))];
        let history = HistoryReply {
            channel: "c",
            epoch: "e",
            offset: 2,
            earliest: 1,
            publications: RawPublications(&pubs),
            reason: None,
        };
        let line = reply_ok(1, &history);
        assert_eq!(
            line,
            format!(
                r#"{{"id":1,"result":{{"channel":"c","epoch":"e","offset":2,"earliest":1,"publications":[{p}]}}}}"#
            )
        );
        let decoded: HistoryResult =
            serde_json::from_str(&serde_json::to_string(&history).unwrap()).unwrap();
        assert_eq!(decoded.publications[0].data.get(), r#"{"x":1}"#);
        let empty: [Stored; 0] = [];
        let subscribe = SubscribeReply {
            channel: "c",
            epoch: "e",
            offset: 0,
            keyed: false,
            recovered: None,
            reason: None,
            publications: RawPublications(&empty),
            snapshot: None,
            n: None,
        };
        assert_eq!(
            serde_json::to_string(&subscribe).unwrap(),
            r#"{"channel":"c","epoch":"e","offset":0,"keyed":false}"#
        );
    }

    #[test]
    fn ping_result_echoes_or_is_empty() {
        assert_eq!(reply_ok(1, &PingResult::default()), r#"{"id":1,"result":{}}"#);
        let ts = RawValue::from_string("1.764e12".into()).unwrap();
        let line = reply_ok(2, &PingResult { timestamp: Some(ts) });
        assert_eq!(line, r#"{"id":2,"result":{"timestamp":1.764e12}}"#);
    }
}
