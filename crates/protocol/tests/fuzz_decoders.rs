//! Fuzzing of the server → client side of the protocol on stable, with proptest: the decoder of
//! server messages (`ServerMessage::parse`, which the Rust client runs on every line), the
//! publication and record decoders, and the `EPOCH:OFFSET` position form.
//!
//! Properties: no panic on arbitrary or mutated input; every message the hub's own builders make
//! (`reply_ok`, `reply_err`, the pushes, a publication frame) decodes back to what was built; a
//! decoded error carries the code that was sent. Bounded like `fuzz_commands.rs` (`FUZZ_CASES`).

use herald_protocol::reply::{self, PUB_PREFIX, PUSH_PING};
use herald_protocol::{CloseCode, ErrorBody, ErrorCode, Meta, Op, Position, Publication, Record};
use herald_protocol::{ServerMessage, split_frame};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::value::RawValue;

const DEFAULT_CASES: u32 = 3_000;

fn config() -> ProptestConfig {
    let cases =
        std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// Generators are boxed (see fuzz_commands.rs: deep strategy types overflow a debug stack).

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        32 => "[a-z0-9:_.-]{0,16}",
        24 => any::<String>(),
        8 => Just(String::new()),
        // Rare: a publication has nine strings, and each long one costs time in a debug build.
        1 => (1usize..20_000).prop_map(|n| "é".repeat(n)),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn raw_json() -> BoxedStrategy<Box<RawValue>> {
    json_value().prop_map(|v| RawValue::from_string(v.to_string()).expect("valid JSON")).boxed()
}

fn publication() -> BoxedStrategy<Publication> {
    let meta = (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(user, source, correlation_id, idempotency_key)| Meta {
            user,
            source,
            correlation_id,
            idempotency_key,
        });
    let op = prop::option::of(prop_oneof![Just(Op::Upsert), Just(Op::Merge), Just(Op::Delete)]);
    (text(), text(), any::<u64>(), text(), raw_json(), text(), meta, prop::option::of(text()), op)
        .prop_map(|(channel, epoch, offset, kind, data, time, meta, key, op)| Publication {
            id: format!("{epoch}-{offset}"),
            channel,
            epoch,
            offset,
            kind,
            data,
            time,
            meta,
            key,
            op,
            truncated: None,
        })
        .boxed()
}

fn error_body() -> BoxedStrategy<ErrorBody> {
    (prop::sample::select(ErrorCode::ALL), text(), prop::option::of(text()))
        .prop_map(|(code, message, channel)| {
            let e = ErrorBody::new(code, message);
            match channel {
                Some(c) => e.with_channel(c),
                None => e,
            }
        })
        .boxed()
}

/// Every kind of line the hub sends, with what it must decode to (checked by `decodes_as`).
#[derive(Debug, Clone)]
enum Sent {
    Ok(u64, serde_json::Value),
    Err(u64, ErrorBody),
    ErrorPush(ErrorBody),
    Pub(Publication),
    Unsubscribe(String, ErrorCode, String, bool),
    Disconnect(CloseCode, String),
    Ping,
}

fn sent() -> BoxedStrategy<Sent> {
    prop_oneof![
        (any::<u64>(), json_value()).prop_map(|(id, v)| Sent::Ok(id, v)),
        (any::<u64>(), error_body()).prop_map(|(id, e)| Sent::Err(id, e)),
        error_body().prop_map(Sent::ErrorPush),
        publication().prop_map(Sent::Pub),
        (text(), prop::sample::select(ErrorCode::ALL), text(), any::<bool>())
            .prop_map(|(c, code, r, again)| Sent::Unsubscribe(c, code, r, again)),
        (prop::sample::select(CloseCode::ALL), text()).prop_map(|(c, r)| Sent::Disconnect(c, r)),
        Just(Sent::Ping),
    ]
    .boxed()
}

fn line_of(s: &Sent) -> String {
    match s {
        Sent::Ok(id, v) => reply::reply_ok(*id, v),
        Sent::Err(id, e) => reply::reply_err(Some(*id), e),
        Sent::ErrorPush(e) => reply::push_error(e),
        Sent::Pub(p) => format!("{PUB_PREFIX}{}}}", serde_json::to_string(p).unwrap()),
        Sent::Unsubscribe(c, code, r, again) => reply::push_unsubscribe(c, *code, r, *again),
        Sent::Disconnect(c, r) => reply::push_disconnect(*c, r),
        Sent::Ping => PUSH_PING.to_string(),
    }
}

fn same_publication(a: &Publication, b: &Publication) {
    assert_eq!(serde_json::to_string(a).unwrap(), serde_json::to_string(b).unwrap());
}

fn decodes_as(sent: &Sent, got: ServerMessage) {
    match (sent, got) {
        (Sent::Ok(id, v), ServerMessage::Reply { id: got, result: Ok(r) }) => {
            assert_eq!(*id, got);
            assert_eq!(r.get(), v.to_string());
        }
        (Sent::Err(id, e), ServerMessage::Reply { id: got, result: Err(g) }) => {
            assert_eq!((*id, e), (got, &g));
            assert_eq!(g.error_code().map(ErrorCode::code), Some(e.code), "a known code");
        }
        (Sent::ErrorPush(e), ServerMessage::Error(g)) => assert_eq!(e, &g),
        (Sent::Pub(p), ServerMessage::Publication(g)) => same_publication(p, &g),
        (
            Sent::Unsubscribe(c, code, r, again),
            ServerMessage::Unsubscribe { channel, code: got, reason, resubscribe, .. },
        ) => assert_eq!((c, code.code(), r, *again), (&channel, got, &reason, resubscribe)),
        (Sent::Disconnect(c, r), ServerMessage::Disconnect { code, reason, reconnect }) => {
            assert_eq!((c.code(), r, c.reconnect()), (code, &reason, reconnect))
        }
        (Sent::Ping, ServerMessage::Ping) => {}
        (sent, got) => panic!("{sent:?} decoded as {got:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    /// What the hub builds, the client decodes unchanged; batched in one frame too.
    #[test]
    fn hub_lines_decode(msgs in prop::collection::vec(sent(), 1..5)) {
        let lines: Vec<String> = msgs.iter().map(line_of).collect();
        let frame = lines.join("\n");
        let split: Vec<&str> = split_frame(&frame).collect();
        prop_assert_eq!(split.len(), msgs.len());
        for (m, line) in msgs.iter().zip(split) {
            let got = ServerMessage::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            decodes_as(m, got);
        }
    }

    /// Mutated hub lines and arbitrary text: the decoder returns, it does not panic.
    #[test]
    fn mutated_lines_do_not_panic(
        m in sent(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        junk in any::<String>(),
    ) {
        let mut bytes = line_of(&m).into_bytes();
        for (at, byte, kind) in edits {
            match kind {
                0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte; }
                1 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte); }
                _ if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.truncate(i); }
                _ => {}
            }
        }
        let _ = ServerMessage::parse(&String::from_utf8_lossy(&bytes));
        let _ = ServerMessage::parse(&junk);
        let _ = serde_json::from_str::<Publication>(&junk);
        let _ = serde_json::from_str::<Record>(&junk);
    }

    /// A publication and a record survive their JSON form; `data`/`value` byte for byte.
    #[test]
    fn publication_and_record_round_trip(p in publication(), key in text(), value in raw_json(), offset in any::<u64>()) {
        let json = serde_json::to_string(&p).unwrap();
        let back: Publication = serde_json::from_str(&json).unwrap();
        same_publication(&p, &back);
        prop_assert_eq!(back.data.get(), p.data.get());
        prop_assert_eq!(back.position(), p.position());
        let r = Record { key, value, offset };
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        prop_assert_eq!((back.key, back.value.get(), back.offset), (r.key, r.value.get(), r.offset));
    }

    /// `EPOCH:OFFSET` round-trips for any epoch (even one with `:`); any text parses or errs.
    #[test]
    fn position_text_form(epoch in text(), offset in any::<u64>(), junk in any::<String>()) {
        let p = Position { epoch, offset };
        prop_assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        let _ = junk.parse::<Position>();
    }
}

/// Hand-picked decoder inputs (kept as a corpus; each must return without panicking, and the
/// error replies must keep their code).
#[test]
fn decoder_corpus() {
    for line in [
        "",
        "[]",
        r#"[1,{"code":103}]"#,
        r#"{"push":"pub"}"#,
        r#"{"push":"pub","pub":{"channel":"c"}}"#,
        r#"{"push":"nope"}"#,
        r#"{"push":7}"#,
        r#"{"id":1}"#,
        r#"{"id":-1,"result":{}}"#,
        r#"{"id":1,"error":{"code":65536,"name":"x","message":"m"}}"#,
        r#"{"push":"unsubscribe","code":99999999}"#,
        r#"{"push":"error"}"#,
        r#"{"push":"disconnect","code":"4001"}"#,
        r#"{"push":"pub","pub":{"channel":"c","epoch":"e","offset":18446744073709551616,"id":"x","type":"t","data":1,"time":"t"}}"#,
        r#"{"push":"pub","pub":{"channel":"\ud800","epoch":"e","offset":1,"id":"x","type":"t","data":1,"time":"t"}}"#,
    ] {
        let _ = ServerMessage::parse(line);
    }
    let e = ServerMessage::parse(r#"{"id":4,"error":{"code":999,"name":"future","message":"m"}}"#);
    match e {
        Ok(ServerMessage::Reply { id: 4, result: Err(b) }) => {
            assert_eq!((b.code, b.error_code()), (999, None), "an unknown code is kept, not mapped")
        }
        other => panic!("{other:?}"),
    }
    let deep = format!(r#"{{"id":1,"result":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert!(ServerMessage::parse(&deep).is_ok(), "a raw result is not recursed into");
    for s in ["", ":", "e:", ":1", "e:-1", "e:18446744073709551616", "a:b:3"] {
        let _ = s.parse::<Position>();
    }
    assert_eq!("a:b:3".parse::<Position>(), Ok(Position { epoch: "a:b".into(), offset: 3 }));
}
