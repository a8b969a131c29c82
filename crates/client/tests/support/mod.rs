//! Test harness: the real hub as a process, a fault-injecting proxy, and helpers to await
//! events with timeouts (never sleeps as synchronization).

#![allow(dead_code)]

pub mod hub;
/// The fault-injecting proxy, shared with the server's tests (`herald_testkit::proxy`); not every
/// test uses it.
#[allow(unused_imports)]
pub use herald_testkit::proxy;

use herald_client::{ConnectionState, SubEvent, Subscription};
use herald_protocol::command::PublishCommand;
use std::time::Duration;
use tokio::sync::broadcast;

/// Next subscription event, failing the test after `timeout`.
pub async fn next_event(sub: &mut Subscription, timeout: Duration) -> SubEvent {
    match tokio::time::timeout(timeout, sub.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("subscription to {} ended", sub.channel()),
        Err(_) => panic!("no event on {} within {timeout:?}", sub.channel()),
    }
}

/// Waits for a state matching `pred` on a lossless state feed, returning it.
pub async fn wait_state(
    changes: &mut broadcast::Receiver<ConnectionState>,
    timeout: Duration,
    pred: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let wait = async {
        loop {
            match changes.recv().await {
                Ok(state) if pred(&state) => return state,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client task ended"),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| panic!("state not reached within {timeout:?}"))
}

/// A publish of `data` to `channel` with defaults for everything else.
pub fn publish_cmd(channel: &str, data: serde_json::Value) -> PublishCommand {
    PublishCommand {
        channel: channel.into(),
        kind: None,
        data: serde_json::value::to_raw_value(&data).unwrap(),
        key: None,
        op: None,
        idempotency_key: None,
        correlation_id: None,
    }
}
