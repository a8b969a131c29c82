//! Mapping rules: which events of a source go to which channels, and as what.
//!
//! ```toml
//! [[bridge.rule]]
//! match = { subject = "events.*", "data.type" = "DecisionMade" }
//! channels = ["session:{data.session_id}", "campaign:{data.campaign_id}"]
//! type = "{data.type}"
//! select = ["session_id", "decision"]
//! ```
//!
//! Rules are tried in order; the first whose `match` holds maps the event (no match: the event is
//! dead-lettered). `subject` is a glob (`*` matches any run of characters); every other key is a
//! path into the event (`data.a.b`) whose value must equal the one given. Templates (`channels`,
//! `type`, `key`, `op`) are text with `{path}` placeholders: `subject`, `id`, or a `data…` path
//! naming a string, number or boolean of the event. `select` keeps only the named top-level fields
//! of the event as the publication's data (default: the whole event).

use herald_protocol::{Meta, Op};
use herald_server::engine::PublishInput;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

use crate::source::Event;

/// A rule as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Conditions: `subject` (a glob) and event paths with the value they must have.
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, toml::Value>,
    /// Channel templates; the event is published to each (e.g. a room and its parents).
    pub channels: Vec<String>,
    /// Publication type template; default: the subject.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Record key template (keyed namespaces).
    #[serde(default)]
    pub key: Option<String>,
    /// Record operation: `upsert`, `merge`, `delete`, or a template giving one of them.
    #[serde(default)]
    pub op: Option<String>,
    /// Top-level fields of the event forwarded as data; default: the whole event.
    #[serde(default)]
    pub select: Option<Vec<String>>,
}

/// Why a rule is invalid (found at start, before any port is bound).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule {index}: {message}")]
pub struct RuleError {
    /// Position of the rule in its bridge (0-based).
    pub index: usize,
    /// What is wrong, naming the option.
    pub message: String,
}

/// Where a placeholder or a condition reads from.
#[derive(Debug, Clone, PartialEq)]
enum Path {
    /// The event's subject.
    Subject,
    /// The event's id.
    Id,
    /// A path into the event (empty: the whole event).
    Data(Vec<String>),
}

impl Path {
    fn parse(text: &str) -> Result<Path, String> {
        match text {
            "subject" => Ok(Path::Subject),
            "id" => Ok(Path::Id),
            "data" => Ok(Path::Data(Vec::new())),
            _ => match text.strip_prefix("data.") {
                Some(rest) if !rest.split('.').any(str::is_empty) => {
                    Ok(Path::Data(rest.split('.').map(str::to_string).collect()))
                }
                _ => Err(format!("{text:?} is not `subject`, `id` or a `data.field` path")),
            },
        }
    }

    fn resolve<'e>(&self, event: &'e Event) -> Option<Resolved<'e>> {
        match self {
            Path::Subject => Some(Resolved::Text(&event.subject)),
            Path::Id => Some(Resolved::Text(&event.id)),
            Path::Data(fields) => {
                let mut at = &event.payload;
                for f in fields {
                    at = at.get(f)?;
                }
                Some(Resolved::Json(at))
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Path::Subject => "subject".into(),
            Path::Id => "id".into(),
            Path::Data(f) if f.is_empty() => "data".into(),
            Path::Data(f) => format!("data.{}", f.join(".")),
        }
    }
}

/// A value read from an event.
enum Resolved<'e> {
    Text(&'e str),
    Json(&'e Value),
}

/// A template: literal text and placeholders.
#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Field(Path),
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {text:?} has an unclosed `{{`"))?;
            parts.push(Part::Field(Path::parse(&rest[open + 1..open + close])?));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template {text:?} has a `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The literal text before the first placeholder.
    fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }

    fn render(&self, event: &Event) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(path) => match path.resolve(event) {
                    Some(Resolved::Text(t)) => out.push_str(t),
                    Some(Resolved::Json(Value::String(s))) => out.push_str(s),
                    Some(Resolved::Json(v @ (Value::Number(_) | Value::Bool(_)))) => {
                        out.push_str(&v.to_string())
                    }
                    Some(Resolved::Json(_)) => {
                        return Err(format!("{} is not a string, number or boolean", path.name()));
                    }
                    None => return Err(format!("the event has no {}", path.name())),
                },
            }
        }
        Ok(out)
    }
}

/// A `match` condition.
#[derive(Debug, Clone)]
enum Condition {
    /// The subject matches a glob.
    Subject(String),
    /// A path of the event equals a value.
    Equals(Path, Value),
}

/// A rule, checked and compiled.
#[derive(Debug, Clone)]
struct Rule {
    conditions: Vec<Condition>,
    channels: Vec<Template>,
    kind: Option<Template>,
    key: Option<Template>,
    op: Option<Template>,
    select: Option<Vec<String>>,
}

/// The rules of one bridge, checked at start.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The bridge's name: the idempotency keys' prefix and the publications' `meta.source`.
    bridge: String,
    rules: Vec<Rule>,
}

/// Glob match where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn json_of(value: &toml::Value) -> Result<Value, String> {
    match value {
        toml::Value::String(s) => Ok(Value::String(s.clone())),
        toml::Value::Integer(i) => Ok(Value::from(*i)),
        toml::Value::Float(f) => Ok(Value::from(*f)),
        toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
        other => Err(format!("match values are strings, numbers or booleans, not {other}")),
    }
}

fn parse_op(text: &str) -> Result<Op, String> {
    match text {
        "upsert" => Ok(Op::Upsert),
        "merge" => Ok(Op::Merge),
        "delete" => Ok(Op::Delete),
        other => Err(format!("op {other:?} is not upsert, merge or delete")),
    }
}

impl Rules {
    /// Checks and compiles the rules of bridge `bridge`. `namespace_known` tells whether a
    /// namespace is configured, to refuse a channel template whose namespace is written out and
    /// unknown.
    pub fn new(
        bridge: &str,
        configs: &[RuleConfig],
        namespace_known: impl Fn(&str) -> bool,
    ) -> Result<Rules, RuleError> {
        let mut rules = Vec::new();
        if configs.is_empty() {
            return Err(RuleError { index: 0, message: "a bridge needs at least one rule".into() });
        }
        for (index, c) in configs.iter().enumerate() {
            let fail = |message: String| RuleError { index, message };
            let mut conditions = Vec::new();
            for (path, value) in &c.matches {
                if path == "subject" {
                    let glob = value
                        .as_str()
                        .ok_or_else(|| fail("match.subject must be a string".into()))?;
                    conditions.push(Condition::Subject(glob.to_string()));
                } else {
                    let p = Path::parse(path).map_err(|e| fail(format!("match: {e}")))?;
                    conditions.push(Condition::Equals(
                        p,
                        json_of(value).map_err(|e| fail(format!("match.{path}: {e}")))?,
                    ));
                }
            }
            if c.channels.is_empty() {
                return Err(fail("channels: at least one channel template".into()));
            }
            let mut channels = Vec::new();
            for t in &c.channels {
                let template = Template::parse(t).map_err(|e| fail(format!("channels: {e}")))?;
                let prefix = template.literal_prefix();
                if let Some((namespace, _)) = prefix.split_once(':')
                    && !namespace_known(namespace)
                {
                    return Err(fail(format!(
                        "channels: namespace {namespace:?} of {t:?} is not configured"
                    )));
                }
                channels.push(template);
            }
            let template =
                |what: &str, t: &Option<String>| -> Result<Option<Template>, RuleError> {
                    t.as_deref()
                        .map(Template::parse)
                        .transpose()
                        .map_err(|e| fail(format!("{what}: {e}")))
                };
            let op = template("op", &c.op)?;
            if let Some(op) = &op
                && let [Part::Literal(constant)] = op.parts.as_slice()
            {
                parse_op(constant).map_err(|e| fail(format!("op: {e}")))?;
            }
            if op.is_some() && c.key.is_none() {
                return Err(fail("op: needs a key".into()));
            }
            if let Some(select) = &c.select
                && select.is_empty()
            {
                return Err(fail("select: name at least one field, or leave select out".into()));
            }
            rules.push(Rule {
                conditions,
                channels,
                kind: template("type", &c.kind)?,
                key: template("key", &c.key)?,
                op,
                select: c.select.clone(),
            });
        }
        Ok(Rules { bridge: bridge.to_string(), rules })
    }

    /// The bridge these rules belong to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The publications an event maps to, or why it cannot be published (its dead-letter
    /// reason).
    pub fn map(&self, event: &Event) -> Result<Vec<PublishInput>, String> {
        let rule =
            self.rules.iter().find(|r| r.matches(event)).ok_or_else(|| {
                format!("no rule matches the event (subject {:?})", event.subject)
            })?;
        let data = match &rule.select {
            None => event.payload.clone(),
            Some(fields) => {
                let object = event
                    .payload
                    .as_object()
                    .ok_or_else(|| "select needs an event that is a JSON object".to_string())?;
                Value::Object(
                    fields
                        .iter()
                        .filter_map(|f| object.get(f).map(|v| (f.clone(), v.clone())))
                        .collect(),
                )
            }
        };
        let data = RawValue::from_string(data.to_string()).map_err(|e| e.to_string())?;
        let kind = match &rule.kind {
            Some(t) => t.render(event)?,
            None => event.subject.clone(),
        };
        let key = rule.key.as_ref().map(|t| t.render(event)).transpose()?;
        let op =
            rule.op.as_ref().map(|t| t.render(event).and_then(|o| parse_op(&o))).transpose()?;
        let meta = Meta {
            source: Some(format!("bridge:{}", self.bridge)),
            idempotency_key: Some(format!("{}:{}", self.bridge, event.id)),
            ..Meta::default()
        };
        rule.channels
            .iter()
            .map(|t| {
                Ok(PublishInput {
                    channel: t.render(event)?,
                    kind: kind.clone(),
                    data: data.clone(),
                    key: key.clone(),
                    op,
                    meta: meta.clone(),
                })
            })
            .collect()
    }
}

impl Rule {
    fn matches(&self, event: &Event) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::Subject(g) => glob(g, &event.subject),
            Condition::Equals(path, want) => match path.resolve(event) {
                Some(Resolved::Text(t)) => want.as_str() == Some(t),
                Some(Resolved::Json(v)) => v == want,
                None => false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_text: &str) -> Result<Rules, RuleError> {
        #[derive(Deserialize)]
        struct Doc {
            rule: Vec<RuleConfig>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        Rules::new("b", &doc.rule, |ns| ["session", "campaign", "board"].contains(&ns))
    }

    fn event(subject: &str, payload: Value) -> Event {
        Event { id: "1-0".into(), subject: subject.into(), payload }
    }

    #[test]
    fn globs() {
        assert!(glob("events", "events"));
        assert!(!glob("events", "events2"));
        assert!(glob("events.*", "events.decided"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(glob("*.done", "x.done"));
        assert!(!glob("ab*ba", "aba"));
    }

    /// Events → what they map to (the issue's mapping table), and bad events → their reason.
    #[test]
    fn mapping_table() {
        let r = rules(
            r#"
            [[rule]]
            match = { subject = "events.*", "data.type" = "DecisionMade" }
            channels = ["session:{data.session_id}", "campaign:{data.campaign}"]
            type = "{data.type}"
            select = ["session_id", "decision"]
            [[rule]]
            match = { subject = "tasks" }
            channels = ["board:{data.board}"]
            type = "task"
            key = "{data.id}"
            op = "{data.op}"
            [[rule]]
            match = { subject = "tasks.deleted" }
            channels = ["board:{data.board}"]
            key = "{data.id}"
            op = "delete"
            "#,
        )
        .unwrap();
        let decided = event(
            "events.decided",
            json!({"type": "DecisionMade", "session_id": "s1", "campaign": 7, "decision": "go", "secret": 1}),
        );
        let out = r.map(&decided).unwrap();
        let channels: Vec<&str> = out.iter().map(|p| p.channel.as_str()).collect();
        assert_eq!(channels, ["session:s1", "campaign:7"]);
        assert_eq!(out[0].kind, "DecisionMade");
        assert_eq!(out[0].data.get(), r#"{"decision":"go","session_id":"s1"}"#);
        assert_eq!(out[0].meta.idempotency_key.as_deref(), Some("b:1-0"));
        assert_eq!(out[0].meta.source.as_deref(), Some("bridge:b"));
        assert_eq!((out[0].key.as_deref(), out[0].op), (None, None));

        let task = event("tasks", json!({"board": "b1", "id": "t1", "op": "merge", "title": "x"}));
        let out = r.map(&task).unwrap();
        assert_eq!((out[0].channel.as_str(), out[0].kind.as_str()), ("board:b1", "task"));
        assert_eq!((out[0].key.as_deref(), out[0].op), (Some("t1"), Some(Op::Merge)));
        let deleted = event("tasks.deleted", json!({"board": "b1", "id": "t1"}));
        let out = r.map(&deleted).unwrap();
        assert_eq!((out[0].kind.as_str(), out[0].op), ("tasks.deleted", Some(Op::Delete)));

        // Bad events: dead-lettered with the reason.
        let reason = |e: &Event| r.map(e).unwrap_err();
        assert!(reason(&event("other", json!({}))).contains("no rule matches"));
        let no_type = event("events.x", json!({"type": "Other"}));
        assert!(reason(&no_type).contains("no rule matches"));
        let missing = event("events.x", json!({"type": "DecisionMade", "campaign": 1}));
        assert_eq!(reason(&missing), "the event has no data.session_id");
        let object =
            event("events.x", json!({"type": "DecisionMade", "session_id": {}, "campaign": 1}));
        assert_eq!(reason(&object), "data.session_id is not a string, number or boolean");
        let bad_op = event("tasks", json!({"board": "b1", "id": "t1", "op": "smash"}));
        assert!(reason(&bad_op).contains("not upsert, merge or delete"));
        let not_object = event("events.x", json!([1]));
        assert!(reason(&not_object).contains("no rule matches"));
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_option() {
        let err = |t: &str| rules(t).unwrap_err().to_string();
        assert!(err("[[rule]]\nchannels = []").contains("channels"));
        assert!(err("[[rule]]\nchannels = [\"nope:{data.x}\"]").contains("namespace \"nope\""));
        assert!(err("[[rule]]\nchannels = [\"session:{data.x\"]").contains("unclosed"));
        assert!(err("[[rule]]\nchannels = [\"session:{foo}\"]").contains("\"foo\""));
        assert!(
            err("[[rule]]\nchannels = [\"session:x\"]\nkey = \"k\"\nop = \"smash\"").contains("op")
        );
        assert!(
            err("[[rule]]\nchannels = [\"session:x\"]\nop = \"upsert\"").contains("needs a key")
        );
        assert!(
            err("[[rule]]\nmatch = { subject = 1 }\nchannels = [\"session:x\"]")
                .contains("match.subject")
        );
        assert!(err("[[rule]]\nchannels = [\"session:x\"]\nselect = []").contains("select"));
        assert!(rules("rule = []").unwrap_err().to_string().contains("at least one rule"));
    }
}
