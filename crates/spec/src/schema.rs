//! An entity's JSON Schema, and the validation of records (upserts, merged results) and merge
//! patches against it.

use crate::ast::{Attr, Entity, Type};
use serde_json::{Map, Value, json};

/// Why a record or patch does not fit its entity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the field at fault (`status`, `meta.colour`, `tags[2]`); empty for the
    /// record itself (not an object).
    pub field: String,
    /// What is wrong, for a human (`expected one of "todo", "doing", "done", got "doen"`).
    pub message: String,
}

/// The entity as a JSON Schema (draft 2020-12) object.
///
/// `ref X` is a string with `"x-ref": "X"`; an optional attribute also allows `null`
/// (`anyOf` with `{"type": "null"}`, which works for enums too).
pub fn json_schema(entity: &Entity) -> Value {
    let mut schema = object_schema(&entity.attrs);
    let map = schema.as_object_mut().expect("an object schema");
    let mut out = Map::new();
    out.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    out.insert("title".into(), json!(entity.name));
    out.append(map);
    Value::Object(out)
}

fn object_schema(attrs: &[Attr]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for a in attrs {
        let t = type_schema(&a.ty);
        if a.optional {
            properties.insert(a.name.clone(), json!({ "anyOf": [t, { "type": "null" }] }));
        } else {
            properties.insert(a.name.clone(), t);
            required.push(json!(a.name));
        }
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn type_schema(t: &Type) -> Value {
    match t {
        Type::String => json!({ "type": "string" }),
        Type::Number => json!({ "type": "number" }),
        Type::Bool => json!({ "type": "boolean" }),
        Type::Union(values) => json!({ "type": "string", "enum": values }),
        Type::Ref(e) => json!({ "type": "string", "x-ref": e }),
        Type::Array(inner) => json!({ "type": "array", "items": type_schema(inner) }),
        Type::Object(fields) => object_schema(fields),
    }
}

/// Checks a whole record: an object with every non-optional attribute present and of its type,
/// optional ones absent, null or of their type, and no field the entity does not declare.
pub fn validate_record(entity: &Entity, record: &Value) -> Result<(), ValidationError> {
    check_object(&entity.attrs, record, "", false)
}

/// Checks a JSON merge patch (RFC 7386) before it is applied: an object whose fields are
/// declared attributes; `null` only for optional ones (null removes the field); nested objects
/// checked as patches of their object type. (The merged result is checked with
/// [`validate_record`] afterwards.)
pub fn validate_patch(entity: &Entity, patch: &Value) -> Result<(), ValidationError> {
    check_object(&entity.attrs, patch, "", true)
}

fn error(field: &str, message: String) -> ValidationError {
    ValidationError { field: field.to_string(), message }
}

/// `prefix.name`, or `name` at the top.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// A JSON value as messages show it: scalars as JSON, containers by kind.
fn describe(v: &Value) -> String {
    match v {
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

/// An object's fields against `attrs`: as a whole record, or (`patch`) as a merge patch.
fn check_object(attrs: &[Attr], v: &Value, path: &str, patch: bool) -> Result<(), ValidationError> {
    let Some(obj) = v.as_object() else {
        let what = if patch { "a merge patch (an object)" } else { "an object" };
        return Err(error(path, format!("expected {what}, got {}", describe(v))));
    };
    for a in attrs {
        let field = join(path, &a.name);
        match obj.get(&a.name) {
            None if a.optional || patch => {}
            None => return Err(error(&field, "missing (the attribute is required)".into())),
            Some(Value::Null) if a.optional => {}
            Some(Value::Null) if patch => {
                return Err(error(&field, "is required: null would remove it".into()));
            }
            Some(value) => match (&a.ty, patch) {
                // A merge patch merges into nested objects: their fields are patched too.
                (Type::Object(fields), true) => check_object(fields, value, &field, true)?,
                (t, _) => check_type(t, value, &field)?,
            },
        }
    }
    if let Some(extra) = obj.keys().find(|k| !attrs.iter().any(|a| &a.name == *k)) {
        let known: Vec<&str> = attrs.iter().map(|a| a.name.as_str()).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return Err(error(
            &join(path, extra),
            format!("not a declared attribute (declared: {known})"),
        ));
    }
    Ok(())
}

/// A (non-absent) value against its type.
fn check_type(t: &Type, v: &Value, path: &str) -> Result<(), ValidationError> {
    let mismatch = |what: &str| Err(error(path, format!("expected {what}, got {}", describe(v))));
    match t {
        Type::String if v.is_string() => Ok(()),
        Type::String => mismatch("a string"),
        Type::Number if v.is_number() => Ok(()),
        Type::Number => mismatch("a number"),
        Type::Bool if v.is_boolean() => Ok(()),
        Type::Bool => mismatch("true or false"),
        Type::Union(values) => match v.as_str() {
            Some(s) if values.iter().any(|x| x == s) => Ok(()),
            _ => {
                let list: Vec<String> =
                    values.iter().map(|x| Value::from(x.as_str()).to_string()).collect();
                mismatch(&format!("one of {}", list.join(", ")))
            }
        },
        Type::Ref(_) if v.is_string() => Ok(()),
        Type::Ref(e) => mismatch(&format!("the id of a {e} (a string)")),
        Type::Array(inner) => match v.as_array() {
            Some(items) => {
                for (n, item) in items.iter().enumerate() {
                    check_type(inner, item, &format!("{path}[{n}]"))?;
                }
                Ok(())
            }
            None => mismatch("an array"),
        },
        Type::Object(fields) => check_object(fields, v, path, false),
    }
}
