//! The filter language of views and ad-hoc subscriptions.
//!
//! ```text
//! status != "done" and (assignee == "u7" or priority >= 3) and not archived == true
//! tags.0 == "x"            -- no: paths name object fields only
//! meta.colour in ["red", "blue"]
//! ```
//!
//! Comparisons `== != < <= > >=` and `in [..]` of a field path with a literal (string, number,
//! `true`, `false`, `null`), combined with `and`, `or`, `not` and parentheses (`not` binds
//! tightest, then `and`, then `or`). A path is a field name or dotted names into nested
//! objects.
//!
//! # Evaluation
//!
//! Two-valued and total: every record either matches or not.
//! - `p == lit` is true when the field at `p` exists and equals `lit` (numbers by value:
//!   `1 == 1.0`); `p == null` is true when the field is absent or null.
//! - `p != lit` is exactly `not (p == lit)`.
//! - `< <= > >=` compare numbers with numbers and strings with strings (by Unicode code
//!   points); any other pairing, an absent field or null is false.
//! - `p in [a, b]` is `p == a or p == b`.
//!
//! # Typing
//!
//! [`Filter::check`] types a filter against an entity: an unknown field, a path into a
//! non-object, a literal of the wrong type (a string field compared with a number), an order
//! comparison on a bool, a union value not in the union, or `null` compared with a required
//! field is an error with its column. Without an entity (a keyed namespace with no spec) only
//! the syntax is checked.
//!
//! # Index terms
//!
//! [`Filter::index_term`] finds an equality or `in` term that every matching record satisfies
//! (a top-level conjunct), so the hub can route a write to the few views whose term the old or
//! new record's value hits instead of evaluating every view.

use crate::ast::Entity;
use serde_json::Value;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The expression.
    pub expr: Expr,
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `path OP literal`.
    Compare { path: Path, op: CompareOp, value: Literal },
    /// `path in [literals]`.
    In { path: Path, values: Vec<Literal> },
    /// `a and b`.
    And(Box<Expr>, Box<Expr>),
    /// `a or b`.
    Or(Box<Expr>, Box<Expr>),
    /// `not a`.
    Not(Box<Expr>),
}

/// A field path: `status`, `meta.colour`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<String>);

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `"text"` (JSON string escapes).
    Str(String),
    /// A JSON number.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// A value as the view index keys it: equal values (by filter equality) give equal keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexValue {
    /// A string.
    Str(String),
    /// A number, by the bits of its `f64` value (with `-0.0` as `0.0`).
    Num(u64),
    /// A bool.
    Bool(bool),
}

/// Why a filter is refused: `118 invalid_filter`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    /// 1-based column (in characters) in the filter text.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Filter {
    /// Parses a filter (syntax only).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let _ = text;
        unimplemented!("helper F")
    }

    /// Parses, then (with an entity) type-checks.
    pub fn parse_for(text: &str, entity: Option<&Entity>) -> Result<Filter, FilterError> {
        let f = Filter::parse(text)?;
        if let Some(e) = entity {
            f.check(text, e)?;
        }
        Ok(f)
    }

    /// Type-checks against an entity; `text` is the filter as parsed, for the error column.
    pub fn check(&self, text: &str, entity: &Entity) -> Result<(), FilterError> {
        let _ = (text, entity);
        unimplemented!("helper F")
    }

    /// Whether a record (a JSON object; anything else matches nothing but `p == null` terms
    /// and their negations, as if every field were absent) matches.
    pub fn matches(&self, record: &Value) -> bool {
        let _ = record;
        unimplemented!("helper F")
    }

    /// `self and other`.
    pub fn and(self, other: Filter) -> Filter {
        Filter { expr: Expr::And(Box::new(self.expr), Box::new(other.expr)) }
    }

    /// A term every matching record satisfies: a path and the index values one of which the
    /// record's value at that path must equal. From a top-level conjunct `p == lit` or
    /// `p in [lits]` with no `null` literal; the one with the fewest values when several.
    pub fn index_term(&self) -> Option<(Path, Vec<IndexValue>)> {
        unimplemented!("helper F")
    }
}

impl Path {
    /// The value at this path in `record`, if every step is an object field.
    pub fn get<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        let mut v = record;
        for step in &self.0 {
            v = v.as_object()?.get(step)?;
        }
        Some(v)
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl IndexValue {
    /// The key of a JSON value, when it is a string, number or bool.
    pub fn of(value: &Value) -> Option<IndexValue> {
        match value {
            Value::String(s) => Some(IndexValue::Str(s.clone())),
            Value::Number(n) => n.as_f64().map(IndexValue::num),
            Value::Bool(b) => Some(IndexValue::Bool(*b)),
            _ => None,
        }
    }

    /// The key of a number.
    pub fn num(n: f64) -> IndexValue {
        IndexValue::Num(if n == 0.0 { 0f64.to_bits() } else { n.to_bits() })
    }
}
