//! JSON Schema of an entity, and the validation of records and merge patches for each kind
//! of type.

use herald_spec::ast::Entity;
use herald_spec::parse_spec;
use herald_spec::schema::{json_schema, validate_patch, validate_record};
use serde_json::{Value, json};

fn entity(attrs: &str) -> Entity {
    let text = format!("app A {{ entity T {{\n{attrs}\n}} }}");
    parse_spec(&text).unwrap().apps.remove(0).entities.remove(0)
}

fn seed() -> Entity {
    entity(
        r#"attr title: string
           attr status: "todo" | "doing" | "done"
           attr assignee: ref User"#,
    )
}

/// The error's field and message, for asserting.
fn record_err(e: &Entity, v: Value) -> (String, String) {
    let err = validate_record(e, &v).expect_err(&v.to_string());
    (err.field, err.message)
}

fn patch_err(e: &Entity, v: Value) -> (String, String) {
    let err = validate_patch(e, &v).expect_err(&v.to_string());
    (err.field, err.message)
}

#[test]
fn seed_entity_schema() {
    let schema = json_schema(&seed());
    assert_eq!(
        schema,
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "T",
            "type": "object",
            "properties": {
                "title": { "type": "string" },
                "status": { "type": "string", "enum": ["todo", "doing", "done"] },
                "assignee": { "type": "string", "x-ref": "User" },
            },
            "required": ["title", "status", "assignee"],
            "additionalProperties": false,
        })
    );
}

#[test]
fn schema_of_optional_arrays_and_objects() {
    let e = entity(
        r#"attr due?: number
           attr tags: ("a" | "b")[]
           attr meta: { colour?: string, done: bool }"#,
    );
    let schema = json_schema(&e);
    assert_eq!(
        schema["properties"]["due"],
        json!({ "anyOf": [{ "type": "number" }, { "type": "null" }] })
    );
    assert_eq!(
        schema["properties"]["tags"],
        json!({ "type": "array", "items": { "type": "string", "enum": ["a", "b"] } })
    );
    assert_eq!(
        schema["properties"]["meta"],
        json!({
            "type": "object",
            "properties": {
                "colour": { "anyOf": [{ "type": "string" }, { "type": "null" }] },
                "done": { "type": "boolean" },
            },
            "required": ["done"],
            "additionalProperties": false,
        })
    );
    assert_eq!(schema["required"], json!(["tags", "meta"]));
}

#[test]
fn seed_records() {
    let e = seed();
    let ok = json!({ "title": "Write", "status": "doing", "assignee": "u7" });
    assert_eq!(validate_record(&e, &ok), Ok(()));
    assert_eq!(
        record_err(&e, json!({ "title": "W", "status": "doen", "assignee": "u7" })),
        ("status".into(), r#"expected one of "todo", "doing", "done", got "doen""#.into())
    );
    assert_eq!(
        record_err(&e, json!({ "title": 3, "status": "todo", "assignee": "u7" })),
        ("title".into(), "expected a string, got 3".into())
    );
    assert_eq!(
        record_err(&e, json!({ "title": "W", "status": "todo", "assignee": 7 })),
        ("assignee".into(), "expected the id of a User (a string), got 7".into())
    );
    assert_eq!(
        record_err(&e, json!({ "title": "W", "status": "todo" })),
        ("assignee".into(), "missing (the attribute is required)".into())
    );
    assert_eq!(
        record_err(&e, json!({ "title": null, "status": "todo", "assignee": "u" })),
        ("title".into(), "expected a string, got null".into())
    );
    let (field, message) =
        record_err(&e, json!({ "title": "W", "status": "todo", "assignee": "u", "x": 1 }));
    assert_eq!(field, "x");
    assert!(message.contains("not a declared attribute"), "{message}");
    assert_eq!(record_err(&e, json!([1])), ("".into(), "expected an object, got an array".into()));
    assert_eq!(record_err(&e, json!("s")), ("".into(), r#"expected an object, got "s""#.into()));
}

#[test]
fn numbers_bools_and_optionals() {
    let e = entity("attr n: number\nattr b: bool\nattr due?: number");
    assert_eq!(validate_record(&e, &json!({ "n": 1.5, "b": false })), Ok(()));
    assert_eq!(validate_record(&e, &json!({ "n": -1, "b": true, "due": null })), Ok(()));
    assert_eq!(validate_record(&e, &json!({ "n": 0, "b": true, "due": 3 })), Ok(()));
    assert_eq!(
        record_err(&e, json!({ "n": "1", "b": true })),
        ("n".into(), r#"expected a number, got "1""#.into())
    );
    assert_eq!(
        record_err(&e, json!({ "n": 1, "b": 1 })),
        ("b".into(), "expected true or false, got 1".into())
    );
    assert_eq!(
        record_err(&e, json!({ "n": 1, "b": true, "due": "soon" })),
        ("due".into(), r#"expected a number, got "soon""#.into())
    );
}

#[test]
fn arrays_and_nested_objects() {
    let e = entity(
        r#"attr tags: string[]
           attr states: ("a" | "b")[]
           attr meta: { colour?: string, size: { w: number } }
           attr items?: { name: string }[]"#,
    );
    let ok = json!({ "tags": [], "states": ["a", "b", "a"], "meta": { "size": { "w": 2 } } });
    assert_eq!(validate_record(&e, &ok), Ok(()));
    let full = json!({
        "tags": ["x", "y"], "states": [], "meta": { "colour": "red", "size": { "w": 2 } },
        "items": [{ "name": "n" }],
    });
    assert_eq!(validate_record(&e, &full), Ok(()));
    let bad = |patch: Value| {
        let mut r = full.clone();
        json_merge(&mut r, &patch);
        record_err(&e, r)
    };
    assert_eq!(
        bad(json!({ "tags": ["x", "y", 3] })),
        ("tags[2]".into(), "expected a string, got 3".into())
    );
    assert_eq!(
        bad(json!({ "tags": "x" })),
        ("tags".into(), r#"expected an array, got "x""#.into())
    );
    assert_eq!(
        bad(json!({ "states": ["a", "c"] })),
        ("states[1]".into(), r#"expected one of "a", "b", got "c""#.into())
    );
    assert_eq!(
        bad(json!({ "meta": { "colour": 1 } })),
        ("meta.colour".into(), "expected a string, got 1".into())
    );
    assert_eq!(
        bad(json!({ "meta": { "size": { "w": null } } })),
        ("meta.size.w".into(), "missing (the attribute is required)".into())
    );
    assert_eq!(
        bad(json!({ "meta": { "size": [] } })),
        ("meta.size".into(), "expected an object, got an array".into())
    );
    let (field, _) = bad(json!({ "meta": { "shade": "x" } }));
    assert_eq!(field, "meta.shade");
    assert_eq!(
        bad(json!({ "items": [{ "name": "a" }, {}] })),
        ("items[1].name".into(), "missing (the attribute is required)".into())
    );
}

#[test]
fn patches() {
    let e = entity(
        r#"attr title: string
           attr status: "todo" | "done"
           attr due?: number
           attr tags: string[]
           attr meta: { colour?: string, size: number }"#,
    );
    assert_eq!(validate_patch(&e, &json!({})), Ok(()));
    assert_eq!(validate_patch(&e, &json!({ "status": "done" })), Ok(()));
    assert_eq!(validate_patch(&e, &json!({ "due": null })), Ok(()));
    assert_eq!(validate_patch(&e, &json!({ "due": 4, "tags": ["a"] })), Ok(()));
    // Nested objects are patched: their required fields may be left out, optional ones nulled.
    assert_eq!(validate_patch(&e, &json!({ "meta": { "colour": null } })), Ok(()));
    assert_eq!(validate_patch(&e, &json!({ "meta": { "colour": "red" } })), Ok(()));
    assert_eq!(
        patch_err(&e, json!({ "title": null })),
        ("title".into(), "is required: null would remove it".into())
    );
    assert_eq!(
        patch_err(&e, json!({ "meta": { "size": null } })),
        ("meta.size".into(), "is required: null would remove it".into())
    );
    assert_eq!(
        patch_err(&e, json!({ "status": "doing" })),
        ("status".into(), r#"expected one of "todo", "done", got "doing""#.into())
    );
    assert_eq!(
        patch_err(&e, json!({ "tags": [1] })),
        ("tags[0]".into(), "expected a string, got 1".into())
    );
    assert_eq!(
        patch_err(&e, json!({ "meta": 3 })),
        ("meta".into(), "expected a merge patch (an object), got 3".into())
    );
    let (field, message) = patch_err(&e, json!({ "colour": "red" }));
    assert_eq!(field, "colour");
    assert!(message.contains("not a declared attribute"), "{message}");
    assert_eq!(
        patch_err(&e, json!(null)),
        ("".into(), "expected a merge patch (an object), got null".into())
    );
}

/// RFC 7386 merge, to build records from a valid one.
fn json_merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
