//! The README's CLI tour, run as written: the ```sh blocks between `<!-- tour:start -->` and
//! `<!-- tour:end -->` become one `bash -euo pipefail` script, and every `# → ` line under a
//! command must appear, in order, in what that block printed.
//!
//! The block that is `herald serve` alone runs in the background, as in the tour's first
//! terminal. The only changes to the README's text: the hub listens on a free port
//! (`HERALD_LISTEN=127.0.0.1:0`), so `127.0.0.1:7700` is replaced by the address it reports;
//! the script starts with the built binary's directory on PATH and no `HERALD_*` variables, and
//! a marker line is echoed before each block to tell their outputs apart.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The address the README's commands name.
const README_ADDR: &str = "127.0.0.1:7700";
/// Prefix of an expected-output line in a tour block.
const EXPECTED: &str = "# → ";
/// Upper bound for the hub to start and for the whole tour script.
const DEADLINE: Duration = Duration::from_secs(60);

/// One ```sh block of the tour.
struct Block {
    /// Its lines other than expected output, as the reader types them.
    script: Vec<String>,
    /// Its `# → ` lines, without the prefix.
    expected: Vec<String>,
}

/// The tour's blocks, in README order.
fn tour_blocks(readme: &str) -> Vec<Block> {
    let start = readme.find("<!-- tour:start -->").expect("README has <!-- tour:start -->");
    let end = readme.find("<!-- tour:end -->").expect("README has <!-- tour:end -->");
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in readme[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Block { script: vec![], expected: vec![] }),
            (None, fence) if fence.starts_with("```") => {
                panic!("tour blocks are ```sh, not {fence}")
            }
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), text) => match text.strip_prefix(EXPECTED) {
                Some(expected) => block.expected.push(expected.to_string()),
                None => block.script.push(text.to_string()),
            },
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unclosed ```sh block in the tour");
    blocks
}

/// Whether `line` is `pattern`, where `<name>` stands for one or more characters other than
/// quotes and white space, and `…` for any text.
fn matches(pattern: &str, line: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix('…') {
        return (0..=line.len())
            .filter(|&i| line.is_char_boundary(i))
            .any(|i| matches(rest, &line[i..]));
    }
    if pattern.starts_with('<')
        && let Some(close) = pattern.find('>')
    {
        let rest = &pattern[close + 1..];
        let word = line.find(|c: char| c == '"' || c.is_whitespace()).unwrap_or(line.len());
        return (1..=word).filter(|&i| line.is_char_boundary(i)).any(|i| matches(rest, &line[i..]));
    }
    match (pattern.chars().next(), line.chars().next()) {
        (None, None) => true,
        (Some(p), Some(l)) if p == l => matches(&pattern[p.len_utf8()..], &line[l.len_utf8()..]),
        _ => false,
    }
}

/// Asserts that `expected` appear in order among `lines` (other lines may come between).
fn assert_in_order(what: &str, expected: &[String], lines: &[&str]) {
    let mut rest = lines.iter();
    for pattern in expected {
        assert!(
            rest.any(|line| matches(pattern, line)),
            "{what}: no line matching\n  {pattern}\nin order in its output:\n{}",
            lines.join("\n")
        );
    }
}

/// A process group started by the test, killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // The whole group: a block's background `herald sub` may outlive a failed script.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// `bash -c SCRIPT` in its own process group, in `dir`, with `bin_dir` first on PATH and no
/// inherited `HERALD_*` variables.
fn bash(script: &str, dir: &std::path::Path, bin_dir: &std::path::Path) -> Command {
    let mut command = Command::new("bash");
    command.args(["-euo", "pipefail", "-c", script]).current_dir(dir).process_group(0);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bin_dir.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap();
    command.env("PATH", path);
    command
}

#[test]
fn the_readme_tour_runs_as_written() {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme_path).expect("README.md");
    let mut blocks = tour_blocks(&readme);
    let serve_at = blocks
        .iter()
        .position(|b| b.script.iter().any(|l| l.trim() == "herald serve"))
        .expect("the tour starts the hub with `herald serve`");
    let serve = blocks.remove(serve_at);
    assert_eq!(serve.script, ["herald serve"], "the `herald serve` block holds only that command");

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
    let bin_dir = bin.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The first terminal: the hub, on a free port; wait for the line naming its address.
    let mut hub = bash("herald serve", dir.path(), bin_dir);
    hub.env("HERALD_LISTEN", "127.0.0.1:0").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut hub = Group(hub.spawn().expect("bash"));
    let (tx, hub_lines) = mpsc::channel();
    let stderr = hub.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut serve_output = Vec::new();
    let addr = loop {
        let line =
            hub_lines.recv_timeout(DEADLINE.saturating_sub(started.elapsed())).unwrap_or_else(
                |_| panic!("herald serve did not report its address: {serve_output:#?}"),
            );
        let addr = line
            .split_once(" listening on http://")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string);
        serve_output.push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };
    let at_addr = |text: &str| text.replace(README_ADDR, &addr);
    let expected: Vec<String> = serve.expected.iter().map(|e| at_addr(e)).collect();
    let lines: Vec<&str> = serve_output.iter().map(String::as_str).collect();
    assert_in_order("herald serve", &expected, &lines);

    // The second terminal: every other block, in order, each after a marker line.
    let marker = |i: usize| format!("::readme-tour block {i}::");
    let mut script = String::from("exec 2>&1\n");
    for (i, block) in blocks.iter().enumerate() {
        script += &format!("echo '{}'\n", marker(i));
        for line in &block.script {
            script += &at_addr(line);
            script.push('\n');
        }
    }
    let mut tour = bash(&script, dir.path(), bin_dir);
    tour.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut tour = Group(tour.spawn().expect("bash"));
    let mut stdout = tour.0.stdout.take().unwrap();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut output = String::new();
        let _ = stdout.read_to_string(&mut output);
        let _ = tx.send(output);
    });
    let output = done.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        panic!("the tour did not finish within {DEADLINE:?}:\n{script}");
    });
    let status = tour.0.wait().unwrap();
    assert!(status.success(), "the tour failed ({status}):\n{output}\nscript:\n{script}");

    for (i, block) in blocks.iter().enumerate() {
        let from = output.find(&marker(i)).expect("marker") + marker(i).len();
        let to = output.find(&marker(i + 1)).unwrap_or(output.len());
        let lines: Vec<&str> = output[from..to].lines().filter(|l| !l.is_empty()).collect();
        let expected: Vec<String> = block.expected.iter().map(|e| at_addr(e)).collect();
        assert_in_order(&block.script.join("\n"), &expected, &lines);
    }
    drop(hub);
}

#[test]
fn expected_lines_match_with_placeholders() {
    assert!(matches("<epoch>:3", "hk79Nsg37z:3"));
    assert!(matches(
        r#"{"id":"<epoch>-2","t":"<time>"}"#,
        r#"{"id":"ab-c-2","t":"2026-12-02T04:59:06.705Z"}"#
    ));
    assert!(matches(r#"{"results":[…]}"#, r#"{"results":[{"a":1}]}"#));
    assert!(!matches("<epoch>:3", "hk79:4"));
    assert!(!matches(r#""<epoch>""#, r#""""#), "a placeholder stands for one character or more");
    assert!(!matches("a", "ab"), "whole lines");
}
