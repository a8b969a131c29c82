//! Spec parsing: the seed spec's AST, error positions and messages for malformed specs, and
//! printing then re-parsing random specs.

use herald_spec::ast::{App, At, Attr, Entity, Spec, Subscription, SubscriptionTarget, Type, View};
use herald_spec::parse_spec;
use herald_spec::print::print;
use proptest::prelude::*;

const SEED: &str = r#"app RealtimeKanban {
  entity Task {
    attr title: string
    attr status: "todo" | "doing" | "done"
    attr assignee: ref User
  }

  view ActiveTasks: Task where status != "done"

  // Live subscription to view changes
  subscription TaskUpdates: view ActiveTasks
  subscription TaskDetail: Task by id
}
"#;

fn at(line: usize, column: usize) -> At {
    At { line, column }
}

fn attr(name: &str, ty: Type) -> Attr {
    Attr { name: name.into(), ty, optional: false }
}

#[test]
fn seed_spec_parses_to_its_ast() {
    let spec = parse_spec(SEED).unwrap();
    let expected = Spec {
        apps: vec![App {
            name: "RealtimeKanban".into(),
            entities: vec![Entity {
                name: "Task".into(),
                at: at(2, 3),
                attrs: vec![
                    attr("title", Type::String),
                    attr("status", Type::Union(vec!["todo".into(), "doing".into(), "done".into()])),
                    attr("assignee", Type::Ref("User".into())),
                ],
            }],
            views: vec![View {
                name: "ActiveTasks".into(),
                at: at(8, 3),
                entity: "Task".into(),
                filter: "status != \"done\"".into(),
                filter_at: at(8, 32),
            }],
            subscriptions: vec![
                Subscription {
                    name: "TaskUpdates".into(),
                    at: at(11, 3),
                    target: SubscriptionTarget::View("ActiveTasks".into()),
                },
                Subscription {
                    name: "TaskDetail".into(),
                    at: at(12, 3),
                    target: SubscriptionTarget::ById("Task".into()),
                },
            ],
        }],
    };
    assert_eq!(spec, expected);
    // At takes no part in equality: check the positions one by one.
    let app = &spec.apps[0];
    let pos = |a: At| (a.line, a.column);
    assert_eq!(pos(app.entities[0].at), (2, 3));
    assert_eq!(pos(app.views[0].at), (8, 3));
    assert_eq!(pos(app.views[0].filter_at), (8, 32));
    assert_eq!(pos(app.subscriptions[0].at), (11, 3));
    assert_eq!(pos(app.subscriptions[1].at), (12, 3));
    // The canonical layout of the seed is the seed, less its comment.
    assert_eq!(print(&spec), SEED.replace("\n  // Live subscription to view changes", ""));
}

#[test]
fn every_kind_of_type_parses() {
    let spec = parse_spec(
        r#"app A { entity T {
            attr tags: string[]
            attr states: ("a" | "b\"\n")[]
            attr one: "x"[]
            attr grid: number[][]
            attr meta: { name: string, colour?: string
                         size: { w: number, h: number, }, }
            attr empty: {}
            attr due?: number
            attr done ? : bool
            attr owners: ref User[]
        } }"#,
    )
    .unwrap();
    let attrs = &spec.apps[0].entities[0].attrs;
    let arr = |t: Type| Type::Array(Box::new(t));
    let field = |n: &str, ty: Type, optional: bool| Attr { name: n.into(), ty, optional };
    assert_eq!(
        attrs,
        &vec![
            attr("tags", arr(Type::String)),
            attr("states", arr(Type::Union(vec!["a".into(), "b\"\n".into()]))),
            attr("one", arr(Type::Union(vec!["x".into()]))),
            attr("grid", arr(arr(Type::Number))),
            attr(
                "meta",
                Type::Object(vec![
                    field("name", Type::String, false),
                    field("colour", Type::String, true),
                    field(
                        "size",
                        Type::Object(vec![
                            field("w", Type::Number, false),
                            field("h", Type::Number, false)
                        ]),
                        false
                    ),
                ])
            ),
            attr("empty", Type::Object(vec![])),
            field("due", Type::Number, true),
            field("done", Type::Bool, true),
            attr("owners", arr(Type::Ref("User".into()))),
        ]
    );
}

#[test]
fn filters_run_to_the_end_of_the_line_or_a_comment() {
    let spec = parse_spec(
        "app A {\n  entity T { attr a: string }\n  view V: T where   a == \"x // y\" or a == \"\\\"//\"   // note\n}",
    )
    .unwrap();
    let views = &spec.apps[0].views;
    assert_eq!(views[0].filter, r#"a == "x // y" or a == "\"//""#);
    assert_eq!((views[0].filter_at.line, views[0].filter_at.column), (3, 21));
    // The rest of the line is the filter, a `}` included: that app is then unclosed.
    let err = parse_spec("app A {\n  entity T { attr a: string }\n  view W: T where a == \"b\" }")
        .unwrap_err();
    assert_eq!((err.line, err.column), (3, 29), "{err}");
    assert!(err.message.ends_with("found end of file"), "{err}");
}

#[test]
fn comments_and_free_layout() {
    let spec = parse_spec(
        "// header\napp A // trailing\n{ entity T // c\n { attr a // c\n : string } subscription S : T by id\n}\n// end",
    )
    .unwrap();
    assert_eq!(spec.apps[0].entities[0].attrs, vec![attr("a", Type::String)]);
    assert_eq!(spec.apps[0].subscriptions[0].target, SubscriptionTarget::ById("T".into()));
    let two = parse_spec("app A {}\napp B {}").unwrap();
    assert_eq!(two.apps.len(), 2);
}

/// (spec, line, column, a fragment of the message)
const MALFORMED: &[(&str, usize, usize, &str)] = &[
    ("", 1, 1, "expected `app`, found end of file"),
    ("// only a comment\n", 2, 1, "expected `app`, found end of file"),
    ("application X {}", 1, 1, r#"expected `app`, found "application""#),
    ("app {}", 1, 5, r#"expected an app name, found "{""#),
    ("app 1A {}", 1, 5, r#"expected an app name, found "1A""#),
    ("app A", 1, 6, "expected `{` after the app name, found end of file"),
    ("app A {", 1, 8, "expected `entity`, `view`, `subscription` or `}`, found end of file"),
    ("app A {\n  enitty T {}\n}", 2, 3, r#"found "enitty""#),
    ("app A {} junk", 1, 10, r#"expected `app` or end of file, found "junk""#),
    ("app A {\n  entity view {}\n}", 2, 10, r#"expected an entity name, found the keyword "view""#),
    ("app A { entity T { title: string } }", 1, 20, r#"expected `attr` or `}`, found "title""#),
    ("app A { entity T { attr : string } }", 1, 25, r#"expected an attribute name, found ":""#),
    ("app A { entity T { attr a string } }", 1, 27, r#"expected `:` or `?`, found "string""#),
    ("app A { entity T { attr a?  string } }", 1, 29, r#"expected `:`, found "string""#),
    (
        "app A {\n  entity T {\n    attr title: strng\n  }\n}",
        3,
        17,
        r#"expected a type (string, number, bool, "literal", ref Entity, {...}), found "strng""#,
    ),
    (
        "app A { entity T { attr a: } }",
        1,
        28,
        r#"expected a type (string, number, bool, "literal", ref Entity, {...}), found "}""#,
    ),
    (
        "app A { entity T { attr a: \"x\" | } }",
        1,
        34,
        "expected a string literal after `|`, found \"}\"",
    ),
    (
        "app A { entity T { attr a: \"x\" | 3 } }",
        1,
        34,
        "expected a string literal after `|`, found \"3\"",
    ),
    ("app A { entity T { attr a: \"x\n\" } }", 1, 28, "unterminated string literal"),
    ("app A { entity T { attr a: \"\\q\" } }", 1, 28, "invalid string literal"),
    ("app A { entity T { attr a: \"x\" | \"y\" | \"x\" } }", 1, 40, r#"duplicate union value "x""#),
    ("app A { entity T { attr a: \"x\" | \"y\"[] } }", 1, 28, "needs parentheses"),
    (
        "app A { entity T { attr a: string[ } }",
        1,
        36,
        "expected `]` (an array type is written T[]), found \"}\"",
    ),
    ("app A { entity T { attr a: (string } }", 1, 36, "expected `)`, found \"}\""),
    (
        "app A { entity T { attr a: ref } }",
        1,
        32,
        "expected an entity name after `ref`, found \"}\"",
    ),
    (
        "app A { entity T { attr a: { x: string y: number } } }",
        1,
        40,
        "expected `,`, a line break or `}` after the field, found \"y\"",
    ),
    (
        "app A { entity T { attr a: { x: string, , } } }",
        1,
        41,
        "expected a field name or `}`, found \",\"",
    ),
    (
        "app A { entity T {} view V T where a == 1 }",
        1,
        28,
        "expected `:` after the view name, found \"T\"",
    ),
    (
        "app A { entity T {} view V: T when a == 1 }",
        1,
        31,
        "expected `where` after the view's entity, found \"when\"",
    ),
    (
        "app A {\n  view V: T where\n    a == 1\n}",
        2,
        18,
        "expected a filter expression after `where` (on the same line), found end of line",
    ),
    (
        "app A {\n  view V: T where // nothing\n}",
        2,
        19,
        "expected a filter expression after `where` (on the same line), found a comment",
    ),
    ("app A { view V: T where", 1, 24, "found end of file"),
    (
        "app A { subscription S view V }",
        1,
        24,
        "expected `:` after the subscription name, found \"view\"",
    ),
    ("app A { subscription S: view }", 1, 30, "expected a view name after `view`, found \"}\""),
    (
        "app A { subscription S: T }",
        1,
        27,
        "expected `by id` after the entity (or `view V`), found \"}\"",
    ),
    ("app A { subscription S: T by key }", 1, 30, "expected `id` after `by`, found \"key\""),
    ("app A { subscription S: 3 }", 1, 25, "expected `view V` or `Entity by id`, found \"3\""),
    (
        "app A {\n\tentity T {\n\t\tattr a: number\n\t\tattr b: numbr\n\t}\n}",
        4,
        11,
        "found \"numbr\"",
    ),
    ("app A { entity T { attr a: \"é\" | 1 } }", 1, 34, "found \"1\""),
];

#[test]
fn malformed_specs_report_line_column_and_what_was_expected() {
    assert!(MALFORMED.len() >= 20);
    for (text, line, column, fragment) in MALFORMED {
        let err = parse_spec(text).expect_err(text);
        assert_eq!((err.line, err.column), (*line, *column), "{text:?}: {err}");
        assert!(err.message.contains(fragment), "{text:?}: {err} lacks {fragment:?}");
    }
}

#[test]
fn error_display_is_line_colon_column() {
    let err = parse_spec("app A {\n  entity T {\n    attr title: strng\n  }\n}").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"3:17: expected a type (string, number, bool, "literal", ref Entity, {...}), found "strng""#
    );
}

// ---- printing then parsing random specs ----

fn type_name() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z0-9_]{0,6}"
}

fn attr_name() -> impl Strategy<Value = String> {
    // Filter words (`and`, `in`, ...) are not attribute names a filter could use.
    "[a-z_][a-z0-9_]{0,6}".prop_filter("not a filter word", |s| {
        !["and", "or", "not", "in", "true", "false", "null"].contains(&s.as_str())
    })
}

fn union_values() -> impl Strategy<Value = Vec<String>> {
    // Any text, quotes, backslashes, `//` and control characters included.
    prop::collection::btree_set("(\\PC|[\"\\\\/\n\t\u{1}]){0,6}", 1..4)
        .prop_map(|s| s.into_iter().collect())
        .prop_shuffle()
}

fn ty() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![
        Just(Type::String),
        Just(Type::Number),
        Just(Type::Bool),
        union_values().prop_map(Type::Union),
        type_name().prop_map(Type::Ref),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| Type::Array(Box::new(t))),
            prop::collection::vec(
                (attr_name(), inner, any::<bool>()).prop_map(|(name, ty, optional)| Attr {
                    name,
                    ty,
                    optional
                }),
                0..4
            )
            .prop_map(Type::Object),
        ]
    })
}

fn entity() -> impl Strategy<Value = Entity> {
    (
        type_name(),
        prop::collection::vec(
            (attr_name(), ty(), any::<bool>()).prop_map(|(name, ty, optional)| Attr {
                name,
                ty,
                optional,
            }),
            1..5,
        ),
    )
        .prop_map(|(name, attrs)| Entity { name, at: At::default(), attrs })
}

/// A simple filter over one of the entity's attributes.
fn filter(entity: &Entity) -> impl Strategy<Value = String> + use<> {
    let names: Vec<String> = entity.attrs.iter().map(|a| a.name.clone()).collect();
    (
        prop::sample::select(names),
        prop::sample::select(vec!["==", "!=", "<", ">="]),
        "(\\PC|[\"\\\\/]){0,6}",
        0..4u8,
    )
        .prop_map(|(name, op, s, form)| {
            let lit = serde_json::to_string(&s).unwrap();
            match form {
                0 => format!("{name} {op} {lit}"),
                1 => format!("{name} in [{lit}, \"x\"]"),
                2 => format!("not ({name} == true) and {name} != 3.5"),
                _ => format!("{name} == {lit} or {name} == null"),
            }
        })
}

fn app() -> impl Strategy<Value = App> {
    (type_name(), prop::collection::vec(entity(), 1..4))
        .prop_flat_map(|(name, entities)| {
            let view =
                (prop::sample::select(entities.clone()), type_name()).prop_flat_map(|(e, name)| {
                    filter(&e).prop_map(move |f| View {
                        name: name.clone(),
                        at: At::default(),
                        entity: e.name.clone(),
                        filter: f,
                        filter_at: At::default(),
                    })
                });
            let sub = (
                type_name(),
                prop_oneof![
                    type_name().prop_map(SubscriptionTarget::View),
                    type_name().prop_map(SubscriptionTarget::ById),
                ],
            )
                .prop_map(|(name, target)| Subscription {
                    name,
                    at: At::default(),
                    target,
                });
            (
                Just(name),
                Just(entities),
                prop::collection::vec(view, 0..3),
                prop::collection::vec(sub, 0..3),
            )
        })
        .prop_map(|(name, entities, views, subscriptions)| App {
            name,
            entities,
            views,
            subscriptions,
        })
}

proptest! {
    #[test]
    fn print_then_parse_is_the_identity(apps in prop::collection::vec(app(), 1..3)) {
        let spec = Spec { apps };
        let text = print(&spec);
        prop_assert_eq!(parse_spec(&text), Ok(spec), "{}", text);
    }
}

// ---- putting specs together: Catalog::build ----

use herald_spec::{Catalog, Filter};

fn build(files: &[(&str, &str)]) -> Result<Catalog, herald_spec::ast::CatalogError> {
    let specs: Vec<_> =
        files.iter().map(|(f, t)| (f.to_string(), parse_spec(t).unwrap())).collect();
    Catalog::build(&specs)
}

/// The error's `file:line:column: message`.
fn build_err(files: &[(&str, &str)]) -> String {
    build(files).unwrap_err().to_string()
}

#[test]
fn seed_catalog_resolves_views_and_subscriptions() {
    let c = build(&[("kanban.spec", SEED)]).unwrap();
    assert_eq!(c.entities.keys().collect::<Vec<_>>(), ["Task"]);
    assert_eq!(c.entity_of_namespace("task").unwrap().name, "Task");
    assert_eq!(c.files, ["kanban.spec"]);
    let active = &c.views["ActiveTasks"];
    assert_eq!((active.entity.name.as_str(), active.by_id), ("Task", false));
    assert_eq!(active.filter.as_deref(), Some(&Filter::parse(r#"status != "done""#).unwrap()));
    assert_eq!(active.filter_text.as_deref(), Some(r#"status != "done""#));
    let updates = &c.views["TaskUpdates"];
    assert_eq!(updates.name, "TaskUpdates");
    assert_eq!(updates.entity.name, "Task");
    assert_eq!(updates.filter, active.filter);
    assert!(!updates.by_id);
    let detail = &c.views["TaskDetail"];
    assert!(detail.by_id && detail.filter.is_none() && detail.filter_text.is_none());
    assert_eq!(detail.entity.name, "Task");
    assert_eq!(c.views.len(), 3);
}

const USERS: &str =
    "app Users {\n  entity User { attr name: string }\n  view Named: User where name != \"\"\n}";

#[test]
fn catalog_spans_files() {
    let c = build(&[("kanban.spec", SEED), ("users.spec", USERS)]).unwrap();
    assert_eq!(c.entities.len(), 2);
    assert_eq!(c.views.len(), 4);
    // A view in one file may read an entity of another, a subscription a view of another.
    let cross =
        "app X {\n  view Mine: Task where assignee == \"u1\"\n  subscription S: view Named\n}";
    let c = build(&[("kanban.spec", SEED), ("users.spec", USERS), ("x.spec", cross)]).unwrap();
    assert_eq!(c.views["S"].entity.name, "User");
    assert_eq!(c.views["Mine"].entity.name, "Task");
}

#[test]
fn catalog_errors_name_their_place() {
    let dup_file = "app B {\n  entity Other {}\n  view ActiveTasks: Other where x == 1\n}";
    assert_eq!(
        build_err(&[("kanban.spec", SEED), ("b.spec", dup_file)]),
        "b.spec:3:3: view `ActiveTasks` is already declared: view at kanban.spec:8:3"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  entity T {}\n  subscription T: T by id\n}")]),
        "a.spec:3:3: subscription `T` is already declared: entity at a.spec:2:3"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  entity Task {}\n}\napp B {\n  entity TASK {}\n}")]),
        "a.spec:5:3: entity `TASK` maps to namespace `task`, as does entity `Task` at a.spec:2:3"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  entity T { attr a: string attr a: number }\n}")]),
        "a.spec:2:3: entity `T` declares the attribute `a` twice"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  entity T { attr m: { x: string, x: bool }[] }\n}")]),
        "a.spec:2:3: entity `T` declares the attribute `m.x` twice"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  view V: Tsk where a == 1\n}")]),
        "a.spec:2:3: view `V` reads entity `Tsk`, which no spec declares"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  subscription S: view Nope\n}")]),
        "a.spec:2:3: subscription `S` names view `Nope`, but no spec declares a view `Nope`"
    );
    assert_eq!(
        build_err(&[("k.spec", SEED), ("a.spec", "app A {\n  subscription S: view Task\n}")]),
        "a.spec:2:3: subscription `S` names view `Task`, but `Task` is an entity, not a view"
    );
    assert_eq!(
        build_err(&[
            ("k.spec", SEED),
            ("a.spec", "app A {\n  subscription S: ActiveTasks by id\n}")
        ]),
        "a.spec:2:3: subscription `S` names `ActiveTasks by id`, but `ActiveTasks` is a view, not an entity"
    );
    assert_eq!(
        build_err(&[("a.spec", "app A {\n  subscription S: User by id\n}")]),
        "a.spec:2:3: subscription `S` names `User by id`, but no spec declares an entity `User`"
    );
}

#[test]
fn filter_errors_point_into_the_file() {
    let e = parse_spec(SEED).unwrap().apps[0].entities[0].clone();
    for filter in [r#"status == "nope""#, r#"title == "a" and colour == "red""#, "title == "] {
        let text = format!(
            "app A {{\n  entity Task {{ attr title: string attr status: \"todo\" | \"doing\" | \"done\" attr assignee: ref User }}\n    view Bad:  Task   where   {filter}\n}}"
        );
        // The spec keeps the filter trimmed.
        let fe = Filter::parse_for(filter.trim(), Some(&e)).expect_err(filter);
        let err = build(&[("a.spec", &text)]).unwrap_err();
        assert_eq!(err.file, "a.spec");
        assert_eq!(err.line, 3);
        // `where` ends at column 27; the filter starts three spaces on, at 31.
        assert_eq!(err.column, 31 + fe.column - 1, "{err}");
        assert!(err.message.contains(&fe.message), "{err}");
        assert!(err.message.contains("view `Bad`"), "{err}");
    }
}
