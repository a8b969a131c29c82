//! The module graph of a crate, read from its sources, for the tests that keep dependencies
//! pointing one way (issue 12): every `crate::` reference in the code of a file (comments left
//! out, grouped `use crate::{…}` imports read item by item, names the crate root re-exports
//! resolved to the module that defines them) is an edge from the file's top-level module.
//! A hand-written reader: what is needed is the first path segment after `crate::`, which a
//! full Rust parser (syn) would give at the cost of a heavy dependency for the test kit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name → the modules it references (lib.rs, the root that declares them all, excluded).
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a source file without its comment lines (doc links such as [`crate::Client`]
/// are not dependencies) and without its `#[cfg(test)]` module, which by convention ends the
/// file: tests may reach up (a unit test of an engine may use the rules over it).
pub fn code_of(text: &str) -> String {
    text.lines()
        .take_while(|line| *line != "#[cfg(test)]")
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s` (after whitespace), if any.
fn leading_ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The first path segment after every `crate::` in `code`: `crate::a::X` gives `a`, and
/// `crate::{a::X, b::{Y, Z}, C}` gives `a`, `b` and `C`.
pub fn crate_references(code: &str) -> Vec<String> {
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
pub fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, Option<String>> {
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

/// The module graph of the crate whose sources are in `src`, by top-level module: a file in a
/// module's directory (`engine/redis/mod.rs`) counts as that module (`engine`).
pub fn module_graph(src: &Path) -> Graph {
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut lib = None;
    for path in rust_files(src) {
        let relative = path.strip_prefix(src).expect("under src/");
        let mut parts = relative.components();
        let first = parts.next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let nested = parts.next().is_some();
        let module = if nested { first } else { first.trim_end_matches(".rs").to_string() };
        let text = std::fs::read_to_string(&path).expect("read source");
        if module == "lib" {
            lib = Some(code_of(&text));
            continue;
        }
        let code = sources.entry(module).or_default();
        code.push('\n');
        code.push_str(&code_of(&text));
    }
    let lib = lib.expect("src/lib.rs");
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
                    None => panic!("{module}: crate::{name} is neither a module nor re-exported"),
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

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Fails with every cycle found, and the graph, when a module imports one that imports it back.
pub fn assert_acyclic(graph: &Graph) {
    let found = cycles(graph);
    let shown: Vec<String> = found.iter().map(|c| c.join(" -> ")).collect();
    assert!(found.is_empty(), "module import cycles: {shown:#?}\ngraph: {graph:#?}");
}

/// Every cycle a depth-first search meets (one per back edge), each as the path of modules
/// from the first back to itself.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
