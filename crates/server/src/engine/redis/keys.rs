//! Names of the Redis keys and pub/sub channels the engine uses (see the module docs' "Keys").

use super::Inner;

/// Keys of one channel.
pub(super) struct Keys {
    /// Epoch, offset and state size: losing it means a new epoch.
    pub(super) meta: String,
    /// Kept publications, oldest first.
    pub(super) hist: String,
    /// Keyed state.
    pub(super) state: String,
    /// Prefix of idempotency keys (append the key).
    pub(super) idem: String,
    /// The hub-wide seed of the epochs of channels without a stream (see `common.lua`).
    pub(super) seed: String,
}

impl Inner {
    /// The keys of `channel`: `P:{N:C}:…`, length-prefixed and in one cluster slot.
    pub(super) fn keys(&self, channel: &str) -> Keys {
        let base = format!("{}:{{{}:{}}}:", self.prefix, channel.len(), channel);
        Keys {
            meta: format!("{base}meta"),
            hist: format!("{base}hist"),
            state: format!("{base}state"),
            idem: format!("{base}idem:"),
            seed: format!("{}:epoch_seed", self.prefix),
        }
    }

    /// The pub/sub channel that carries the publications of `channel`.
    pub(super) fn pubsub_name(&self, channel: &str) -> String {
        format!("{}:pub:{}", self.prefix, channel)
    }

    /// The Herald channel of a pub/sub channel name (the inverse of [`Inner::pubsub_name`]);
    /// `None` for a name that is not one of ours.
    pub(super) fn channel_of<'a>(&self, pubsub_name: &'a str) -> Option<&'a str> {
        pubsub_name.strip_prefix(&self.prefix).and_then(|s| s.strip_prefix(":pub:"))
    }

    /// The key of the lease `name` (bridges: one node at a time reads a source).
    pub(super) fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{}", self.prefix, name)
    }

    /// The set of presence streams on which node `id` holds members, so that another node
    /// removes them when `id` is gone. Members are stream names (binary safe in Redis).
    pub(super) fn presence_node_key(&self, id: &str) -> String {
        format!("{}:presence:node:{}", self.prefix, id)
    }

    /// The set of node ids with a [`Inner::presence_node_key`] set.
    pub(super) fn presence_nodes_key(&self) -> String {
        format!("{}:presence:nodes", self.prefix)
    }

    /// The registration of node `id` in the cluster view.
    pub(super) fn node_key(&self, id: &str) -> String {
        format!("{}:node:{}", self.prefix, id)
    }

    /// The set of registered node ids.
    pub(super) fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}
