//! `POST /api/publish`, `POST /api/publish/batch` and `POST /api/broadcast`.
//!
//! A publish object is read by hand ([`Item`]) in one pass over the body, its fields borrowed
//! from it: a batch used to be split into items and then parsed item by item (every byte
//! scanned twice, a copy of each field), about a sixth of the hub's instructions per batched
//! event (docs/benchmarks.md). An item whose fields are wrong (unknown, mistyped, duplicated,
//! no `data`) is that item's 107 while the rest is read on; only text that is not JSON refuses
//! the whole body.

use super::{ApiError, bad_body};
use crate::config::EngineKind;
use crate::engine::PublishInput;
use crate::hash::FastMap;
use crate::hub::Hub;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::command::{decode_field, plain_string};
use herald_protocol::reply::{ErrorBody, PublishResult};
use herald_protocol::{ErrorCode, Meta, Op};
use parking_lot::Mutex;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// A publish object (`/api/publish`, a batch item; `/api/broadcast` has `channels` instead of
/// `channel`), its strings borrowed from the body where they have no escapes.
struct PublishBody<'a> {
    /// The channel (`/api/publish`, batch items).
    channel: Option<Cow<'a, str>>,
    /// The channels (`/api/broadcast`).
    channels: Option<Vec<String>>,
    /// Event type; `message` when absent.
    kind: Option<Cow<'a, str>>,
    /// The payload as it stands in the body.
    data: &'a RawValue,
    /// Record key (keyed namespaces).
    key: Option<Cow<'a, str>>,
    /// Record operation.
    op: Option<Op>,
    /// Deduplication key.
    idempotency_key: Option<Cow<'a, str>>,
    /// Carried through to subscribers.
    correlation_id: Option<Cow<'a, str>>,
    /// Who published; `api` when absent.
    source: Option<Cow<'a, str>>,
    /// On whose behalf.
    user: Option<Cow<'a, str>>,
}

/// A publish object as read: its fields, or what is wrong with them (a 107 for it alone).
enum Item<'a> {
    Body(PublishBody<'a>),
    Bad(String),
}

/// The fields of a publish object, in bit order.
#[derive(Clone, Copy)]
enum Field {
    Channel,
    Channels,
    Type,
    Data,
    Key,
    Op,
    IdempotencyKey,
    CorrelationId,
    Source,
    User,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "channel" => Field::Channel,
            "data" => Field::Data,
            "type" => Field::Type,
            "channels" => Field::Channels,
            "key" => Field::Key,
            "op" => Field::Op,
            "idempotency_key" => Field::IdempotencyKey,
            "correlation_id" => Field::CorrelationId,
            "source" => Field::Source,
            "user" => Field::User,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Field::Channel => "channel",
            Field::Channels => "channels",
            Field::Type => "type",
            Field::Data => "data",
            Field::Key => "key",
            Field::Op => "op",
            Field::IdempotencyKey => "idempotency_key",
            Field::CorrelationId => "correlation_id",
            Field::Source => "source",
            Field::User => "user",
        }
    }
}

/// One object key: a [`Field`] or another name (kept to name it in the error).
enum Key {
    Known(Field),
    Unknown(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
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

/// A string field: borrowed when it has no escapes; `null` is absent.
fn text<'a>(raw: &'a RawValue, f: Field) -> Result<Option<Cow<'a, str>>, String> {
    match plain_string(raw) {
        Some(s) => Ok(Some(Cow::Borrowed(s))),
        None => Ok(decode_field::<String>(raw, f.name())?.map(Cow::Owned)),
    }
}

const NOT_AN_OBJECT: &str = "a publish item must be a JSON object";

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item<'de>, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a publish object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
        let (mut channel, mut channels, mut kind, mut key, mut op) = (None, None, None, None, None);
        let (mut idempotency_key, mut correlation_id, mut source, mut user) =
            (None, None, None, None);
        let mut data = None;
        // The first fault; the object is read to its end regardless, so that the next item
        // starts where it should.
        let mut bad: Option<String> = None;
        let mut seen = 0u16;
        while let Some(name) = map.next_key::<Key>()? {
            let f = match name {
                Key::Known(f) => f,
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    bad.get_or_insert_with(|| format!("unknown field `{name}`"));
                    continue;
                }
            };
            let raw: &'de RawValue = map.next_value()?;
            if seen & (1 << f as u16) != 0 {
                bad.get_or_insert_with(|| format!("duplicate field `{}`", f.name()));
                continue;
            }
            seen |= 1 << f as u16;
            let read = match f {
                Field::Channel => text(raw, f).map(|v| channel = v),
                Field::Channels => decode_field(raw, f.name()).map(|v| channels = v),
                Field::Type => text(raw, f).map(|v| kind = v),
                Field::Data => {
                    data = Some(raw);
                    Ok(())
                }
                Field::Key => text(raw, f).map(|v| key = v),
                Field::Op => decode_field(raw, f.name()).map(|v| op = v),
                Field::IdempotencyKey => text(raw, f).map(|v| idempotency_key = v),
                Field::CorrelationId => text(raw, f).map(|v| correlation_id = v),
                Field::Source => text(raw, f).map(|v| source = v),
                Field::User => text(raw, f).map(|v| user = v),
            };
            if let Err(e) = read {
                bad.get_or_insert(e);
            }
        }
        Ok(match (bad, data) {
            (Some(bad), _) => Item::Bad(bad),
            (None, None) => Item::Bad("missing field `data`".into()),
            (None, Some(data)) => Item::Body(PublishBody {
                channel,
                channels,
                kind,
                data,
                key,
                op,
                idempotency_key,
                correlation_id,
                source,
                user,
            }),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_str<E>(self, _: &str) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }

    fn visit_unit<E>(self) -> Result<Item<'de>, E> {
        Ok(Item::Bad(NOT_AN_OBJECT.into()))
    }
}

impl PublishBody<'_> {
    /// The publication to make on `channel`, the body's own strings copied (broadcast).
    fn input(&self, channel: &str) -> PublishInput {
        let copy = |s: &Option<Cow<'_, str>>| s.as_deref().map(str::to_owned);
        PublishInput {
            channel: channel.to_owned(),
            kind: self.kind.as_deref().unwrap_or("message").to_owned(),
            data: self.data.to_owned(),
            key: copy(&self.key),
            op: self.op,
            meta: Meta {
                user: copy(&self.user),
                source: Some(self.source.as_deref().unwrap_or("api").to_owned()),
                correlation_id: copy(&self.correlation_id),
                idempotency_key: copy(&self.idempotency_key),
            },
        }
    }

    /// The publication this object asks for (`/api/publish`, a batch item).
    fn into_input(self) -> Result<PublishInput, ErrorBody> {
        let own = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
        let channel = self
            .channel
            .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "missing field `channel`"))?;
        Ok(PublishInput {
            channel: channel.into_owned(),
            kind: self.kind.map_or_else(|| "message".to_owned(), Cow::into_owned),
            data: self.data.to_owned(),
            key: own(self.key),
            op: self.op,
            meta: Meta {
                user: own(self.user),
                source: Some(self.source.map_or_else(|| "api".to_owned(), Cow::into_owned)),
                correlation_id: own(self.correlation_id),
                idempotency_key: own(self.idempotency_key),
            },
        })
    }
}

/// The body as text, checked as UTF-8 in one pass: parsed from a `&str`, serde_json does not
/// check each borrowed field again.
fn utf8(raw: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(raw).map_err(bad_body)
}

/// A single publish object: the body, or its 107.
fn one_body(raw: &[u8]) -> Result<PublishBody<'_>, ApiError> {
    match serde_json::from_str::<Item>(utf8(raw)?) {
        Ok(Item::Body(b)) => Ok(b),
        Ok(Item::Bad(fault)) => Err(bad_body(fault)),
        Err(e) => Err(bad_body(e)),
    }
}

/// A batch item's outcome before publishing: its publication, or its own error.
fn item_input(item: Item<'_>) -> Result<PublishInput, ErrorBody> {
    match item {
        Item::Body(b) => b.into_input(),
        Item::Bad(fault) => Err(bad_body(fault).0),
    }
}

pub(super) async fn publish(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input = one_body(&raw)?.into_input()?;
    let result = hub.publish(input).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], result.to_json())
        .into_response())
}

/// The media type that makes a batch body one JSON object per line.
const NDJSON: &str = "application/x-ndjson";

/// `POST /api/publish/batch`: many `/api/publish` bodies (any channels) in one request, a JSON
/// array or, with `Content-Type: application/x-ndjson`, one object per line. Each channel's
/// items are published one after another in the order given (channels concurrently);
/// each item gets its own result or error, so one bad item does not fail the others. A body
/// that is not an array (or a line that is not JSON) refuses the whole request with 107, more
/// than `limits.max_batch_items` items with 111.
pub(super) async fn publish_batch(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(NDJSON));
    let items = if ndjson { ndjson_items(&raw)? } else { array_items(&raw)? };
    let max = hub.config.limits.max_batch_items;
    if max > 0 && items.len() > max {
        let message =
            format!("batch of {} items is over limits.max_batch_items ({max})", items.len());
        return Err(ErrorBody::new(ErrorCode::MessageTooLarge, message).into());
    }
    let count = items.len();
    let inputs = items.into_iter().map(item_input).collect();
    let results = publish_grouped(&hub, inputs).await;
    // Written as it goes: no intermediate JSON value per result.
    let mut out = String::with_capacity(16 + 160 * count);
    out.push_str("{\"results\":[");
    for (i, result) in results.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match result {
            Ok(r) => r.write_json(&mut out),
            Err(e) => out.push_str(&json!({ "error": e }).to_string()),
        }
    }
    out.push_str("]}");
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out)
        .into_response())
}

/// Channels of one batch published concurrently.
const BATCH_CHANNELS_IN_FLIGHT: usize = 64;

/// Publishes a batch's items: each channel's one after another in the order given, different
/// channels' concurrently, so on the Redis engine their round trips overlap (a batch waits
/// about one round trip per item of its busiest channel, not one per item). Results in item
/// order; an item that is already an error stays one.
async fn publish_grouped(
    hub: &Hub,
    inputs: Vec<Result<PublishInput, ErrorBody>>,
) -> Vec<Result<PublishResult, ErrorBody>> {
    use futures_util::StreamExt;
    // Each channel's items as a chain through `next` from its first item: no list per channel.
    let mut next: Vec<Option<usize>> = vec![None; inputs.len()];
    let mut firsts: Vec<usize> = Vec::new();
    {
        // Per channel, its first and (so far) last item.
        let mut chains: FastMap<&str, (usize, usize)> = FastMap::default();
        for (i, input) in inputs.iter().enumerate() {
            let Ok(input) = input else { continue };
            match chains.get_mut(input.channel.as_str()) {
                Some((_, last)) => {
                    next[*last] = Some(i);
                    *last = i;
                }
                None => {
                    chains.insert(&input.channel, (i, i));
                    firsts.push(i);
                }
            }
        }
    }
    // The chains run concurrently in this one task: each takes its items and leaves its
    // results, never holding a lock across an await (so the locks are never contended).
    let slots: Vec<Mutex<Slot>> = inputs
        .into_iter()
        .map(|input| {
            Mutex::new(match input {
                Ok(input) => Slot::Input(input),
                Err(e) => Slot::Done(Err(e)),
            })
        })
        .collect();
    let slots = &slots;
    let next = &next;
    let chain = |first: usize| async move {
        let mut at = Some(first);
        while let Some(i) = at {
            let taken = std::mem::replace(&mut *slots[i].lock(), Slot::Taken);
            if let Slot::Input(input) = taken {
                let result = hub.publish(input).await;
                *slots[i].lock() = Slot::Done(result);
            }
            at = next[i];
        }
    };
    if hub.config.engine.kind == EngineKind::Memory {
        // In memory a publish never waits: nothing to overlap, and running the chains one
        // after another spares a task per channel.
        for first in firsts {
            chain(first).await;
        }
    } else {
        let chains = firsts.into_iter().map(chain);
        let mut running =
            futures_util::stream::iter(chains).buffer_unordered(BATCH_CHANNELS_IN_FLIGHT);
        while running.next().await.is_some() {}
    }
    slots
        .iter()
        .map(|slot| match std::mem::replace(&mut *slot.lock(), Slot::Taken) {
            Slot::Done(result) => result,
            Slot::Input(_) | Slot::Taken => unreachable!("every item's chain ran to its end"),
        })
        .collect()
}

/// A batch item on its way through [`publish_grouped`].
enum Slot {
    /// Not published yet.
    Input(PublishInput),
    /// Being published.
    Taken,
    /// Its outcome.
    Done(Result<PublishResult, ErrorBody>),
}

/// The items of a JSON-array batch body.
fn array_items(raw: &[u8]) -> Result<Vec<Item<'_>>, ApiError> {
    serde_json::from_str(utf8(raw)?).map_err(|e| {
        let message = format!("batch body must be a JSON array of publish objects: {e}");
        ApiError(ErrorBody::new(ErrorCode::BadRequest, message))
    })
}

/// The items of an NDJSON batch body: one JSON value per line, blank lines skipped.
fn ndjson_items(raw: &[u8]) -> Result<Vec<Item<'_>>, ApiError> {
    let lines = utf8(raw)?.split('\n').enumerate();
    let lines = lines.filter(|(_, line)| !line.bytes().all(|b| b.is_ascii_whitespace()));
    lines
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| {
                let message = format!("NDJSON line {}: {e}", n + 1);
                ApiError(ErrorBody::new(ErrorCode::BadRequest, message))
            })
        })
        .collect()
}

pub(super) async fn broadcast(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b = one_body(&raw)?;
    let mut channels = b
        .channels
        .clone()
        .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "missing field `channels`"))?;
    if channels.is_empty() || channels.len() > 1000 {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "`channels` must list 1 to 1000 channels",
        )
        .into());
    }
    // Each listed channel gets the event once, even if listed twice.
    let mut seen = std::collections::HashSet::new();
    channels.retain(|c| seen.insert(c.clone()));
    let mut results = Vec::with_capacity(channels.len());
    for channel in &channels {
        results.push(match hub.publish(b.input(channel)).await {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => json!({ "channel": channel, "error": e }),
        });
    }
    Ok(axum::Json(json!({ "results": results })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> Result<PublishInput, String> {
        one_body(json.as_bytes()).map_err(|e| e.0.message)?.into_input().map_err(|e| e.message)
    }

    #[test]
    fn fields_are_read_with_escapes_and_defaults() {
        let i = input(r#"{"channel":"a:b\u0041","data":{"x":[1,"]"]},"key":"k","op":"merge"}"#)
            .unwrap();
        assert_eq!(i.channel, "a:bA");
        assert_eq!(i.kind, "message");
        assert_eq!(i.data.get(), r#"{"x":[1,"]"]}"#);
        assert_eq!(i.key.as_deref(), Some("k"));
        assert_eq!(i.op, Some(Op::Merge));
        assert_eq!(i.meta.source.as_deref(), Some("api"));
        let i =
            input(r#"{"channel":"c","data":null,"type":null,"source":"s","user":"u"}"#).unwrap();
        assert_eq!((i.data.get(), i.kind.as_str()), ("null", "message"));
        assert_eq!((i.meta.source.as_deref(), i.meta.user.as_deref()), (Some("s"), Some("u")));
    }

    #[test]
    fn faults_are_named() {
        let fault = |json: &str| input(json).unwrap_err();
        assert!(fault(r#"{"channel":"c"}"#).contains("missing field `data`"));
        assert!(fault(r#"{"data":1}"#).contains("missing field `channel`"));
        assert!(fault(r#"{"channel":"c","data":1,"x":2}"#).contains("unknown field `x`"));
        assert!(fault(r#"{"channel":"c","channel":"d","data":1}"#).contains("duplicate field"));
        assert!(fault(r#"{"channel":5,"data":1}"#).contains("bad field `channel`"));
        assert!(fault(r#"{"channel":"c","data":1,"op":"mix"}"#).contains("bad field `op`"));
        assert!(fault(r#"[1,2]"#).contains(NOT_AN_OBJECT));
        assert!(fault(r#""x""#).contains(NOT_AN_OBJECT));
        assert!(fault(r#"{"channel":"c","data":1"#).starts_with("bad JSON body"));
        assert!(fault(r#"{"channel":"c","data":1} x"#).starts_with("bad JSON body"));
    }

    #[test]
    fn a_bad_item_leaves_the_others_readable() {
        let raw = br#"[{"channel":"a","data":1},{"channel":"b","data":1,"zz":{"k":[1,{"d":2}]}},7,[1,[2]],{"channel":"c","data":[3]}]"#;
        let items = array_items(raw).map_err(|e| e.0.message).unwrap();
        let outcomes: Vec<_> = items
            .into_iter()
            .map(|item| item_input(item).map(|i| i.channel).map_err(|e| e.message))
            .collect();
        assert_eq!(outcomes.len(), 5);
        assert_eq!(outcomes[0].as_deref(), Ok("a"));
        assert!(outcomes[1].as_ref().unwrap_err().contains("unknown field `zz`"));
        assert!(outcomes[2].as_ref().unwrap_err().contains(NOT_AN_OBJECT));
        assert!(outcomes[3].as_ref().unwrap_err().contains(NOT_AN_OBJECT));
        assert_eq!(outcomes[4].as_deref(), Ok("c"));
        assert!(array_items(br#"[{"channel":"a","data":1} {"channel":"b","data":1}]"#).is_err());
        assert!(array_items(br#"{"channel":"a","data":1}"#).is_err());
    }

    /// What the hand reader replaced: serde's derived reader of the same object.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Derived {
        channel: Option<String>,
        channels: Option<Vec<String>>,
        #[serde(rename = "type")]
        kind: Option<String>,
        data: Box<RawValue>,
        key: Option<String>,
        op: Option<Op>,
        idempotency_key: Option<String>,
        correlation_id: Option<String>,
        source: Option<String>,
        user: Option<String>,
    }

    /// Both readers on one text: both refuse it, or both read the same fields.
    fn same_reading(case: &str) -> Result<(), String> {
        let derived: Result<Derived, _> = serde_json::from_str(case);
        let hand = one_body(case.as_bytes());
        match (derived, hand) {
            (Err(_), Err(_)) => Ok(()),
            (Ok(d), Ok(h)) => {
                let same = d.channel.as_deref() == h.channel.as_deref()
                    && d.channels == h.channels
                    && d.kind.as_deref() == h.kind.as_deref()
                    && d.data.get() == h.data.get()
                    && d.key.as_deref() == h.key.as_deref()
                    && d.op == h.op
                    && d.idempotency_key.as_deref() == h.idempotency_key.as_deref()
                    && d.correlation_id.as_deref() == h.correlation_id.as_deref()
                    && d.source.as_deref() == h.source.as_deref()
                    && d.user.as_deref() == h.user.as_deref();
                if same { Ok(()) } else { Err(format!("fields differ: {case}")) }
            }
            (d, h) => Err(format!("derived ok {}, hand ok {}: {case}", d.is_ok(), h.is_ok())),
        }
    }

    proptest::proptest! {
        /// Objects of any of the fields (and unknown ones), any of them repeated, each with a
        /// value of any JSON type, strings with and without escapes.
        #[test]
        fn agrees_with_the_derived_reader_on_any_object(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "channel", "channels", "type", "data", "key", "op", "idempotency_key",
                        "correlation_id", "source", "user", "zz", r"dat\u0061",
                    ]),
                    proptest::sample::select(vec![
                        r#""a:b""#, r#""a\"b""#, r#""\u00e9\n""#, r#""merge""#, r#""upsert""#,
                        "null", "7", "-1.5", "true", r#"["x","y"]"#, "[1]",
                        r#"{"k":[1,{"d":"]"}]}"#, r#""\ud800""#, "[]",
                    ]),
                ),
                0..6,
            ),
            spaces in proptest::bool::ANY,
        ) {
            let sep = if spaces { " , " } else { "," };
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let case = format!("{{{}}}", body.join(sep));
            proptest::prop_assert_eq!(same_reading(&case), Ok(()));
        }
    }

    /// The hand reader agrees with serde's derived one on a few objects, escapes included.
    #[test]
    fn agrees_with_a_derived_reader() {
        let cases = [
            r#"{"channel":"a","data":1}"#,
            r#"{"data":"x","channel":"a\"b","type":"t\n","key":"\u00e9"}"#,
            r#"{"channel":"a","data":1,"idempotency_key":"i","correlation_id":"c"}"#,
            r#"{"channel":"a","data":1,"channels":["x","y"]}"#,
            r#"{"channel":"a","data":1,"user":null,"op":"delete"}"#,
            r#"{"channel":"a","data":1,"nope":1}"#,
            r#"{"channel":"a"}"#,
            r#"{"channel":[],"data":1}"#,
        ];
        for case in cases {
            assert_eq!(same_reading(case), Ok(()));
        }
    }
}
