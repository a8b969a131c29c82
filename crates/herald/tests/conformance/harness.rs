//! The hub a group of checks shares, and the runner: every check is an `async fn(Arc<Ctx>)`,
//! all checks of a group run concurrently against one hub (unique users and channels keep them
//! apart), and a failing check is reported by name without stopping the others.

use crate::client::Conn;
use crate::support::{Hub, SECRET};
use futures_util::future::BoxFuture;
use herald_testkit::RedisProcess;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every configuration of the suite checks tokens against (§11: `aud`, `iss` "checked when
/// configured").
pub const AUDIENCE: &str = "herald";
pub const ISSUER: &str = "https://auth.test";

/// A single check may take this long before it is reported as hung.
const CHECK_WITHIN: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engine {
    Memory,
    Redis,
}

/// One hub (and its redis-server) shared by a group of checks.
pub struct Ctx {
    pub hub: Hub,
    pub engine: Engine,
    /// Source of unique user and channel names.
    seq: AtomicU64,
    /// Kept alive as long as the hub; dropped after it. A mutex so a check can stop and restart it.
    redis: Mutex<Option<RedisProcess>>,
}

impl Ctx {
    /// Starts herald on `engine` with this configuration, which must not have an `[auth]`
    /// table: the harness appends one with the audience, issuer and this clock leeway.
    pub fn start(engine: Engine, config: &str, leeway_secs: u64) -> Ctx {
        let config = format!(
            "{config}\n[auth]\naudience = \"{AUDIENCE}\"\nissuer = \"{ISSUER}\"\nleeway_secs = {leeway_secs}\n"
        );
        let (hub, redis) = match engine {
            Engine::Memory => (Hub::start(&config), None),
            Engine::Redis => {
                let redis = RedisProcess::start();
                let url = redis.url();
                (Hub::start_with(&config, &["--engine", "redis", "--redis-url", &url]), Some(redis))
            }
        };
        Ctx { hub, engine, seq: AtomicU64::new(1), redis: Mutex::new(redis) }
    }

    /// SIGKILL the redis-server: its data is gone.
    pub fn kill_redis(&self) {
        self.redis.lock().unwrap().as_mut().expect("a redis engine").kill();
    }

    /// Starts the redis-server again on its port, empty; returns once it answers PING.
    pub async fn start_redis_again(&self) {
        tokio::task::block_in_place(|| {
            self.redis.lock().unwrap().as_mut().expect("a redis engine").restart()
        });
    }

    /// A name used by nobody else in this hub's life.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh channel in namespace `ns`.
    pub fn channel(&self, ns: &str) -> String {
        self.unique(&format!("{ns}:c"))
    }

    /// A token for `user` with `channels`, valid 10 minutes, with the configured aud and iss.
    pub fn token(&self, user: &str, channels: &[&str]) -> String {
        self.token_with(json!({"sub": user, "channels": channels}))
    }

    /// A token with these claims; `exp`, `aud` and `iss` are added unless present (a JSON null
    /// removes one).
    pub fn token_with(&self, claims: Value) -> String {
        let mut claims = claims.as_object().expect("claims object").clone();
        let defaults = [
            ("exp", json!(herald_testkit::unix_now() + 600)),
            ("aud", json!(AUDIENCE)),
            ("iss", json!(ISSUER)),
        ];
        for (k, v) in defaults {
            claims.entry(k).or_insert(v);
        }
        claims.retain(|_, v| !v.is_null());
        herald_testkit::hs256_token(SECRET, &Value::Object(claims))
    }

    /// A connection that completed `connect` as a new user allowed on `channels`; (conn, user).
    pub async fn client(&self, channels: &[&str]) -> (Conn, String) {
        let user = self.unique("u");
        let conn = self.client_as(&user, channels).await;
        (conn, user)
    }

    /// A connection that completed `connect` as `user`.
    pub async fn client_as(&self, user: &str, channels: &[&str]) -> Conn {
        let mut c = self.open().await;
        c.connect(Some(&self.token(user, channels))).await.expect("connect");
        c
    }

    /// An open WebSocket that has not sent `connect`.
    pub async fn open(&self) -> Conn {
        Conn::open(&self.hub.ws_url()).await
    }

    /// HTTP API call with the key; (status, JSON body or the text as a string).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.hub.api(method, path, body).await
    }

    /// `POST /api/publish`, must succeed; the PublishResult.
    pub async fn publish(&self, body: Value) -> Value {
        let (status, reply) = self.api("POST", "/api/publish", Some(body.clone())).await;
        assert_eq!(status, 200, "publish {body}: {reply}");
        reply
    }
}

pub type Check = (&'static str, fn(Arc<Ctx>) -> BoxFuture<'static, ()>);

/// `checks![f, g]`: the named async fns of this module as a list of checks.
macro_rules! checks {
    ($($f:ident),* $(,)?) => {
        vec![$((
            concat!(module_path!(), "::", stringify!($f)),
            (|c| Box::pin($f(c))) as fn(std::sync::Arc<$crate::harness::Ctx>)
                -> futures_util::future::BoxFuture<'static, ()>,
        )),*]
    };
}
pub(crate) use checks;

/// Runs groups of checks against one hub and collects the outcome.
pub struct Suite {
    /// None once taken by `take_ctx`.
    ctx: Option<Arc<Ctx>>,
    label: String,
    passed: Vec<&'static str>,
    failed: Vec<(&'static str, String)>,
}

impl Suite {
    pub fn new(engine: Engine, config: &str, leeway_secs: u64, label: &str) -> Suite {
        let ctx = Arc::new(Ctx::start(engine, config, leeway_secs));
        Suite {
            ctx: Some(ctx),
            label: format!("{label} [{engine:?}]"),
            passed: vec![],
            failed: vec![],
        }
    }

    /// The shared hub.
    pub fn ctx(&self) -> &Arc<Ctx> {
        self.ctx.as_ref().expect("the hub was taken")
    }

    /// The hub itself, for a last check that ends it; every check must have ended.
    pub fn take_ctx(&mut self) -> Ctx {
        let ctx = self.ctx.take().expect("the hub was taken");
        Arc::try_unwrap(ctx).unwrap_or_else(|_| panic!("a check still holds the hub"))
    }

    /// Runs these checks concurrently; returns when all ended.
    pub async fn run(&mut self, checks: Vec<Check>) {
        let ctx = self.ctx().clone();
        let running: Vec<_> = checks
            .into_iter()
            .map(|(name, f)| {
                (name, tokio::spawn(tokio::time::timeout(CHECK_WITHIN, f(ctx.clone()))))
            })
            .collect();
        for (name, task) in running {
            let outcome = match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(format!("hung for more than {CHECK_WITHIN:?}")),
                Err(e) if e.is_panic() => Err(panic_text(e.into_panic())),
                Err(e) => Err(e.to_string()),
            };
            self.record(name, outcome);
        }
    }

    /// Records a check run outside `run` (one that needs the hub to itself).
    pub fn record(&mut self, name: &'static str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.passed.push(name),
            Err(e) => self.failed.push((name, e)),
        }
    }

    /// Prints the outcome and fails the test if any check failed.
    pub fn finish(self) {
        let mut failures = format!("{} checks of {} failed:\n", self.failed.len(), self.label);
        for (name, why) in &self.failed {
            failures.push_str(&format!("  FAIL {name}: {}\n", why.lines().next().unwrap_or("")));
        }
        let mut report = format!(
            "conformance {}: {} passed, {} failed\n",
            self.label,
            self.passed.len(),
            self.failed.len()
        );
        for name in &self.passed {
            report.push_str(&format!("  PASS {name}\n"));
        }
        for (name, why) in &self.failed {
            report.push_str(&format!("  FAIL {name}: {}\n", why.replace('\n', "\n       ")));
        }
        println!("{report}");
        assert!(self.failed.is_empty(), "{failures}");
    }
}

/// Runs one future as a check inside the current task, catching its panic.
pub async fn catch(
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    match tokio::spawn(tokio::time::timeout(CHECK_WITHIN, fut)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(format!("hung for more than {CHECK_WITHIN:?}")),
        Err(e) if e.is_panic() => Err(panic_text(e.into_panic())),
        Err(e) => Err(e.to_string()),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
