//! `herald sub`: subscribe through the resilient client (`herald-client`) and print each
//! publication as one JSON line on stdout. Connection state changes, subscribe confirmations and
//! errors go to stderr; a `Resync` is printed on stdout too (as a `{"resync":...}` line) so a
//! pipeline reading stdout knows it must reload.
//!
//! On the way out (Ctrl-C, `--count` reached, or the client giving up) it prints on stderr, per
//! channel, the command that resumes after the last publication printed:
//! `herald sub: resume with: herald sub --since EPOCH:OFFSET CHANNEL`.

use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use herald_client::{
    BackoffPolicy, Client, ConnectionState, OfflineReason, SubEvent, SubscribeOptions,
    ws_url_from_http,
};
use herald_protocol::Position;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Arguments of `herald sub`.
#[derive(clap::Args)]
pub struct SubArgs {
    /// Hub URL, as `herald publish` takes it (`http://127.0.0.1:7700`, `https://HOST/prefix`:
    /// the WebSocket endpoint `ws(s)://…/ws` is derived), or the endpoint itself
    /// (`ws://HOST:PORT/ws`); repeat or separate with commas for several nodes (the client moves
    /// to the next one after a failure).
    #[arg(
        long,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:7700",
        value_delimiter = ','
    )]
    pub url: Vec<String>,
    /// Token (omit for anonymous namespaces).
    #[arg(long, env = "HERALD_TOKEN")]
    pub token: Option<String>,
    /// Resume from this position (`EPOCH:OFFSET`); applies to every channel given.
    #[arg(long)]
    pub since: Option<Position>,
    /// Ask for a snapshot of a keyed channel first (printed as one `{"snapshot":...}` line).
    #[arg(long)]
    pub snapshot: bool,
    /// Open the circuit breaker after this many consecutive failed connection attempts (then
    /// probe once per `--backoff-max` until one connects); 0 never opens it.
    #[arg(long, env = "HERALD_BREAKER_AFTER", default_value_t = 10)]
    pub breaker_after: u32,
    /// First reconnect delay ceiling (doubles per attempt, full jitter).
    #[arg(long, env = "HERALD_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    #[arg(long, env = "HERALD_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Exit after printing this many publications (all channels together); 0 exits once every
    /// channel is subscribed (after its snapshot, with `--snapshot`). Unset: run until stopped.
    #[arg(long)]
    pub count: Option<u64>,
    /// Follow a live view of one keyed channel (docs/protocol.md §14): a spec view or
    /// subscription (`ActiveTasks`). Prints the rows as one `{"rows":...}` line, then one line
    /// per insert, update and delete.
    #[arg(long)]
    pub view: Option<String>,
    /// An ad-hoc view filter (`status != "done"`), ANDed with `--view`'s.
    #[arg(long)]
    pub filter: Option<String>,
    /// A view of one record (or the key of a `by id` subscription).
    #[arg(long)]
    pub key: Option<String>,
    /// Channels (one with `--view`, `--filter` or `--key`).
    #[arg(required = true)]
    pub channels: Vec<String>,
}

/// Where each channel's stream stands for the application: the position after the last
/// publication printed, so `--since` with it resumes with the next one.
#[derive(Default)]
struct Resume {
    /// Channel to position; a channel appears once it is subscribed.
    positions: BTreeMap<String, Position>,
}

impl Resume {
    /// Follows one event; `since` is what the subscription was asked to resume from.
    fn follow(&mut self, channel: &str, since: Option<&Position>, event: &SubEvent) {
        let position = match event {
            // With `--since` the reply's position is the channel's head, and the missed
            // publications follow it: until they are printed, the stream stands at `since`.
            SubEvent::Subscribed { position, .. } => since.unwrap_or(position).clone(),
            SubEvent::Publication(p) => p.position(),
            SubEvent::Resync { position, .. } => position.clone(),
            // Presence and volatile events move no channel position.
            _ => return,
        };
        self.positions.insert(channel.to_string(), position);
    }

    /// Prints the resume command of every subscribed channel on stderr.
    fn print(&self) {
        for (channel, position) in &self.positions {
            eprintln!("herald sub: resume with: herald sub --since {position} {channel}");
        }
    }
}

/// Subscribes and prints until interrupted, until every subscription is refused, or until the
/// client goes offline for good (a final close code); an open circuit breaker keeps probing.
pub async fn run(args: SubArgs) -> anyhow::Result<()> {
    let policy = BackoffPolicy {
        initial: args.backoff_initial,
        max: args.backoff_max.max(args.backoff_initial),
        breaker_after: (args.breaker_after > 0).then_some(args.breaker_after),
        ..Default::default()
    };
    let urls = args
        .url
        .iter()
        .map(|u| ws_url_from_http(u).with_context(|| format!("--url {u:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut builder = Client::builder().urls(urls).backoff(policy).name("herald-cli");
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    let (client, mut states) = builder.build_with_states()?;
    if args.view.is_some() || args.filter.is_some() || args.key.is_some() {
        let result = crate::cmd_sub_view::run(&args, &client, &mut states).await;
        client.close();
        return result;
    }

    let options = SubscribeOptions {
        since: args.since.clone(),
        snapshot: args.snapshot,
        ..Default::default()
    };
    let mut events = futures_util::stream::select_all(args.channels.iter().map(|channel| {
        let channel = channel.clone();
        client
            .subscribe(channel.clone(), options.clone())
            .map(move |event| (channel.clone(), event))
    }));

    let mut resume = Resume::default();
    let result = print_until_done(&args, &mut states, &mut events, &mut resume).await;
    client.close();
    resume.print();
    result
}

/// Prints events until Ctrl-C, `--count`, every subscription refused, or the client offline for
/// good.
async fn print_until_done(
    args: &SubArgs,
    states: &mut tokio::sync::broadcast::Receiver<ConnectionState>,
    events: &mut (impl futures_util::Stream<Item = (String, SubEvent)> + Unpin),
    resume: &mut Resume,
) -> anyhow::Result<()> {
    let channels: BTreeSet<&str> = args.channels.iter().map(String::as_str).collect();
    // Channels whose subscription is settled (subscribed, or refused for good).
    let mut settled = BTreeSet::new();
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            state = states.recv() => match state {
                // The open breaker still probes: keep waiting, as the client does.
                Ok(state @ ConnectionState::Offline { reason: OfflineReason::CircuitOpen { .. } }) => {
                    eprintln!("herald sub: {state}")
                }
                Ok(ConnectionState::Offline { reason }) => {
                    anyhow::bail!("offline: {reason}");
                }
                Ok(state) => eprintln!("herald sub: {state}"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => anyhow::bail!("client stopped"),
            },
            event = events.next() => match event {
                None => anyhow::bail!("every subscription ended"),
                Some((channel, event)) => {
                    resume.follow(&channel, args.since.as_ref(), &event);
                    printed += u64::from(matches!(event, SubEvent::Publication(_)));
                    if matches!(event, SubEvent::Subscribed { .. } | SubEvent::Ended { .. }) {
                        settled.insert(channel.clone());
                    }
                    print_event(&channel, event)?;
                    let counted = args.count.is_some_and(|count| printed >= count);
                    if counted && settled.len() == channels.len() {
                        // A subscribe reply's resync follows its `Subscribed` at once: print
                        // it (and keep the resume position true); publications past the
                        // count are left unprinted.
                        while let Some(Some((channel, event))) = events.next().now_or_never() {
                            if !matches!(event, SubEvent::Publication(_)) {
                                resume.follow(&channel, args.since.as_ref(), &event);
                                print_event(&channel, event)?;
                            }
                        }
                        // A script bounded by --count learns from the exit status that a
                        // channel was refused.
                        let refused = settled.len() - resume.positions.len();
                        if refused > 0 {
                            anyhow::bail!("{refused} subscription(s) refused");
                        }
                        return Ok(());
                    }
                }
            },
        }
    }
}

fn print_event(channel: &str, event: SubEvent) -> anyhow::Result<()> {
    match event {
        SubEvent::Publication(p) => println!("{}", serde_json::to_string(&p)?),
        SubEvent::Subscribed { position, snapshot } => {
            eprintln!("herald sub: subscribed to {channel} at {position}");
            if let Some(records) = snapshot {
                let line = serde_json::json!({
                    "channel": channel, "epoch": position.epoch, "offset": position.offset,
                    "snapshot": records,
                });
                println!("{line}");
            }
        }
        SubEvent::Resync { reason, position, snapshot } => {
            eprintln!(
                "herald sub: {channel}: continuity lost ({}), continuing from {position}",
                reason.as_str()
            );
            let mut line = serde_json::json!({
                "channel": channel, "resync": reason.as_str(), "epoch": position.epoch,
                "offset": position.offset,
            });
            if let Some(records) = snapshot {
                line["snapshot"] = serde_json::to_value(records)?;
            }
            println!("{line}");
        }
        SubEvent::Ended { error } => {
            eprintln!("herald sub: {channel}: subscription ended: {error}")
        }
        // `herald sub` asks for no presence; volatile events of the channel are not printed.
        _ => {}
    }
    Ok(())
}
