//! `herald bench`: a load generator with scenarios (`fanout`, `rooms`, `connect`, `idle`,
//! `resume`, `views`, `presence`, and `floor`, which needs no server), bounded in count and
//! time, on 127.0.0.1 only.
//!
//! It starts this very binary as the server (`herald serve --listen 127.0.0.1:0` with a temporary
//! configuration) or targets a running one (`--url`, `--server-pid`), measures publish-to-receive
//! latency from a timestamp in each payload and the server's CPU time and RSS from `/proc`, and
//! prints one markdown row (or one JSON object with `--json`). docs/benchmarks.md has the method.
//! Publications go over a WebSocket, or with `--http` through the HTTP API (`--batch K`: the
//! batch route).

#[path = "bench/client.rs"]
mod client;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/pipelined.rs"]
mod pipelined;
#[path = "bench/presence.rs"]
mod presence;
#[path = "bench/scenarios.rs"]
mod scenarios;
#[path = "bench/views.rs"]
mod views;

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One channel, N subscribers, events published as fast as accepted (or at `--rate`).
    Fanout,
    /// N clients each in its own channel; the publisher cycles over the channels.
    Rooms,
    /// Authenticated connections per second until N are open.
    Connect,
    /// N idle authenticated connections: server RSS before and after.
    Idle,
    /// N clients disconnect, M publications happen, all reconnect and resume.
    Resume,
    /// N view subscribers of one keyed channel, each with its own filter; writes move records
    /// from one view to another (issue 13).
    Views,
    /// N members of one presence channel, all following its presence; a fraction of them
    /// leaves and joins again each second (issue 14).
    Presence,
    /// No server: one thread writes a rooms-sized frame to each of N loopback sockets in
    /// turn; its CPU per write is the kernel's floor for one write per delivery.
    Floor,
}

/// Arguments of `herald bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Clients (subscribers / connections). Defaults: fanout 1000, rooms 1000, connect 2000,
    /// idle 2000, resume 200, views 1000, presence 1000 (members).
    #[arg(long, short = 'n', visible_aliases = ["subscribers", "members"])]
    pub clients: Option<usize>,
    /// Publications (fanout, rooms, views: writes) or missed publications per client (resume).
    /// Defaults: fanout 2000, rooms 20000, resume 100, views 5000.
    #[arg(long, short = 'e')]
    pub events: Option<u64>,
    /// Size of each event's `data` in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Fixed publish rate in events per second (0: as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Most publications in flight (published but not yet received by every subscriber).
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Publish commands per WebSocket frame (default 16); with `--http`, publications per
    /// request (default 1: `POST /api/publish`; more: `POST /api/publish/batch`).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Publish through the HTTP API over keep-alive connections instead of a WebSocket
    /// (fanout, rooms).
    #[arg(long)]
    pub http: bool,
    /// With `--http`: keep-alive connections, one request in flight on each (or
    /// `--http-pipeline`).
    #[arg(long, default_value_t = 8)]
    pub http_connections: usize,
    /// With `--http`: requests written back to back on each connection before its answers are
    /// read (HTTP/1.1 pipelining; 1: one at a time, by reqwest).
    #[arg(long, default_value_t = 1)]
    pub http_pipeline: usize,
    /// API key of the running server (`--http` with `--url`).
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// Connections opened concurrently during setup.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Time bound of the measured phase, in seconds.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// 127.0.0.x source addresses to spread connections over, with ports chosen by the bench
    /// (0: 8, or one per 25,000 clients; 1: the kernel picks the port at connect time, which
    /// gets slow with tens of thousands of sockets in TIME_WAIT from earlier runs).
    #[arg(long, default_value_t = 0)]
    pub sources: u8,
    /// Target a running server (`ws://127.0.0.1:PORT/ws`) instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// PID of the running server, for CPU and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Token secret of the running server (HS256).
    #[arg(long, default_value = "bench-secret")]
    pub token_secret: String,
    /// Namespace of the bench channels (must allow client publish or a token `publish` claim).
    #[arg(long, default_value = "bench")]
    pub namespace: String,
    /// Print one JSON object instead of a markdown row.
    #[arg(long)]
    pub json: bool,
    /// Print the markdown table header before the row.
    #[arg(long)]
    pub header: bool,
    /// Pass the started server's log lines through to stderr.
    #[arg(long)]
    pub verbose: bool,
    /// Views: tasks in the channel (written before the subscribers arrive).
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Views: distinct assignees, one filter each (0: one per subscriber).
    #[arg(long, default_value_t = 0)]
    pub assignees: usize,
    /// Views: filters without an index term (`not (assignee != "uK")`), so every view is
    /// evaluated on every write.
    #[arg(long)]
    pub unindexed: bool,
    /// Presence: fraction of the members that disconnect and join again (as a new member) per
    /// second during the measured phase.
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Protocol version the clients ask for at `connect` (2: compact live publications,
    /// docs/protocol.md §17; 1: full JSON objects).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub protocol: u32,
    /// Clients offer permessage-deflate; a started server has `[compression] enabled` (a
    /// `--url` server must have it on itself).
    #[arg(long)]
    pub compress: bool,
    /// Run the started servers on the Redis engine, on a `redis-server` the bench starts on a
    /// free port (no persistence) and stops at the end.
    #[arg(long, conflicts_with_all = ["redis_url", "redis_cluster"])]
    pub redis: bool,
    /// Run the started servers on a Redis Cluster of this many masters (no replicas) that the
    /// bench starts on free ports (`redis-cli --cluster create`) and stops at the end.
    #[arg(long, conflicts_with = "redis_url", value_parser = clap::value_parser!(u16).range(3..=16))]
    pub redis_cluster: Option<u16>,
    /// Run the started servers on the Redis engine at this URL (127.0.0.1 only; any form
    /// `engine.redis_url` takes).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Herald nodes to start (more than 1 needs `--redis` or `--redis-url`); the clients are
    /// spread over them and the publisher uses the first, so deliveries cross Redis pub/sub.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Start this herald binary as the server instead of the bench's own (another build, to
    /// compare before and after a change with the same load generator).
    #[arg(long)]
    pub server_bin: Option<std::path::PathBuf>,
    /// Pin the load generator to CPU 0 and the started servers to CPU 1 (like `taskset`), so
    /// they do not share a core's run queue: the latency figures then measure the hub, not the
    /// scheduler. Needs at least 2 CPUs; not with `--url`.
    #[arg(long)]
    pub pin: bool,
}

/// What a scenario measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Publications made.
    pub events: u64,
    /// Publications received by subscribers (or recovered, for resume).
    pub deliveries: u64,
    /// Length of the measured phase.
    pub elapsed: Duration,
    /// Latency histogram (publish to receive; reconnect to recovered for resume).
    pub latency: client::Hist,
    /// Connections opened per second (connect, idle).
    pub conns_per_sec: Option<f64>,
    /// Server RSS per connection (idle): the growth over all of them.
    pub bytes_per_conn: Option<f64>,
    /// Server RSS per connection over the second half of them (idle): what one more costs,
    /// without the fixed cost of handshake buffers the allocator kept from the first half.
    pub marginal_bytes_per_conn: Option<f64>,
    /// Time until every client had recovered (resume).
    pub recovered_ms: Option<f64>,
    /// Failures: lost or out-of-order deliveries, closed connections, refused commands.
    pub errors: u64,
    /// Server CPU seconds during the measured phase.
    pub cpu_s: Option<f64>,
    /// Server RSS at the end of the measured phase.
    pub rss: Option<u64>,
    /// CPU seconds of this load generator (setup included).
    pub client_cpu_s: Option<f64>,
    /// Bytes of each delivered publication's message as received (fanout, rooms).
    pub bytes_per_delivery: Option<f64>,
    /// Server RSS growth over the measured phase per subscriber (fanout, rooms): what a
    /// connection keeps after large publications (socket write buffers).
    pub rss_growth_per_conn: Option<f64>,
    /// Bytes the clients read from their sockets per delivery (WebSocket framing included,
    /// compressed when deflate is on).
    pub wire_bytes_per_delivery: Option<f64>,
    /// CPU seconds of the bench's `redis-server` (`--redis`) over the measured phase (fanout,
    /// rooms); the server CPU figures count the Herald nodes only.
    pub redis_cpu_s: Option<f64>,
}

/// The server under test.
pub struct Server {
    /// Its address.
    pub addr: SocketAddr,
    /// Its PID, when known.
    pub pid: Option<u32>,
    child: Option<Child>,
    /// Temporary files of a started server (configuration, spec), removed with it.
    files: Vec<std::path::PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        for p in &self.files {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// CPU seconds (user + system) and RSS bytes of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) in clock ticks; Linux reports USER_HZ = 100.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}

fn bench_config(namespace: &str, size: usize) -> String {
    // Large events (`--size` above the default 64 KiB limit): limits that let them through.
    let (limits, message) = if size > 60 * 1024 {
        let max = size + 1024;
        (
            format!(
                "max_frame_bytes = {}\nmax_api_body_bytes = {}\noutbound_queue_bytes = {}\n",
                max + 64 * 1024,
                max + 64 * 1024,
                (64 * max).max(8 << 20)
            ),
            format!("max_message_bytes = {max}\n"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "[limits]\ncommands_per_second = 0\noutbound_queue_messages = 4096\n{limits}\n[namespaces.{namespace}]\nsubscribe = \"authenticated\"\nclient_publish = true\nhistory_size = 1000\n{message}"
    )
}

/// The `redis-server` processes started for the run (`--redis`: one; `--redis-cluster N`: a
/// cluster of N masters), stopped with it.
struct RedisProcess {
    /// The servers; killed on drop.
    children: Vec<Child>,
    /// The URL the nodes take (`redis+cluster://…` for a cluster).
    url: String,
    /// Their scratch directory, removed on drop.
    dir: std::path::PathBuf,
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` on a free port without persistence (with `--redis-cluster`, `masters`
/// of them, made a cluster) and waits until it answers.
fn start_redis(masters: Option<u16>) -> anyhow::Result<RedisProcess> {
    let dir = std::env::temp_dir().join(format!("herald-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut redis = RedisProcess { children: Vec::new(), url: String::new(), dir: dir.clone() };
    let mut ports = Vec::new();
    for _ in 0..masters.unwrap_or(1) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
        ])
        .args(["no", "--protected-mode", "no", "--dir"])
        .arg(&dir);
        if masters.is_some() {
            let conf = dir.join(format!("nodes-{port}.conf"));
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"]).arg(conf);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        redis.children.push(child);
        ports.push(port);
    }
    for port in &ports {
        wait_pong(*port)?;
    }
    if masters.is_none() {
        redis.url = format!("redis://127.0.0.1:{}", ports[0]);
        return Ok(redis);
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("redis-cli --cluster create (is redis-cli installed?)")?;
    if !created.success() {
        bail!("redis-cli --cluster create failed");
    }
    // Every node agrees the cluster is up within 20 s (bounded: 400 attempts).
    for _ in 0..400 {
        let ok = ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            redis.url = format!("redis+cluster://{}", nodes.join(","));
            return Ok(redis);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the redis cluster did not reach cluster_state:ok")
}

/// Waits until the `redis-server` on `port` answers PING (within 10 s: 200 attempts).
fn wait_pong(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let mut buf = [0u8; 7];
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("redis-server on port {port} did not answer PING")
}

/// `--pin`: the CPU of the load generator.
const LOAD_CPU: usize = 0;
/// `--pin`: the CPU of the started servers.
const SERVER_CPU: usize = 1;

/// `--pin`, called by `main` before the runtime is built: the load generator then runs on
/// CPU 0 with one worker thread. A runtime built first would keep a worker per CPU, and two
/// workers time-sliced on one core hold each other's queued tasks for a scheduler tick
/// (milliseconds), which the latency figures would count as the hub's.
pub fn pin_before_runtime(args: &BenchArgs) -> anyhow::Result<()> {
    if !args.pin {
        return Ok(());
    }
    if args.url.is_some() {
        bail!("--pin pins the servers the bench starts: not with --url (use taskset)");
    }
    pin_process(LOAD_CPU).context("--pin")
}

/// Restricts every thread of this process to `cpu` (`taskset -a -p`).
fn pin_process(cpu: usize) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= SERVER_CPU.max(cpu) {
        bail!("needs at least {} CPUs, this process may use {cpus}", SERVER_CPU.max(cpu) + 1);
    }
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !pinned.success() {
        bail!("taskset could not pin the load generator to CPU {cpu}");
    }
    Ok(())
}

/// Starts this binary as server node `node` (on `redis` when given) and waits for its
/// `listening on` line.
fn start_server(args: &BenchArgs, node: usize, redis: Option<&str>) -> anyhow::Result<Server> {
    let exe = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().context("locating the herald binary")?,
    };
    let path =
        std::env::temp_dir().join(format!("herald-bench-{}-{node}.toml", std::process::id()));
    let mut config = bench_config(&args.namespace, args.size);
    if let Some(url) = redis {
        // Prepended: the TOML tables that follow must not swallow these keys.
        config = format!(
            "[engine]\nkind = \"redis\"\nredis_url = {}\n\n{config}",
            serde_json::to_string(url)?
        );
    }
    if args.compress {
        config.push_str("\n[compression]\nenabled = true\n");
    }
    let mut files = vec![path.clone()];
    let mut spec_args: Vec<std::ffi::OsString> = Vec::new();
    if args.scenario == Scenario::Views {
        // The kanban spec and a `task` namespace with ad-hoc filters.
        let spec =
            std::env::temp_dir().join(format!("herald-bench-{}-{node}.herald", std::process::id()));
        std::fs::write(&spec, views::KANBAN_SPEC)?;
        config.push('\n');
        config.push_str(views::NAMESPACE_CONFIG);
        spec_args.extend(["--spec".into(), spec.clone().into()]);
        files.push(spec);
    }
    if args.scenario == Scenario::Presence {
        config.push('\n');
        config.push_str(presence::NAMESPACE_CONFIG);
    }
    std::fs::write(&path, config)?;
    // `taskset` runs the server in its own process (exec), so the PID is the server's.
    let mut command = if args.pin {
        let mut c = Command::new("taskset");
        c.args(["-c", &SERVER_CPU.to_string()]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--api-key"])
        .arg(&args.api_key)
        .arg("--token-secret")
        .arg(&args.token_secret)
        .arg("--config")
        .arg(&path)
        .args(&spec_args)
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting herald serve")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let verbose = args.verbose;
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if verbose {
                eprintln!("[server] {line}");
            }
            if let Some((_, rest)) = line.split_once("listening on http://")
                && let Some(addr) = rest.split_whitespace().next()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let mut server = Server {
        addr: ([127, 0, 0, 1], 0).into(),
        pid: Some(child.id()),
        child: Some(child),
        files,
    };
    let addr = rx.recv_timeout(Duration::from_secs(20)).context("server did not start")?;
    server.addr = addr.parse().with_context(|| format!("server address {addr:?}"))?;
    Ok(server)
}

fn target_server(url: &str, pid: Option<u32>) -> anyhow::Result<Server> {
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    let host = parsed.host_str().unwrap_or("");
    if !host.starts_with("127.") && host != "localhost" {
        bail!("herald bench targets 127.0.0.1 only, not {host}");
    }
    let port = parsed.port_or_known_default().context("--url needs a port")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Ok(Server { addr, pid, child: None, files: Vec::new() })
}

/// Raises RLIMIT_NOFILE for this process (and so for the server it starts).
fn raise_nofile(want: u64) {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < want
    {
        let target = want.max(soft);
        if rlimit::Resource::NOFILE.set(target, hard.max(target)).is_err() {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// Runs the scenario and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let clients = args.clients.unwrap_or(match args.scenario {
        Scenario::Fanout | Scenario::Rooms | Scenario::Views | Scenario::Presence => 1000,
        Scenario::Connect | Scenario::Idle => 2000,
        Scenario::Resume => 200,
        Scenario::Floor => 5000,
    });
    let events = args.events.unwrap_or(match args.scenario {
        Scenario::Fanout => 2000,
        Scenario::Rooms => 20_000,
        Scenario::Floor => 500_000,
        Scenario::Connect | Scenario::Idle | Scenario::Presence => 0,
        Scenario::Resume => 100,
        Scenario::Views => 5000,
    });
    if args.http && !matches!(args.scenario, Scenario::Fanout | Scenario::Rooms) {
        bail!("--http applies to the fanout and rooms scenarios");
    }
    raise_nofile(2 * clients as u64 + 4096);
    if args.scenario == Scenario::Floor {
        let cpu = args.pin.then_some(SERVER_CPU);
        let deadline = Duration::from_secs(args.duration.max(1));
        let client_before = proc_usage(std::process::id());
        let mut outcome = floor::floor(clients, events, args.size, cpu, deadline).await?;
        outcome.client_cpu_s =
            client_before.zip(proc_usage(std::process::id())).map(|(b, a)| a.0 - b.0);
        report(&args, clients, &outcome);
        return Ok(());
    }
    let on_redis = args.redis || args.redis_cluster.is_some() || args.redis_url.is_some();
    if args.nodes == 0 || (args.nodes > 1 && !on_redis) {
        bail!(
            "--nodes {} needs --redis, --redis-cluster or --redis-url (nodes share the Redis engine)",
            args.nodes
        );
    }
    if args.url.is_some() && (on_redis || args.nodes > 1) {
        bail!(
            "--url targets a running server: --redis, --redis-cluster, --redis-url and --nodes start servers"
        );
    }
    let redis = if args.redis || args.redis_cluster.is_some() {
        Some(start_redis(args.redis_cluster)?)
    } else {
        None
    };
    let redis_url = redis.as_ref().map(|r| r.url.clone()).or_else(|| args.redis_url.clone());
    let servers = match &args.url {
        Some(url) => vec![target_server(url, args.server_pid)?],
        None => (0..args.nodes)
            .map(|n| start_server(&args, n, redis_url.as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let server = &servers[0];
    let sources =
        if args.sources == 0 { (clients / 25_000 + 1).clamp(8, 250) as u8 } else { args.sources };
    let claims = herald_server::auth::Claims {
        sub: "bench".into(),
        exp: Some(herald_server::auth::unix_now() + 24 * 3600),
        channels: vec!["*".into()],
        publish: vec!["*".into()],
        ..Default::default()
    };
    let token = herald_server::auth::mint_hs256(&args.token_secret, &claims)?;
    let endpoint = client::Endpoint {
        addr: server.addr,
        token,
        sources,
        version: args.protocol,
        compress: args.compress,
        nodes: servers.iter().map(|s| s.addr).collect(),
    };
    let plan = scenarios::Plan {
        endpoint,
        clients,
        events,
        size: args.size,
        rate: args.rate,
        window: args.window.max(1),
        batch: args.batch.unwrap_or(if args.http { 1 } else { 16 }).max(1),
        concurrency: args.concurrency.max(1),
        duration: Duration::from_secs(args.duration.max(1)),
        namespace: args.namespace.clone(),
        pid: server.pid,
        other_pids: servers[1..].iter().filter_map(|s| s.pid).collect(),
        redis_pids: redis
            .as_ref()
            .map(|r| r.children.iter().map(Child::id).collect())
            .unwrap_or_default(),
        http: args.http.then(|| scenarios::HttpPublish {
            api_key: args.api_key.clone(),
            connections: args.http_connections.max(1),
            pipeline: args.http_pipeline.max(1),
        }),
    };
    let client_before = proc_usage(std::process::id());
    let mut outcome = match args.scenario {
        Scenario::Fanout => scenarios::fanout(&plan).await?,
        Scenario::Rooms => scenarios::rooms(&plan).await?,
        Scenario::Connect => scenarios::connect(&plan, false).await?,
        Scenario::Idle => scenarios::connect(&plan, true).await?,
        Scenario::Resume => scenarios::resume(&plan).await?,
        Scenario::Views => {
            let v = views::ViewsPlan {
                records: args.records,
                assignees: args.assignees,
                unindexed: args.unindexed,
            };
            views::views(&plan, &v).await?
        }
        Scenario::Presence => {
            presence::presence(&plan, &presence::PresencePlan { churn: args.churn }).await?
        }
        Scenario::Floor => unreachable!("floor runs without a server, above"),
    };
    // Load generator CPU over setup and measurement (it shares the machine with the server).
    outcome.client_cpu_s =
        client_before.zip(proc_usage(std::process::id())).map(|(b, a)| a.0 - b.0);
    drop(servers);
    drop(redis);
    report(&args, clients, &outcome);
    Ok(())
}

/// How the publications were made: `ws`, `http` (one per request) or `http batch K`, with
/// ` pipeline P` when requests were pipelined.
fn publish_label(args: &BenchArgs) -> String {
    let mode = match (args.http, args.batch.unwrap_or(1)) {
        (false, _) => return "ws".into(),
        (true, 0 | 1) => "http".to_string(),
        (true, k) => format!("http batch {k}"),
    };
    match args.http_pipeline {
        0 | 1 => mode,
        p => format!("{mode} pipeline {p}"),
    }
}

fn report(args: &BenchArgs, clients: usize, o: &Outcome) {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let name = format!("{:?}", args.scenario).to_lowercase();
    let publish = publish_label(args);
    // The table's scenario column names HTTP publishing; WebSocket rows read as before.
    let deflate = if args.compress { "deflate" } else { "" };
    let label = if args.protocol == 1 {
        format!("{name} ({publish}, protocol 1)")
    } else if args.http {
        format!("{name} ({publish})")
    } else if args.scenario == Scenario::Views && args.unindexed {
        format!("{name} (unindexed)")
    } else {
        name.clone()
    };
    let label = if deflate.is_empty() { label } else { format!("{label} (deflate)") };
    let label = if args.pin { format!("{label} (pinned)") } else { label };
    let on_redis = args.redis || args.redis_cluster.is_some() || args.redis_url.is_some();
    let cluster = args.redis_cluster.is_some()
        || args.redis_url.as_deref().is_some_and(|u| u.contains("+cluster://"));
    let engine = match (on_redis, cluster) {
        (false, _) => "memory",
        (true, false) => "redis",
        (true, true) => "redis-cluster",
    };
    let engine_label = match args.redis_cluster {
        Some(m) => format!("redis cluster of {m}"),
        None => engine.replace('-', " "),
    };
    let label = match (engine, args.nodes) {
        ("memory", _) => label,
        (_, 1) => format!("{label} ({engine_label})"),
        (_, n) => format!("{label} ({engine_label}, {n} nodes)"),
    };
    let per_sec = |n: u64| (n > 0).then(|| n as f64 / secs);
    let deliveries_per_sec = per_sec(o.deliveries);
    let events_per_sec = per_sec(o.events);
    let per_cpu = |n: u64| match o.cpu_s {
        Some(c) if c > 0.0 && n > 0 => Some(n as f64 / c),
        _ => None,
    };
    let p50 = o.latency.quantile_ms(0.5);
    let p99 = o.latency.quantile_ms(0.99);
    let p999 = o.latency.quantile_ms(0.999);
    if args.json {
        let v = serde_json::json!({
            "server": "herald",
            "scenario": name,
            "publish": publish,
            "clients": clients,
            "events": o.events,
            "size": args.size,
            "rate": args.rate,
            "duration_s": secs,
            "deliveries": o.deliveries,
            "deliveries_per_sec": deliveries_per_sec.unwrap_or(0.0),
            "events_per_sec": events_per_sec.unwrap_or(0.0),
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "max_ms": (o.latency.n > 0).then(|| o.latency.max_us as f64 / 1000.0),
            "server_cpu_s": o.cpu_s,
            "deliveries_per_cpu_s": per_cpu(o.deliveries),
            "events_per_cpu_s": per_cpu(o.events),
            "server_rss_bytes": o.rss,
            "client_cpu_s": o.client_cpu_s,
            "bytes_per_conn": o.bytes_per_conn,
            "marginal_bytes_per_conn": o.marginal_bytes_per_conn,
            "protocol": args.protocol,
            "bytes_per_delivery": o.bytes_per_delivery,
            "rss_growth_per_conn": o.rss_growth_per_conn,
            "compress": args.compress,
            "wire_bytes_per_delivery": o.wire_bytes_per_delivery,
            "conns_per_sec": o.conns_per_sec,
            // Connections per server CPU-second (connect, idle): what one core of the hub
            // accepts and authenticates, apart from the load generator sharing the machine.
            "conns_per_cpu_s": o.conns_per_sec.zip(o.cpu_s).filter(|(_, c)| *c > 0.0).map(|(r, c)| r * secs / c),
            "recovered_ms": o.recovered_ms,
            "unindexed": args.scenario == Scenario::Views && args.unindexed,
            "churn": (args.scenario == Scenario::Presence).then_some(args.churn),
            // Presence: the new member's subscribe-to-list time at N members.
            "list_ms": if args.scenario == Scenario::Presence { o.recovered_ms } else { None },
            "engine": engine,
            "pin": args.pin,
            // Worker threads of the load generator's runtime (one with `--pin`).
            "load_workers": tokio::runtime::Handle::current().metrics().num_workers(),
            "nodes": args.nodes,
            "redis_cpu_s": o.redis_cpu_s,
            "errors": o.errors,
        });
        println!("{v}");
        return;
    }
    if args.header {
        println!(
            "| server | scenario | clients | events | deliveries/s | p50 ms | p99 ms | p99.9 ms | server CPU s | deliveries/CPU-s | RSS MiB | bytes/conn | conns/s | recovered ms | errors |"
        );
        println!(
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
    }
    println!(
        "| herald | {label} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        o.events,
        fmt_opt(deliveries_per_sec, 0),
        fmt_opt(p50, 2),
        fmt_opt(p99, 2),
        fmt_opt(p999, 2),
        fmt_opt(o.cpu_s, 2),
        fmt_opt(per_cpu(o.deliveries), 0),
        fmt_opt(o.rss.map(|r| r as f64 / 1048576.0), 1),
        match o.marginal_bytes_per_conn {
            Some(m) => format!("{} ({m:.0} marginal)", fmt_opt(o.bytes_per_conn, 0)),
            None => fmt_opt(o.bytes_per_conn, 0),
        },
        fmt_opt(o.conns_per_sec, 0),
        fmt_opt(o.recovered_ms, 1),
        o.errors
    );
}
