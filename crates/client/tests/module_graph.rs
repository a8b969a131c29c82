//! No module of the client imports a module that imports it back, directly or through others
//! (issue 12); the graph is read from the sources by `herald_testkit::module_graph`.

use herald_testkit::module_graph::{assert_acyclic, module_graph};
use std::path::Path;

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert_acyclic(&graph);
    // A reader that found nothing would pass vacuously.
    assert!(
        graph.get("client").is_some_and(|e| e.contains("subscription")),
        "client.rs should reference crate::subscription; graph: {graph:#?}"
    );
}
