//! Names of the Redis keys and pub/sub channels the engine uses (see the module docs' "Keys").
//!
//! On a Redis Cluster every name carries a hash tag: a channel's keys and its shard channel the
//! tag of its partition (`{pK}`, see [`partition`]), so one publication's script and SPUBLISH
//! touch one slot; the hub-wide keys the tag `{g}`, so their multi-key steps do too.

use super::Inner;

/// Partitions of the channels on a Redis Cluster: fixed, so every node and every version hashes a
/// channel to the same one (changing it is a new keyspace). 128 spreads evenly over a few
/// masters and keeps the shard subscriptions of one master in a few dozen slots.
pub(super) const PARTITIONS: u16 = 128;

/// The partition of `channel` on a Redis Cluster.
pub(super) fn partition(channel: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(channel.as_bytes()) % PARTITIONS
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, or of the whole key).
pub(super) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter().position(|b| *b == b'}').filter(|len| *len > 0).map(|len| &rest[..len])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

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
    /// The keys of `channel`: `P:{N:C}:…`, length-prefixed and in one slot; on a cluster
    /// `P:{pK}:N:C:…` with the seed `P:{pK}:epoch_seed` of its partition.
    pub(super) fn keys(&self, channel: &str) -> Keys {
        channel_keys(&self.prefix, self.partitioned, channel)
    }

    /// The pub/sub channel that carries the publications of `channel` (`P:pub:C`; on a
    /// cluster the shard channel `P:{pK}:pub:C`, in the slot of the channel's keys).
    pub(super) fn pubsub_name(&self, channel: &str) -> String {
        if self.partitioned {
            format!("{}:{{p{}}}:pub:{}", self.prefix, partition(channel), channel)
        } else {
            format!("{}:pub:{}", self.prefix, channel)
        }
    }

    /// The Herald channel of a pub/sub channel name (the inverse of [`Inner::pubsub_name`]);
    /// `None` for a name that is not one of ours.
    pub(super) fn channel_of<'a>(&self, pubsub_name: &'a str) -> Option<&'a str> {
        let rest = pubsub_name.strip_prefix(&self.prefix)?;
        if self.partitioned {
            let (tag, channel) = rest.strip_prefix(":{p")?.split_once("}:pub:")?;
            (tag.parse::<u16>().ok()? == partition(channel)).then_some(channel)
        } else {
            rest.strip_prefix(":pub:")
        }
    }

    /// A hub-wide key: `P:NAME`, on a cluster `P:{g}:NAME` (all in one slot).
    fn global_key(&self, name: &str) -> String {
        if self.partitioned {
            format!("{}:{{g}}:{name}", self.prefix)
        } else {
            format!("{}:{name}", self.prefix)
        }
    }

    /// The key of the lease `name` (bridges: one node at a time reads a source).
    pub(super) fn lease_key(&self, name: &str) -> String {
        self.global_key(&format!("lease:{name}"))
    }

    /// The set of presence streams on which node `id` holds members, so that another node
    /// removes them when `id` is gone. Members are stream names (binary safe in Redis).
    pub(super) fn presence_node_key(&self, id: &str) -> String {
        self.global_key(&format!("presence:node:{id}"))
    }

    /// The set of node ids with a [`Inner::presence_node_key`] set.
    pub(super) fn presence_nodes_key(&self) -> String {
        self.global_key("presence:nodes")
    }

    /// The registration of node `id` in the cluster view.
    pub(super) fn node_key(&self, id: &str) -> String {
        self.global_key(&format!("node:{id}"))
    }

    /// The set of registered node ids.
    pub(super) fn nodes_key(&self) -> String {
        self.global_key("nodes")
    }
}

/// The keys of `channel` under `prefix` ([`Inner::keys`]). Built by pushes, not `format!`:
/// five names per publish, and the formatting machinery cost more than the script call's own
/// encoding (docs/benchmarks.md). The names are the keyspace: a test holds them to the ones
/// earlier versions wrote.
fn channel_keys(prefix: &str, partitioned: bool, channel: &str) -> Keys {
    let mut digits = itoa::Buffer::new();
    let len = digits.format(channel.len());
    let mut base = String::with_capacity(prefix.len() + channel.len() + 16);
    let mut seed = String::with_capacity(prefix.len() + 20);
    base.push_str(prefix);
    seed.push_str(prefix);
    if partitioned {
        let mut tag = itoa::Buffer::new();
        let tag = tag.format(partition(channel));
        for name in [&mut base, &mut seed] {
            name.push_str(":{p");
            name.push_str(tag);
            name.push('}');
        }
        base.push(':');
        base.push_str(len);
        base.push(':');
        base.push_str(channel);
        base.push(':');
    } else {
        base.push_str(":{");
        base.push_str(len);
        base.push(':');
        base.push_str(channel);
        base.push_str("}:");
    }
    seed.push_str(":epoch_seed");
    let key = |suffix: &str| {
        let mut key = String::with_capacity(base.len() + suffix.len());
        key.push_str(&base);
        key.push_str(suffix);
        key
    };
    Keys { meta: key("meta"), hist: key("hist"), state: key("state"), idem: key("idem:"), seed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Values from redis-server 7.0's CLUSTER KEYSLOT.
        for (key, expected) in [
            ("foo", 12182),
            ("{user1000}.following", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("{p0}", 15882),
            ("{p127}", 5539),
            ("herald:{g}:nodes", 7233),
        ] {
            assert_eq!(slot(key), expected, "{key}");
        }
        assert!(partition("room-1") < PARTITIONS);
    }

    #[test]
    fn key_names_are_the_keyspace_earlier_versions_wrote() {
        for (prefix, channel) in [("herald", "room-1"), ("p:x", "a:b{c}"), ("h", "é")] {
            let tag = partition(channel);
            let n = channel.len();
            for (partitioned, base, seed) in [
                (false, format!("{prefix}:{{{n}:{channel}}}:"), format!("{prefix}:epoch_seed")),
                (
                    true,
                    format!("{prefix}:{{p{tag}}}:{n}:{channel}:"),
                    format!("{prefix}:{{p{tag}}}:epoch_seed"),
                ),
            ] {
                let keys = channel_keys(prefix, partitioned, channel);
                assert_eq!(keys.meta, format!("{base}meta"));
                assert_eq!(keys.hist, format!("{base}hist"));
                assert_eq!(keys.state, format!("{base}state"));
                assert_eq!(keys.idem, format!("{base}idem:"));
                assert_eq!(keys.seed, seed);
            }
        }
    }
}
