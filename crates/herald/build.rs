//! Puts the commit the binary was built from into `HERALD_COMMIT`, for `herald --version`.
//!
//! `HERALD_COMMIT` from the build environment wins (packagers building from a tarball);
//! otherwise `git rev-parse --short HEAD` when the workspace has a `.git`; otherwise `unknown`.
//! Never fails the build: a tarball without git or `.git` gets `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = match std::env::var("HERALD_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => git_commit(&manifest_dir).unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=HERALD_COMMIT={commit}");
}

/// The short commit of the workspace's checkout, and the `rerun-if-changed` lines that make a
/// new commit (or a switched branch) rebuild without rebuilding on every run.
fn git_commit(manifest_dir: &Path) -> Option<String> {
    // The workspace root is two levels up (crates/herald); a `.git` elsewhere (a tarball
    // unpacked inside some other repository) is not ours.
    let root = manifest_dir.join("../..");
    if !root.join(".git").exists() {
        return None;
    }
    let commit = git(&root, &["rev-parse", "--short", "HEAD"])?;
    // `--git-path` resolves linked worktrees and the common dir of refs.
    let mut watched = vec![git(&root, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&root, &["rev-parse", "--git-path", &branch]));
        watched.extend(git(&root, &["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watched {
        // Relative paths are relative to the directory git ran in. A watched path that does
        // not exist (a ref only in packed-refs) would make cargo rerun this script every build.
        let path = root.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}

/// Runs git in `dir` and returns its trimmed stdout, or `None` if git is missing or failed.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").current_dir(dir).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
