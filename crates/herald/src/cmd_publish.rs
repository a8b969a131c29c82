//! `herald publish`: one publication through the HTTP API.

use anyhow::Context;

/// Arguments of `herald publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Hub base URL (`http://127.0.0.1:7700`).
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
    /// Record operation: upsert, merge or delete.
    #[arg(long, env = "HERALD_OP")]
    pub op: Option<String>,
    /// Idempotency key.
    #[arg(long, env = "HERALD_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Correlation id.
    #[arg(long, env = "HERALD_CORRELATION_ID")]
    pub correlation_id: Option<String>,
}

/// Publishes and prints the reply as one JSON line.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&args.data).context("DATA must be JSON")?;
    let op = match &args.op {
        Some(op) => Some(op.parse::<herald_protocol::Op>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let body = serde_json::json!({
        "channel": args.channel, "data": data, "type": args.kind, "key": args.key, "op": op,
        "idempotency_key": args.idempotency_key, "correlation_id": args.correlation_id,
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/api/publish", args.url.trim_end_matches('/')))
        .header("x-api-key", &args.api_key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    let status = resp.status();
    let text = resp.text().await?;
    if status.is_success() {
        println!("{}", text.trim());
        Ok(())
    } else {
        anyhow::bail!("publish failed ({status}): {}", text.trim())
    }
}
