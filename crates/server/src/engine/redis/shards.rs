//! Redis Cluster: `redis+cluster://` URLs, the slot map, and the sharded pub/sub task (see the
//! module docs' "Redis Cluster").
//!
//! A channel's publications go out with SPUBLISH on its shard channel, in the slot of its
//! partition (`keys.rs`), so only the master that owns that slot carries them. This node keeps
//! one RESP3 connection per master and SSUBSCRIBEs each listened channel on the master that owns
//! its partition. The task reads the slot map every [`PUBSUB_PING_EVERY`], and at once when a
//! shard connection drops or the server unsubscribes a channel (it does when the slot moves). A
//! connection that drops or whose partitions moved is closed: its channels are reset (queued on
//! their lanes behind what came before, as in `pubsub.rs`), and they count as flowing again only
//! once subscribed on the master that now owns them, with floors, like a new pub/sub connection.

use super::dispatch::{Dispatch, Job};
use super::keys::{PARTITIONS, partition, slot};
use super::witness::run_id_of;
use super::{Inner, OP_TIMEOUT, PUBSUB_PING_EVERY};
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// A `redis+cluster://[user:password@]host:port[,host:port…]` URL (`rediss+cluster://` for TLS):
/// the seed nodes the cluster's layout is learnt from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClusterUrl {
    /// `redis` or `rediss`, the scheme of every node's URL.
    scheme: &'static str,
    /// `user:password@` or empty, in front of every node's address.
    auth: String,
    /// The seed nodes, `host:port`.
    seeds: Vec<String>,
}

impl ClusterUrl {
    /// `None` when `url` is not a cluster URL.
    pub(super) fn parse(url: &str) -> Option<Result<ClusterUrl, String>> {
        let (scheme, rest) = match url.strip_prefix("redis+cluster://") {
            Some(rest) => ("redis", rest),
            None => ("rediss", url.strip_prefix("rediss+cluster://")?),
        };
        Some(Self::parse_rest(scheme, rest))
    }

    fn parse_rest(scheme: &'static str, rest: &str) -> Result<ClusterUrl, String> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        if hosts.contains(['/', '?']) {
            return Err("a cluster URL names nodes only: redis+cluster://host:port,host:port (a cluster has no databases)".into());
        }
        let mut seeds = Vec::new();
        for addr in hosts.split(',').filter(|a| !a.is_empty()) {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("{addr:?} is not host:port"));
            }
            seeds.push(addr.to_string());
        }
        if seeds.is_empty() {
            return Err("no seed node (redis+cluster://host:port,host:port)".into());
        }
        Ok(ClusterUrl { scheme, auth, seeds })
    }

    /// The URLs of the seed nodes.
    pub(super) fn seed_urls(&self) -> Vec<String> {
        self.seeds.iter().map(|a| self.node_url(a)).collect()
    }

    /// The URLs of the nodes at `addrs` (`host:port`).
    pub(super) fn node_urls(&self, addrs: &[String]) -> Vec<String> {
        addrs.iter().map(|a| self.node_url(a)).collect()
    }

    /// The URL of the node at `addr` (`host:port`), with the credentials of the cluster URL.
    fn node_url(&self, addr: &str) -> String {
        format!("{}://{}{}", self.scheme, self.auth, addr)
    }
}

/// Without the credentials: the form that goes in logs.
impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+cluster://{}", self.scheme, self.seeds.join(","))
    }
}

/// The master (`host:port`) that owns each partition's slot, from a `CLUSTER SLOTS` reply;
/// `None` while a partition's slot has no master.
fn owners_from(reply: &Value) -> Option<Vec<String>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let Value::Array(ranges) = reply else { return None };
    let mut spans = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else { return None };
        let (Some(start), Some(end), Some(Value::Array(master))) =
            (parts.first().and_then(int), parts.get(1).and_then(int), parts.get(2))
        else {
            return None;
        };
        let ip = master.first().and_then(text)?;
        let port = master.get(1).and_then(int)?;
        spans.push((start, end, format!("{ip}:{port}")));
    }
    (0..PARTITIONS)
        .map(|p| {
            let s = slot(&format!("{{p{p}}}"));
            spans.iter().find(|(a, b, _)| *a <= s && s <= *b).map(|(_, _, addr)| addr.clone())
        })
        .collect()
}

/// The connection to one master.
struct Shard {
    /// Tags the pushes of this connection (a closed one's late pushes are ignored).
    id: u64,
    /// RESP3, so SSUBSCRIBE, PING and INFO share it.
    conn: MultiplexedConnection,
    /// Channels SSUBSCRIBEd on it.
    subscribed: HashSet<String>,
    /// Our SUNSUBSCRIBEs whose confirmation has not been read yet, per channel: a
    /// confirmation beyond them is Redis dropping the subscription (its slot moved).
    unsubscribing: HashMap<String, usize>,
}

/// What the task knows of the cluster.
struct Shards {
    /// The seed nodes and credentials.
    url: ClusterUrl,
    /// The master of each partition, as the slot map last said (empty before it was read).
    owners: Vec<String>,
    /// The open connections, by master address.
    shards: HashMap<String, Shard>,
    /// The next [`Shard::id`].
    next_id: u64,
    /// Every shard connection pushes here, tagged with its id.
    pushes: mpsc::UnboundedSender<(u64, PushInfo)>,
    /// The lanes to the local subscribers.
    dispatch: Option<Dispatch>,
}

/// How soon the slot map is read again while a partition's master is not reachable.
const REFRESH_RETRY: Duration = Duration::from_millis(100);

/// Most channels per SSUBSCRIBE pipeline.
const SYNC_BATCH: usize = 500;

/// Keeps this node's shard subscriptions in line with its listened channels and the cluster's
/// layout, until the engine is dropped.
pub(super) async fn shards_task(
    inner: Weak<Inner>,
    url: ClusterUrl,
    mut sync: mpsc::UnboundedReceiver<String>,
) {
    let (pushes, mut pushed) = mpsc::unbounded_channel();
    let mut s = Shards {
        url,
        owners: Vec::new(),
        shards: HashMap::new(),
        next_id: 0,
        pushes,
        dispatch: None,
    };
    let mut tick = tokio::time::interval(PUBSUB_PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = true;
    // While a master is missing (a failover in progress), the slot map is read again soon.
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retrying = false;
    loop {
        if refresh {
            refresh = false;
            let Some(engine) = inner.upgrade() else { return };
            retrying = !s.refresh(&engine).await;
            if retrying {
                retry.as_mut().reset(tokio::time::Instant::now() + REFRESH_RETRY);
            }
        }
        tokio::select! {
            _ = &mut retry, if retrying => refresh = true,
            push = pushed.recv() => {
                let Some((id, push)) = push else { return };
                let Some(engine) = inner.upgrade() else { return };
                refresh |= s.on_push(&engine, id, push).await;
            }
            channel = sync.recv() => {
                let Some(channel) = channel else { return };
                let Some(engine) = inner.upgrade() else { return };
                let mut changed = vec![channel];
                while changed.len() < SYNC_BATCH {
                    match sync.try_recv() {
                        Ok(c) => changed.push(c),
                        Err(_) => break,
                    }
                }
                refresh |= s.sync(&engine, changed).await;
            }
            _ = tick.tick() => refresh = true,
        }
    }
}

impl Shards {
    /// The master that owns `channel`'s partition, once the slot map was read.
    fn owner(&self, channel: &str) -> Option<&str> {
        self.owners.get(usize::from(partition(channel))).map(String::as_str)
    }

    /// A push from shard connection `id`. True when the slot map must be read again.
    async fn on_push(&mut self, engine: &Arc<Inner>, id: u64, push: PushInfo) -> bool {
        let Some(addr) = self.shards.iter().find(|(_, s)| s.id == id).map(|(a, _)| a.clone())
        else {
            return false; // a closed connection's
        };
        let name = |i: usize| match push.data.get(i) {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                let (Some(pubsub_name), Some(Value::BulkString(payload))) =
                    (name(0), push.data.get(1))
                else {
                    return false;
                };
                // Only the owner's connection speaks for a channel.
                let owned = engine
                    .channel_of(pubsub_name)
                    .is_some_and(|c| self.owner(c) == Some(addr.as_str()));
                if !owned {
                    return false;
                }
                let work = engine.on_message(pubsub_name, payload);
                if let Some((channel, jobs)) = work
                    && let Some(lanes) = engine.dispatch(&mut self.dispatch)
                {
                    for job in jobs {
                        lanes.send(&channel, job).await;
                    }
                }
                false
            }
            PushKind::Disconnection => {
                self.shard_down(engine, &addr, "connection lost").await;
                true
            }
            // Unasked (not one of ours): the slot moved away.
            PushKind::SUnsubscribe => {
                let Some(channel) = name(0).and_then(|n| engine.channel_of(n)) else {
                    return false;
                };
                let shard = self.shards.get_mut(&addr).expect("found above");
                if let Some(n) = shard.unsubscribing.get_mut(channel) {
                    *n -= 1;
                    if *n == 0 {
                        shard.unsubscribing.remove(channel);
                    }
                    return false;
                }
                let moved = shard.subscribed.contains(channel);
                if moved {
                    self.shard_down(engine, &addr, "the server dropped a shard subscription").await;
                }
                moved
            }
            _ => false,
        }
    }

    /// Closes the connection to `addr`: its channels stop counting as flowing and their local
    /// subscribers resubscribe (behind what their lanes still hold).
    async fn shard_down(&mut self, engine: &Arc<Inner>, addr: &str, why: &str) {
        let Some(shard) = self.shards.remove(addr) else { return };
        engine.pubsub_up.store(false, Ordering::Release);
        tracing::warn!(
            addr,
            why,
            channels = shard.subscribed.len(),
            "redis cluster shard connection closed; its subscribers resume"
        );
        for channel in shard.subscribed {
            if engine.unconfirm(&channel)
                && let Some(lanes) = engine.dispatch(&mut self.dispatch)
            {
                lanes.send(&channel, Job::Reset(channel.clone())).await;
            }
        }
    }

    /// Reads the slot map, closes connections whose partitions moved (or that do not answer),
    /// opens the missing ones and subscribes their channels. True when the cluster is fully
    /// served (no need to look again before the next tick).
    async fn refresh(&mut self, engine: &Arc<Inner>) -> bool {
        let Some(owners) = self.slot_map(engine).await else {
            engine.pubsub_up.store(false, Ordering::Release);
            return false;
        };
        // A master that lost a partition (or is no master now) is left entirely: its
        // connection may still hold messages of what moved.
        let mut leaving: Vec<String> = Vec::new();
        if self.owners.len() == owners.len() {
            for (old, new) in self.owners.iter().zip(&owners) {
                if old != new && self.shards.contains_key(old) && !leaving.contains(old) {
                    leaving.push(old.clone());
                }
            }
        }
        for addr in self.shards.keys() {
            if !owners.contains(addr) && !leaving.contains(addr) {
                leaving.push(addr.clone());
            }
        }
        for addr in leaving {
            self.shard_down(engine, &addr, "its slots moved").await;
        }
        if !self.owners.is_empty() && self.owners != owners {
            let mut masters: Vec<String> = owners.clone();
            masters.sort_unstable();
            masters.dedup();
            tracing::warn!(?masters, "redis cluster layout changed: command connection reopened");
            engine.reopen_cluster(&self.url, &masters);
        }
        self.owners = owners;
        // Live connections must answer.
        let mut silent = Vec::new();
        for (addr, shard) in &mut self.shards {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<Value>(&mut shard.conn);
            if !matches!(tokio::time::timeout(OP_TIMEOUT, ping).await, Ok(Ok(_))) {
                silent.push(addr.clone());
            }
        }
        for addr in silent {
            self.shard_down(engine, &addr, "ping failed").await;
        }
        let masters: BTreeMap<&String, ()> = self.owners.iter().map(|a| (a, ())).collect();
        let missing: Vec<String> = masters
            .keys()
            .filter(|a| !self.shards.contains_key(**a))
            .map(|a| (*a).clone())
            .collect();
        let mut served = true;
        for addr in missing {
            if let Err(e) = self.connect(engine, &addr).await {
                tracing::debug!(addr, error = %e, "redis cluster shard connect failed");
                served = false;
            }
        }
        engine.pubsub_up.store(served, Ordering::Release);
        served
    }

    /// The master of each partition, asked of an open connection or else through the command
    /// connection.
    async fn slot_map(&mut self, engine: &Arc<Inner>) -> Option<Vec<String>> {
        let ask = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
        for shard in self.shards.values_mut() {
            let reply = tokio::time::timeout(OP_TIMEOUT, ask.query_async::<Value>(&mut shard.conn));
            if let Ok(Ok(reply)) = reply.await
                && let Some(owners) = owners_from(&reply)
            {
                return Some(owners);
            }
        }
        let mut conn = engine.conn();
        let reply: Value = engine.run(ask.query_async(&mut conn)).await.ok()?;
        owners_from(&reply)
    }

    /// Opens the connection to master `addr` and subscribes every listened channel it owns,
    /// with floors (whatever arrives was published after the SSUBSCRIBE).
    async fn connect(&mut self, engine: &Arc<Inner>, addr: &str) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let pushes = self.pushes.clone();
        let client = redis::Client::open(format!("{}?protocol=resp3", self.url.node_url(addr)))
            .map_err(|e| e.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_push_sender(move |push: PushInfo| pushes.send((id, push)).map_err(|_| ()));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = tokio::time::timeout(OP_TIMEOUT, connect)
            .await
            .map_err(|_| "connect: timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let cmd = redis::cmd("INFO").arg("server").to_owned();
        let info = cmd.query_async::<String>(&mut conn);
        let run_id = match tokio::time::timeout(OP_TIMEOUT, info).await {
            Ok(Ok(info)) => run_id_of(&info),
            _ => return Err("INFO failed".into()),
        };
        let wanted: Vec<String> = {
            let listened = engine.listened.lock();
            listened
                .iter()
                .filter(|(c, l)| l.wanted() && self.owner(c) == Some(addr))
                .map(|(c, _)| c.clone())
                .collect()
        };
        let mut shard =
            Shard { id, conn, subscribed: HashSet::new(), unsubscribing: HashMap::new() };
        for chunk in wanted.chunks(SYNC_BATCH) {
            engine.set_floors(chunk);
            shard_command(engine, &mut shard.conn, "SSUBSCRIBE", chunk).await?;
            shard.subscribed.extend(chunk.iter().cloned());
            engine.confirm(chunk);
        }
        tracing::info!(addr, channels = shard.subscribed.len(), "redis cluster shard connected");
        self.shards.insert(addr.to_string(), shard);
        if let Some(run_id) = run_id {
            let mine: HashSet<u16> =
                (0..PARTITIONS).filter(|p| self.owners[usize::from(*p)] == addr).collect();
            let (checking, addr) = (engine.clone(), addr.to_string());
            tokio::spawn(async move {
                checking.check_witnessed(&addr, run_id, |c| mine.contains(&partition(c))).await;
            });
        }
        Ok(())
    }

    /// Brings the subscriptions of `changed` channels in line with `listened`; a channel
    /// whose master is not connected is subscribed when it is. True when a shard failed.
    async fn sync(&mut self, engine: &Arc<Inner>, mut changed: Vec<String>) -> bool {
        changed.sort_unstable();
        changed.dedup();
        let mut adds: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut drops: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for channel in changed {
            let Some(addr) = self.owner(&channel).map(str::to_string) else { continue };
            let Some(shard) = self.shards.get(&addr) else { continue };
            match (engine.wanted(&channel), shard.subscribed.contains(&channel)) {
                (true, false) => adds.entry(addr).or_default().push(channel),
                (true, true) => engine.confirm([&channel]),
                (false, true) => drops.entry(addr).or_default().push(channel),
                (false, false) => {}
            }
        }
        let mut failed = false;
        for (addr, channels) in adds {
            let Some(shard) = self.shards.get_mut(&addr) else { continue };
            // No floor, as on the standalone connection: an earlier subscription's messages
            // may still be queued behind this SSUBSCRIBE.
            match shard_command(engine, &mut shard.conn, "SSUBSCRIBE", &channels).await {
                Ok(()) => {
                    engine.confirm(&channels);
                    shard.subscribed.extend(channels);
                }
                Err(e) => {
                    self.shard_down(engine, &addr, &e).await;
                    failed = true;
                }
            }
        }
        for (addr, channels) in drops {
            let Some(shard) = self.shards.get_mut(&addr) else { continue };
            for c in &channels {
                shard.subscribed.remove(c);
                *shard.unsubscribing.entry(c.clone()).or_default() += 1;
            }
            if let Err(e) = shard_command(engine, &mut shard.conn, "SUNSUBSCRIBE", &channels).await
            {
                self.shard_down(engine, &addr, &e).await;
                failed = true;
            }
        }
        failed
    }
}

/// SSUBSCRIBE or SUNSUBSCRIBE of `channels`, one command each in one pipeline (each gets one
/// confirmation; shard channels of one command must share a slot).
async fn shard_command(
    engine: &Inner,
    conn: &mut MultiplexedConnection,
    command: &str,
    channels: &[String],
) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for c in channels {
        pipe.cmd(command).arg(engine.pubsub_name(c));
    }
    let replies = tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<Vec<Value>>(conn))
        .await
        .map_err(|_| format!("{command}: timed out"))?
        .map_err(|e| format!("{command}: {e}"))?;
    match replies.iter().find(|r| matches!(r, Value::ServerError(_))) {
        Some(e) => Err(format!("{command}: {e:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_urls() {
        let u = ClusterUrl::parse("redis+cluster://a:1,b:2/").unwrap().unwrap();
        assert_eq!(u.seed_urls(), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(u.to_string(), "redis+cluster://a:1,b:2");
        let u = ClusterUrl::parse("rediss+cluster://user:p@ss@a:1").unwrap().unwrap();
        assert_eq!(u.seed_urls(), vec!["rediss://user:p@ss@a:1"]);
        assert_eq!(u.to_string(), "rediss+cluster://a:1", "no credentials in logs");
        assert!(ClusterUrl::parse("redis://a:1").is_none());
        assert!(ClusterUrl::parse("redis+cluster://").unwrap().is_err());
        assert!(ClusterUrl::parse("redis+cluster://a:1/2").unwrap().is_err());
        assert!(ClusterUrl::parse("redis+cluster://a").unwrap().is_err());
    }

    #[test]
    fn maps_partitions_to_the_master_of_their_slot() {
        let node = |ip: &str, port: i64| {
            Value::Array(vec![Value::BulkString(ip.as_bytes().to_vec()), Value::Int(port)])
        };
        let range = |a: i64, b: i64, master: Value| {
            Value::Array(vec![Value::Int(a), Value::Int(b), master, node("10.0.0.9", 9)])
        };
        let reply = Value::Array(vec![
            range(0, 5460, node("10.0.0.1", 7000)),
            range(5461, 10922, node("10.0.0.2", 7001)),
            range(10923, 16383, node("10.0.0.3", 7002)),
        ]);
        let owners = owners_from(&reply).unwrap();
        assert_eq!(owners.len(), usize::from(PARTITIONS));
        // {p0} is slot 15882, {p127} slot 5539 (CLUSTER KEYSLOT).
        assert_eq!(owners[0], "10.0.0.3:7002");
        assert_eq!(owners[127], "10.0.0.2:7001");
        let uncovered = Value::Array(vec![range(0, 5460, node("10.0.0.1", 7000))]);
        assert_eq!(owners_from(&uncovered), None, "a partition without a master");
    }
}
