//! Dependencies of the server crate point one way (issue 12):
//! protocol ← config ← frame/keyed ← engine ← rules/fanout ← hub ← session/api/sse ← lib.
//! The graph is read from the sources by `herald_testkit::module_graph`.

use herald_testkit::module_graph::{Graph, assert_acyclic, module_graph};
use std::path::Path;

fn graph() -> Graph {
    module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// Fails when `module` references any of `forbidden`.
fn assert_names_none(graph: &Graph, module: &str, forbidden: &[&str]) {
    let edges = graph.get(module).unwrap_or_else(|| panic!("no module {module}: {graph:#?}"));
    let named: Vec<&&str> = forbidden.iter().filter(|f| edges.contains(**f)).collect();
    assert!(named.is_empty(), "{module} must not name {named:?}; it references {edges:?}");
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    assert_acyclic(&graph());
}

#[test]
fn storage_names_neither_the_hub_nor_the_api() {
    let graph = graph();
    let above_storage = ["hub", "api", "session", "sse", "fanout", "rules", "listener", "metrics"];
    for module in ["engine", "frame", "keyed", "outbox", "config"] {
        assert_names_none(&graph, module, &above_storage);
    }
    // The rules and the fan-out sit between the engine and the hub.
    for module in ["rules", "fanout"] {
        assert_names_none(&graph, module, &["hub", "api", "session", "sse"]);
    }
    // The hub knows no way in.
    assert_names_none(&graph, "hub", &["api", "session", "sse"]);
    // A reader that found nothing would pass vacuously.
    assert!(graph["engine"].contains("frame") && graph["hub"].contains("rules"), "{graph:#?}");
}
