//! TypeScript types for a spec: one interface per entity, and a `views` / `subscriptions` map
//! the TypeScript client's `subscribeView` takes to type its rows.

use crate::ast::Catalog;

/// The TypeScript module for these specs (deterministic: same input, same bytes).
pub fn typescript(catalog: &Catalog) -> String {
    let _ = catalog;
    unimplemented!("helper S")
}
