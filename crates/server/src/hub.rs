//! The hub: shared state of one node. Sessions and the HTTP API both go through it, so a client
//! publish and an API publish take the same path.

use crate::auth::{Principal, Verifier};
use crate::config::{Config, Namespace, SubscribePolicy};
use crate::engine::{Engine, EngineError, NodeReport, PublishInput};
use crate::fanout::Fanout;
use crate::hook::SubscribeHook;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::rules::{self, History, Recovery, State};
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{ErrorBody, PublishResult};
use herald_protocol::{CloseCode, ErrorCode, Op, Position};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A live session as the hub sees it.
struct SessionEntry {
    /// Its user (empty: anonymous or not yet authenticated).
    user: String,
    /// Its queue, to close it.
    outbox: Arc<Outbox>,
}

/// Something that runs beside the hub and reports through its endpoints: the event-bus
/// bridges (`herald-bridge`) are one. It lives above the hub, so the hub knows it only as this.
pub trait Extension: Send + Sync + 'static {
    /// Its key in `/api/info` and in the body of `/ready` (e.g. `bridges`).
    fn name(&self) -> &'static str;
    /// Its entry there.
    fn info(&self) -> serde_json::Value;
    /// Its metric families in the OpenMetrics text format (without `# EOF`).
    fn metrics(&self) -> String {
        String::new()
    }
}

/// Shared state of one node.
pub struct Hub {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// This node's id.
    pub node_id: String,
    /// Offsets, history, state and cross-node fan-out; reached only through the hub's methods,
    /// so every read and write takes one path.
    engine: Arc<dyn Engine>,
    /// This node's subscribers by channel; the engine delivers into it.
    pub fanout: Arc<Fanout>,
    /// Token verification.
    pub verifier: Verifier,
    /// Optional subscribe-authorization hook.
    pub hook: Option<SubscribeHook>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Sessions by id.
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    /// Connections per user, for the per-user limit.
    users: Mutex<HashMap<String, usize>>,
    /// Upgrade attempts per IP in the current minute.
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Session ids.
    next_session: AtomicU64,
    /// Set on shutdown; sessions opened after it are closed at once.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Woken when the last session closes, so shutdown can stop waiting.
    drained: tokio::sync::Notify,
    /// When this node started.
    pub started: Instant,
    /// What runs beside the hub and reports through its endpoints (the event-bus bridges).
    extensions: parking_lot::RwLock<Vec<Arc<dyn Extension>>>,
    /// Plain HTTP connections open on this node's listener (per-IP and total bounds).
    pub http_connections: Arc<crate::listener::HttpConnections>,
    /// The housekeeping task between [`Hub::start`] and [`Hub::stop`], so the hub owns its
    /// background work and ends it (also when dropped).
    housekeeping: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Presence changes waiting for their window, and what this node wrote (crate::presence).
    presence: crate::presence::Presence,
    /// Options of every presence stream.
    pub presence_ns: Namespace,
    /// Held while a presence flush publishes, so flushes run one at a time and a leave taken
    /// by a later flush sees the join an earlier one wrote.
    presence_flush: tokio::sync::Mutex<()>,
}

/// How often [`Hub::start`]'s housekeeping runs [`Hub::maintain`] by default.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// Deepest nesting of arrays and objects a publication's `data` may have: what every decoder
/// reads, with room for the envelope (publication, reply, batch) around it.
pub const MAX_DATA_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in a JSON text (already known to be valid JSON).
/// A scan by hand: the text is raw (never parsed into a value), and a parse to measure it would
/// itself hit the recursion limit.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Channel names: 1–255 bytes, no whitespace or control characters.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.len() <= 255
        // Printable ASCII, the usual name, without decoding characters (twice per publish).
        && (channel.bytes().all(|b| b.is_ascii_graphic())
            || !channel.chars().any(|c| c.is_whitespace() || c.is_control()))
}

impl Hub {
    /// Builds a hub on an engine.
    pub fn new(mut config: Config, engine: Arc<dyn Engine>) -> Result<Arc<Hub>, crate::HubError> {
        config.load_specs()?;
        config.validate()?;
        for warning in config.warnings() {
            tracing::warn!("configuration: {warning}");
        }
        let metrics = Arc::new(Metrics::new(config.namespaces.keys().map(String::as_str)));
        let presence_ns = crate::presence::stream_namespace(config.limits.outbound_queue_bytes);
        let counted = metrics.clone();
        let fanout = Arc::new(Fanout::with_observer(Arc::new(move |channel, pushed| {
            counted.delivered(Config::namespace_of(channel), pushed)
        })));
        engine.attach(fanout.clone());
        let node_id = if config.node_id.is_empty() {
            format!("n-{}", &crate::engine::new_epoch()[..6])
        } else {
            config.node_id.clone()
        };
        Ok(Arc::new(Hub {
            verifier: Verifier::new(&config.auth)?,
            hook: config.subscribe_hook.clone().map(SubscribeHook::new),
            config: Arc::new(config),
            node_id,
            engine,
            fanout,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            presence: crate::presence::Presence::default(),
            presence_ns,
            presence_flush: tokio::sync::Mutex::new(()),
            drained: tokio::sync::Notify::new(),
            started: Instant::now(),
            extensions: Default::default(),
            http_connections: Default::default(),
            housekeeping: Mutex::new(None),
        }))
    }

    /// The namespace of a channel, or `unknown_namespace` / `invalid_channel`.
    pub fn namespace(&self, channel: &str) -> Result<&Namespace, ErrorBody> {
        if !valid_channel(channel) {
            return Err(ErrorBody::new(ErrorCode::InvalidChannel, "invalid channel name")
                .with_channel(channel));
        }
        let name = Config::namespace_of(channel);
        if name == crate::config::SYSTEM_NAMESPACE {
            return Ok(&crate::config::SYSTEM_NAMESPACE_OPTIONS);
        }
        self.config.namespaces.get(name).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::UnknownNamespace,
                format!("namespace {name:?} is not configured"),
            )
            .with_channel(channel)
        })
    }

    /// Whether any namespace admits anonymous connections.
    pub fn anonymous_allowed(&self) -> bool {
        self.config.namespaces.values().any(|ns| ns.anonymous)
    }

    /// Decides whether `principal` may subscribe to `channel`.
    pub async fn authorize_subscribe(
        &self,
        principal: &Principal,
        client: impl FnOnce() -> String,
        channel: &str,
        ns: &Namespace,
    ) -> Result<(), ErrorBody> {
        match self.authorize_view(principal, client, channel, ns).await? {
            None => Ok(()),
            Some(_) => Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "the subscribe hook holds this user to a view filter here: subscribe with a view",
            )
            .with_channel(channel)),
        }
    }

    /// Whether `principal` may follow `channel` through a view; `Some(filter)` when the
    /// subscribe hook holds it to that filter there (ANDed with the view's). `client` names the
    /// connection for the hook, made only when it is asked.
    pub async fn authorize_view(
        &self,
        principal: &Principal,
        client: impl FnOnce() -> String,
        channel: &str,
        ns: &Namespace,
    ) -> Result<Option<String>, ErrorBody> {
        let forbidden = || {
            ErrorBody::new(ErrorCode::Forbidden, "not allowed to subscribe to this channel")
                .with_channel(channel)
        };
        // An anonymous connection is told to log in (101), not that it is not allowed (103):
        // a client can then tell "needs a token" from "this user may not" (seed 003).
        let needs_token = || {
            ErrorBody::new(ErrorCode::Unauthorized, "this channel needs a token: connect with one")
                .with_channel(channel)
        };
        if principal.is_anonymous() && !ns.anonymous {
            return Err(needs_token());
        }
        // The hub's own figures (`sys:*`) are for admin tokens only, whatever the claims say.
        if Config::namespace_of(channel) == crate::config::SYSTEM_NAMESPACE {
            return if principal.admin { Ok(None) } else { Err(forbidden()) };
        }
        if principal.may_subscribe(channel) {
            return Ok(None);
        }
        let allowed = match ns.subscribe {
            SubscribePolicy::Anyone => true,
            SubscribePolicy::Authenticated if principal.is_anonymous() => {
                return Err(needs_token());
            }
            SubscribePolicy::Authenticated => true,
            SubscribePolicy::Claims => false,
            SubscribePolicy::Hook => match &self.hook {
                Some(hook) => {
                    let answer = hook.answer(&principal.user, channel, &client()).await;
                    if answer.allow {
                        return Ok(answer.filter);
                    }
                    false
                }
                None => false,
            },
        };
        if allowed { Ok(None) } else { Err(forbidden()) }
    }

    /// Decides whether `principal` may publish to `channel` from a client connection; `client`
    /// names the connection for a subscribe hook (made only when one is asked).
    pub async fn authorize_publish(
        &self,
        principal: &Principal,
        client: impl FnOnce() -> String,
        channel: &str,
        ns: &Namespace,
    ) -> Result<(), ErrorBody> {
        if principal.may_publish(channel) {
            return Ok(());
        }
        if ns.client_publish {
            match self.authorize_subscribe(principal, client, channel, ns).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code == ErrorCode::Unauthorized.code() => return Err(e),
                Err(_) => {}
            }
        }
        Err(ErrorBody::new(ErrorCode::Forbidden, "not allowed to publish to this channel")
            .with_channel(channel))
    }

    /// Publishes (after authorization): size check, then the engine's atomic step. The hub's own
    /// channels (`sys:*`) are refused with 103 whoever asks (a client, even an admin, the HTTP
    /// API, the application in process), so their figures cannot be forged.
    pub async fn publish(&self, input: PublishInput) -> Result<PublishResult, ErrorBody> {
        if Config::namespace_of(&input.channel) == crate::config::SYSTEM_NAMESPACE {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "only the hub publishes to its own channels (sys:*)",
            )
            .with_channel(&input.channel));
        }
        self.accept(input).await
    }

    /// A publication of the hub's own to a `sys:*` channel (the `sys:stats` publisher).
    pub(crate) async fn publish_system(
        &self,
        input: PublishInput,
    ) -> Result<PublishResult, ErrorBody> {
        self.accept(input).await
    }

    /// What [`Hub::publish`] does once the channel is one anybody may be allowed to publish to.
    async fn accept(&self, input: PublishInput) -> Result<PublishResult, ErrorBody> {
        let ns = self.namespace(&input.channel)?;
        // Every way in (WebSocket, HTTP, in process) refuses what subscribers could not all
        // decode alike: a lone UTF-16 surrogate escape (browsers accept it, serde_json does not).
        if let Some(unit) = herald_protocol::command::lone_surrogate(input.data.get()) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("`data` holds a lone surrogate escape \\u{unit:04x}"),
            )
            .with_channel(&input.channel));
        }
        // serde_json (the Rust client, this hub's own history reader) refuses JSON nested deeper
        // than 128 levels; data deeper than MAX_DATA_DEPTH would be stored but undecodable.
        // Counting opening brackets (in strings too) is a vectorized pass; only a payload with
        // more of them than the limit can be nested deeper, and only then is it walked.
        let data = input.data.get();
        let opening = data.bytes().filter(|&b| b == b'[' || b == b'{').count();
        if opening > MAX_DATA_DEPTH && json_depth(data) > MAX_DATA_DEPTH {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
            )
            .with_channel(&input.channel));
        }
        if input.data.get().len() > ns.max_message_bytes {
            return Err(ErrorBody::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "data is {} bytes; the namespace allows {}",
                    input.data.get().len(),
                    ns.max_message_bytes
                ),
            )
            .with_channel(&input.channel));
        }
        let channel = input.channel.clone();
        let result = self.engine.publish(ns, input).await.map_err(|e| engine_error(e, &channel))?;
        if !result.duplicate {
            self.metrics.publications.inc();
            self.metrics.published(Config::namespace_of(&channel));
        }
        Ok(result)
    }

    /// Where `channel` stands, plus what a subscriber resuming from `since` (or asking for a
    /// snapshot) needs. Call after [`Hub::add_subscriber`], so nothing published after the
    /// position read can be missed.
    pub async fn recover(
        &self,
        ns: &Namespace,
        channel: &str,
        since: Option<&Position>,
        snapshot: bool,
    ) -> Result<Recovery, ErrorBody> {
        rules::recover(&*self.engine, ns, channel, since, snapshot)
            .await
            .map_err(|e| engine_error(e, channel))
    }

    /// A page of a channel's history (at most `limits.max_history_page` publications).
    pub async fn history(&self, ns: &Namespace, q: &HistoryQuery) -> Result<History, ErrorBody> {
        rules::history(&*self.engine, ns, q, self.config.limits.max_history_page)
            .await
            .map_err(|e| engine_error(e, &q.channel))
    }

    /// A keyed channel's records and the position they correspond to.
    pub async fn state(&self, ns: &Namespace, channel: &str) -> Result<State, ErrorBody> {
        rules::state(&*self.engine, ns, channel).await.map_err(|e| engine_error(e, channel))
    }

    /// Takes or renews the cluster-wide lease `name` for this node for `ttl` (see
    /// [`Engine::lease`]); true while this node holds it.
    pub async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, ErrorBody> {
        self.engine
            .lease(name, &self.node_id, ttl)
            .await
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()))
    }

    /// Whether the engine can serve right now (`/ready`).
    pub async fn ready(&self) -> bool {
        self.engine.ready().await
    }

    /// Bytes of history and state the engine holds in this process, and its budget.
    pub fn engine_memory(&self) -> Option<(usize, usize)> {
        self.engine.memory()
    }

    /// The `/metrics` text, with this moment's readings (engine memory and round trips, the
    /// queues of every session).
    pub fn render_metrics(&self) -> String {
        if let Some((used, budget)) = self.engine_memory() {
            self.metrics.engine_memory_bytes.set(used as i64);
            self.metrics.engine_memory_budget_bytes.set(budget as i64);
        }
        let mut scrape =
            crate::metrics::Scrape { round_trips: self.engine.round_trips(), ..Default::default() };
        let outboxes: Vec<Arc<Outbox>> =
            self.sessions.lock().values().map(|s| s.outbox.clone()).collect();
        for outbox in outboxes {
            let (publications, bytes) = outbox.queued();
            scrape.queued_publications += publications;
            scrape.queued_bytes += bytes;
            scrape.largest_queue_bytes = scrape.largest_queue_bytes.max(bytes);
        }
        let mut text = self.metrics.render_with(scrape);
        let extra: String = self.extensions().iter().map(|e| e.metrics()).collect();
        if !extra.is_empty() {
            // OpenMetrics ends with `# EOF`: the extensions' families go before it.
            let end = text.rfind("# EOF").unwrap_or(text.len());
            text.insert_str(end, &extra);
        }
        text
    }

    /// Adds something that reports through `/api/info`, `/ready` and `/metrics`.
    pub fn add_extension(&self, extension: Arc<dyn Extension>) {
        self.extensions.write().push(extension);
    }

    /// What runs beside the hub.
    pub fn extensions(&self) -> Vec<Arc<dyn Extension>> {
        self.extensions.read().clone()
    }

    /// Publishes any serializable value in process, e.g.
    /// `hub.publish_value("room:1", "message", &json!({"text": "hi"}))`: the value is encoded
    /// with serde_json (a value that cannot be is `bad_request`), then [`Hub::publish`]. No
    /// authorization: the application's code is trusted. For a key, op or meta, build a
    /// [`PublishInput`] and call [`Hub::publish`].
    pub async fn publish_value(
        &self,
        channel: impl Into<String>,
        kind: impl Into<String>,
        data: &(impl serde::Serialize + ?Sized),
    ) -> Result<PublishResult, ErrorBody> {
        let channel = channel.into();
        let data = serde_json::value::to_raw_value(data).map_err(|e| {
            ErrorBody::new(ErrorCode::BadRequest, format!("`data` is not JSON: {e}"))
                .with_channel(&channel)
        })?;
        let input = PublishInput {
            channel,
            kind: kind.into(),
            data,
            key: None,
            op: None,
            meta: Default::default(),
        };
        self.publish(input).await
    }

    /// Starts the hub's background work: registers this node with a clustered engine
    /// ([`Hub::attach_node`]) and runs [`Hub::maintain`] every `maintain_every` (history aged
    /// out, idle channels dropped) until [`Hub::stop`] or the hub is dropped. [`crate::serve`]
    /// and [`crate::Routes::into_router`] call it; a second call while running does nothing.
    /// Call it inside a Tokio runtime.
    pub fn start(self: &Arc<Self>, maintain_every: Duration) {
        let mut housekeeping = self.housekeeping.lock();
        if housekeeping.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        self.attach_node();
        // A weak reference: the task must not keep a hub alive that its owner dropped.
        let hub = Arc::downgrade(self);
        *housekeeping = Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(maintain_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Members of gone nodes (clustered engines only; a no-op otherwise).
            let mut reap = tokio::time::interval(crate::presence::REAP_EVERY);
            reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let Some(live) = hub.upgrade() else { return };
                        live.maintain().await;
                    }
                    _ = reap.tick() => {
                        let Some(live) = hub.upgrade() else { return };
                        live.reap_presence().await;
                    }
                }
            }
        }));
    }

    /// Whether the housekeeping [`Hub::start`] began is running.
    pub fn housekeeping_running(&self) -> bool {
        self.housekeeping.lock().as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Ends what [`Hub::start`] began: stops the housekeeping and withdraws this node's
    /// registration ([`Hub::detach_node`]). Sessions are closed by [`Hub::shutdown`].
    pub async fn stop(&self) {
        let task = self.housekeeping.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.detach_node().await;
    }

    /// Periodic housekeeping of the engine: what [`Hub::start`] runs every `maintain_every`.
    pub async fn maintain(&self) {
        self.engine.maintain(&self.config).await;
    }

    /// Registers this node with a clustered engine (heartbeat with its id, address and counts)
    /// until [`Hub::detach_node`]. [`Hub::start`] and [`Hub::stop`] call them.
    pub fn attach_node(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        self.engine.attach_node(Arc::new(move || hub.upgrade().map(|hub| hub.node_report())));
    }

    /// This node's report: its line in `/api/info` and its subscriber counts per channel.
    pub fn node_report(&self) -> NodeReport {
        let counts = self.fanout.counts();
        NodeReport {
            id: self.node_id.clone(),
            address: self.config.listen.clone(),
            connections: self.connection_count(),
            subscriptions: self.metrics.subscriptions.get(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            channels: counts.len(),
            uptime_secs: self.started.elapsed().as_secs(),
            channel_counts: counts.into_iter().collect(),
        }
    }

    /// Withdraws this node's registration (shutdown).
    pub async fn detach_node(&self) {
        self.engine.detach_node().await;
    }

    /// Every live node of the cluster, or this node alone when the engine has no cluster view
    /// (or cannot reach it right now).
    pub async fn nodes(&self) -> Vec<NodeReport> {
        match self.engine.nodes().await {
            Some(nodes) if !nodes.is_empty() => nodes,
            _ => vec![NodeReport { channel_counts: Default::default(), ..self.node_report() }],
        }
    }

    /// Subscriber counts per channel: across the cluster when the engine has a cluster view,
    /// else this node's.
    pub async fn channel_counts(&self) -> Vec<(String, usize)> {
        match self.engine.channel_counts().await {
            Some(counts) => counts,
            None => self.fanout.counts(),
        }
    }

    /// Registers a session's subscription for live publications and waits until the engine
    /// delivers the channel to this node.
    pub async fn add_subscriber(
        &self,
        channel: &str,
        session: u64,
        outbox: Arc<Outbox>,
    ) -> Result<(), ErrorBody> {
        let gate = self.fanout.add(channel, session, outbox);
        let engine = self.engine.clone();
        let listened = gate.get_or_try_init(|| async move { engine.listen(channel).await }).await;
        match listened {
            Ok(()) => {
                self.metrics.subscriptions.inc();
                Ok(())
            }
            Err(e) => {
                self.drop_subscriber_entry(channel, session).await;
                Err(engine_error(e, channel))
            }
        }
    }

    /// Queues a presence change of `channel` by connection `client` (`record`: the member's
    /// record JSON; `None`: it leaves) and schedules the channel's flush after its namespace's window. Leaves are not
    /// published while the node shuts down: members that reconnect elsewhere just move, the
    /// others are removed once the node is gone (crate::presence).
    pub fn presence_change(
        self: &Arc<Self>,
        ns: &Namespace,
        channel: &str,
        member: Arc<str>,
        client: &str,
        record: Option<String>,
    ) {
        let stream = crate::presence::stream_of(channel);
        let fresh = match record {
            Some(record) => self.presence.join(&stream, member, record),
            None if self.shutting_down.load(Ordering::SeqCst) => return,
            None => self.presence.leave(&stream, member, client),
        };
        if fresh {
            let hub = Arc::downgrade(self);
            let window = ns.presence_window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                if let Some(hub) = hub.upgrade() {
                    hub.flush_presence(&stream).await;
                }
            });
        }
    }

    /// Publishes what is pending for a presence stream.
    async fn flush_presence(&self, stream: &str) {
        use crate::presence::Write;
        let _one_at_a_time = self.presence_flush.lock().await;
        let writes = self.presence.take(stream);
        if writes.is_empty() {
            return;
        }
        if self.presence.track(stream)
            && let Err(e) = self.engine.presence_track(&self.node_id, stream).await
        {
            tracing::warn!(stream, error = %e, "cannot note presence members on the engine");
        }
        let ns = &self.presence_ns;
        for write in writes {
            let input = |key: &Arc<str>, op, data: Box<RawValue>| PublishInput {
                channel: stream.to_string(),
                kind: "presence".into(),
                data,
                key: Some(key.to_string()),
                op: Some(op),
                meta: herald_protocol::Meta {
                    source: Some("presence".into()),
                    ..Default::default()
                },
            };
            let done = match write {
                Write::Upsert { member, record } => {
                    let data = RawValue::from_string(record.clone()).expect("records are JSON");
                    match self.engine.publish(ns, input(&member, Op::Upsert, data)).await {
                        Ok(r) => {
                            self.presence.wrote(stream, member, r.offset, record);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Write::Delete { member, expected } => {
                    let data = RawValue::from_string("null".into()).expect("null is JSON");
                    let published = self
                        .engine
                        .publish_if(ns, input(&member, Op::Delete, data), &expected)
                        .await;
                    self.presence.forgot(stream, &member);
                    published.map(|_| ())
                }
            };
            if let Err(e) = done {
                tracing::warn!(stream, error = %e, "presence change not published");
            }
        }
    }

    /// Removes the members of nodes that have been gone for a while (clustered engines; under
    /// a lease, one node at a time).
    pub async fn reap_presence(&self) {
        let Some(nodes) = self.engine.nodes().await else { return };
        if !matches!(self.lease("presence-reaper", crate::presence::REAP_EVERY * 3).await, Ok(true))
        {
            return;
        }
        let alive: Vec<String> = nodes.into_iter().map(|n| n.id).collect();
        let orphans = match self.engine.presence_orphans(&alive).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list presence members of gone nodes");
                return;
            }
        };
        let names: Vec<String> = orphans.iter().map(|(n, _)| n.clone()).collect();
        let overdue = self.presence.overdue(&names);
        for (node, streams) in orphans.into_iter().filter(|(n, _)| overdue.contains(n)) {
            let mut clean = true;
            for stream in &streams {
                clean &= self.reap_stream(stream, &node).await;
            }
            if clean && let Err(e) = self.engine.presence_forget(&node).await {
                tracing::warn!(node, error = %e, "cannot forget a gone node's presence");
            }
        }
    }

    /// Deletes the members of `stream` that `node` holds; false when that failed.
    async fn reap_stream(&self, stream: &str, node: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct NodeOf {
            #[serde(default)]
            node: String,
        }
        let ns = &self.presence_ns;
        let Ok(state) = rules::state(&*self.engine, ns, stream).await else { return false };
        let mut ok = true;
        for r in state.records {
            let holder = serde_json::from_str::<NodeOf>(r.value.get()).map(|n| n.node);
            if holder.ok().as_deref() != Some(node) {
                continue;
            }
            let expected = format!("{}:{}", r.offset, r.value.get());
            let input = PublishInput {
                channel: stream.to_string(),
                kind: "presence".into(),
                data: RawValue::from_string("null".into()).expect("null is JSON"),
                key: Some(r.key.clone()),
                op: Some(Op::Delete),
                meta: herald_protocol::Meta {
                    source: Some("presence-expired".into()),
                    ..Default::default()
                },
            };
            if let Err(e) = self.engine.publish_if(ns, input, &expected).await {
                tracing::warn!(stream, member = r.key, error = %e, "cannot remove a gone node's member");
                ok = false;
            }
        }
        tracing::info!(stream, node, "removed the presence members of a gone node");
        ok
    }

    /// A channel's members and the presence position they correspond to.
    pub async fn presence_members(&self, channel: &str) -> Result<State, ErrorBody> {
        let stream = crate::presence::stream_of(channel);
        rules::state(&*self.engine, &self.presence_ns, &stream)
            .await
            .map_err(|e| engine_error(e, channel))
    }

    /// Sends a volatile event to the channel's subscribers on every node.
    pub async fn publish_volatile(&self, channel: &str, frame: Arc<str>) -> Result<(), ErrorBody> {
        self.engine.publish_volatile(channel, frame).await.map_err(|e| engine_error(e, channel))
    }

    /// Registers a pending view subscription (crate::views) and makes sure the engine delivers
    /// the channel to this node; activate it with [`Hub::activate_view`] once read.
    pub async fn add_view(
        &self,
        channel: &str,
        session: u64,
        sub: Arc<str>,
        outbox: Arc<Outbox>,
        selection: Arc<crate::views::Selection>,
        format: crate::views::Format,
    ) -> Result<(), ErrorBody> {
        let gate = self.fanout.add_view(channel, session, sub.clone(), outbox, selection, format);
        let engine = self.engine.clone();
        let listened = gate.get_or_try_init(|| async move { engine.listen(channel).await }).await;
        match listened {
            Ok(()) => {
                self.metrics.subscriptions.inc();
                Ok(())
            }
            Err(e) => {
                if self.fanout.remove_view(channel, session, &sub) {
                    self.engine.unlisten(channel).await;
                }
                Err(engine_error(e, channel))
            }
        }
    }

    /// Queues a view's subscribe reply, then its events after `from`; false when the view was
    /// reset meanwhile.
    pub fn activate_view(
        &self,
        channel: &str,
        session: u64,
        sub: &Arc<str>,
        from: u64,
        reply: String,
    ) -> bool {
        self.fanout.activate_view(channel, session, sub, from, reply)
    }

    /// Removes a view subscription.
    pub async fn remove_view(&self, channel: &str, session: u64, sub: &Arc<str>) {
        self.metrics.subscriptions.dec();
        if self.fanout.remove_view(channel, session, sub) {
            self.engine.unlisten(channel).await;
        }
    }

    /// Removes a session's subscription.
    pub async fn remove_subscriber(&self, channel: &str, session: u64) {
        self.metrics.subscriptions.dec();
        self.drop_subscriber_entry(channel, session).await;
    }

    async fn drop_subscriber_entry(&self, channel: &str, session: u64) {
        if self.fanout.remove(channel, session) {
            self.engine.unlisten(channel).await;
        }
    }

    /// Registers a new session; returns its id.
    pub fn open_session(&self, outbox: Arc<Outbox>) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .insert(id, SessionEntry { user: String::new(), outbox: outbox.clone() });
        self.metrics.connections.inc();
        if self.shutting_down.load(Ordering::SeqCst) {
            outbox.close(CloseCode::Shutdown, "server shutting down");
        }
        id
    }

    /// Records the user of a session; refuses past the per-user limit.
    pub fn bind_user(&self, session: u64, user: &str) -> Result<(), ErrorBody> {
        let limit = self.config.limits.max_connections_per_user;
        let mut users = self.users.lock();
        let count = users.entry(user.to_string()).or_default();
        if limit > 0 && *count >= limit {
            return Err(ErrorBody::new(
                ErrorCode::TooManyConnections,
                format!("user already has {limit} connections"),
            ));
        }
        *count += 1;
        if let Some(s) = self.sessions.lock().get_mut(&session) {
            s.user = user.to_string();
        }
        Ok(())
    }

    /// Forgets a session.
    pub fn close_session(&self, session: u64) {
        let (entry, empty) = {
            let mut sessions = self.sessions.lock();
            (sessions.remove(&session), sessions.is_empty())
        };
        if empty {
            self.drained.notify_waiters();
        }
        let Some(entry) = entry else { return };
        self.metrics.connections.dec();
        if !entry.user.is_empty() {
            let mut users = self.users.lock();
            if let Some(n) = users.get_mut(&entry.user) {
                *n -= 1;
                if *n == 0 {
                    users.remove(&entry.user);
                }
            }
        }
    }

    /// Closes every connection of a user with `kicked`; returns how many.
    pub fn disconnect_user(&self, user: &str) -> usize {
        let sessions = self.sessions.lock();
        let mut n = 0;
        for s in sessions.values().filter(|s| s.user == user) {
            s.outbox.close(CloseCode::Kicked, "disconnected by an operator");
            n += 1;
        }
        n
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Counts an upgrade attempt from `ip`; false when over the per-minute limit.
    pub fn admit_attempt(&self, ip: IpAddr) -> bool {
        let limit = self.config.limits.connection_attempts_per_ip_per_minute;
        if limit == 0 {
            return true;
        }
        let mut attempts = self.attempts.lock();
        if attempts.len() > 100_000 {
            attempts.retain(|_, (start, _)| start.elapsed().as_secs() < 60);
        }
        let entry = attempts.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed().as_secs() >= 60 {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= limit
    }

    /// Tells every session to close with `shutdown` and waits (up to the configured deadline)
    /// until they are gone.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Closing each outbox wakes its session, which sends the close code and ends; no
        // per-session shutdown watcher is needed (memory per idle connection).
        for entry in self.sessions.lock().values() {
            entry.outbox.close(CloseCode::Shutdown, "server shutting down");
        }
        let deadline = tokio::time::Instant::now() + self.config.timeouts.shutdown_deadline;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.connection_count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                tracing::warn!(
                    left = self.connection_count(),
                    "shutdown deadline passed with connections open"
                );
                return;
            }
        }
    }
}

impl Drop for Hub {
    /// A dropped hub's housekeeping ends with it, without waiting for its next tick.
    fn drop(&mut self) {
        if let Some(task) = self.housekeeping.get_mut().take() {
            task.abort();
        }
    }
}

/// Maps an engine failure to the protocol error.
pub fn engine_error(e: EngineError, channel: &str) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string()).with_channel(channel)
}

#[cfg(test)]
mod depth_tests {
    use super::json_depth;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["[[[[", "\"{{{"]"#), 1);
        assert_eq!(json_depth(&format!("{}{}", "[".repeat(200), "]".repeat(200))), 200);
    }
}
