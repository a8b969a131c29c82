//! Spec text → [`Spec`], with line:column errors (winnow).
//!
//! The grammar, informally (`//` comments and whitespace are free between tokens):
//!
//! ```text
//! spec  := app+
//! app   := "app" NAME "{" (entity | view | subscription)* "}"
//! entity:= "entity" NAME "{" ("attr" IDENT "?"? ":" type)* "}"
//! type  := primary ("[" "]")*
//! primary := "string" | "number" | "bool" | "ref" NAME | STRING ("|" STRING)*
//!          | "(" type ")" | "{" (IDENT "?"? ":" type) separated by "," or line breaks "}"
//! view  := "view" NAME ":" NAME "where" FILTER      (FILTER: the rest of the line)
//! subscription := "subscription" NAME ":" ("view" NAME | NAME "by" "id")
//! ```
//!
//! Errors are cut at the offending token: the first error is the one reported.

use crate::ast::{App, At, Attr, Entity, Spec, Subscription, SubscriptionTarget, Type, View};
use winnow::Parser;
use winnow::combinator::{alt, not, opt, repeat};
use winnow::error::{ErrMode, ParserError};
use winnow::stream::{Stateful, Stream};
use winnow::token::{none_of, one_of, take_till, take_while};

/// Why a spec could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct SpecError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was expected or found.
    pub message: String,
}

/// Parses one spec file.
pub fn parse_spec(text: &str) -> Result<Spec, SpecError> {
    let mut input = Stateful { input: text, state: text };
    match spec.parse_next(&mut input) {
        Ok(s) => Ok(s),
        Err(e) => {
            let (rest, message) = match e {
                ErrMode::Backtrack(e) | ErrMode::Cut(e) => (e.rest, e.message),
                ErrMode::Incomplete(_) => (0, None),
            };
            let offset = text.len() - rest.min(text.len());
            let at = at_offset(text, offset);
            let message = message.unwrap_or_else(|| {
                let mut tail = input;
                tail.input = &text[offset..];
                format!("unexpected {}", found(&tail))
            });
            Err(SpecError { line: at.line, column: at.column, message })
        }
    }
}

/// The parser's input: the remaining text, with the whole text as state (for positions).
type In<'a> = Stateful<&'a str, &'a str>;

/// A parse failure: where (by the length of the input left) and, once cut, the message.
#[derive(Debug)]
struct PErr {
    /// Bytes of input left at the offending token.
    rest: usize,
    /// The message; `None` for winnow's own backtracking errors (never reported as such).
    message: Option<String>,
}

impl<'a> ParserError<In<'a>> for PErr {
    type Inner = Self;

    fn from_input(input: &In<'a>) -> Self {
        PErr { rest: input.input.len(), message: None }
    }

    fn into_inner(self) -> Result<Self, Self> {
        Ok(self)
    }
}

type PResult<T> = Result<T, ErrMode<PErr>>;

/// Names the spec language keeps for itself: no app, entity, view or subscription may use one.
const RESERVED: &[&str] = &[
    "app",
    "entity",
    "attr",
    "view",
    "subscription",
    "where",
    "by",
    "id",
    "ref",
    "string",
    "number",
    "bool",
];

/// 1-based line and column (in characters) of a byte offset.
fn at_offset(text: &str, offset: usize) -> At {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    At { line, column: before[line_start..].chars().count() + 1 }
}

/// Where the next token starts.
fn pos(i: &In) -> At {
    at_offset(i.state, i.state.len() - i.input.len())
}

/// A cut error at the current position.
fn fail<T>(i: &In, message: String) -> PResult<T> {
    Err(ErrMode::Cut(PErr { rest: i.input.len(), message: Some(message) }))
}

/// `expected WHAT, found TOKEN` at the current position.
fn expected<T>(i: &In, what: &str) -> PResult<T> {
    fail(i, format!("expected {what}, found {}", found(i)))
}

/// Describes the token at the current position, for "found ..." in messages.
fn found(i: &In) -> String {
    let s = i.input;
    let Some(c) = s.chars().next() else {
        return "end of file".into();
    };
    if s.starts_with("//") {
        return "a comment".into();
    }
    if c == '\n' || c == '\r' {
        return "end of line".into();
    }
    let word_len = |pred: fn(char) -> bool| s.find(|c: char| !pred(c)).unwrap_or(s.len());
    if c.is_alphanumeric() || c == '_' {
        let word = &s[..word_len(|c| c.is_alphanumeric() || c == '_' || c == '.')];
        return format!("\"{word}\"");
    }
    if c == '"' {
        let line = s.lines().next().unwrap_or(s);
        let mut escaped = false;
        for (n, ch) in line.char_indices().skip(1) {
            match ch {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return format!("the string {}", &line[..=n]),
                _ => escaped = false,
            }
        }
        return "an unterminated string".into();
    }
    if c == '\\' {
        return format!("\"\\{c}\"");
    }
    format!("\"{c}\"")
}

/// Skips whitespace and `//` comments; true when a line break was among them.
fn ws(i: &mut In) -> PResult<bool> {
    let mut line_break = false;
    loop {
        take_while(0.., |c: char| c.is_whitespace() && c != '\n').parse_next(i)?;
        if opt('\n').parse_next(i)?.is_some() {
            line_break = true;
        } else if opt(("//", take_till(0.., '\n'))).parse_next(i)?.is_some() {
            // the comment's line break is taken on the next turn
        } else {
            return Ok(line_break);
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn ident<'a>(i: &mut In<'a>) -> PResult<&'a str> {
    (
        one_of(|c: char| c.is_ascii_alphabetic() || c == '_'),
        take_while(0.., |c: char| c.is_ascii_alphanumeric() || c == '_'),
    )
        .take()
        .parse_next(i)
}

/// Takes the word `kw` if it is next (a whole identifier, not a prefix of one).
fn keyword(i: &mut In, kw: &str) -> PResult<bool> {
    let start = i.checkpoint();
    match opt(ident).parse_next(i)? {
        Some(w) if w == kw => Ok(true),
        _ => {
            i.reset(&start);
            Ok(false)
        }
    }
}

/// The word `kw`, or an error naming `what`.
fn expect_keyword(i: &mut In, kw: &str, what: &str) -> PResult<()> {
    if keyword(i, kw)? { Ok(()) } else { expected(i, what) }
}

/// An identifier, or an error naming `what`.
fn expect_ident<'a>(i: &mut In<'a>, what: &str) -> PResult<&'a str> {
    match opt(ident).parse_next(i)? {
        Some(w) => Ok(w),
        None => expected(i, what),
    }
}

/// The name of an app, entity, view or subscription: an identifier that is not a keyword.
fn expect_name(i: &mut In, what: &str) -> PResult<String> {
    let start = i.checkpoint();
    let w = expect_ident(i, what)?;
    if RESERVED.contains(&w) {
        i.reset(&start);
        return fail(i, format!("expected {what}, found the keyword \"{w}\""));
    }
    Ok(w.to_string())
}

/// The character `c`, or an error naming `what`.
fn expect_char(i: &mut In, c: char, what: &str) -> PResult<()> {
    match opt(c).parse_next(i)? {
        Some(_) => Ok(()),
        None => expected(i, what),
    }
}

fn spec(i: &mut In) -> PResult<Spec> {
    let mut apps = Vec::new();
    ws(i)?;
    while !i.input.is_empty() || apps.is_empty() {
        if !keyword(i, "app")? {
            return expected(i, if apps.is_empty() { "`app`" } else { "`app` or end of file" });
        }
        apps.push(app(i)?);
        ws(i)?;
    }
    Ok(Spec { apps })
}

fn app(i: &mut In) -> PResult<App> {
    ws(i)?;
    let name = expect_name(i, "an app name")?;
    ws(i)?;
    expect_char(i, '{', "`{` after the app name")?;
    let mut app = App { name, entities: Vec::new(), views: Vec::new(), subscriptions: Vec::new() };
    loop {
        ws(i)?;
        if opt('}').parse_next(i)?.is_some() {
            return Ok(app);
        }
        let at = pos(i);
        if keyword(i, "entity")? {
            app.entities.push(entity(i, at)?);
        } else if keyword(i, "view")? {
            app.views.push(view(i, at)?);
        } else if keyword(i, "subscription")? {
            app.subscriptions.push(subscription(i, at)?);
        } else {
            return expected(i, "`entity`, `view`, `subscription` or `}`");
        }
    }
}

fn entity(i: &mut In, at: At) -> PResult<Entity> {
    ws(i)?;
    let name = expect_name(i, "an entity name")?;
    ws(i)?;
    expect_char(i, '{', "`{` after the entity name")?;
    let mut attrs = Vec::new();
    loop {
        ws(i)?;
        if opt('}').parse_next(i)?.is_some() {
            return Ok(Entity { name, at, attrs });
        }
        expect_keyword(i, "attr", "`attr` or `}`")?;
        ws(i)?;
        attrs.push(field(i, "an attribute name")?);
    }
}

/// `name?: type` (after `attr`, or in an object type).
fn field(i: &mut In, what: &str) -> PResult<Attr> {
    let name = expect_ident(i, what)?.to_string();
    ws(i)?;
    let optional = opt('?').parse_next(i)?.is_some();
    ws(i)?;
    expect_char(i, ':', if optional { "`:`" } else { "`:` or `?`" })?;
    ws(i)?;
    let ty = ty(i)?;
    Ok(Attr { name, ty, optional })
}

fn ty(i: &mut In) -> PResult<Type> {
    let start = i.checkpoint();
    let unparenthesised = i.input.starts_with('"');
    let mut t = primary(i)?;
    // A bare multi-value union followed by `[]` reads ambiguously; it must be parenthesised.
    let bare_union = unparenthesised && matches!(&t, Type::Union(v) if v.len() > 1);
    loop {
        let before = i.checkpoint();
        ws(i)?;
        if opt('[').parse_next(i)?.is_none() {
            i.reset(&before);
            return Ok(t);
        }
        ws(i)?;
        expect_char(i, ']', "`]` (an array type is written T[])")?;
        if bare_union {
            i.reset(&start);
            return fail(
                i,
                "an array of a union needs parentheses: write (\"a\" | \"b\")[]".to_string(),
            );
        }
        t = Type::Array(Box::new(t));
    }
}

fn primary(i: &mut In) -> PResult<Type> {
    const WHAT: &str = "a type (string, number, bool, \"literal\", ref Entity, {...})";
    if i.input.starts_with('"') {
        return union(i);
    }
    if opt('(').parse_next(i)?.is_some() {
        ws(i)?;
        let t = ty(i)?;
        ws(i)?;
        expect_char(i, ')', "`)`")?;
        return Ok(t);
    }
    if opt('{').parse_next(i)?.is_some() {
        return object(i);
    }
    let start = i.checkpoint();
    match opt(ident).parse_next(i)? {
        Some("string") => Ok(Type::String),
        Some("number") => Ok(Type::Number),
        Some("bool") => Ok(Type::Bool),
        Some("ref") => {
            ws(i)?;
            Ok(Type::Ref(expect_name(i, "an entity name after `ref`")?))
        }
        _ => {
            i.reset(&start);
            expected(i, WHAT)
        }
    }
}

/// `"a" | "b" | ...` (no duplicates).
fn union(i: &mut In) -> PResult<Type> {
    let mut values = vec![string_lit(i)?];
    loop {
        let before = i.checkpoint();
        ws(i)?;
        if opt('|').parse_next(i)?.is_none() {
            i.reset(&before);
            return Ok(Type::Union(values));
        }
        ws(i)?;
        if !i.input.starts_with('"') {
            return expected(i, "a string literal after `|`");
        }
        let at = i.checkpoint();
        let v = string_lit(i)?;
        if values.contains(&v) {
            i.reset(&at);
            return fail(i, format!("duplicate union value {}", json_string(&v)));
        }
        values.push(v);
    }
}

/// A JSON string literal, on one line.
fn string_lit(i: &mut In) -> PResult<String> {
    let start = i.checkpoint();
    let raw: PResult<&str> = (
        '"',
        repeat::<_, _, (), _, _>(
            0..,
            alt((('\\', none_of('\n')).void(), none_of(['"', '\\', '\n']).void())),
        ),
        '"',
    )
        .take()
        .parse_next(i);
    let Ok(raw) = raw else {
        i.reset(&start);
        return fail(i, "unterminated string literal (it must end on its line)".into());
    };
    match serde_json::from_str::<String>(raw) {
        Ok(s) => Ok(s),
        Err(e) => {
            i.reset(&start);
            fail(i, format!("invalid string literal {raw}: {e}"))
        }
    }
}

/// `{ field, field }` after its `{`: fields separated by commas or line breaks.
fn object(i: &mut In) -> PResult<Type> {
    let mut fields = Vec::new();
    ws(i)?;
    if opt('}').parse_next(i)?.is_some() {
        return Ok(Type::Object(fields));
    }
    loop {
        fields.push(field(i, "a field name or `}`")?);
        let line_break = ws(i)?;
        if opt(',').parse_next(i)?.is_some() {
            ws(i)?;
            if opt('}').parse_next(i)?.is_some() {
                return Ok(Type::Object(fields));
            }
        } else if opt('}').parse_next(i)?.is_some() {
            return Ok(Type::Object(fields));
        } else if !line_break {
            return expected(i, "`,`, a line break or `}` after the field");
        }
    }
}

fn view(i: &mut In, at: At) -> PResult<View> {
    ws(i)?;
    let name = expect_name(i, "a view name")?;
    ws(i)?;
    expect_char(i, ':', "`:` after the view name")?;
    ws(i)?;
    let entity = expect_name(i, "an entity name")?;
    ws(i)?;
    expect_keyword(i, "where", "`where` after the view's entity")?;
    take_while(0.., |c: char| c.is_whitespace() && c != '\n').parse_next(i)?;
    let filter_at = pos(i);
    let raw = filter_text(i)?;
    let filter = raw.trim_end();
    if filter.is_empty() {
        return expected(i, "a filter expression after `where` (on the same line)");
    }
    Ok(View { name, at, entity, filter: filter.to_string(), filter_at })
}

/// The filter: the rest of the line, up to a `//` comment outside string literals. An
/// unterminated string runs to the end of the line (the filter parser reports it).
fn filter_text<'a>(i: &mut In<'a>) -> PResult<&'a str> {
    let string = (
        '"',
        repeat::<_, _, (), _, _>(
            0..,
            alt((('\\', none_of('\n')).void(), none_of(['"', '\\', '\n']).void())),
        ),
        opt('"'),
    )
        .void();
    let other = (not("//"), none_of(['\n', '"'])).void();
    repeat::<_, _, (), _, _>(0.., alt((string, other))).take().parse_next(i)
}

fn subscription(i: &mut In, at: At) -> PResult<Subscription> {
    ws(i)?;
    let name = expect_name(i, "a subscription name")?;
    ws(i)?;
    expect_char(i, ':', "`:` after the subscription name")?;
    ws(i)?;
    let target = if keyword(i, "view")? {
        ws(i)?;
        SubscriptionTarget::View(expect_name(i, "a view name after `view`")?)
    } else {
        let entity = expect_name(i, "`view V` or `Entity by id`")?;
        ws(i)?;
        expect_keyword(i, "by", "`by id` after the entity (or `view V`)")?;
        ws(i)?;
        expect_keyword(i, "id", "`id` after `by`")?;
        SubscriptionTarget::ById(entity)
    };
    Ok(Subscription { name, at, target })
}

/// A string as a JSON (and spec) literal.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_ends_at_comment_outside_strings() {
        let s = parse_spec(
            "app A { entity T { attr a: string }\n view V: T where a == \"x//y\" // c\n}",
        )
        .unwrap();
        assert_eq!(s.apps[0].views[0].filter, "a == \"x//y\"");
        assert_eq!(s.apps[0].views[0].filter_at.line, 2);
        assert_eq!(s.apps[0].views[0].filter_at.column, 18);
    }
}
