//! `herald config check FILE` and `herald config example`: a configuration file checked without
//! starting the server, and the full commented file to start one from.
//!
//! `check` runs what `herald serve --config FILE` runs before binding (parse with unknown keys
//! refused, [`Config::validate`], the token verifier built from `[auth]`, the certificate of
//! `[tls]` loaded), so a file it passes is one the server starts with (unless its port is taken
//! or Redis is down). The flags and `HERALD_*` variables are not applied.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use herald_server::Config;
use herald_server::auth::{AuthError, Verifier};
use herald_server::config::ConfigError;
use herald_server::tls::Tls;

/// The full commented configuration file: every key with its default. docs/configuration.md
/// embeds the same text (tests/config_cmd.rs keeps the two equal and the values equal to
/// `Config::default()`).
pub const EXAMPLE: &str = include_str!("config_example.toml");

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCmd,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a configuration file as `herald serve --config FILE` would, without serving.
    /// Prints "FILE: ok" (and any warnings) and exits 0; otherwise prints why and exits 1.
    Check {
        /// The TOML file to check.
        file: String,
    },
    /// Print the full commented configuration file, every key with its default.
    Example,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCmd::Check { file } => check(&file),
        ConfigCmd::Example => {
            print!("{EXAMPLE}");
            Ok(())
        }
    }
}

/// Checks `file`; the error names the file and, through `ConfigError`, the key (and for TOML
/// errors the line).
fn check(file: &str) -> anyhow::Result<()> {
    let mut config = Config::from_file(file).map_err(|e| match e {
        // Already names the path, and its reason (kept out of the chain so it is said once).
        ConfigError::Read { .. } => anyhow!("{e}"),
        e => anyhow!("{file}: {e}"),
    })?;
    // Spec files as `herald serve` reads them; an error names the spec file and line.
    config.load_specs().map_err(|e| anyhow!("{file}: {e}"))?;
    // Bad PEM keys, `leeway_secs` and `jwks_ttl` are refused when the verifier is built.
    Verifier::new(&config.auth).map_err(|e| match e {
        // Its Display reads "invalid token", which a file is not.
        AuthError::Invalid(reason) => anyhow!("{file}: invalid configuration: {reason}"),
        e => anyhow!("{file}: invalid configuration: {e}"),
    })?;
    // Certificate and key are loaded as `herald serve` loads them: both PEM, and a pair.
    Tls::from_config(&config.tls)
        .map_err(|e| anyhow!("{file}: invalid configuration: [tls]: {e}"))?;
    crate::cmd_serve::check_bridges(&config)
        .map_err(|e| anyhow!("{file}: invalid configuration: [[bridge]]: {e}"))?;
    println!("{file}: ok");
    for warning in config.warnings() {
        eprintln!("{file}: warning: {warning}");
    }
    Ok(())
}
