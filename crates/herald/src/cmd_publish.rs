//! `herald publish`: one publication through the HTTP API (`herald_client::ApiClient`).
//! Prints the hub's reply, or with `--print position` only `EPOCH:OFFSET`, the form
//! `herald sub --since` takes, so a script can capture it (`POS=$(herald publish ...)`).

use anyhow::Context;
use herald_client::{ApiClient, http_base_from_ws};
use herald_protocol::command::PublishCommand;

/// Arguments of `herald publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Hub base URL (`http://127.0.0.1:7700`); a `ws://HOST:PORT/ws` URL is accepted too.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// API key.
    #[arg(long, env = "HERALD_API_KEY")]
    pub api_key: String,
    /// Channel.
    pub channel: String,
    /// Data (JSON).
    pub data: String,
    /// Event type.
    #[arg(long = "type", env = "HERALD_TYPE")]
    pub kind: Option<String>,
    /// Record key (keyed namespaces).
    #[arg(long, env = "HERALD_KEY")]
    pub key: Option<String>,
    /// Record operation.
    #[arg(long, env = "HERALD_OP", value_parser = op_parser())]
    pub op: Option<herald_protocol::Op>,
    /// Idempotency key.
    #[arg(long, env = "HERALD_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Correlation id.
    #[arg(long, env = "HERALD_CORRELATION_ID")]
    pub correlation_id: Option<String>,
    /// Also publish to these channels (`/api/broadcast`); repeatable.
    #[arg(long = "also")]
    pub also: Vec<String>,
    /// What to print: the whole reply, or the part a script passes on.
    #[arg(long, value_enum, default_value_t = Print::Reply)]
    pub print: Print,
}

/// `--op`: clap lists and checks the values; the protocol crate's parser maps them.
fn op_parser() -> impl clap::builder::TypedValueParser<Value = herald_protocol::Op> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["upsert", "merge", "delete"])
        .map(|op| op.parse::<herald_protocol::Op>().expect("one of the possible values"))
}

/// What `herald publish` prints on success.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// The hub's reply as one JSON line.
    Reply,
    /// `EPOCH:OFFSET`, the form `herald sub --since` takes.
    Position,
    /// The publication id (`EPOCH-OFFSET`).
    Id,
}

/// Publishes and prints the reply as one JSON line (or the part `--print` names).
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    if args.print != Print::Reply && !args.also.is_empty() {
        anyhow::bail!("--print position and --print id need a single channel (no --also)");
    }
    let data: serde_json::Value = serde_json::from_str(&args.data).context("DATA must be JSON")?;
    let op = args.op;
    let base =
        if args.url.starts_with("ws") { http_base_from_ws(&args.url)? } else { args.url.clone() };
    let api = ApiClient::new(&base, Some(args.api_key.clone()))?;
    let publish = PublishCommand {
        channel: args.channel.clone(),
        kind: args.kind,
        data: serde_json::value::to_raw_value(&data)?,
        key: args.key,
        op,
        idempotency_key: args.idempotency_key,
        correlation_id: args.correlation_id,
    };
    let line = if args.also.is_empty() {
        let reply = api.publish(&publish).await.with_context(|| format!("publish to {base}"))?;
        match args.print {
            Print::Reply => serde_json::to_value(reply)?,
            Print::Position => {
                println!(
                    "{}",
                    herald_protocol::Position { epoch: reply.epoch, offset: reply.offset }
                );
                return Ok(());
            }
            Print::Id => {
                println!("{}", reply.id);
                return Ok(());
            }
        }
    } else {
        let mut channels = vec![args.channel];
        channels.extend(args.also);
        api.broadcast(&channels, &publish).await.with_context(|| format!("broadcast via {base}"))?
    };
    println!("{line}");
    Ok(())
}
