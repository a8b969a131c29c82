//! [`Spec`] → spec text; `parse_spec(&print(&s)) == Ok(s)`.
//!
//! The canonical layout: each app's entities, then its views, then its subscriptions, groups
//! separated by a blank line; object types inline (`{ name: string, colour?: string }`);
//! union values as JSON strings.

use crate::ast::{Attr, Spec, SubscriptionTarget, Type};
use crate::parse::json_string;
use std::fmt::Write;

/// Prints a spec in the canonical layout (two-space indent, one declaration per line).
pub fn print(spec: &Spec) -> String {
    let mut out = String::new();
    for (n, app) in spec.apps.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "app {} {{", app.name);
        let mut groups: Vec<String> = Vec::new();
        for e in &app.entities {
            let mut g = format!("  entity {} {{\n", e.name);
            for a in &e.attrs {
                let _ = writeln!(g, "    attr {}", field(a));
            }
            g.push_str("  }\n");
            groups.push(g);
        }
        if !app.views.is_empty() {
            let mut g = String::new();
            for v in &app.views {
                let _ = writeln!(g, "  view {}: {} where {}", v.name, v.entity, v.filter);
            }
            groups.push(g);
        }
        if !app.subscriptions.is_empty() {
            let mut g = String::new();
            for s in &app.subscriptions {
                let target = match &s.target {
                    SubscriptionTarget::View(v) => format!("view {v}"),
                    SubscriptionTarget::ById(e) => format!("{e} by id"),
                };
                let _ = writeln!(g, "  subscription {}: {target}", s.name);
            }
            groups.push(g);
        }
        out.push_str(&groups.join("\n"));
        out.push_str("}\n");
    }
    out
}

/// `name: type` or `name?: type`.
fn field(a: &Attr) -> String {
    format!("{}{}: {}", a.name, if a.optional { "?" } else { "" }, ty(&a.ty))
}

/// A type as written in a spec.
pub(crate) fn ty(t: &Type) -> String {
    match t {
        Type::String => "string".into(),
        Type::Number => "number".into(),
        Type::Bool => "bool".into(),
        Type::Union(values) => {
            values.iter().map(|v| json_string(v)).collect::<Vec<_>>().join(" | ")
        }
        Type::Ref(e) => format!("ref {e}"),
        // A union is parenthesised so that `[]` applies to all of it.
        Type::Array(inner) if matches!(**inner, Type::Union(_)) => format!("({})[]", ty(inner)),
        Type::Array(inner) => format!("{}[]", ty(inner)),
        Type::Object(fields) if fields.is_empty() => "{}".into(),
        Type::Object(fields) => {
            format!("{{ {} }}", fields.iter().map(field).collect::<Vec<_>>().join(", "))
        }
    }
}
