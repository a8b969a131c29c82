//! Protocol version 2's compact live publication (docs/protocol.md §17).
//!
//! A v1 publication push repeats what the subscriber already knows: the channel, the epoch, the
//! id (`EPOCH-OFFSET`) and the time as text. On a connection that asked for version 2 at
//! `connect`, a live publication is a JSON array instead:
//!
//! ```text
//! [N, OFFSET, TIME_MS, DATA]            or   [N, OFFSET, TIME_MS, DATA, {EXTRA}]
//! ```
//!
//! `N` is the number the subscribe reply gave the subscription (`"n"`), `OFFSET` its offset in
//! the epoch of that reply (an epoch change is always a resubscribe, never a live frame),
//! `TIME_MS` the acceptance time in Unix milliseconds, `DATA` the payload as published, and
//! `EXTRA` the v1 fields that are not at their default: `type` (other than `message`), `key`,
//! `op`, `meta`, and `id` / `time` in the (never produced by the hub) case that they are not
//! derivable. Decoding with the subscription's channel and epoch gives back exactly the v1
//! [`Publication`].
//!
//! The hub encodes the part after `N` once per publication ([`encode_tail`]) and writes
//! `[` + `N` + tail per subscriber.

use crate::publication::{Meta, Op, Publication};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The acceptance time format every Herald node writes (RFC 3339, UTC, milliseconds).
const TIME_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// Unix milliseconds of a time in Herald's format; `None` for any other text.
pub fn time_ms(text: &str) -> Option<i64> {
    let t = time::PrimitiveDateTime::parse(text, TIME_FORMAT).ok()?.assume_utc();
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()?;
    // Only when formatting gives the text back, so decoding is exact.
    (format_time_ms(ms).as_deref() == Some(text)).then_some(ms)
}

/// Herald's time text of Unix milliseconds.
pub fn format_time_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(TIME_FORMAT).ok()
}

/// The v1 fields a compact frame carries only when they are not derivable or not default.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Extra<'a> {
    #[serde(rename = "type", default, borrow, skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Extra<'_> {
    fn is_empty(&self) -> bool {
        self.kind.is_none()
            && self.key.is_none()
            && self.op.is_none()
            && self.meta.is_none()
            && self.id.is_none()
    }
}

/// The part of a compact frame after `[N`: `,OFFSET,TIME,DATA[,EXTRA]]`, the same for every
/// subscriber of the publication.
pub fn encode_tail(p: &Publication) -> String {
    let data = p.data.get();
    let mut out = String::with_capacity(data.len() + 48);
    out.push(',');
    out.push_str(&p.offset.to_string());
    out.push(',');
    match time_ms(&p.time) {
        Some(ms) => out.push_str(&ms.to_string()),
        // Not Herald's format (no node writes one): the text itself.
        None => out.push_str(&serde_json::to_string(&p.time).expect("a string serializes")),
    }
    out.push(',');
    out.push_str(data);
    let expected_id = format!("{}-{}", p.epoch, p.offset);
    let extra = Extra {
        kind: (p.kind != "message").then_some(p.kind.as_str()),
        key: p.key.as_deref().map(Into::into),
        op: p.op,
        meta: (!p.meta.is_empty()).then(|| p.meta.clone()),
        id: (p.id != expected_id).then_some(p.id.as_str()),
    };
    if !extra.is_empty() {
        out.push(',');
        out.push_str(&serde_json::to_string(&extra).expect("extras serialize"));
    }
    out.push(']');
    out
}

/// A compact live publication, decoded up to what needs the subscription: its channel and
/// epoch (see [`Compact::into_publication`]).
#[derive(Debug, Clone)]
pub struct Compact {
    /// The subscription's number (the subscribe reply's `n`).
    pub n: u32,
    /// The offset.
    pub offset: u64,
    /// The acceptance time, as v1 text.
    pub time: String,
    /// The payload.
    pub data: Box<RawValue>,
    /// `type`, when not `message`.
    kind: Option<String>,
    /// The record key.
    key: Option<String>,
    /// The keyed operation.
    op: Option<Op>,
    /// Publisher metadata.
    meta: Meta,
    /// The id, when not `EPOCH-OFFSET`.
    id: Option<String>,
}

impl Compact {
    /// Decodes a compact frame (a JSON array, see the module docs).
    pub fn parse(line: &str) -> Result<Compact, String> {
        #[derive(Deserialize)]
        struct Wire<'a>(
            u32,
            u64,
            #[serde(borrow)] &'a RawValue,
            #[serde(borrow)] &'a RawValue,
            #[serde(default, borrow)] Option<Extra<'a>>,
        );
        let Wire(n, offset, time, data, extra) =
            serde_json::from_str(line).map_err(|e| format!("compact publication: {e}"))?;
        let time = match serde_json::from_str::<serde_json::Value>(time.get()) {
            Ok(serde_json::Value::Number(ms)) => ms
                .as_i64()
                .and_then(format_time_ms)
                .ok_or("compact publication: time out of range")?,
            Ok(serde_json::Value::String(text)) => text,
            _ => return Err("compact publication: time is neither a number nor text".into()),
        };
        let extra = extra.unwrap_or_default();
        Ok(Compact {
            n,
            offset,
            time,
            data: data.to_owned(),
            kind: extra.kind.map(str::to_string),
            key: extra.key.map(|k| k.into_owned()),
            op: extra.op,
            meta: extra.meta.unwrap_or_default(),
            id: extra.id.map(str::to_string),
        })
    }

    /// The v1 publication, with the channel and epoch of the subscription numbered `n`.
    pub fn into_publication(self, channel: &str, epoch: &str) -> Publication {
        Publication {
            channel: channel.to_string(),
            epoch: epoch.to_string(),
            offset: self.offset,
            id: self.id.unwrap_or_else(|| format!("{epoch}-{}", self.offset)),
            kind: self.kind.unwrap_or_else(|| "message".into()),
            data: self.data,
            time: self.time,
            meta: self.meta,
            key: self.key,
            op: self.op,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn publication(
        offset: u64,
        ms: i64,
        kind: &str,
        data: &str,
        key: Option<String>,
        op: Option<Op>,
        meta: Meta,
    ) -> Publication {
        Publication {
            channel: "room:1".into(),
            epoch: "e1x".into(),
            offset,
            id: format!("e1x-{offset}"),
            kind: kind.into(),
            data: RawValue::from_string(data.into()).unwrap(),
            time: format_time_ms(ms).unwrap(),
            meta,
            key,
            op,
        }
    }

    fn v1(p: &Publication) -> String {
        serde_json::to_string(p).unwrap()
    }

    #[test]
    fn a_plain_publication_is_its_payload_plus_a_small_header() {
        let data = format!("{{\"text\":\"{}\"}}", "x".repeat(89));
        assert_eq!(data.len(), 100);
        let p = publication(41, 1_764_633_600_123, "message", &data, None, None, Meta::default());
        let frame = format!("[3{}", encode_tail(&p));
        assert_eq!(frame, format!("[3,41,1764633600123,{data}]"));
        assert!(frame.len() <= data.len() + 24, "{} bytes", frame.len());
        let back = Compact::parse(&frame).unwrap();
        assert_eq!(back.n, 3);
        assert_eq!(v1(&back.into_publication("room:1", "e1x")), v1(&p));
    }

    #[test]
    fn extras_carry_type_key_op_meta_and_an_underivable_id_or_time() {
        let meta = Meta { user: Some("alice".into()), ..Meta::default() };
        let mut p =
            publication(7, 0, "task.moved", "null", Some("t1".into()), Some(Op::Merge), meta);
        p.id = "other".into();
        p.time = "yesterday".into();
        let frame = format!("[1{}", encode_tail(&p));
        assert_eq!(
            frame,
            r#"[1,7,"yesterday",null,{"type":"task.moved","key":"t1","op":"merge","meta":{"user":"alice"},"id":"other"}]"#
        );
        assert_eq!(v1(&Compact::parse(&frame).unwrap().into_publication("room:1", "e1x")), v1(&p));
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bad in
            ["[]", "[1]", "[1,2,3]", "[1,-2,3,4]", "[1,2,true,4]", "[1,2,3,4,5]", "[\"a\",2,3,4]"]
        {
            assert!(Compact::parse(bad).is_err(), "{bad}");
        }
    }

    fn meta() -> impl Strategy<Value = Meta> {
        let s = || proptest::option::of("[a-z\u{e9}\"\\\\ ]{0,8}");
        (s(), s(), s(), s()).prop_map(|(user, source, correlation_id, idempotency_key)| Meta {
            user,
            source,
            correlation_id,
            idempotency_key,
        })
    }

    proptest! {
        /// Decoding v2 gives back exactly the v1 publication (byte for byte).
        #[test]
        fn decoding_v2_gives_back_the_v1_publication(
            offset in 1u64..u64::MAX,
            ms in -62_135_596_800_000i64..253_402_300_799_999,
            kind in prop_oneof![Just("message".to_string()), "[a-z.]{1,12}"],
            data in prop_oneof![
                Just("null".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                "[a-z \u{1F600}\"\\\\]{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                proptest::collection::vec(any::<u32>(), 0..6).prop_map(|v| serde_json::to_string(&v).unwrap()),
            ],
            key in proptest::option::of("[a-z0-9:/\"]{1,10}"),
            op in proptest::option::of(prop_oneof![Just(Op::Upsert), Just(Op::Merge), Just(Op::Delete)]),
            meta in meta(),
            n in any::<u32>(),
        ) {
            let p = publication(offset, ms, &kind, &data, key, op, meta);
            let frame = format!("[{n}{}", encode_tail(&p));
            let back = Compact::parse(&frame).unwrap();
            prop_assert_eq!(back.n, n);
            prop_assert_eq!(v1(&back.into_publication("room:1", "e1x")), v1(&p));
        }
    }
}
