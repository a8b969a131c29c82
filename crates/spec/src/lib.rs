//! Herald spec files and the filter language.
//!
//! A spec declares an app's entities (typed records), views (an entity filtered by an
//! expression) and subscriptions (a view, or one entity record by id):
//!
//! ```text
//! app RealtimeKanban {
//!   entity Task {
//!     attr title: string
//!     attr status: "todo" | "doing" | "done"
//!     attr assignee: ref User
//!   }
//!   view ActiveTasks: Task where status != "done"
//!   subscription TaskUpdates: view ActiveTasks
//!   subscription TaskDetail: Task by id
//! }
//! ```
//!
//! The hub maps each entity to a keyed namespace, validates publications against it
//! ([`schema::validate_record`]), and routes each keyed write to the views whose filter
//! ([`filter::Filter`]) the old or the new record matches.
//!
//! # Layout
//!
//! - `ast`: the parsed spec (apps, entities, attributes, types, views, subscriptions) and
//!   [`Catalog`], every loaded spec by name.
//! - `parse`: spec text → [`ast::Spec`], with line:column errors.
//! - `print`: [`ast::Spec`] → spec text (printing and re-parsing is the identity).
//! - `filter`: the filter language: parse, type-check against an entity, evaluate, index terms.
//! - `schema`: an entity's JSON Schema and the validation of records and merge patches.
//! - `codegen`: TypeScript types for a spec's entities, views and subscriptions.

pub mod ast;
pub mod codegen;
pub mod filter;
pub mod parse;
pub mod print;
pub mod schema;

pub use ast::{App, Attr, Catalog, Entity, Spec, Subscription, SubscriptionTarget, Type, View};
pub use filter::{Filter, FilterError};
pub use parse::{SpecError, parse_spec};
