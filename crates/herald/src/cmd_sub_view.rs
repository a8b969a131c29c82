//! `herald sub --view/--filter/--key`: follow a live view through the resilient client and
//! print its rows, then each change, as JSON lines on stdout:
//!
//! - `{"channel":..,"epoch":..,"offset":..,"rows":[{"key":..,"value":..}...]}` when the rows are
//!   (re)loaded (with `"resync": REASON` after a resume the hub could not serve);
//! - `{"operation":"insert"|"update"|"delete","key":..,"record"?:..,"reason"?:..,"offset":..}`
//!   per change.
//!
//! `--count N` exits after N changes; `--count 0` once the rows are printed.

use crate::cmd_sub::SubArgs;
use futures_util::StreamExt;
use herald_client::{Client, ConnectionState, OfflineReason, ViewEvent, ViewOptions};
use serde_json::{Value, json};

/// Follows the view until Ctrl-C, `--count`, or the view ending.
pub async fn run(
    args: &SubArgs,
    client: &Client,
    states: &mut tokio::sync::broadcast::Receiver<ConnectionState>,
) -> anyhow::Result<()> {
    let [channel] = args.channels.as_slice() else {
        anyhow::bail!("--view, --filter and --key follow one channel");
    };
    let mut options = match (&args.view, &args.filter, &args.key) {
        (Some(view), _, _) => ViewOptions::view(view.clone()),
        (None, Some(filter), _) => ViewOptions::filter(filter.clone()),
        (None, None, Some(key)) => ViewOptions::by_key(key.clone()),
        (None, None, None) => unreachable!("called for a view"),
    };
    if args.view.is_some()
        && let Some(filter) = &args.filter
    {
        options = options.and_filter(filter.clone());
    }
    if let (Some(key), true) = (&args.key, args.view.is_some() || args.filter.is_some()) {
        options = options.key(key.clone());
    }
    let mut view = client.subscribe_view::<Value>(channel.clone(), options);
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            state = states.recv() => match state {
                Ok(ConnectionState::Offline { reason: OfflineReason::CircuitOpen { .. } }) | Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => anyhow::bail!("client stopped"),
            },
            event = view.next() => {
                let line = match event {
                    None => anyhow::bail!("the view ended"),
                    Some(ViewEvent::Ended { error }) => anyhow::bail!("{channel}: view ended: {error}"),
                    // Like `herald sub`: volatile events are not printed (not part of the view).
                    Some(ViewEvent::Volatile { .. }) => continue,
                    Some(ViewEvent::Ready { position, resync }) => {
                        let rows: Vec<Value> = view
                            .rows()
                            .iter()
                            .map(|(key, value)| json!({"key": key, "value": value}))
                            .collect();
                        let mut line = json!({
                            "channel": channel, "epoch": position.epoch, "offset": position.offset,
                            "rows": rows,
                        });
                        if let Some(reason) = resync {
                            line["resync"] = reason.as_str().into();
                        }
                        println!("{line}");
                        if args.count == Some(0) {
                            return Ok(());
                        }
                        continue;
                    }
                    Some(ViewEvent::Insert { key, record, publication }) => {
                        json!({"operation": "insert", "key": key, "record": record, "offset": publication.offset})
                    }
                    Some(ViewEvent::Update { key, record, publication, .. }) => {
                        json!({"operation": "update", "key": key, "record": record, "offset": publication.offset})
                    }
                    Some(ViewEvent::Delete { key, reason, publication, .. }) => {
                        json!({"operation": "delete", "key": key, "reason": reason.as_str(), "offset": publication.offset})
                    }
                };
                println!("{line}");
                printed += 1;
                if args.count.is_some_and(|count| printed >= count) {
                    return Ok(());
                }
            }
        }
    }
}
