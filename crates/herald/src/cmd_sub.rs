//! `herald sub`: subscribe and print each publication as one JSON line on stdout.
//! Status and errors go to stderr.

use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::{Position, ServerMessage, split_frame};
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `herald sub`.
#[derive(clap::Args)]
pub struct SubArgs {
    /// WebSocket URL (`ws://127.0.0.1:7700/ws`); repeat for several nodes.
    #[arg(long, env = "HERALD_URL", default_value = "ws://127.0.0.1:7700/ws")]
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
    /// Channels.
    #[arg(required = true)]
    pub channels: Vec<String>,
}

/// Subscribes and prints until the connection ends.
pub async fn run(args: SubArgs) -> anyhow::Result<()> {
    let url = args.url.first().cloned().unwrap_or_default();
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    eprintln!("herald sub: connected to {url}");
    let mut commands = vec![Request {
        id: Some(1),
        command: Command::Connect { token: args.token.clone(), name: None },
    }];
    for (i, channel) in args.channels.iter().enumerate() {
        commands.push(Request {
            id: Some(i as u64 + 2),
            command: Command::Subscribe {
                channel: channel.clone(),
                since: args.since.clone(),
                snapshot: args.snapshot,
            },
        });
    }
    let frame: Vec<String> = commands.iter().map(Request::to_json).collect();
    ws.send(Message::text(frame.join("\n"))).await?;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(frame) => anyhow::bail!("closed by server: {frame:?}"),
            _ => continue,
        };
        for line in split_frame(text.as_str()) {
            match ServerMessage::parse(line) {
                Ok(ServerMessage::Publication(p)) => println!("{}", serde_json::to_string(&p)?),
                Ok(ServerMessage::Ping) => ws.send(Message::text(r#"{"cmd":"pong"}"#)).await?,
                Ok(ServerMessage::Reply { id, result: Err(e) }) => {
                    anyhow::bail!("request {id} failed: {e}")
                }
                Ok(ServerMessage::Reply { result: Ok(r), .. }) => {
                    let v: serde_json::Value = serde_json::from_str(r.get())?;
                    if let Some(pubs) = v.get("publications").and_then(|p| p.as_array()) {
                        for p in pubs {
                            println!("{p}");
                        }
                    }
                    if let Some(snapshot) = v.get("snapshot") {
                        println!(
                            "{}",
                            serde_json::json!({ "channel": v["channel"], "snapshot": snapshot, "epoch": v["epoch"], "offset": v["offset"] })
                        );
                    }
                    eprintln!("herald sub: {}", v);
                }
                Ok(other) => eprintln!("herald sub: {other:?}"),
                Err(e) => eprintln!("herald sub: unparseable message: {e}"),
            }
        }
    }
    anyhow::bail!("connection ended")
}
