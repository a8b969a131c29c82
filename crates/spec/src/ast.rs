//! The parsed form of a spec file, and [`Catalog`]: every loaded spec's names in one place.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One spec file: one or more apps.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The apps, in file order.
    pub apps: Vec<App>,
}

/// `app NAME { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// `entity` declarations, in file order.
    pub entities: Vec<Entity>,
    /// `view` declarations, in file order.
    pub views: Vec<View>,
    /// `subscription` declarations, in file order.
    pub subscriptions: Vec<Subscription>,
}

/// Where a declaration starts in its spec file: 1-based line and column. Positions take no part
/// in equality, so a spec printed and parsed again equals the original.
#[derive(Debug, Clone, Copy, Default)]
pub struct At {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl PartialEq for At {
    fn eq(&self, _: &At) -> bool {
        true
    }
}

/// `entity NAME { attr ... }`: a record type. Records are keyed by id (the record key), which
/// is not an attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// The entity's name (`Task`).
    pub name: String,
    /// Where `entity` is written.
    pub at: At,
    /// Its attributes, in declaration order.
    pub attrs: Vec<Attr>,
}

/// `attr NAME: TYPE` (`attr NAME?: TYPE` when optional).
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    /// Field name in the record's JSON object.
    pub name: String,
    /// Its type.
    pub ty: Type,
    /// `?`: the field may be absent or null.
    pub optional: bool,
}

/// An attribute's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// `string`
    String,
    /// `number` (any JSON number)
    Number,
    /// `bool`
    Bool,
    /// `"a" | "b" | ...`: one of these strings.
    Union(Vec<String>),
    /// `ref Entity`: the id (record key, a string) of a record of that entity.
    Ref(String),
    /// `T[]`: a JSON array of T.
    Array(Box<Type>),
    /// `{ name: T, other?: U }`: a nested object (filters reach into it with dotted paths).
    Object(Vec<Attr>),
}

/// `view NAME: Entity where EXPR`.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The view's name (`ActiveTasks`).
    pub name: String,
    /// Where `view` is written.
    pub at: At,
    /// The entity it filters.
    pub entity: String,
    /// The filter expression, as written (parsed and checked by [`crate::filter`]).
    pub filter: String,
    /// Where the expression's first character is, so that a filter error can name its place
    /// in the file.
    pub filter_at: At,
}

/// `subscription NAME: view V` or `subscription NAME: Entity by id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The subscription's name (`TaskUpdates`).
    pub name: String,
    /// Where `subscription` is written.
    pub at: At,
    /// What it subscribes to.
    pub target: SubscriptionTarget,
}

/// What a [`Subscription`] names.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionTarget {
    /// `view V`
    View(String),
    /// `Entity by id`: one record of the entity, chosen by the subscriber (`key`).
    ById(String),
}

/// A view ready to use: its entity, its checked filter.
#[derive(Debug, Clone)]
pub struct ResolvedView {
    /// The view's (or subscription's) name.
    pub name: String,
    /// The entity it reads.
    pub entity: Arc<Entity>,
    /// The filter; `None` for `Entity by id` (every record of that one key).
    pub filter: Option<Arc<crate::Filter>>,
    /// True for `Entity by id`: the subscriber names the key.
    pub by_id: bool,
    /// The filter as written in the spec (what generated clients show); `None` for by id.
    pub filter_text: Option<String>,
}

/// Every entity, view and subscription of the loaded specs, by name (names are unique across
/// all loaded specs).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Entities by name.
    pub entities: BTreeMap<String, Arc<Entity>>,
    /// Views and subscriptions by name, resolved.
    pub views: BTreeMap<String, ResolvedView>,
    /// The spec files it was built from, in the order given (named by generated code).
    pub files: Vec<String>,
}

/// Why a set of specs cannot be loaded together (besides a parse error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CatalogError {
    /// The spec file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Catalog {
    /// Puts parsed specs together (`(file, spec)` pairs, file as given in the configuration):
    /// names unique across all of them, every view's entity declared, every filter checked
    /// against its entity (a filter error names the file, line and column inside the filter).
    /// `ref X` may name an entity no spec declares (it is a string id either way).
    pub fn build(specs: &[(String, Spec)]) -> Result<Catalog, CatalogError> {
        let err = |file: &str, at: At, message: String| CatalogError {
            file: file.to_string(),
            line: at.line,
            column: at.column,
            message,
        };
        // Every declared name: what it is and where.
        let mut names: BTreeMap<&str, (Kind, &str, At)> = BTreeMap::new();
        let mut namespaces: BTreeMap<String, (&str, &str, At)> = BTreeMap::new();
        let mut catalog =
            Catalog { files: specs.iter().map(|(f, _)| f.clone()).collect(), ..Catalog::default() };
        for (file, spec) in specs {
            for app in &spec.apps {
                let decls = app.entities.iter().map(|e| (Kind::Entity, e.name.as_str(), e.at));
                let decls = decls
                    .chain(app.views.iter().map(|v| (Kind::View, v.name.as_str(), v.at)))
                    .chain(
                        app.subscriptions
                            .iter()
                            .map(|s| (Kind::Subscription, s.name.as_str(), s.at)),
                    );
                for (kind, name, at) in decls {
                    if let Some((k0, f0, at0)) = names.insert(name, (kind, file, at)) {
                        return Err(err(
                            file,
                            at,
                            format!(
                                "{kind} `{name}` is already declared: {k0} at {f0}:{}:{}",
                                at0.line, at0.column
                            ),
                        ));
                    }
                }
                for e in &app.entities {
                    let ns = e.namespace();
                    if let Some((n0, f0, at0)) = namespaces.get(&ns) {
                        return Err(err(
                            file,
                            e.at,
                            format!(
                                "entity `{}` maps to namespace `{ns}`, as does entity `{n0}` at \
                                 {f0}:{}:{}",
                                e.name, at0.line, at0.column
                            ),
                        ));
                    }
                    namespaces.insert(ns, (&e.name, file, e.at));
                    if let Some(dup) = duplicate_field(&e.attrs) {
                        return Err(err(
                            file,
                            e.at,
                            format!("entity `{}` declares the attribute `{dup}` twice", e.name),
                        ));
                    }
                    catalog.entities.insert(e.name.clone(), Arc::new(e.clone()));
                }
            }
        }
        for (file, spec) in specs {
            for v in spec.apps.iter().flat_map(|a| &a.views) {
                let Some(entity) = catalog.entities.get(&v.entity).cloned() else {
                    return Err(err(
                        file,
                        v.at,
                        format!(
                            "view `{}` reads entity `{}`, which no spec declares",
                            v.name, v.entity
                        ),
                    ));
                };
                let filter = crate::Filter::parse_for(&v.filter, Some(&entity)).map_err(|e| {
                    let at = At {
                        line: v.filter_at.line,
                        column: v.filter_at.column + e.column.max(1) - 1,
                    };
                    err(file, at, format!("in the filter of view `{}`: {}", v.name, e.message))
                })?;
                catalog.views.insert(
                    v.name.clone(),
                    ResolvedView {
                        name: v.name.clone(),
                        entity,
                        filter: Some(Arc::new(filter)),
                        by_id: false,
                        filter_text: Some(v.filter.clone()),
                    },
                );
            }
        }
        for (file, spec) in specs {
            for s in spec.apps.iter().flat_map(|a| &a.subscriptions) {
                let resolved = match &s.target {
                    SubscriptionTarget::View(v) => {
                        let Some(view) = catalog.views.get(v) else {
                            let what = match names.get(v.as_str()) {
                                Some((kind, _, _)) => {
                                    format!("`{v}` is {}, not a view", kind.with_article())
                                }
                                None => format!("no spec declares a view `{v}`"),
                            };
                            return Err(err(
                                file,
                                s.at,
                                format!("subscription `{}` names view `{v}`, but {what}", s.name),
                            ));
                        };
                        ResolvedView { name: s.name.clone(), ..view.clone() }
                    }
                    SubscriptionTarget::ById(e) => {
                        let Some(entity) = catalog.entities.get(e) else {
                            let what = match names.get(e.as_str()) {
                                Some((kind, _, _)) => {
                                    format!("`{e}` is {}, not an entity", kind.with_article())
                                }
                                None => format!("no spec declares an entity `{e}`"),
                            };
                            return Err(err(
                                file,
                                s.at,
                                format!("subscription `{}` names `{e} by id`, but {what}", s.name),
                            ));
                        };
                        ResolvedView {
                            name: s.name.clone(),
                            entity: entity.clone(),
                            filter: None,
                            by_id: true,
                            filter_text: None,
                        }
                    }
                };
                catalog.views.insert(s.name.clone(), resolved);
            }
        }
        Ok(catalog)
    }

    /// The entity of the namespace `ns` (entity `Task` ↔ namespace `task`: the name in lower
    /// case).
    pub fn entity_of_namespace(&self, ns: &str) -> Option<&Arc<Entity>> {
        self.entities.values().find(|e| e.namespace() == ns)
    }
}

/// What a declared name is, for messages.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Entity,
    View,
    Subscription,
}

impl Kind {
    /// `an entity`, `a view`, `a subscription`.
    fn with_article(self) -> &'static str {
        match self {
            Kind::Entity => "an entity",
            Kind::View => "a view",
            Kind::Subscription => "a subscription",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Entity => "entity",
            Kind::View => "view",
            Kind::Subscription => "subscription",
        })
    }
}

/// A field name declared twice in these attributes or in a nested object type (dotted).
fn duplicate_field(attrs: &[Attr]) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    for a in attrs {
        if !seen.insert(a.name.as_str()) {
            return Some(a.name.clone());
        }
        let mut ty = &a.ty;
        while let Type::Array(inner) = ty {
            ty = inner;
        }
        if let Type::Object(fields) = ty
            && let Some(dup) = duplicate_field(fields)
        {
            return Some(format!("{}.{dup}", a.name));
        }
    }
    None
}

impl Entity {
    /// The namespace its records live in: the entity name in lower case (`Task` → `task`, so
    /// channels `task:board-1`).
    pub fn namespace(&self) -> String {
        self.name.to_lowercase()
    }
}
