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

/// Unix milliseconds of a time in Herald's format (`YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC, years
/// 0000 to 9999); `None` for any other text, so that formatting the result always gives the text
/// back. Written by hand: it runs once per publication on the hot path, and a general RFC 3339
/// parser is several times slower.
pub fn time_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to]
            .iter()
            .try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second, milli) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli)
}

/// Herald's time text of Unix milliseconds (`None` outside years 0000 to 9999).
pub fn format_time_ms(ms: i64) -> Option<String> {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (hour, minute, second, milli) =
        (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    Some(format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z"))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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
    /// Borrowed when encoding: the tail is made once per publication, on the hot path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<std::borrow::Cow<'a, Meta>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Extra<'_> {
    #[cfg(test)]
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
    let (head, end) = tail_parts(p);
    let data = p.data.get();
    let mut out = String::with_capacity(head.len() + data.len() + end.len());
    out.push_str(&head);
    out.push_str(data);
    out.push_str(&end);
    out
}

/// The tail around the payload: `,OFFSET,TIME,` before `DATA` and `[,EXTRA]]` after it (so a
/// sender that already holds the payload's bytes need not copy them again).
pub fn tail_parts(p: &Publication) -> (String, String) {
    let mut head = String::with_capacity(40);
    write_tail_head(p, &mut head);
    let mut end = String::new();
    write_tail_end(p, &mut end);
    (head, end)
}

/// Appends the tail's part before `DATA` (`,OFFSET,TIME,`) to `out`.
pub fn write_tail_head(p: &Publication, out: &mut String) {
    TailFields::of(p).write_head(out);
}

/// Appends the tail's part after `DATA` (`[,EXTRA]]`) to `out`: the JSON serde writes for
/// [`Extra`], written by hand, since it runs once per publication (crate::json).
pub fn write_tail_end(p: &Publication, out: &mut String) {
    TailFields::of(p).write_end(out);
}

/// What a compact tail is made of: a publication's fields besides its channel, borrowed from
/// a [`Publication`] ([`TailFields::of`]) or read from its v1 JSON ([`TailFields::parse`])
/// without building one (a hub on Redis receives publications as JSON: building a
/// `Publication` for each was most of the cost of its compact tail, docs/benchmarks.md).
#[derive(Debug, Deserialize)]
pub struct TailFields<'a> {
    /// The offset.
    pub offset: u64,
    /// The acceptance time, v1 text.
    #[serde(borrow)]
    pub time: std::borrow::Cow<'a, str>,
    /// The epoch (to tell whether `id` is the derived `EPOCH-OFFSET`).
    #[serde(borrow)]
    pub epoch: std::borrow::Cow<'a, str>,
    /// The id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// The event type.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// The payload, where it stands in the JSON it was read from.
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// The record key.
    #[serde(default, borrow)]
    pub key: Option<std::borrow::Cow<'a, str>>,
    /// The keyed operation.
    #[serde(default)]
    pub op: Option<Op>,
    /// Publisher metadata.
    #[serde(default)]
    pub meta: std::borrow::Cow<'a, Meta>,
}

impl<'a> TailFields<'a> {
    /// The fields of `p`.
    pub fn of(p: &'a Publication) -> TailFields<'a> {
        use std::borrow::Cow::Borrowed;
        TailFields {
            offset: p.offset,
            time: Borrowed(&p.time),
            epoch: Borrowed(&p.epoch),
            id: Borrowed(&p.id),
            kind: Borrowed(&p.kind),
            data: &p.data,
            key: p.key.as_deref().map(Borrowed),
            op: p.op,
            meta: Borrowed(&p.meta),
        }
    }

    /// The fields of a publication's v1 JSON, strings without escapes and `data` borrowed
    /// from it (other members, `channel` among them, skipped).
    pub fn parse(json: &'a str) -> Result<TailFields<'a>, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Appends the tail's part before `DATA` (`,OFFSET,TIME,`) to `out`.
    pub fn write_head(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push(',');
        out.push_str(digits.format(self.offset));
        out.push(',');
        match time_ms(&self.time) {
            Some(ms) => out.push_str(digits.format(ms)),
            // Not Herald's format (no node writes one): the text itself.
            None => crate::json::push_str(out, &self.time),
        }
        out.push(',');
    }

    /// Appends the tail's part after `DATA` (`[,EXTRA]]`) to `out`.
    pub fn write_end(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        let derived_id = self
            .id
            .strip_prefix(&*self.epoch)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|offset| offset == digits.format(self.offset));
        let kind = (self.kind != "message").then_some(&*self.kind);
        let id = (!derived_id).then_some(&*self.id);
        let meta = !self.meta.is_empty();
        if kind.is_some() || self.key.is_some() || self.op.is_some() || meta || id.is_some() {
            let mut open = ",{";
            let mut field = |out: &mut String, name: &str| {
                out.push_str(open);
                open = ",";
                out.push('"');
                out.push_str(name);
                out.push_str("\":");
            };
            if let Some(kind) = kind {
                field(out, "type");
                crate::json::push_str(out, kind);
            }
            if let Some(key) = &self.key {
                field(out, "key");
                crate::json::push_str(out, key);
            }
            if let Some(op) = self.op {
                field(out, "op");
                crate::json::push_str(out, op.as_str());
            }
            if meta {
                field(out, "meta");
                self.meta.write_json(out);
            }
            if let Some(id) = id {
                field(out, "id");
                crate::json::push_str(out, id);
            }
            out.push('}');
        }
        out.push(']');
    }
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
            meta: extra.meta.map(|m| m.into_owned()).unwrap_or_default(),
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
            truncated: None,
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
            truncated: None,
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
        /// The hand-written time conversion agrees with the `time` crate, both ways.
        #[test]
        fn time_conversion_agrees_with_the_time_crate(ms in -62_167_219_200_000i64..253_402_300_799_999) {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            let text = t.format(&format).unwrap();
            prop_assert_eq!(format_time_ms(ms), Some(text.clone()));
            prop_assert_eq!(time_ms(&text), Some(ms));
        }

        /// Text that is not exactly Herald's format is refused, never misread.
        #[test]
        fn other_time_text_is_refused_or_read_back_exactly(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z|.{0,30}") {
            if let Some(ms) = time_ms(&text) {
                prop_assert_eq!(format_time_ms(ms), Some(text));
            }
        }

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
            // The hand-written extras are what serde writes for them.
            let extra = Extra {
                kind: (p.kind != "message").then_some(p.kind.as_str()),
                key: p.key.as_deref().map(Into::into),
                op: p.op,
                meta: (!p.meta.is_empty()).then_some(std::borrow::Cow::Borrowed(&p.meta)),
                id: None,
            };
            let mut end = String::new();
            write_tail_end(&p, &mut end);
            let expected = if extra.is_empty() {
                "]".to_string()
            } else {
                format!(",{}]", serde_json::to_string(&extra).unwrap())
            };
            prop_assert_eq!(end, expected);
            let frame = format!("[{n}{}", encode_tail(&p));
            let back = Compact::parse(&frame).unwrap();
            prop_assert_eq!(back.n, n);
            prop_assert_eq!(v1(&back.into_publication("room:1", "e1x")), v1(&p));
        }
    }
}
