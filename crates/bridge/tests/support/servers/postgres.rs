//! A PostgreSQL server for the outbox bridge tests: `initdb` into a temp dir, then `postgres` on
//! a free port of 127.0.0.1 (its socket in the same dir), data kept across restarts. Never the
//! machine's own server on 5432.
//!
//! Postgres refuses to run as root (`initdb: cannot be run as root`): when the tests run as
//! root (CI, this machine) both run as `nobody`, which owns the temp dir (`Command::uid`, no
//! `su`/`runuser` in between, so the child is the postmaster itself and can be signalled).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `nobody`'s uid and gid on Debian.
const NOBODY: u32 = 65534;

/// A running `postgres`; stopped (and its data removed) on drop.
pub struct PostgresProcess {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The temp dir: the data dir `data/`, the socket, the server's log.
    dir: PathBuf,
    child: Option<Child>,
}

/// Where Debian's packages put the newest PostgreSQL's programs (`/usr/lib/postgresql/N/bin`,
/// not on the PATH).
fn debian_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max();
    PathBuf::from(format!("/usr/lib/postgresql/{}/bin", newest.unwrap_or(15)))
}

/// A command that runs as `nobody` when this process is root (Postgres refuses root).
fn command(name: &str, dir: &Path) -> Command {
    let mut command = Command::new(super::binary(name, &debian_bin_dir()));
    // Its own dir as the working dir: `nobody` may not enter the caller's.
    command.current_dir(dir);
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if root {
        command.uid(NOBODY).gid(NOBODY);
    }
    command.env_remove("PGDATA").stdin(Stdio::null());
    command
}

impl PostgresProcess {
    /// Creates a cluster (`initdb -U postgres --auth=trust`), starts it and waits until it
    /// accepts connections.
    pub fn start() -> PostgresProcess {
        let port = herald_testkit::free_port();
        let dir = super::temp_dir("pg");
        if std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false) {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown temp dir");
        }
        let out = command("initdb", &dir)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-instructions"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run initdb ({e}): `apt-get install -y postgresql-15`")
            });
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = PostgresProcess { port, dir, child: None };
        pg.start_again();
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres already running");
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        let child = command("postgres", &self.dir)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "postgres exited: {}", self.log());
            assert!(Instant::now() < deadline, "postgres on {} did not start", self.port);
            // A process start has no event to wait on; poll its pid file.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the postmaster says it accepts connections (`ready` in `postmaster.pid`).
    fn ready(&self) -> bool {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|s| s.trim() == "ready"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops it (fast shutdown: connections dropped at once; the data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
