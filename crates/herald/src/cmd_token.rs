//! `herald token`: mint an HS256 token.

use herald_server::auth::{Claims, MAX_TOKEN_TTL_SECS, expiry_after, mint_hs256};

/// Arguments of `herald token`.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// HMAC secret (the hub's `auth.token_secret`).
    #[arg(long, env = "HERALD_SECRET")]
    secret: String,
    /// User id (`sub`).
    #[arg(long, env = "HERALD_SUB")]
    sub: String,
    /// Channel patterns the user may subscribe to, comma-separated (`session:*,campaign:42`).
    #[arg(long, env = "HERALD_CHANNELS", value_delimiter = ',')]
    channels: Vec<String>,
    /// Channel patterns the user may publish to, comma-separated.
    #[arg(long, env = "HERALD_PUBLISH", value_delimiter = ',')]
    publish: Vec<String>,
    /// Roles, comma-separated (`admin` may do everything).
    #[arg(long, env = "HERALD_ROLES", value_delimiter = ',')]
    roles: Vec<String>,
    /// Adds the `admin` role: a token for the web dashboard (it may subscribe to `sys:stats`,
    /// tail and publish to any channel).
    #[arg(long)]
    admin: bool,
    /// Lifetime (`30s`, `1h`, `7d`; 1 s to 366 days).
    #[arg(long, env = "HERALD_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Audience (`aud`): required by a hub with `auth.audience` set.
    #[arg(long, env = "HERALD_AUDIENCE")]
    audience: Option<String>,
    /// Issuer (`iss`): required by a hub with `auth.issuer` set.
    #[arg(long, env = "HERALD_ISSUER")]
    issuer: Option<String>,
    /// A view filter the user is held to on a namespace, `NAMESPACE=FILTER` (repeatable):
    /// `--filter 'task=assignee == "u7"'`. On that namespace the user may only subscribe to
    /// views, each ANDed with the filter.
    #[arg(long = "filter", value_parser = parse_filter)]
    filters: Vec<(String, String)>,
}

/// Splits `NAMESPACE=FILTER`.
fn parse_filter(s: &str) -> Result<(String, String), String> {
    let (ns, filter) = s.split_once('=').ok_or("expected NAMESPACE=FILTER")?;
    if ns.is_empty() || filter.trim().is_empty() {
        return Err("expected NAMESPACE=FILTER".into());
    }
    Ok((ns.to_string(), filter.to_string()))
}

/// Prints the token.
pub fn run(mut args: TokenArgs) -> anyhow::Result<()> {
    if args.admin && !args.roles.iter().any(|r| r == "admin") {
        args.roles.push("admin".into());
    }
    let claims = Claims {
        sub: args.sub,
        exp: Some(expiry_after(args.ttl.as_secs()).map_err(|_| {
            anyhow::anyhow!("--ttl must be 1 s to {} days", MAX_TOKEN_TTL_SECS / 86_400)
        })?),
        nbf: None,
        channels: args.channels,
        publish: args.publish,
        roles: args.roles,
        aud: args.audience,
        iss: args.issuer,
        filters: args.filters.into_iter().collect(),
    };
    println!("{}", mint_hs256(&args.secret, &claims)?);
    Ok(())
}
