//! No module of the client imports a module that imports it back, directly or through others
//! (Herald issue 12). Reads the `crate::` references in the code of every file in src/, resolves
//! names the crate root re-exports to the module that defines them, and fails on any cycle found
//! by a depth-first search.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the modules it references (lib.rs, the root that declares them all, excluded).
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a source file without its comment lines: doc links such as [`crate::Client`]
/// are not dependencies.
fn code_of(text: &str) -> String {
    text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The identifier at the start of `s` (after whitespace), if any.
fn leading_ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The first path segment after every `crate::` in `code`: `crate::a::X` gives `a`, and
/// `crate::{a::X, b::{Y, Z}, C}` gives `a`, `b` and `C`.
fn crate_references(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = after.trim_start().strip_prefix('{') {
            // One name per top-level item of the group, up to its closing brace.
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        item_start = false;
                        if let Some(name) = leading_ident(&group[i..]) {
                            found.push(name.to_string());
                        }
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else if let Some(name) = leading_ident(after) {
            found.push(name.to_string());
        }
    }
    found
}

/// Names the crate root re-exports (`pub use module::{A, B as C};`), with the module that
/// defines them; `None` for names from other crates (`pub use herald_protocol;`).
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, Option<String>> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path: String = path.split_whitespace().collect::<Vec<_>>().join(" ");
        let (first, items) = match path.split_once("::") {
            Some((first, rest)) => (first.to_string(), rest.to_string()),
            None => (path.clone(), path.clone()),
        };
        let owner = modules.contains(&first).then(|| first.clone());
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item.rsplit("::").next().unwrap_or(item),
            };
            names.insert(name.to_string(), owner.clone());
        }
    }
    names
}

/// The module graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> Graph {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src/") {
        let path = entry.expect("read src/ entry").path();
        assert!(
            !path.is_dir(),
            "{} is a directory: teach this test nested modules",
            path.display()
        );
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("read source");
            sources.insert(name, code_of(&text));
        }
    }
    let lib = sources.remove("lib").expect("src/lib.rs");
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let reexports = root_reexports(&lib, &modules);
    let mut graph = Graph::new();
    for (module, code) in &sources {
        let edges = graph.entry(module.clone()).or_default();
        for name in crate_references(code) {
            let target = if modules.contains(&name) {
                Some(name.clone())
            } else {
                match reexports.get(&name) {
                    Some(owner) => owner.clone(),
                    None => {
                        panic!("{module}.rs: crate::{name} is neither a module nor re-exported")
                    }
                }
            };
            if let Some(target) = target
                && target != *module
            {
                edges.insert(target);
            }
        }
    }
    graph
}

/// Every cycle a depth-first search meets (one per back edge), each as the path of modules
/// from the first back to itself.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        /// On the current DFS path.
        Open,
        /// Fully explored.
        Done,
    }
    fn visit<'g>(
        node: &'g str,
        graph: &'g Graph,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
        found: &mut Vec<Vec<String>>,
    ) {
        marks.insert(node, Mark::Open);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = path.iter().position(|n| *n == next).unwrap();
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|n| n.to_string()).collect();
                    cycle.push(next.clone());
                    found.push(cycle);
                }
                Some(Mark::Done) => {}
                None => visit(next, graph, marks, path, found),
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !marks.contains_key(node.as_str()) {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    let found = cycles(&graph);
    let shown: Vec<String> = found.iter().map(|c| c.join(" -> ")).collect();
    assert!(found.is_empty(), "module import cycles: {shown:#?}\ngraph: {graph:#?}");
    // A parser that found nothing would pass vacuously.
    assert!(
        graph.get("client").is_some_and(|e| e.contains("subscription")),
        "client.rs should reference crate::subscription; graph: {graph:#?}"
    );
}

#[test]
fn references_cover_paths_and_nested_groups() {
    let code = code_of(concat!(
        "use crate::{a::X, b::{Y, Z},\n    C};\n",
        "/// [`crate::d`]\n",
        "fn f() { crate::e::g(); }\n",
        "use herald_crate::h;",
    ));
    assert_eq!(crate_references(&code), ["a", "b", "C", "e"]);
}

#[test]
fn reexports_map_names_to_their_module() {
    let modules: BTreeSet<String> = ["m".to_string()].into();
    let lib = "pub use m::{A, B as C};\npub use m::D;\npub use other;\npub use other::E;";
    let names = root_reexports(lib, &modules);
    let m = Some("m".to_string());
    assert_eq!(names["A"], m);
    assert_eq!(names["C"], m);
    assert_eq!(names["D"], m);
    assert_eq!(names["other"], None);
    assert_eq!(names["E"], None);
}

#[test]
fn the_search_finds_direct_and_longer_cycles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string()).or_default().insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    assert!(cycles(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    assert_eq!(cycles(&graph(&[("a", "b"), ("b", "a")])), [["a", "b", "a"]]);
    assert_eq!(
        cycles(&graph(&[("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")])),
        [["a", "b", "c", "a"]]
    );
}
