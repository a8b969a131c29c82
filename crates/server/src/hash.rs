//! The hasher of the maps a publication passes through (streams, the fan-out's channels, a
//! session's subscriptions), all keyed by channel names that clients choose.
//!
//! std's SipHash-1-3 costs more than the lookup it serves on short keys (it was a visible share
//! of a rooms profile, docs/benchmarks.md); foldhash is several times faster and, seeded per
//! process at random, still keeps chosen keys from piling into one bucket.

/// A `HashMap` with the fast seeded hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
