//! `herald config check`, `herald config example`, `herald completions` and `herald --version`,
//! run as the built binary.
//!
//! The example is kept equal to the typed `Config` (every key, every default) and to the file
//! docs/configuration.md embeds; every TOML example in README.md and docs/ passes the check; broken
//! files fail with the offending key named.

use herald_server::Config;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Exit status, stdout and stderr of one `herald` run.
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn herald(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).args(args).output().expect("run herald");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// `herald config check` on `text` written to a temporary file.
fn check(text: &str) -> (Run, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (herald(&["config", "check", &path]), path)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```toml blocks of a Markdown file, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```toml" => current = Some((number + 1, String::new())),
            None => {}
            Some(_) if line.trim_start() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

fn example() -> String {
    let run = herald(&["config", "example"]);
    assert!(run.ok, "config example: {}", run.stderr);
    run.stdout
}

#[test]
fn example_is_the_file_the_docs_embed() {
    let docs = std::fs::read_to_string(workspace_root().join("docs/configuration.md")).unwrap();
    let heading = docs.find("## Full example").expect("docs/configuration.md: ## Full example");
    let (_, embedded) = toml_blocks(&docs[heading..]).into_iter().next().expect("a toml block");
    assert_eq!(
        embedded,
        example(),
        "docs/configuration.md's full example must be `herald config example` verbatim"
    );
}

/// The example as written is `Config::default()`; with its commented-out keys and sections
/// uncommented it names every key of `Config`, and nothing else.
#[test]
fn example_holds_every_key_of_config_with_its_default() {
    let example = example();
    let parsed = Config::from_toml(&example).expect("the example is a valid configuration");
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        serde_json::to_value(Config::default()).unwrap(),
        "the example's values must be the defaults"
    );

    // Every optional key set, so that serializing it names every key there is.
    let mut full = Config::default();
    let auth = &mut full.auth;
    auth.token_secret = Some("s".into());
    auth.rsa_public_key = Some("pem".into());
    auth.ec_public_key = Some("pem".into());
    auth.jwks_url = Some("https://auth.example/jwks.json".into());
    auth.jwks_ttl = Some(Duration::from_secs(300));
    auth.audience = Some("herald".into());
    auth.issuer = Some("https://auth.example".into());
    auth.leeway_secs = Some(5);
    full.tls.cert_file = Some("cert.pem".into());
    full.tls.key_file = Some("key.pem".into());
    full.subscribe_hook = Some(
        toml::from_str("url = \"http://127.0.0.1:3000/herald/authorize\"").expect("hook config"),
    );
    let config_keys = keys(&toml::Value::try_from(&full).expect("Config serializes to TOML"));

    let uncommented = uncomment(&example);
    toml::from_str::<Config>(&uncommented)
        .unwrap_or_else(|e| panic!("the uncommented example parses as Config: {e}\n{uncommented}"));
    let example_keys = keys(&toml::from_str(&uncommented).unwrap());
    assert_eq!(
        example_keys.symmetric_difference(&config_keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys in only one of the example and Config"
    );
}

/// Turns `# key = value` and `# [section]` lines into live ones; prose comments stay.
fn uncomment(example: &str) -> String {
    let is_name =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || "_.".contains(c));
    example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| is_name(key))
                    || rest
                        .strip_prefix('[')
                        .and_then(|r| r.split_once(']'))
                        .is_some_and(|(name, _)| is_name(name)) =>
            {
                rest
            }
            _ => line,
        })
        .fold(String::new(), |text, line| text + line + "\n")
}

/// Dotted paths of every leaf of a TOML table (`limits.max_frame_bytes`).
fn keys(value: &toml::Value) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path =
                        if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, value, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", value, &mut out);
    out
}

#[test]
fn the_example_passes_the_check() {
    let (run, path) = check(&example());
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{path}: ok\n"));
    assert_eq!(run.stderr, "", "the defaults give no warning");
}

/// ```toml blocks that are not whole configuration files: none so far. Each entry is the file
/// and the block's first line.
const FRAGMENTS: &[(&str, &str)] = &[];

#[test]
fn every_toml_example_in_the_docs_passes_the_check() {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    let certificate = certificate_files();
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        for (line, block) in toml_blocks(&std::fs::read_to_string(file).unwrap()) {
            let first = block.lines().next().unwrap_or("");
            if FRAGMENTS.contains(&(name.as_str(), first)) {
                continue;
            }
            let (run, _) = check(&with_real_certificate(&block, &certificate.0, &certificate.1));
            checked += 1;
            if !run.ok {
                failures.push(format!("{name}:{line}: {}", run.stderr.trim()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "examples refused by `herald config check`:\n{}",
        failures.join("\n")
    );
    // The full example and the seed examples of configuration.md, operations.md's engine.
    assert!(checked >= 4, "only {checked} toml blocks found");
}

/// A self-signed certificate and its key, as PEM files in a directory that lives as long as the
/// returned guard.
fn certificate_files() -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    (path(cert), path(key), dir)
}

/// The docs' `[tls]` examples name files of the reader's machine (`/etc/herald/cert.pem`):
/// here they name a generated certificate and key instead, which the check loads.
fn with_real_certificate(block: &str, cert: &str, key: &str) -> String {
    block
        .lines()
        .map(|line| match line.split_once('=').map(|(name, _)| name.trim()) {
            Some("cert_file") => format!("cert_file = {cert:?}"),
            Some("key_file") => format!("key_file = {key:?}"),
            _ => line.to_string(),
        })
        .fold(String::new(), |text, line| text + &line + "\n")
}

#[test]
fn broken_files_fail_with_the_key_named() {
    let broken: &[(&str, &str, &str)] = &[
        ("unknown key", "listne = \"0.0.0.0:7700\"\n", "listne"),
        ("unknown namespace key", "[namespaces.default]\nhistroy_size = 10\n", "histroy_size"),
        ("wrong type", "[limits]\nmax_frame_bytes = \"big\"\n", "max_frame_bytes"),
        ("bad duration", "[timeouts]\nping_interval = \"25 parsecs\"\n", "ping_interval"),
        ("bad option value", "[namespaces.default]\nsubscribe = \"everyone\"\n", "subscribe"),
        ("unknown engine", "[engine]\nkind = \"mongo\"\n", "kind"),
        (
            "frame too small for client publish",
            "[limits]\nmax_frame_bytes = 32768\n[namespaces.chat]\nclient_publish = true\n",
            "limits.max_frame_bytes",
        ),
        ("redis without url", "[engine]\nkind = \"redis\"\nredis_url = \"\"\n", "engine.redis_url"),
        (
            "pong not above ping",
            "[timeouts]\nping_interval = \"30s\"\npong_timeout = \"30s\"\n",
            "timeouts.pong_timeout",
        ),
        (
            "hook policy without hook",
            "[namespaces.campaign]\nsubscribe = \"hook\"\n",
            "subscribe_hook",
        ),
        (
            "snapshot larger than the reply budget",
            "[namespaces.board]\nkeyed = true\nmax_state_bytes = 4194304\n",
            "max_state_bytes",
        ),
        ("zero key length", "[namespaces.default]\nmax_key_bytes = 0\n", "max_key_bytes"),
        ("leeway over an hour", "[auth]\nleeway_secs = 7200\n", "auth.leeway_secs"),
        ("tls certificate without key", "[tls]\ncert_file = \"cert.pem\"\n", "tls.cert_file"),
    ];
    // Both files present, but the key is the certificate: refused when loaded, naming them.
    let (cert, _, _guard) = certificate_files();
    let not_a_key = format!("[tls]\ncert_file = {cert:?}\nkey_file = {cert:?}\n");
    let broken: Vec<(&str, &str, &str)> = broken
        .iter()
        .copied()
        .chain([("tls key file holding no key", not_a_key.as_str(), cert.as_str())])
        .collect();
    for (what, text, key) in broken {
        let (run, path) = check(text);
        assert!(!run.ok, "{what}: accepted:\n{text}");
        assert_eq!(run.code, Some(1), "{what}: exit code");
        assert_eq!(run.stdout, "", "{what}: nothing on stdout");
        assert!(run.stderr.contains(key), "{what}: {key:?} not named in:\n{}", run.stderr);
        assert!(run.stderr.contains(&path), "{what}: the file not named in:\n{}", run.stderr);
    }
}

#[test]
fn an_unreadable_file_fails_and_a_risky_one_warns() {
    let run = herald(&["config", "check", "/nonexistent/herald.toml"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("/nonexistent/herald.toml"), "{}", run.stderr);

    let (run, path) = check("[namespaces.default]\nhistory_size = 10\n");
    assert!(run.ok, "a warning is not an error: {}", run.stderr);
    assert_eq!(run.stdout, format!("{path}: ok\n"));
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("history_size"),
        "{}",
        run.stderr
    );
}

#[test]
fn completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let run = herald(&["completions", shell]);
        assert!(run.ok, "{shell}: {}", run.stderr);
        for command in ["serve", "publish", "config"] {
            assert!(run.stdout.contains(command), "{shell} completion lacks {command}");
        }
    }
}

#[test]
fn version_names_the_commit() {
    let run = herald(&["--version"]);
    assert!(run.ok);
    let line = run.stdout.trim_end();
    let commit = line
        .strip_prefix(concat!("herald ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`herald 0.1.0 (COMMIT)` expected, got {line:?}"));
    assert!(!commit.is_empty() && !commit.contains(char::is_whitespace), "{line:?}");
}
