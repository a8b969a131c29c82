//! An entity's JSON Schema, and the validation of records (upserts, merged results) and merge
//! patches against it.

use crate::ast::Entity;
use serde_json::Value;

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
pub fn json_schema(entity: &Entity) -> Value {
    let _ = entity;
    unimplemented!("helper S")
}

/// Checks a whole record: an object with every non-optional attribute present and of its type,
/// optional ones absent, null or of their type, and no field the entity does not declare.
pub fn validate_record(entity: &Entity, record: &Value) -> Result<(), ValidationError> {
    let _ = (entity, record);
    unimplemented!("helper S")
}

/// Checks a JSON merge patch (RFC 7386) before it is applied: an object whose fields are
/// declared attributes; `null` only for optional ones (null removes the field); nested objects
/// checked as patches of their object type. (The merged result is checked with
/// [`validate_record`] afterwards.)
pub fn validate_patch(entity: &Entity, patch: &Value) -> Result<(), ValidationError> {
    let _ = (entity, patch);
    unimplemented!("helper S")
}
