//! The filter language: parse errors and their columns, type errors against an entity,
//! precedence, escapes, and property tests of evaluation against a separately written model,
//! of `Display` round-tripping, and of index-term soundness.

use herald_spec::ast::{At, Attr, Entity, Type};
use herald_spec::filter::{CompareOp, Expr, Filter, FilterError, IndexValue, Literal, Path};
use proptest::prelude::*;
use serde_json::{Value, json};

fn err(text: &str) -> FilterError {
    match Filter::parse(text) {
        Ok(f) => panic!("{text:?} parsed: {f:?}"),
        Err(e) => e,
    }
}

/// Asserts the parse error's column and that its message contains `msg`.
#[track_caller]
fn parse_err(text: &str, column: usize, msg: &str) {
    let e = err(text);
    assert_eq!(e.column, column, "{text:?}: {e}");
    assert!(e.message.contains(msg), "{text:?}: {e:?} lacks {msg:?}");
}

#[test]
fn parse_errors_point_at_the_offending_token() {
    parse_err(
        "status = \"done\"",
        8,
        "expected a comparison operator (==, !=, <, <=, >, >=, in), found \"=\"",
    );
    parse_err("", 1, "empty filter");
    parse_err("   \t", 1, "empty filter");
    parse_err("a == \"abc", 6, "unterminated string");
    parse_err("a ==", 5, "expected a value after ==, found end of input");
    parse_err(
        "a == done",
        6,
        "expected a value after ==, found \"done\" (strings are written in double quotes)",
    );
    parse_err("a == 1 b == 2", 8, "expected \"and\", \"or\" or end of input, found \"b\"");
    parse_err("a == 1)", 7, "expected \"and\", \"or\" or end of input, found \")\"");
    parse_err("(a == 1", 8, "expected \"and\", \"or\" or \")\", found end of input");
    parse_err("a == 1 and", 11, "expected a field name, \"not\" or \"(\", found end of input");
    parse_err("and == 1", 1, "expected a field name, \"not\" or \"(\", found \"and\"");
    parse_err("a in []", 7, "expected a value in the list, found \"]\"");
    parse_err("a in [1,]", 9, "expected a value after \",\", found \"]\"");
    parse_err("a in [1 2]", 9, "expected \",\" or \"]\", found \"2\"");
    parse_err("a in 1", 6, "expected \"[\" after in, found \"1\"");
    parse_err("a. == 1", 4, "expected a field name after \".\", found \"==\"");
    parse_err("a == 01", 6, "invalid number \"01\"");
    parse_err("a == -", 6, "invalid number \"-\"");
    parse_err("a == 1.", 6, "invalid number \"1.\"");
    parse_err("a == 1e999", 6, "number out of range");
    parse_err("a == \"x\\qy\"", 8, "invalid escape \"\\q\"");
    parse_err("a == \"\\u12\"", 7, "expected 4 hex digits");
    parse_err("a == \"\\ud800\"", 7, "unpaired surrogate");
    parse_err("a == \"tab\there\"", 10, "control character");
    parse_err("a == True", 6, "found \"True\"");
    parse_err("a AND b == 1", 3, "found \"AND\"");
    // Columns count characters, not bytes.
    parse_err("a == \"ééé\" x", 12, "found \"x\"");
    parse_err("a\n  ==\n  1 or", 14, "end of input");
}

#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!("{}a == 1{}", "(".repeat(40), ")".repeat(40));
    parse_err(&deep, 33, "nested too deeply");
    let ok = format!("{}a == 1{}", "(".repeat(32), ")".repeat(32));
    Filter::parse(&ok).unwrap();
    let long = vec!["a == 1"; 1025].join(" and ");
    parse_err(&long, 1 + 1024 * "a == 1 and ".len(), "too many comparisons");
    Filter::parse(&vec!["a == 1"; 1024].join(" or ")).unwrap();
}

fn attr(name: &str, ty: Type, optional: bool) -> Attr {
    Attr { name: name.into(), ty, optional }
}

fn task() -> Entity {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Entity {
        name: "Task".into(),
        at: At::default(),
        attrs: vec![
            attr("title", Type::String, false),
            attr("status", Type::Union(strs(&["todo", "doing", "done"])), false),
            attr("priority", Type::Number, false),
            attr("archived", Type::Bool, false),
            attr("assignee", Type::Ref("User".into()), true),
            attr("tags", Type::Array(Box::new(Type::String)), true),
            attr("labels", Type::Array(Box::new(Type::String)), false),
            attr("note", Type::String, true),
            attr(
                "meta",
                Type::Object(vec![
                    attr("colour", Type::String, true),
                    attr("size", Type::Number, false),
                ]),
                false,
            ),
            attr("extra", Type::Object(vec![attr("y", Type::String, false)]), true),
        ],
    }
}

#[track_caller]
fn type_err(text: &str, column: usize, msg: &str) {
    let e = match Filter::parse_for(text, Some(&task())) {
        Ok(_) => panic!("{text:?} type-checked"),
        Err(e) => e,
    };
    assert_eq!(e.column, column, "{text:?}: {e}");
    assert!(e.message.contains(msg), "{text:?}: {e:?} lacks {msg:?}");
}

#[test]
fn type_errors_point_at_the_path_or_the_literal() {
    type_err("titel == \"x\"", 1, "Task has no field \"titel\"");
    type_err("priority > 1 and meta.shade == \"x\"", 18, "\"meta\" has no field \"shade\"");
    type_err("title.x == 1", 1, "\"title\" is a string, not an object");
    type_err("title == 3", 10, "expected a string for \"title\", found number 3");
    type_err("priority >= \"3\"", 13, "expected a number for \"priority\", found string \"3\"");
    type_err("archived == \"yes\"", 13, "expected true or false");
    type_err("archived < true", 10, "\"archived\" is a bool: it compares only with == and !=");
    type_err("status == \"dun\"", 11, "\"dun\" is not one of \"todo\" | \"doing\" | \"done\"");
    type_err("status in [\"todo\", \"dun\"]", 20, "\"dun\" is not one of");
    type_err("status == 1", 11, "expected one of \"todo\" | \"doing\" | \"done\"");
    type_err("title == null", 10, "\"title\" is required");
    type_err("meta.size != null", 14, "\"meta.size\" is required");
    type_err("assignee == 7", 13, "expected a string (the id of a User)");
    type_err("tags == \"x\"", 9, "\"tags\" is an array: it compares only with == null and != null");
    type_err("labels == null", 11, "\"labels\" is required");
    type_err("meta == \"x\"", 9, "\"meta\" is an object");
    type_err("note < null", 6, "null compares only with == and !=");
    type_err("not (title == \"a\" or note in [\"b\", 2])", 36, "expected a string for \"note\"");
    // Columns are characters.
    type_err("title == \"é\" and  nope == 1", 19, "no field \"nope\"");
}

#[test]
fn well_typed_filters_check() {
    for text in [
        "status != \"done\" and (assignee == \"u7\" or priority >= 3) and not archived == true",
        "title < \"m\" and title >= \"\"",
        "note == null or note != null",
        "tags == null and tags != null",
        "assignee in [\"a\", null]",
        "extra.y == null", // optional object on the path
        "extra == null",
        "meta.colour in [\"red\", \"blue\"] and meta.size < 1e3",
        "priority == -1.5e-3",
    ] {
        Filter::parse_for(text, Some(&task())).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    // Without an entity only the syntax is checked.
    Filter::parse_for("whatever.deep == 1", None).unwrap();
}

fn cmp(path: &str, op: CompareOp, value: Literal) -> Expr {
    Expr::Compare { path: Path(path.split('.').map(String::from).collect()), op, value }
}

fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

#[test]
fn precedence_not_then_and_then_or() {
    let (a, b, c) = (
        cmp("a", CompareOp::Eq, Literal::Num(1.0)),
        cmp("b", CompareOp::Eq, Literal::Num(2.0)),
        cmp("c", CompareOp::Eq, Literal::Num(3.0)),
    );
    let f = Filter::parse("a == 1 or b == 2 and c == 3").unwrap();
    assert_eq!(f.expr, Expr::Or(bx(a.clone()), bx(Expr::And(bx(b.clone()), bx(c.clone())))));
    let f = Filter::parse("(a == 1 or b == 2) and c == 3").unwrap();
    assert_eq!(f.expr, Expr::And(bx(Expr::Or(bx(a.clone()), bx(b.clone()))), bx(c.clone())));
    let f = Filter::parse("not a == 1 and b == 2").unwrap();
    assert_eq!(f.expr, Expr::And(bx(Expr::Not(bx(a.clone()))), bx(b.clone())));
    // Left-associative chains.
    let f = Filter::parse("a == 1 or b == 2 or c == 3").unwrap();
    assert_eq!(f.expr, Expr::Or(bx(Expr::Or(bx(a.clone()), bx(b.clone()))), bx(c.clone())));
    // Keywords need a word boundary; whitespace is optional around symbols.
    let f = Filter::parse("notx==1 and(ord>=2)or\n\tin_<\"z\"").unwrap();
    assert_eq!(f.to_string(), "notx == 1 and ord >= 2 or in_ < \"z\"");
    assert_eq!(
        Filter::parse("a.b . c==true").unwrap().expr,
        cmp("a.b.c", CompareOp::Eq, Literal::Bool(true))
    );
}

#[test]
fn string_escapes_decode() {
    let f = Filter::parse(r#"s == "q\"b\\s\/n\nt\tr\rb\bf\fé\u00e9\ud83d\ude00""#).unwrap();
    assert_eq!(
        f.expr,
        cmp("s", CompareOp::Eq, Literal::Str("q\"b\\s/n\nt\tr\rb\u{8}f\u{c}éé😀".into()))
    );
    assert!(f.matches(&json!({"s": "q\"b\\s/n\nt\tr\rb\u{8}f\u{c}éé😀"})));
    let printed = f.to_string();
    assert_eq!(Filter::parse(&printed).unwrap(), f);
}

#[test]
fn evaluation_follows_the_documented_semantics() {
    let m = |text: &str, rec: Value| Filter::parse(text).unwrap().matches(&rec);
    assert!(m("n == 1", json!({"n": 1.0})));
    assert!(m("n == 1.0", json!({"n": 1})));
    assert!(m("n == null", json!({})));
    assert!(m("n == null", json!({"n": null})));
    assert!(!m("n != null", json!({"n": null})));
    assert!(m("n != 1", json!({})));
    assert!(!m("n < 1", json!({})));
    assert!(!m("n >= 1", json!({"n": "2"})));
    assert!(m("s < \"b\"", json!({"s": "a"})));
    assert!(m("s > \"\u{ffff}\"", json!({"s": "😀"})), "code point order");
    assert!(m("m.c in [\"red\", \"blue\"]", json!({"m": {"c": "blue"}})));
    assert!(!m("m.c == \"red\"", json!({"m": "red"})));
    assert!(m("m.c == null", json!([1, 2])));
    assert!(!m("m.c == 1", json!(1)));
}

#[test]
fn index_terms() {
    let term = |t: &str| Filter::parse(t).unwrap().index_term();
    let p = |s: &str| Path(vec![s.to_string()]);
    assert_eq!(term("a != 1"), None);
    assert_eq!(term("a == 1 or b == 2"), None);
    assert_eq!(term("a == null and b in [1, null]"), None);
    assert_eq!(term("not a == 1"), None);
    assert_eq!(
        term("b in [\"x\", \"y\"] and (c == 1 and a == true)"),
        Some((p("c"), vec![IndexValue::num(1.0)]))
    );
    assert_eq!(
        term("b in [1, 1.0, -0, 0]"),
        Some((p("b"), vec![IndexValue::num(1.0), IndexValue::num(0.0)]))
    );
    assert_eq!(term("b == 1 and a == 2"), Some((p("b"), vec![IndexValue::num(1.0)])));
}

#[test]
fn display_is_canonical() {
    for (text, printed) in [
        ("a==1", "a == 1"),
        (
            "(a == 1 or b == 2) and not (c == 3 or d == 4)",
            "(a == 1 or b == 2) and not (c == 3 or d == 4)",
        ),
        ("a == 1 or (b == 2 or c == 3)", "a == 1 or (b == 2 or c == 3)"),
        ("((a == 1) and b == 2)", "a == 1 and b == 2"),
        (
            "not not a.b in [1.50, 2e1, \"x\", null, true]",
            "not not a.b in [1.5, 20, \"x\", null, true]",
        ),
        ("a == 1e300", "a == 1e300"),
    ] {
        let f = Filter::parse(text).unwrap();
        assert_eq!(f.to_string(), printed);
        assert_eq!(Filter::parse(printed).unwrap(), f);
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests against an independent model.

/// A filter as the model sees it: literals are plain JSON values.
#[derive(Debug, Clone)]
enum M {
    Cmp(Vec<String>, &'static str, Lit),
    In(Vec<String>, Vec<Lit>),
    And(Box<M>, Box<M>),
    Or(Box<M>, Box<M>),
    Not(Box<M>),
}

/// A literal and how to spell it.
#[derive(Debug, Clone)]
struct Lit {
    v: Value,
    style: u8,
}

const NAMES: [&str; 4] = ["a", "b", "m", "x"];
const STRS: [&str; 10] = ["", "x", "y", "X", "é", "a\"b", "back\\slash", "tab\t", "😀", "a/b"];
const NUMS: [f64; 8] = [0.0, -0.0, 1.0, 2.0, -1.0, 1.5, -0.25, 1e20];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..=2).prop_map(|n| json!(n)),
        prop::sample::select(NUMS.to_vec()).prop_map(|n| json!(n)),
        prop::sample::select(STRS.to_vec()).prop_map(|s| json!(s)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), inner, 0..4)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
        ]
    })
}

fn record() -> impl Strategy<Value = Value> {
    prop_oneof![
        9 => prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), json_value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        1 => json_value(),
    ]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    let name = || prop::sample::select(NAMES.to_vec()).prop_map(String::from);
    // Short paths mostly, so that records often have a value there.
    prop_oneof![
        4 => prop::collection::vec(name(), 1..=1),
        2 => prop::collection::vec(name(), 2..=2),
        1 => prop::collection::vec(name(), 3..=3),
    ]
}

/// Every subexpression, the whole first.
fn subterms(m: &M) -> Vec<&M> {
    let mut out = vec![m];
    match m {
        M::And(a, b) | M::Or(a, b) => {
            out.extend(subterms(a));
            out.extend(subterms(b));
        }
        M::Not(a) => out.extend(subterms(a)),
        M::Cmp(..) | M::In(..) => {}
    }
    out
}

fn lit() -> impl Strategy<Value = Lit> {
    (scalar(), any::<u8>()).prop_map(|(v, style)| Lit { v, style })
}

fn model() -> impl Strategy<Value = M> {
    let ops = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        3 => (path(), ops, lit()).prop_map(|(p, o, l)| M::Cmp(p, o, l)),
        1 => (path(), prop::collection::vec(lit(), 1..4)).prop_map(|(p, l)| M::In(p, l)),
    ];
    leaf.prop_recursive(4, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| M::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| M::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| M::Not(Box::new(a))),
        ]
    })
}

fn model_get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for step in path {
        match cur {
            Value::Object(m) => cur = m.get(step)?,
            _ => return None,
        }
    }
    Some(cur)
}

fn model_eq(field: Option<&Value>, lit: &Value) -> bool {
    match lit {
        Value::Null => matches!(field, None | Some(Value::Null)),
        Value::Number(l) => matches!(field, Some(Value::Number(f)) if f.as_f64() == l.as_f64()),
        other => field == Some(other),
    }
}

fn model_ord(field: Option<&Value>, lit: &Value) -> Option<std::cmp::Ordering> {
    match (field?, lit) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.chars().cmp(b.chars())),
        _ => None,
    }
}

fn model_eval(m: &M, rec: &Value) -> bool {
    match m {
        M::Cmp(p, op, l) => {
            let f = model_get(rec, p);
            let o = model_ord(f, &l.v);
            match *op {
                "==" => model_eq(f, &l.v),
                "!=" => !model_eq(f, &l.v),
                "<" => o == Some(std::cmp::Ordering::Less),
                "<=" => matches!(o, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
                ">" => o == Some(std::cmp::Ordering::Greater),
                _ => matches!(o, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
            }
        }
        M::In(p, ls) => ls.iter().any(|l| model_eq(model_get(rec, p), &l.v)),
        M::And(a, b) => model_eval(a, rec) && model_eval(b, rec),
        M::Or(a, b) => model_eval(a, rec) || model_eval(b, rec),
        M::Not(a) => !model_eval(a, rec),
    }
}

/// Spells a string in one of several ways: plain JSON, all `\u` escapes, or `\/` and short
/// escapes.
fn render_str(s: &str, style: u8) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match style % 3 {
            0 => {
                let quoted = serde_json::to_string(&c.to_string()).unwrap();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
            1 => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            _ => match c {
                '/' => out.push_str("\\/"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            },
        }
    }
    out.push('"');
    out
}

fn render_lit(l: &Lit) -> String {
    match &l.v {
        Value::String(s) => render_str(s, l.style),
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            match l.style % 4 {
                0 if f.fract() == 0.0 && f.abs() < 1e6 => format!("{}e0", f as i64),
                1 => format!("{f:?}"),
                2 if f.fract() == 0.0 && f != 0.0 && f.abs() < 1e6 => format!("{}0E-1", f as i64),
                _ => n.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Renders fully parenthesized, with whitespace that varies with the literals' styles.
fn render(m: &M) -> String {
    match m {
        M::Cmp(p, op, l) => {
            let sp = if l.style & 8 == 0 { " " } else { "" };
            format!("{}{sp}{op}{sp}{}", p.join("."), render_lit(l))
        }
        M::In(p, ls) => {
            let items: Vec<String> = ls.iter().map(render_lit).collect();
            format!("{} in\n[ {} ]", p.join("."), items.join(" ,\t"))
        }
        M::And(a, b) => format!("({} and {})", render(a), render(b)),
        M::Or(a, b) => format!("( {}\nor {} )", render(a), render(b)),
        M::Not(a) => format!("not({})", render(a)),
    }
}

fn to_literal(v: &Value) -> Literal {
    match v {
        Value::Null => Literal::Null,
        Value::Bool(b) => Literal::Bool(*b),
        Value::Number(n) => Literal::Num(n.as_f64().unwrap()),
        Value::String(s) => Literal::Str(s.clone()),
        _ => unreachable!("literals are scalars"),
    }
}

fn to_expr(m: &M) -> Expr {
    match m {
        M::Cmp(p, op, l) => Expr::Compare {
            path: Path(p.clone()),
            op: match *op {
                "==" => CompareOp::Eq,
                "!=" => CompareOp::Ne,
                "<" => CompareOp::Lt,
                "<=" => CompareOp::Le,
                ">" => CompareOp::Gt,
                _ => CompareOp::Ge,
            },
            value: to_literal(&l.v),
        },
        M::In(p, ls) => Expr::In {
            path: Path(p.clone()),
            values: ls.iter().map(|l| to_literal(&l.v)).collect(),
        },
        M::And(a, b) => Expr::And(Box::new(to_expr(a)), Box::new(to_expr(b))),
        M::Or(a, b) => Expr::Or(Box::new(to_expr(a)), Box::new(to_expr(b))),
        M::Not(a) => Expr::Not(Box::new(to_expr(a))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn matches_agrees_with_the_model(m in model(), recs in prop::collection::vec(record(), 1..6)) {
        let text = render(&m);
        let f = Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&f.expr, &to_expr(&m), "{}", text);
        for rec in &recs {
            prop_assert_eq!(f.matches(rec), model_eval(&m, rec), "{} on {}", text, rec);
            // Every subterm too: a wrong leaf could be masked by the whole.
            for sub in subterms(&m) {
                let g = Filter { expr: to_expr(sub) };
                prop_assert_eq!(g.matches(rec), model_eval(sub, rec), "{} on {}", g, rec);
            }
        }
    }

    #[test]
    fn display_reparses_to_an_equal_filter(m in model()) {
        let f = Filter { expr: to_expr(&m) };
        let printed = f.to_string();
        let back = Filter::parse(&printed).map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
        prop_assert_eq!(&back, &f, "{}", printed);
        prop_assert_eq!(back.to_string(), printed);
    }

    #[test]
    fn index_terms_are_sound(
        m in model(),
        extra in prop::option::of((path(), prop::collection::vec(lit(), 1..4))),
        recs in prop::collection::vec(record(), 1..8),
    ) {
        // Often conjoin an `in` term so that there is an index term to test.
        let mut f = Filter { expr: to_expr(&m) };
        if let Some((p, ls)) = extra {
            f = Filter { expr: to_expr(&M::In(p, ls)) }.and(f);
        }
        let Some((path, keys)) = f.index_term() else { return Ok(()) };
        for rec in &recs {
            if f.matches(rec) {
                let key = path.get(rec).and_then(IndexValue::of);
                prop_assert!(key.as_ref().is_some_and(|k| keys.contains(k)), "{} on {}: {:?}", f, rec, key);
            }
        }
    }

    #[test]
    fn index_terms_are_sound_for_records_built_to_match(
        p in path(), ls in prop::collection::vec(lit(), 1..4), pick in any::<prop::sample::Index>(),
        m in model(), rec in record(),
    ) {
        // Put one of the listed values at the path so that the record often matches.
        let mut rec = rec;
        let v = ls[pick.index(ls.len())].v.clone();
        let mut cur = &mut rec;
        for step in &p {
            if !cur.is_object() { *cur = json!({}); }
            cur = cur.as_object_mut().unwrap().entry(step.clone()).or_insert(Value::Null);
        }
        *cur = v;
        let f = Filter { expr: to_expr(&M::In(p, ls)) }.and(Filter { expr: to_expr(&m) });
        if let Some((path, keys)) = f.index_term() && f.matches(&rec) {
            let key = path.get(&rec).and_then(IndexValue::of);
            prop_assert!(key.as_ref().is_some_and(|k| keys.contains(k)), "{} on {}: {:?}", f, rec, key);
        }
    }
}
