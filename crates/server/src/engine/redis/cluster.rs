//! The cluster view: this node's registration (a heartbeat) and the reading of every live
//! node's, for `/api/info` and `/api/channels` (see the module docs' "Cluster view").

use super::{HEARTBEAT_EVERY, HEARTBEAT_MAX_CHANNELS, HEARTBEAT_TTL, Inner, json, ms};
use crate::engine::{EngineError, NodeReport, NodeReporter};
use std::sync::{Arc, Weak};

impl Inner {
    /// Registers the node `reporter` describes and starts its heartbeat
    /// ([`crate::engine::Engine::attach_node`]).
    pub(super) fn attach_node(self: &Arc<Self>, reporter: NodeReporter) {
        if let Some(report) = reporter() {
            let _ = self.node_id.set(report.id);
        }
        // The first node stays the node (a second call re-attaches the same one after a detach).
        let _ = self.node.set(reporter);
        let mut heartbeat = self.heartbeat.lock();
        if heartbeat.is_none() {
            *heartbeat = Some(tokio::spawn(heartbeat_task(Arc::downgrade(self))));
        }
    }

    /// Stops the heartbeat, then withdraws the registration
    /// ([`crate::engine::Engine::detach_node`]).
    pub(super) async fn detach_node(&self) {
        let Some(id) = self.node_id.get() else { return };
        // Stop the heartbeat and wait until it is gone: a refresh it already queued goes out on
        // the command connection before the DEL below, never after it.
        let task = self.heartbeat.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.node_key(id))
            .ignore()
            .cmd("SREM")
            .arg(self.nodes_key())
            .arg(id)
            .ignore();
        let _ = self.run(pipe.query_async::<()>(&mut conn)).await;
    }

    /// Every live node without its channel counts ([`crate::engine::Engine::nodes`]).
    pub(super) async fn nodes(&self) -> Option<Vec<NodeReport>> {
        let mut nodes = self.live_nodes().await.ok()?;
        for n in &mut nodes {
            n.channel_counts.clear();
        }
        Some(nodes)
    }

    /// Subscriber counts per channel summed over every live node
    /// ([`crate::engine::Engine::channel_counts`]).
    pub(super) async fn channel_counts(&self) -> Option<Vec<(String, usize)>> {
        let nodes = self.live_nodes().await.ok()?;
        // This node's own counts are taken live, not from its last heartbeat.
        let own = self.node.get().and_then(|reporter| reporter());
        let mut totals: std::collections::BTreeMap<String, usize> = Default::default();
        for n in &nodes {
            if own.as_ref().is_some_and(|own| own.id == n.id) {
                continue;
            }
            for (c, v) in &n.channel_counts {
                *totals.entry(c.clone()).or_default() += v;
            }
        }
        for (c, n) in own.map(|own| own.channel_counts).unwrap_or_default() {
            *totals.entry(c).or_default() += n;
        }
        Some(totals.into_iter().collect())
    }

    /// This node's line in the cluster view, with at most [`HEARTBEAT_MAX_CHANNELS`] counts.
    fn node_entry(&self) -> Option<NodeReport> {
        let mut report = (self.node.get()?)()?;
        if report.channel_counts.len() > HEARTBEAT_MAX_CHANNELS {
            report.channel_counts = std::mem::take(&mut report.channel_counts)
                .into_iter()
                .take(HEARTBEAT_MAX_CHANNELS)
                .collect();
        }
        Some(report)
    }

    /// Entries of every live node (registrations that have not expired).
    async fn live_nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        let mut conn = self.conn();
        let ids: Vec<String> =
            self.run(redis::cmd("SMEMBERS").arg(self.nodes_key()).query_async(&mut conn)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.node_key(id)).collect();
        let values: Vec<Option<String>> =
            self.run(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeReport>(&v).ok()) {
                Some(v) => nodes.push(v),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<i64, _> = self
                .run(redis::cmd("SREM").arg(self.nodes_key()).arg(&gone).query_async(&mut conn))
                .await;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

/// Refreshes this node's registration until the hub is gone.
async fn heartbeat_task(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(engine) = inner.upgrade() else { return };
        let Some(report) = engine.node_entry() else { return };
        let entry = json(&report);
        let id = report.id;
        let mut conn = engine.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(engine.node_key(&id))
            .arg(entry)
            .arg("PX")
            .arg(ms(HEARTBEAT_TTL))
            .ignore()
            .cmd("SADD")
            .arg(engine.nodes_key())
            .arg(&id)
            .ignore();
        if let Err(e) = engine.run(pipe.query_async::<()>(&mut conn)).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}
