//! TLS end to end on the real binary: `https://` and `wss://` through a certificate generated
//! here; the certificate files replaced and SIGHUP sent while a WebSocket is open (it stays
//! open, new connections get the new certificate; a broken file keeps the old one); the Redis
//! engine over `rediss://` to a `redis-server` with TLS.

use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::{ServerMessage, split_frame};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

const API_KEY: &str = "tls-key";
const SECRET: &str = "tls-secret";
/// Upper bound for any single wait.
const WAIT: Duration = Duration::from_secs(15);

/// A certificate authority and a leaf for `localhost` and 127.0.0.1 that it signed.
struct Authority {
    /// The CA certificate, which clients trust.
    ca_pem: String,
    /// The leaf chain as served (leaf only).
    leaf_pem: String,
    /// The leaf's DER, to tell which certificate a connection got.
    leaf_der: Vec<u8>,
    /// The leaf's private key.
    key_pem: String,
}

impl Authority {
    fn generate(name: &str) -> Authority {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, name);
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        Authority {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the leaf and key where the server reads them.
    fn install(&self, files: &CertFiles) {
        std::fs::write(&files.cert, &self.leaf_pem).unwrap();
        std::fs::write(&files.key, &self.key_pem).unwrap();
    }

    /// A rustls client configuration trusting this CA alone.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(self.ca_pem.as_bytes());
        roots.add(der.unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// An HTTPS client trusting this CA alone and reporting the peer certificate.
    fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.client_config()).clone())
            .tls_info(true)
            .build()
            .unwrap()
    }
}

/// The server's certificate and key files.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn in_dir(dir: &Path) -> CertFiles {
        CertFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") }
    }
}

/// A `herald serve` with `[tls]`; killed on drop. (herald-testkit's process waits for a plain
/// `http://` listening line.)
struct TlsHerald {
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
    /// Every stderr line so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl TlsHerald {
    fn start(dir: &Path, files: &CertFiles, extra_toml: &str, env: &[(&str, &Path)]) -> TlsHerald {
        let config = format!(
            "listen = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\n{extra_toml}\n[auth]\n\
             token_secret = \"{SECRET}\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            files.cert, files.key
        );
        let path = dir.join("herald.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Process::new(env!("CARGO_BIN_EXE_herald"));
        command.args(["serve", "--config"]).arg(&path).env("HERALD_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herald");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let verbose = std::env::var_os("HERALD_TEST_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[herald] {line}");
                }
                if let Some(rest) = line.split("listening on https://").nth(1) {
                    let addr: String =
                        rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok(addr) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("herald did not start over TLS; stderr:\n{}", log.lock().unwrap().join("\n"));
        };
        TlsHerald { child, addr: addr.parse().unwrap(), log }
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn sighup(&self) {
        let status = Process::new("kill").args(["-HUP", &self.child.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    /// Waits for a stderr line containing `text`, `count` times in all.
    fn wait_log(&self, text: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log.lock().unwrap();
            if log.iter().filter(|l| l.contains(text)).count() >= count {
                return;
            }
            drop(log);
            assert!(Instant::now() < deadline, "no {text:?} in the log within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `/health` through `client`; the status and the DER of the certificate presented.
    async fn health(&self, client: &reqwest::Client) -> (u16, Vec<u8>) {
        let response = client.get(self.https("/health")).send().await.expect("https request");
        let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
        let der = info.peer_certificate().expect("peer certificate").to_vec();
        (response.status().as_u16(), der)
    }
}

impl Drop for TlsHerald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A protocol client over `wss://`.
struct Wss {
    stream: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Wss {
    /// Opens `wss://localhost:PORT/ws` trusting `authority`, then sends `connect`.
    async fn connect(hub: &TlsHerald, authority: &Authority) -> (Wss, Vec<u8>) {
        let url = format!("wss://localhost:{}/ws", hub.addr.port());
        let connector = Connector::Rustls(authority.client_config());
        let (stream, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .expect("wss connect");
        let MaybeTlsStream::Rustls(tls) = stream.get_ref() else { panic!("not over TLS") };
        let der = tls.get_ref().1.peer_certificates().expect("peer certificate")[0].to_vec();
        let mut ws = Wss { stream, next_id: 1 };
        let token = herald_testkit::hs256_token(
            SECRET,
            &serde_json::json!({"sub": "u", "exp": herald_testkit::unix_now() + 3600, "channels": ["*"]}),
        );
        ws.request(Command::Connect { token: Some(token), name: None, version: None }).await;
        (ws, der)
    }

    /// Sends a command and waits for its (successful) reply.
    async fn request(&mut self, command: Command) {
        let id = self.next_id;
        self.next_id += 1;
        let text = Request { id: Some(id), command }.to_json();
        self.stream.send(Message::text(text)).await.expect("wss send");
        loop {
            if let ServerMessage::Reply { id: got, result, .. } = self.next().await
                && got == id
            {
                result.expect("command accepted");
                return;
            }
        }
    }

    /// The next message (answering server pings).
    async fn next(&mut self) -> ServerMessage {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = frame else {
                match frame {
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("wss connection ended: {other:?}"),
                }
            };
            // One message per frame is enough here; batched frames carry several lines.
            let mut lines = split_frame(text.as_str());
            let message = ServerMessage::parse(lines.next().unwrap()).unwrap();
            assert!(lines.next().is_none(), "batched frame not expected here");
            if matches!(message, ServerMessage::Ping) {
                self.stream.send(Message::text(r#"{"cmd":"pong"}"#)).await.unwrap();
                continue;
            }
            return message;
        }
    }
}

#[tokio::test]
async fn https_and_wss_survive_a_certificate_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::in_dir(dir.path());
    let old = Authority::generate("old");
    old.install(&files);
    let hub = TlsHerald::start(dir.path(), &files, "", &[]);

    let (status, der) = hub.health(&old.https_client()).await;
    assert_eq!((status, &der), (200, &old.leaf_der));
    let (mut ws, der) = Wss::connect(&hub, &old).await;
    assert_eq!(der, old.leaf_der);
    ws.request(Command::Subscribe {
        channel: "news".into(),
        since: None,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    })
    .await;

    // Swap the certificate under the running server.
    let new = Authority::generate("new");
    new.install(&files);
    hub.sighup();
    hub.wait_log("TLS certificate reloaded", 1);

    // The WebSocket opened before the reload still works both ways.
    ws.request(Command::Ping { timestamp: None }).await;
    let published = new
        .https_client()
        .post(hub.https("/api/publish"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"channel": "news", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status().as_u16(), 200);
    match ws.next().await {
        ServerMessage::Publication(p) => assert_eq!(p.channel, "news"),
        other => panic!("expected the publication, got {other:?}"),
    }

    // New connections get the new certificate, and one trusting only the old CA is refused.
    assert_eq!(hub.health(&new.https_client()).await, (200, new.leaf_der.clone()));
    assert_eq!(Wss::connect(&hub, &new).await.1, new.leaf_der);
    assert!(old.https_client().get(hub.https("/health")).send().await.is_err());

    // A file that does not load keeps the certificate in use.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    hub.sighup();
    hub.wait_log("TLS certificate not reloaded", 1);
    assert_eq!(hub.health(&new.https_client()).await, (200, new.leaf_der.clone()));
    ws.request(Command::Ping { timestamp: None }).await;
}

#[test]
fn refuses_to_start_on_a_missing_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::in_dir(dir.path());
    Authority::generate("x").install(&files);
    std::fs::remove_file(&files.key).unwrap();
    let config = format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", files.cert, files.key);
    std::fs::write(dir.path().join("herald.toml"), config).unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("herald.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.key_file") && stderr.contains("key.pem"), "{stderr}");
}

/// A `redis-server` serving TLS only; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_engine_over_rediss() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::in_dir(dir.path());
    let authority = Authority::generate("redis");
    authority.install(&files);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &authority.ca_pem).unwrap();
    let port = herald_testkit::free_port();
    let child = Process::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&files.cert)
        .arg("--tls-key-file")
        .arg(&files.key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (built with TLS) on PATH");
    let redis = TlsRedis { child, port };

    // The engine trusts the system roots; SSL_CERT_FILE points them at the test CA. Herald's
    // own listener reuses the same certificate.
    let engine = format!(
        "[engine]\nkind = \"redis\"\nredis_url = \"rediss://localhost:{}\"\nredis_prefix = \"tls\"",
        redis.port
    );
    let hub = TlsHerald::start(dir.path(), &files, &engine, &[("SSL_CERT_FILE", &ca)]);
    let client = authority.https_client();
    // Redis may still be starting: publishes answer 503 until the engine is connected.
    let deadline = Instant::now() + WAIT;
    loop {
        let response = client
            .post(hub.https("/api/publish"))
            .header("x-api-key", API_KEY)
            .json(&serde_json::json!({"channel": "news", "data": 1}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "publish over rediss still {status} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = client
        .get(hub.https("/api/history?channel=news"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status().as_u16(), 200);
    let history: serde_json::Value = history.json().await.unwrap();
    assert_eq!(history["publications"][0]["data"], 1, "{history}");
}
