//! A `nats-server -js` process for the NATS bridge tests: on a free port of 127.0.0.1, with its
//! JetStream store in a temp dir that outlives restarts (so a stopped server comes back with
//! its streams and consumers). Never the machine's own server on 4222.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js`; killed (and its store removed) on drop.
pub struct NatsProcess {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The JetStream store (`-sd`), kept across restarts.
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsProcess {
    /// Starts one and waits until it greets a client.
    pub fn start() -> NatsProcess {
        let dir = super::temp_dir("nats");
        let mut nats = NatsProcess { port: herald_testkit::free_port(), dir, child: None };
        nats.start_again();
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let child = Command::new(super::binary("nats-server", Path::new("/usr/sbin")))
            .arg("-js")
            .arg("-sd")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-a", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): `apt-get install -y nats-server`")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.greets() {
            assert!(Instant::now() < deadline, "nats-server on {} did not start", self.port);
            // A process start has no event to wait on; poll its port.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it sends its `INFO` greeting right now.
    fn greets(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
    }

    /// SIGKILL (the store stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
