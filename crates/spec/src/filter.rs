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
//! The column is the path's for an unknown field or a path into a non-object, the literal's
//! for a literal that does not fit (each one of an `in` list), and the operator's for an order
//! comparison on a bool or with `null`. Arrays, and objects named as a whole, compare only
//! with `== null` / `!= null`; `null` is allowed when the attribute, or an object on the way
//! to it, is optional.
//!
//! # Syntax details
//!
//! Literals are JSON (string escapes including `\uXXXX` surrogate pairs; numbers with sign,
//! fraction and exponent). Keywords (`and or not in true false null`) are lower case and are
//! not field names. Whitespace may stand between any two tokens. A filter has at most
//! [`MAX_COMPARISONS`] comparisons and [`MAX_NESTING`] nested parentheses and `not`s, which
//! bounds the recursion of parsing, evaluation, printing and dropping. `Display` prints the
//! canonical text, which parses back to an equal filter.
//!
//! # Index terms
//!
//! [`Filter::index_term`] finds an equality or `in` term that every matching record satisfies
//! (a top-level conjunct), so the hub can route a write to the few views whose term the old or
//! new record's value hits instead of evaluating every view.

use crate::ast::{Attr, Entity, Type};
use serde_json::Value;
use winnow::ascii::{digit0, digit1, multispace0};
use winnow::combinator::{alt, opt};
use winnow::error::{ErrMode, ParserError};
use winnow::prelude::*;
use winnow::stream::{LocatingSlice, Location, Stream};
use winnow::token::{any, one_of, take_while};

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

/// At most this many comparisons in one filter: evaluation, printing and dropping recurse
/// along `and`/`or` chains, so a bound on their length bounds the stack a filter can need.
pub const MAX_COMPARISONS: usize = 1024;

/// At most this many nested parentheses and `not`s, for the same reason (parsing recurses).
pub const MAX_NESTING: usize = 32;

impl Filter {
    /// Parses a filter (syntax only).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        parse_spanned(text).map(|(expr, _)| Filter { expr })
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
    ///
    /// The columns come from parsing `text` again (the AST keeps no positions, so that equal
    /// filters compare equal); when `text` is not this filter's text, errors say column 1.
    pub fn check(&self, text: &str, entity: &Entity) -> Result<(), FilterError> {
        let spans = match parse_spanned(text) {
            Ok((expr, spans)) if expr == self.expr => Some(spans),
            _ => None,
        };
        let mut cx = CheckCx { text, entity, spans: spans.as_deref(), leaf: 0 };
        cx.expr(&self.expr)
    }

    /// Whether a record (a JSON object; anything else matches nothing but `p == null` terms
    /// and their negations, as if every field were absent) matches.
    pub fn matches(&self, record: &Value) -> bool {
        self.expr.matches(record)
    }

    /// `self and other`.
    pub fn and(self, other: Filter) -> Filter {
        Filter { expr: Expr::And(Box::new(self.expr), Box::new(other.expr)) }
    }

    /// A term every matching record satisfies: a path and the index values one of which the
    /// record's value at that path must equal. From a top-level conjunct `p == lit` or
    /// `p in [lits]` with no `null` literal; the one with the fewest values when several.
    pub fn index_term(&self) -> Option<(Path, Vec<IndexValue>)> {
        let mut best: Option<(&Path, Vec<IndexValue>)> = None;
        let mut stack = vec![&self.expr];
        // Depth-first, left to right, so that ties go to the conjunct written first.
        while let Some(e) = stack.pop() {
            let term = match e {
                Expr::And(a, b) => {
                    stack.push(b);
                    stack.push(a);
                    continue;
                }
                Expr::Compare { path, op: CompareOp::Eq, value } => {
                    IndexValue::of_literal(value).map(|v| (path, vec![v]))
                }
                Expr::In { path, values } => {
                    let mut keys: Vec<IndexValue> = Vec::with_capacity(values.len());
                    let mut all = !values.is_empty();
                    for v in values {
                        match IndexValue::of_literal(v) {
                            Some(k) if !keys.contains(&k) => keys.push(k),
                            Some(_) => {}
                            None => all = false,
                        }
                    }
                    all.then_some((path, keys))
                }
                _ => None,
            };
            if let Some(t) = term
                && best.as_ref().is_none_or(|b| t.1.len() < b.1.len())
            {
                best = Some(t);
            }
        }
        best.map(|(p, v)| (p.clone(), v))
    }
}

impl Expr {
    /// Evaluates this expression against a record (see the module doc); allocates nothing.
    pub fn matches(&self, record: &Value) -> bool {
        match self {
            Expr::Compare { path, op, value } => {
                let v = path.get(record);
                match op {
                    CompareOp::Eq => value.equals(v),
                    CompareOp::Ne => !value.equals(v),
                    CompareOp::Lt => value.order(v).is_some_and(|o| o.is_lt()),
                    CompareOp::Le => value.order(v).is_some_and(|o| o.is_le()),
                    CompareOp::Gt => value.order(v).is_some_and(|o| o.is_gt()),
                    CompareOp::Ge => value.order(v).is_some_and(|o| o.is_ge()),
                }
            }
            Expr::In { path, values } => {
                let v = path.get(record);
                values.iter().any(|l| l.equals(v))
            }
            Expr::And(a, b) => a.matches(record) && b.matches(record),
            Expr::Or(a, b) => a.matches(record) || b.matches(record),
            Expr::Not(a) => !a.matches(record),
        }
    }
}

impl Literal {
    /// `field == self`, for the field's value (`None`: absent).
    fn equals(&self, field: Option<&Value>) -> bool {
        match (self, field) {
            (Literal::Null, None | Some(Value::Null)) => true,
            (Literal::Str(s), Some(Value::String(v))) => s == v,
            (Literal::Num(n), Some(Value::Number(v))) => v.as_f64() == Some(*n),
            (Literal::Bool(b), Some(Value::Bool(v))) => b == v,
            _ => false,
        }
    }

    /// How the field's value orders against this literal (`field.cmp(self)`): numbers with
    /// numbers, strings with strings; `None` for any other pairing.
    fn order(&self, field: Option<&Value>) -> Option<std::cmp::Ordering> {
        match (self, field?) {
            // UTF-8 byte order is code point order.
            (Literal::Str(s), Value::String(v)) => Some(v.as_str().cmp(s.as_str())),
            (Literal::Num(n), Value::Number(v)) => v.as_f64()?.partial_cmp(n),
            _ => None,
        }
    }

    /// How error messages name this literal: `number 3`, `string "x"`, `true`, `null`.
    fn describe(&self) -> String {
        match self {
            Literal::Str(s) => format!("string {}", Json(s)),
            Literal::Num(_) => format!("number {self}"),
            Literal::Bool(_) | Literal::Null => self.to_string(),
        }
    }
}

/// A string printed as a JSON string literal.
struct Json<'a>(&'a str);

impl std::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Serializing a str cannot fail.
        f.write_str(&serde_json::to_string(self.0).unwrap_or_default())
    }
}

impl std::fmt::Display for Literal {
    /// Filter syntax: a JSON string, a JSON number (`3`, `1.5`, `1e300`), `true`, `false`,
    /// `null`. Every finite number prints as text that parses back to the same `f64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{}", Json(s)),
            // Integers without `.0`; otherwise Debug, the shortest text that round-trips
            // (with an exponent for very large or small magnitudes).
            Literal::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{}", n),
            Literal::Num(n) => write!(f, "{:?}", n),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

impl std::fmt::Display for CompareOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        })
    }
}

impl std::fmt::Display for Filter {
    /// Canonical filter text: single spaces, parentheses only where precedence needs them
    /// (`and`/`or` chains are left-associative), so it parses back to an equal filter.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_expr(f, &self.expr, Prec::Or)
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_expr(f, self, Prec::Or)
    }
}

/// Binding strength of the context an expression is printed in.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Prec {
    Or,
    And,
    Unary,
}

fn write_expr(f: &mut std::fmt::Formatter<'_>, e: &Expr, ctx: Prec) -> std::fmt::Result {
    let (own, l, r, kw) = match e {
        Expr::Compare { path, op, value } => return write!(f, "{path} {op} {value}"),
        Expr::In { path, values } => {
            write!(f, "{path} in [")?;
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v}")?;
            }
            return f.write_str("]");
        }
        Expr::Not(a) => {
            f.write_str("not ")?;
            return write_expr(f, a, Prec::Unary);
        }
        Expr::Or(a, b) => (Prec::Or, a, b, " or "),
        Expr::And(a, b) => (Prec::And, a, b, " and "),
    };
    let paren = ctx > own;
    if paren {
        f.write_str("(")?;
    }
    // Left-associative: the left operand may be the same operator bare, the right may not.
    let tighter = if own == Prec::Or { Prec::And } else { Prec::Unary };
    write_expr(f, l, own)?;
    f.write_str(kw)?;
    write_expr(f, r, tighter)?;
    if paren {
        f.write_str(")")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Byte offsets of one comparison's parts in the filter text, in the order the comparisons
/// are written (which is the pre-order of the tree).
#[derive(Debug, Clone)]
struct LeafSpan {
    path: usize,
    op: usize,
    values: Vec<usize>,
}

type In<'a> = LocatingSlice<&'a str>;
type PResult<T> = ModalResult<T, PErr>;

/// A parse error at a byte offset. An empty message is a primitive's mismatch, which the
/// grammar functions turn into a message before it can reach the caller.
#[derive(Debug)]
struct PErr {
    offset: usize,
    message: String,
}

impl<'a> ParserError<In<'a>> for PErr {
    type Inner = Self;

    fn from_input(input: &In<'a>) -> Self {
        PErr { offset: input.current_token_start(), message: String::new() }
    }

    fn into_inner(self) -> Result<Self, Self> {
        Ok(self)
    }
}

/// Parser state: nesting depth and the comparisons' spans.
struct ParseCx {
    depth: usize,
    leaves: Vec<LeafSpan>,
}

fn fail<T>(offset: usize, message: String) -> PResult<T> {
    Err(ErrMode::Cut(PErr { offset, message }))
}

const KEYWORDS: [&str; 7] = ["and", "or", "not", "in", "true", "false", "null"];

fn parse_spanned(text: &str) -> Result<(Expr, Vec<LeafSpan>), FilterError> {
    let to_error = |e: PErr| FilterError {
        column: text[..e.offset.min(text.len())].chars().count() + 1,
        message: if e.message.is_empty() { "syntax error".into() } else { e.message },
    };
    if text.trim().is_empty() {
        return Err(FilterError { column: 1, message: "empty filter".into() });
    }
    let mut i = LocatingSlice::new(text);
    let mut cx = ParseCx { depth: 0, leaves: Vec::new() };
    let run = |i: &mut In<'_>, cx: &mut ParseCx| -> PResult<Expr> {
        let e = or_expr(i, cx)?;
        ws(i)?;
        if !i.is_empty() {
            let at = i.current_token_start();
            return fail(
                at,
                format!("expected \"and\", \"or\" or end of input, found {}", found(i)),
            );
        }
        Ok(e)
    };
    match run(&mut i, &mut cx) {
        Ok(e) => Ok((e, cx.leaves)),
        Err(e) => Err(to_error(
            e.into_inner().unwrap_or_else(|_| PErr { offset: 0, message: String::new() }),
        )),
    }
}

fn ws(i: &mut In<'_>) -> PResult<()> {
    multispace0.void().parse_next(i)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, keywords included.
fn word<'a>(i: &mut In<'a>) -> PResult<&'a str> {
    (
        one_of(|c: char| c.is_ascii_alphabetic() || c == '_'),
        take_while(0.., |c: char| c.is_ascii_alphanumeric() || c == '_'),
    )
        .take()
        .parse_next(i)
}

/// Consumes the keyword `kw` if it is the next word.
fn keyword(i: &mut In<'_>, kw: &str) -> bool {
    let cp = i.checkpoint();
    match word(i) {
        Ok(w) if w == kw => true,
        _ => {
            i.reset(&cp);
            false
        }
    }
}

/// The next token, as error messages name it.
fn found(i: &In<'_>) -> String {
    let rest: &str = i;
    let Some(c) = rest.chars().next() else {
        return "end of input".into();
    };
    let run = |f: fn(char) -> bool| -> &str {
        let n = rest.char_indices().find(|&(_, c)| !f(c)).map_or(rest.len(), |(n, _)| n);
        &rest[..n]
    };
    let tok = if c == '"' {
        return "a string".into();
    } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
        run(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
    } else if matches!(c, '=' | '!' | '<' | '>') {
        let n = rest.char_indices().take_while(|&(_, c)| matches!(c, '=' | '!' | '<' | '>'));
        &rest[..n.take(2).map(|(n, c)| n + c.len_utf8()).last().unwrap_or(0)]
    } else {
        &rest[..c.len_utf8()]
    };
    format!("{tok:?}")
}

fn or_expr(i: &mut In<'_>, cx: &mut ParseCx) -> PResult<Expr> {
    let mut e = and_expr(i, cx)?;
    loop {
        ws(i)?;
        if !keyword(i, "or") {
            return Ok(e);
        }
        let r = and_expr(i, cx)?;
        e = Expr::Or(Box::new(e), Box::new(r));
    }
}

fn and_expr(i: &mut In<'_>, cx: &mut ParseCx) -> PResult<Expr> {
    let mut e = unary(i, cx)?;
    loop {
        ws(i)?;
        if !keyword(i, "and") {
            return Ok(e);
        }
        let r = unary(i, cx)?;
        e = Expr::And(Box::new(e), Box::new(r));
    }
}

fn unary(i: &mut In<'_>, cx: &mut ParseCx) -> PResult<Expr> {
    ws(i)?;
    let start = i.current_token_start();
    let open = opt('(').parse_next(i)?.is_some();
    let not = !open && keyword(i, "not");
    if !open && !not {
        return comparison(i, cx);
    }
    if cx.depth >= MAX_NESTING {
        return fail(
            start,
            format!("nested too deeply (at most {MAX_NESTING} parentheses and nots)"),
        );
    }
    cx.depth += 1;
    let e = if open {
        let e = or_expr(i, cx)?;
        ws(i)?;
        if opt(')').parse_next(i)?.is_none() {
            let at = i.current_token_start();
            return fail(at, format!("expected \"and\", \"or\" or \")\", found {}", found(i)));
        }
        e
    } else {
        Expr::Not(Box::new(unary(i, cx)?))
    };
    cx.depth -= 1;
    Ok(e)
}

fn comparison(i: &mut In<'_>, cx: &mut ParseCx) -> PResult<Expr> {
    let path_at = i.current_token_start();
    let path = path(i)?;
    if cx.leaves.len() >= MAX_COMPARISONS {
        return fail(path_at, format!("too many comparisons (at most {MAX_COMPARISONS})"));
    }
    ws(i)?;
    let op_at = i.current_token_start();
    let op = opt(alt((
        "==".value(CompareOp::Eq),
        "!=".value(CompareOp::Ne),
        "<=".value(CompareOp::Le),
        ">=".value(CompareOp::Ge),
        "<".value(CompareOp::Lt),
        ">".value(CompareOp::Gt),
    )))
    .parse_next(i)?;
    if let Some(op) = op {
        ws(i)?;
        let at = i.current_token_start();
        let value = literal(i, &format!("after {op}"))?;
        cx.leaves.push(LeafSpan { path: path_at, op: op_at, values: vec![at] });
        return Ok(Expr::Compare { path, op, value });
    }
    if !keyword(i, "in") {
        return fail(
            op_at,
            format!(
                "expected a comparison operator (==, !=, <, <=, >, >=, in), found {}",
                found(i)
            ),
        );
    }
    ws(i)?;
    if opt('[').parse_next(i)?.is_none() {
        let at = i.current_token_start();
        return fail(at, format!("expected \"[\" after in, found {}", found(i)));
    }
    let mut values = Vec::new();
    let mut spans = Vec::new();
    ws(i)?;
    if (*i).starts_with(']') {
        let at = i.current_token_start();
        return fail(at, "expected a value in the list, found \"]\" (the list is empty)".into());
    }
    let mut context = "in the list";
    loop {
        ws(i)?;
        spans.push(i.current_token_start());
        values.push(literal(i, context)?);
        ws(i)?;
        let at = i.current_token_start();
        match opt(one_of([',', ']'])).parse_next(i)? {
            Some(',') => context = "after \",\"",
            Some(_) => break,
            None => return fail(at, format!("expected \",\" or \"]\", found {}", found(i))),
        }
    }
    cx.leaves.push(LeafSpan { path: path_at, op: op_at, values: spans });
    Ok(Expr::In { path, values })
}

fn path(i: &mut In<'_>) -> PResult<Path> {
    let mut steps = Vec::new();
    let mut expected = "expected a field name, \"not\" or \"(\"";
    loop {
        let at = i.current_token_start();
        let cp = i.checkpoint();
        match word(i) {
            Ok(w) if !KEYWORDS.contains(&w) => steps.push(w.to_owned()),
            _ => {
                i.reset(&cp);
                return fail(at, format!("{expected}, found {}", found(i)));
            }
        }
        let cp = i.checkpoint();
        ws(i)?;
        if opt('.').parse_next(i)?.is_none() {
            i.reset(&cp);
            return Ok(Path(steps));
        }
        ws(i)?;
        expected = "expected a field name after \".\"";
    }
}

/// A literal; `context` completes "expected a value ..." when there is none.
fn literal(i: &mut In<'_>, context: &str) -> PResult<Literal> {
    let at = i.current_token_start();
    let rest: &str = i;
    match rest.chars().next() {
        Some('"') => string(i).map(Literal::Str),
        Some(c) if c == '-' || c.is_ascii_digit() => number(i).map(Literal::Num),
        _ => {
            let cp = i.checkpoint();
            match word(i) {
                Ok("true") => Ok(Literal::Bool(true)),
                Ok("false") => Ok(Literal::Bool(false)),
                Ok("null") => Ok(Literal::Null),
                w => {
                    i.reset(&cp);
                    let hint =
                        if w.is_ok() { " (strings are written in double quotes)" } else { "" };
                    fail(at, format!("expected a value {context}, found {}{hint}", found(i)))
                }
            }
        }
    }
}

/// A JSON number.
fn number(i: &mut In<'_>) -> PResult<f64> {
    let at = i.current_token_start();
    let cp = i.checkpoint();
    let text = opt((
        opt('-'),
        alt(("0", (one_of('1'..='9'), digit0).take())),
        opt(('.', digit1)),
        opt((one_of(['e', 'E']), opt(one_of(['+', '-'])), digit1)),
    )
        .take())
    .parse_next(i)?;
    let next_ok = !(*i).starts_with(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
    match text {
        Some(t) if next_ok => match t.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => fail(at, format!("number out of range: {t}")),
        },
        _ => {
            i.reset(&cp);
            fail(at, format!("invalid number {}", found(i)))
        }
    }
}

/// A JSON string, escapes decoded.
fn string(i: &mut In<'_>) -> PResult<String> {
    let open = i.current_token_start();
    '"'.parse_next(i)?;
    let mut out = String::new();
    loop {
        let plain: &str =
            take_while(0.., |c: char| c != '"' && c != '\\' && c >= ' ').parse_next(i)?;
        out.push_str(plain);
        let at = i.current_token_start();
        match opt(any).parse_next(i)? {
            None => return fail(open, "unterminated string".into()),
            Some('"') => return Ok(out),
            Some('\\') => out.push(escape(i, at)?),
            Some(c) => {
                return fail(
                    at,
                    format!("control character {c:?} in a string (write it as an escape)"),
                );
            }
        }
    }
}

/// The character of an escape whose backslash (at `at`) is consumed.
fn escape(i: &mut In<'_>, at: usize) -> PResult<char> {
    let c = match opt(any).parse_next(i)? {
        Some('"') => '"',
        Some('\\') => '\\',
        Some('/') => '/',
        Some('b') => '\u{8}',
        Some('f') => '\u{c}',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('u') => {
            let hi = hex4(i, at)?;
            if !(0xD800..0xE000).contains(&hi) {
                return Ok(char::from_u32(hi).unwrap_or('\u{fffd}'));
            }
            let low = if hi < 0xDC00 && opt("\\u").parse_next(i)?.is_some() {
                Some(hex4(i, at)?)
            } else {
                None
            };
            return match low {
                Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    Ok(char::from_u32(c).unwrap_or('\u{fffd}'))
                }
                _ => fail(at, "invalid \\u escape: unpaired surrogate".into()),
            };
        }
        None => return fail(at, "unterminated string".into()),
        Some(c) => return fail(at, format!("invalid escape \"\\{c}\" in a string")),
    };
    Ok(c)
}

fn hex4(i: &mut In<'_>, at: usize) -> PResult<u32> {
    match opt(take_while(4, |c: char| c.is_ascii_hexdigit())).parse_next(i)? {
        Some(h) => Ok(u32::from_str_radix(h, 16).unwrap_or(0)),
        None => fail(at, "invalid \\u escape: expected 4 hex digits".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Typing

/// What [`Filter::check`] walks with: the spans of the comparisons, in pre-order.
struct CheckCx<'a> {
    text: &'a str,
    entity: &'a Entity,
    spans: Option<&'a [LeafSpan]>,
    leaf: usize,
}

/// The type a path leads to, and whether a null there is possible.
struct Resolved<'a> {
    ty: &'a Type,
    optional: bool,
}

impl<'a> CheckCx<'a> {
    fn expr(&mut self, e: &Expr) -> Result<(), FilterError> {
        match e {
            Expr::And(a, b) | Expr::Or(a, b) => {
                self.expr(a)?;
                self.expr(b)
            }
            Expr::Not(a) => self.expr(a),
            Expr::Compare { path, op, value } => {
                let span = self.next_span();
                let r = self.resolve(path, span.map(|s| s.path))?;
                let at = |k: fn(&LeafSpan) -> usize| span.map(k);
                self.literal(path, &r, *op, value, at(|s| s.op), at(|s| s.values[0]))
            }
            Expr::In { path, values } => {
                let span = self.next_span();
                let r = self.resolve(path, span.map(|s| s.path))?;
                for (n, v) in values.iter().enumerate() {
                    let at = span.and_then(|s| s.values.get(n).copied());
                    self.literal(path, &r, CompareOp::Eq, v, None, at)?;
                }
                Ok(())
            }
        }
    }

    fn next_span(&mut self) -> Option<&'a LeafSpan> {
        let s = self.spans.and_then(|s| s.get(self.leaf));
        self.leaf += 1;
        s
    }

    fn error(&self, offset: Option<usize>, message: String) -> FilterError {
        let column = offset.map_or(1, |o| self.text[..o.min(self.text.len())].chars().count() + 1);
        FilterError { column, message }
    }

    fn resolve(&self, path: &Path, at: Option<usize>) -> Result<Resolved<'a>, FilterError> {
        let mut attrs: &'a [Attr] = &self.entity.attrs;
        let mut r: Option<Resolved<'a>> = None;
        for (n, step) in path.0.iter().enumerate() {
            if let Some(prev) = &r {
                let Type::Object(inner) = prev.ty else {
                    let so_far = path.0[..n].join(".");
                    return Err(self.error(
                        at,
                        format!(
                            "{} is {}, not an object: it has no field {}",
                            Json(&so_far),
                            type_name(prev.ty),
                            Json(step)
                        ),
                    ));
                };
                attrs = inner;
            }
            let Some(attr) = attrs.iter().find(|a| &a.name == step) else {
                let owner = if n == 0 {
                    self.entity.name.clone()
                } else {
                    Json(&path.0[..n].join(".")).to_string()
                };
                return Err(self.error(at, format!("{owner} has no field {}", Json(step))));
            };
            let optional = r.is_some_and(|p| p.optional) || attr.optional;
            r = Some(Resolved { ty: &attr.ty, optional });
        }
        r.ok_or_else(|| self.error(at, "empty field path".into()))
    }

    fn literal(
        &self,
        path: &Path,
        r: &Resolved<'_>,
        op: CompareOp,
        value: &Literal,
        op_at: Option<usize>,
        at: Option<usize>,
    ) -> Result<(), FilterError> {
        let name = Json(&path.to_string()).to_string();
        let order = !matches!(op, CompareOp::Eq | CompareOp::Ne);
        if *value == Literal::Null {
            if order {
                return Err(
                    self.error(op_at, format!("null compares only with == and !=, not {op}"))
                );
            }
            if !r.optional {
                return Err(self.error(
                    at,
                    format!("{name} is required, so it is never null (null compares only with optional fields)"),
                ));
            }
            return Ok(());
        }
        let wrong = |expected: &str| {
            Err(self
                .error(at, format!("expected {expected} for {name}, found {}", value.describe())))
        };
        match (r.ty, value) {
            (Type::Array(_) | Type::Object(_), _) => Err(self.error(
                at,
                format!(
                    "{name} is {}: it compares only with == null and != null{}",
                    type_name(r.ty),
                    if matches!(r.ty, Type::Object(_)) {
                        " (name its fields with dotted paths)"
                    } else {
                        ""
                    }
                ),
            )),
            (Type::Bool, Literal::Bool(_)) if order => Err(self.error(
                op_at,
                format!("{name} is a bool: it compares only with == and !=, not {op}"),
            )),
            (Type::String | Type::Ref(_), Literal::Str(_))
            | (Type::Number, Literal::Num(_))
            | (Type::Bool, Literal::Bool(_)) => Ok(()),
            (Type::Union(members), Literal::Str(s)) => {
                if members.contains(s) {
                    Ok(())
                } else {
                    Err(self.error(
                        at,
                        format!(
                            "{} is not one of {} (the values of {name})",
                            Json(s),
                            union_text(members)
                        ),
                    ))
                }
            }
            (Type::String, _) => wrong("a string"),
            (Type::Ref(e), _) => wrong(&format!("a string (the id of a {e})")),
            (Type::Number, _) => wrong("a number"),
            (Type::Bool, _) => wrong("true or false"),
            (Type::Union(members), _) => wrong(&format!("one of {}", union_text(members))),
        }
    }
}

fn union_text(members: &[String]) -> String {
    members.iter().map(|m| Json(m).to_string()).collect::<Vec<_>>().join(" | ")
}

/// How error messages name a type: `a string`, `an array`.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::String => "a string".into(),
        Type::Number => "a number".into(),
        Type::Bool => "a bool".into(),
        Type::Union(m) => format!("one of {}", union_text(m)),
        Type::Ref(e) => format!("a ref {e}"),
        Type::Array(_) => "an array".into(),
        Type::Object(_) => "an object".into(),
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

    /// The key of a literal, when it is a string, number or bool (not `null`).
    pub fn of_literal(value: &Literal) -> Option<IndexValue> {
        match value {
            Literal::Str(s) => Some(IndexValue::Str(s.clone())),
            Literal::Num(n) => Some(IndexValue::num(*n)),
            Literal::Bool(b) => Some(IndexValue::Bool(*b)),
            Literal::Null => None,
        }
    }

    /// The key of a number.
    pub fn num(n: f64) -> IndexValue {
        IndexValue::Num(if n == 0.0 { 0f64.to_bits() } else { n.to_bits() })
    }
}
