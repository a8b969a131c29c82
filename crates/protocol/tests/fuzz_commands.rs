//! Fuzzing of the client → server side of the protocol on stable, with proptest: the frame
//! splitter and `Request::parse` for every command.
//!
//! Inputs are valid commands (built field by field as raw JSON text, so that duplicates, huge
//! numbers and lone surrogate escapes can be expressed) mutated by field deletions, type swaps,
//! unknown and foreign fields, deep nesting, unicode, NUL and very long strings, plus byte-level
//! mutations and arbitrary text. Properties: the parser never panics; every error carries a code a
//! command can fail with (107 or 104) and a message; an error keeps the request id when the id
//! was readable; a valid command round-trips; an accepted line re-serializes to a line that parses
//! to the same command.
//!
//! Each property runs a bounded number of cases (`FUZZ_CASES`, default below; the whole file runs
//! in a few seconds in a debug build). Failures proptest finds are saved under
//! `proptest-regressions/` and replayed first on every run; `tests/corpus/commands.txt` holds
//! explicit cases with their expected outcome.

use herald_protocol::command::{Command, HistoryQuery, PublishCommand};
use herald_protocol::{ErrorCode, Op, Position, Request, split_frame};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::value::RawValue;

/// Cases per property unless `FUZZ_CASES` says otherwise (a longer run: `FUZZ_CASES=200000`).
const DEFAULT_CASES: u32 = 3_000;

fn config() -> ProptestConfig {
    let cases =
        std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        // Shrinking a failure must stay bounded too.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// Every field any command takes, with the commands that take it.
const FIELDS: &[&str] = &[
    "id",
    "cmd",
    "channel",
    "token",
    "name",
    "since",
    "snapshot",
    "type",
    "data",
    "key",
    "op",
    "idempotency_key",
    "correlation_id",
    "limit",
    "before",
    "timestamp",
    "view",
    "filter",
    "sub",
    "presence",
    "presence_since",
    "member",
    "info",
    "after",
];

/// The fields each command takes besides `id` and `cmd` (protocol.md §2).
fn takes(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "connect" => &["token", "name"],
        "subscribe" => &[
            "channel",
            "since",
            "snapshot",
            "view",
            "filter",
            "key",
            "sub",
            "presence",
            "presence_since",
            "member",
            "info",
        ],
        "unsubscribe" => &["channel", "sub"],
        "state" | "presence_stats" => &["channel"],
        "presence_update" => &["channel", "info"],
        "presence" => &["channel", "limit", "after"],
        "volatile" => &["channel", "type", "data"],
        "publish" => &["channel", "data", "type", "key", "op", "idempotency_key", "correlation_id"],
        "history" => &["channel", "limit", "since", "before"],
        "refresh" => &["token"],
        "ping" => &["timestamp"],
        _ => &[],
    }
}

// ------------------------------------------------------------------------------------------------
// Generators
// ------------------------------------------------------------------------------------------------
//
// Every generator is boxed: the unboxed strategy types nest so deeply that generating one case
// overflowed the 2 MiB stack of a test thread in a debug build.

/// Strings that stress the parser: ASCII, any unicode (NUL and controls included), long runs.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        16 => "[a-z0-9:_.-]{0,16}",
        12 => any::<String>(),
        4 => Just(String::new()),
        4 => "\\PC{0,8}".prop_map(|s| format!("\0{s}\u{FEFF}\u{10FFFF}")),
        // Past the default 64 KiB frame limit; rare, as every string costs time in debug builds.
        1 => (1usize..70_000, prop::sample::select(&["x", "é", "\"", "\u{1F600}"][..]))
            .prop_map(|(n, c)| c.repeat(n)),
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn json_value() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Raw JSON text that no typed field accepts well: huge or negative numbers, deep nesting, lone
/// surrogates, odd literals.
fn nasty_raw() -> BoxedStrategy<String> {
    prop_oneof![
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("-0".to_string()),
        Just("0.5".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\udc00\ud800""#.to_string()),
        Just(r#""a\u0000b""#.to_string()),
        Just(r#"{"epoch":"\ud83d","offset":1}"#.to_string()),
        (1usize..20_000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        (1usize..5_000).prop_map(|d| format!("{}1{}", r#"{"a":"#.repeat(d), "}".repeat(d))),
        (0usize..50_000).prop_map(|d| "[".repeat(d)),
        Just("{}".to_string()),
        Just("[]".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
    ]
    .boxed()
}

fn raw(v: &serde_json::Value) -> String {
    v.to_string()
}

fn position() -> BoxedStrategy<Position> {
    (text(), any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset }).boxed()
}

fn op() -> BoxedStrategy<Op> {
    prop_oneof![Just(Op::Upsert), Just(Op::Merge), Just(Op::Delete)].boxed()
}

fn raw_json() -> BoxedStrategy<Box<RawValue>> {
    json_value().prop_map(|v| RawValue::from_string(v.to_string()).expect("valid JSON")).boxed()
}

fn timestamp() -> BoxedStrategy<Box<RawValue>> {
    prop_oneof![
        any::<u64>().prop_map(|t| t.to_string()),
        any::<i64>().prop_map(|t| t.to_string()),
        text().prop_map(|s| serde_json::Value::String(s).to_string()),
    ]
    .prop_map(|t| RawValue::from_string(t).expect("valid JSON"))
    .boxed()
}

/// A valid command of every kind.
fn command() -> BoxedStrategy<Command> {
    prop_oneof![
        (prop::option::of(text()), prop::option::of(text()), prop::option::of(1u32..))
            .prop_map(|(token, name, version)| Command::Connect { token, name, version }),
        (text(), prop::option::of(position()), any::<bool>()).prop_map(
            |(channel, since, snapshot)| Command::Subscribe {
                channel,
                since,
                snapshot,
                view: Default::default(),
                presence: Default::default(),
                preview: None,
            }
        ),
        text().prop_map(|channel| Command::Unsubscribe { channel, sub: None }),
        (
            text(),
            prop::option::of(text()),
            raw_json(),
            prop::option::of(text()),
            prop::option::of(op()),
            prop::option::of(text()),
            prop::option::of(text()),
        )
            .prop_map(|(channel, kind, data, key, op, idempotency_key, correlation_id)| {
                Command::Publish(PublishCommand {
                    channel,
                    kind,
                    data,
                    key,
                    op,
                    idempotency_key,
                    correlation_id,
                })
            }),
        prop::option::of(timestamp()).prop_map(|timestamp| Command::Ping { timestamp }),
        text().prop_map(|token| Command::Refresh { token }),
        (
            text(),
            prop::option::of(any::<usize>()),
            prop::option::of(position()),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(channel, limit, since, before)| {
                Command::History(HistoryQuery { channel, limit, since, before })
            }),
        text().prop_map(|channel| Command::State { channel }),
    ]
    .boxed()
}

fn request() -> BoxedStrategy<Request> {
    prop_oneof![
        (any::<u64>(), command()).prop_map(|(id, command)| Request { id: Some(id), command }),
        Just(Request { id: None, command: Command::Pong }),
    ]
    .boxed()
}

/// A command as its object's fields, each `(key, raw JSON value)`, `id` first.
type Fields = Vec<(String, String)>;

fn fields_of(req: &Request) -> Fields {
    // Raw values: a number re-printed through `Value` can lose its last digit.
    let obj: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(&req.to_json()).expect("to_json is an object");
    let mut f: Fields = obj.into_iter().map(|(k, v)| (k, v.get().to_string())).collect();
    f.sort_by_key(|(k, _)| k != "id");
    f
}

fn line_of(fields: &Fields) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.clone())))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// One change to a valid command's fields (never to `id`, which stays first).
#[derive(Debug, Clone)]
enum Mutation {
    /// Delete the field at this index (modulo the count).
    Delete(usize),
    /// Replace the value at this index by another JSON value (often of another type).
    Swap(usize, String),
    /// Add a field no command takes, or one another command takes.
    Add(String, String),
    /// Repeat a field with another value.
    Duplicate(usize, String),
    /// Replace `cmd`.
    Cmd(String),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let value = prop_oneof![json_value().prop_map(|v| raw(&v)), nasty_raw()];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), value.clone()).prop_map(|(i, v)| Mutation::Swap(i, v)),
        (prop_oneof![text(), prop::sample::select(FIELDS).prop_map(str::to_string)], value.clone())
            .prop_map(|(k, v)| Mutation::Add(k, v)),
        (any::<usize>(), value).prop_map(|(i, v)| Mutation::Duplicate(i, v)),
        prop_oneof![
            text(),
            prop::sample::select(&["connect", "PING", "ping ", "pong", "publish", "state"][..])
                .prop_map(str::to_string),
        ]
        .prop_map(Mutation::Cmd),
    ]
    .boxed()
}

fn apply(fields: &mut Fields, m: &Mutation) {
    // Index 0 is `id` (when there is one): mutations leave it alone.
    let first = usize::from(fields.first().is_some_and(|(k, _)| k == "id"));
    let n = fields.len() - first;
    match m {
        Mutation::Delete(i) if n > 0 => {
            fields.remove(first + i % n);
        }
        Mutation::Swap(i, v) if n > 0 => fields[first + i % n].1 = v.clone(),
        Mutation::Add(k, v) if k != "id" => fields.push((k.clone(), v.clone())),
        Mutation::Duplicate(i, v) if n > 0 => {
            let k = fields[first + i % n].0.clone();
            fields.push((k, v.clone()));
        }
        Mutation::Cmd(c) => {
            let c = serde_json::Value::String(c.clone()).to_string();
            match fields.iter_mut().find(|(k, _)| k == "cmd") {
                Some(f) => f.1 = c,
                None => fields.push(("cmd".into(), c)),
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------------

/// What must hold for any input: no panic, a known code and a message on error, and an accepted
/// line re-serializes to one that parses to the same command.
fn check_any(line: &str) -> Result<Request, herald_protocol::ParseError> {
    let parsed = Request::parse(line);
    match &parsed {
        Ok(req) => {
            assert!(req.id.is_some() || matches!(req.command, Command::Pong), "{line:?}");
            let again = req.to_json();
            let back = Request::parse(&again).unwrap_or_else(|e| panic!("{again:?}: {e}"));
            assert_eq!(back.to_json(), again, "an accepted command re-serializes stably");
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownCommand),
                "{line:?}: {e:?}"
            );
            assert!(!e.message.is_empty());
            if e.code == ErrorCode::UnknownCommand {
                assert!(e.message.starts_with("unknown command"), "{e:?}");
            }
        }
    }
    parsed
}

proptest! {
    #![proptest_config(config())]

    /// A valid command round-trips: same line, same command, with its fields in any order.
    #[test]
    fn valid_commands_round_trip(req in request(), order in any::<prop::sample::Index>()) {
        let line = req.to_json();
        let back = check_any(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        prop_assert_eq!(back.id, req.id);
        prop_assert_eq!(back.to_json(), line.clone());
        // Field order does not matter.
        let mut fields = fields_of(&req);
        let k = order.index(fields.len());
        fields.rotate_left(k);
        let back = check_any(&line_of(&fields)).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        prop_assert_eq!(back.to_json(), line);
    }

    /// Mutated valid commands: never a panic, and an error names the id that was readable.
    #[test]
    fn mutated_commands(req in request(), ms in prop::collection::vec(mutation(), 1..4)) {
        let mut fields = fields_of(&req);
        for m in &ms {
            apply(&mut fields, m);
        }
        let line = line_of(&fields);
        if let Err(e) = check_any(&line) {
            prop_assert_eq!(e.id, req.id, "the id is first and valid: {:?} {:?}", line, e);
        }
    }

    /// A field the command does not take is refused by name, never ignored.
    #[test]
    fn unknown_fields_are_refused(
        req in request(),
        key in prop_oneof![text(), prop::sample::select(FIELDS).prop_map(str::to_string)],
        value in json_value(),
    ) {
        let fields = fields_of(&req);
        let cmd: String = serde_json::from_str(&fields.iter().find(|(k, _)| k == "cmd").unwrap().1).unwrap();
        // A field this command takes gets a suffix that makes it unknown.
        let taken = key == "id" || key == "cmd" || takes(&cmd).contains(&key.as_str());
        let key = if taken { format!("{key}_") } else { key };
        let mut fields = fields;
        fields.push((key.clone(), raw(&value)));
        let line = line_of(&fields);
        let e = check_any(&line).expect_err(&line);
        prop_assert_eq!(e.code, ErrorCode::BadRequest);
        prop_assert_eq!(e.id, req.id);
        let named = format!("unknown field {key:?} in {cmd}");
        prop_assert!(e.message.starts_with(&named), "{} in {:?}", e.message, line);
    }

    /// Byte-level mutations of valid lines: no panic.
    #[test]
    fn mutated_bytes(req in request(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)) {
        let mut bytes = req.to_json().into_bytes();
        for (at, byte, kind) in edits {
            match kind {
                0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte; }
                1 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte); }
                _ if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.truncate(i); }
                _ => {}
            }
        }
        let line = String::from_utf8_lossy(&bytes);
        let _ = check_any(&line);
    }

    /// Arbitrary text, and arbitrary JSON values at the top level: no panic; only objects can be
    /// commands.
    #[test]
    fn arbitrary_input(s in any::<String>(), v in json_value(), nasty in nasty_raw()) {
        let _ = check_any(&s);
        let _ = check_any(&nasty);
        let line = raw(&v);
        if !v.is_object() {
            let e = check_any(&line).expect_err(&line);
            prop_assert_eq!(e.message, "a message must be a JSON object");
        } else {
            let _ = check_any(&line);
        }
    }

    /// split_frame returns exactly the messages joined into a frame, whatever separators and
    /// blank lines surround them; and never a line with a newline or outer whitespace.
    #[test]
    fn frames_split_into_their_messages(
        reqs in prop::collection::vec(request(), 0..6),
        seps in prop::collection::vec(prop::sample::select(&["\n", "\n\n", "\r\n", " \n\t", "\n \n"][..]), 6),
        junk in any::<String>(),
    ) {
        let lines: Vec<String> = reqs.iter().map(Request::to_json).collect();
        let mut frame = String::new();
        for (line, sep) in lines.iter().zip(&seps) {
            frame.push_str(line);
            frame.push_str(sep);
        }
        let got: Vec<&str> = split_frame(&frame).collect();
        prop_assert_eq!(got, lines.iter().map(String::as_str).collect::<Vec<_>>());
        for line in split_frame(&junk) {
            prop_assert!(!line.is_empty() && !line.contains('\n'));
            prop_assert_eq!(line, line.trim());
            let _ = check_any(line);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Explicit corpus
// ------------------------------------------------------------------------------------------------

/// Replays `tests/corpus/commands.txt`: each line is `EXPECTED<TAB>MESSAGE`, EXPECTED being `ok`,
/// a code (`107`, `104`) or `107:TEXT` (the message must contain TEXT). `\n` in MESSAGE is not
/// special; `#` starts a comment line.
#[test]
fn corpus() {
    let corpus = include_str!("corpus/commands.txt");
    let mut n = 0;
    for (no, entry) in corpus.lines().enumerate() {
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let (expected, line) =
            entry.split_once('\t').unwrap_or_else(|| panic!("line {}: no tab", no + 1));
        let got = check_any(line);
        match (expected, &got) {
            ("ok", Ok(_)) => {}
            (code, Err(e)) if code != "ok" => {
                let (code, text) = code.split_once(':').unwrap_or((code, ""));
                assert_eq!(e.code.code().to_string(), code, "line {}: {line:?}: {e:?}", no + 1);
                assert!(
                    e.message.contains(text),
                    "line {}: {:?} lacks {text:?}",
                    no + 1,
                    e.message
                );
            }
            _ => panic!("line {}: {line:?}: expected {expected}, got {got:?}", no + 1),
        }
        n += 1;
    }
    assert!(n >= 20, "the corpus was read ({n} cases)");
}

/// Inputs too large for a text file: deep nesting in `data` and huge strings.
#[test]
fn deep_and_long() {
    for depth in [127, 128, 129, 1_000, 100_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let line = format!(r#"{{"id":1,"cmd":"publish","channel":"c","data":{deep}}}"#);
        let _ = check_any(&line);
        let line = format!(r#"{{"id":1,"cmd":"subscribe","channel":{deep}}}"#);
        assert_eq!(check_any(&line).unwrap_err().id, Some(1));
        let open = format!(r#"{{"id":2,"cmd":"ping","timestamp":{}"#, "{\"a\":".repeat(depth));
        assert_eq!(check_any(&open).unwrap_err().id, Some(2));
    }
    let long = "é".repeat(1 << 20);
    let line = format!(r#"{{"id":3,"cmd":"state","channel":"{long}"}}"#);
    assert!(check_any(&line).is_ok());
}
