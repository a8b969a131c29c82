//! Engine conformance suite: what every [`herald_server::engine::Engine`] must do, checked the
//! way subscribers see it — through the hub's rules ([`herald_server::rules`]: the recover
//! verdict, history pages, state) and the engine's [`herald_server::engine::Delivery`] of live
//! publications — plus [`herald_server::engine::Engine::read`] where useful.
//!
//! Every case is one async function over [`nodes::Nodes`]: a node to publish through, a node to
//! subscribe, resume and read through, and what that node delivered. It runs once per engine:
//! `on_memory::CASE` (one memory engine is both nodes) and `on_redis::CASE` (two Redis engines
//! on one fresh `redis-server`, as two herald processes would be). An engine passes when every
//! case does; a new engine adds its factory to [`nodes`] and one `on_ENGINE` line to
//! [`every_engine!`]. What only one engine has stays with it: `redis_only` here (the bytes
//! `publish.lua` stores, lost data), the memory engine's budget and housekeeping in its unit
//! tests. What needs the real binary over WebSocket is in `crates/herald/tests` (`resume.rs`,
//! and the protocol conformance suite `conformance.rs` on both engines).
//!
//! Run it (needs `redis-server` on PATH; without `--features redis` only the memory engine's
//! cases build):
//!
//! ```sh
//! cargo test -p herald-server --features redis --test engine_conformance
//! ```

#[path = "engine_conformance/keyed.rs"]
mod keyed;
#[path = "engine_conformance/nodes.rs"]
mod nodes;
#[path = "engine_conformance/positions.rs"]
mod positions;
#[path = "engine_conformance/presence.rs"]
mod presence;
#[path = "engine_conformance/publish.rs"]
mod publish;
#[cfg(feature = "redis")]
#[path = "engine_conformance/redis_only.rs"]
mod redis_only;

/// One test per case and engine: `on_memory::CASE` and `on_redis::CASE`.
macro_rules! every_engine {
    ($($module:ident::$case:ident),* $(,)?) => {
        /// Every case on the memory engine.
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::nodes::memory().await).await;
                }
            )*
        }
        /// Every case on two Redis engines sharing one `redis-server`.
        #[cfg(feature = "redis")]
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::nodes::redis().await).await;
                }
            )*
        }
    };
}

every_engine! {
    positions::offsets_history_and_recovery,
    positions::resume_recovers_exactly_what_was_missed_then_live,
    positions::not_recovered_reasons,
    positions::history_pages,
    positions::history_since_ahead_is_epoch_changed,
    keyed::keyed_state_and_limits,
    keyed::state_limits_agree_across_nodes,
    keyed::keys_count_toward_state_bytes_and_have_a_length_limit,
    keyed::keyed_resume_not_recovered_carries_a_snapshot,
    keyed::snapshot_plus_stream_equals_final_state,
    publish::idempotency_returns_the_first_result,
    publish::publish_time_is_rfc3339_milliseconds,
    publish::reads_create_nothing_and_the_first_publish_keeps_the_told_epoch,
    presence::publish_if_checks_the_stored_record,
    presence::volatile_events_take_no_position,
    presence::presence_tracking_round_trip,
}
