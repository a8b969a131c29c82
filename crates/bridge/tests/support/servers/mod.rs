//! The bus processes the bridge tests start on free ports of 127.0.0.1 (never the machine's own
//! servers): `nats-server -js` and PostgreSQL, each keeping its data across restarts in a temp
//! dir. Also included by the herald binary's bridge tests (`#[path]`), so it needs only std and
//! herald-testkit.
// Each test uses one of the servers.
#![allow(dead_code)]

pub mod nats;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new, empty temp dir named after `what`, this process and the time.
fn temp_dir(what: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = std::env::temp_dir().join(format!("herald-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Where the program `name` is: on the PATH, else in `fallback` (where Debian's package puts it).
fn binary(name: &str, fallback: &Path) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| fallback.join(name))
}
