//! The `herald` binary: `serve`, `token`, `publish`, `sub`, `bench`, `config`, `codegen`,
//! `completions`.
//! `herald --version` names the commit it was built from (build.rs).
//!
//! Every flag also reads `HERALD_<FLAG>` from the environment (flag wins over env, env over the
//! config file, the config file over defaults).
//!
//! # Layout
//!
//! One file per subcommand, in the manner of mini-redis's `cmd/`:
//!
//! - `cmd_serve`: the configuration layered from file, env and flags; bind, serve, drain.
//! - `cmd_token`: mint a development token.
//! - `cmd_publish`: publish through the HTTP API.
//! - `cmd_sub`: subscribe and print, with the Rust client.
//! - `cmd_bench` and `bench/` (`client` the load generator's connections, `scenarios` the
//!   workloads): `herald bench`, docs/benchmarks.md.
//! - `cmd_config` and `config_example.toml`: `herald config check FILE` and
//!   `herald config example` (the file docs/configuration.md embeds).
//! - `cmd_codegen`: `herald codegen --ts SPEC...`, TypeScript types for spec files.
//! - `completions` is handled here: clap_complete writes the script from the `Cli` definition.

mod cmd_bench;
mod cmd_codegen;
mod cmd_config;
mod cmd_publish;
mod cmd_serve;
mod cmd_sub;
mod cmd_sub_view;
mod cmd_token;

/// mimalloc rather than glibc malloc: frames and queues are allocated on one worker thread and
/// freed on another, and glibc's arena locks then cost 15-35 % of a small-event workload
/// (docs/benchmarks.md, "Per-event cost").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HERALD_COMMIT"), ")"),
    about = "Herald: a real-time event hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub.
    Serve(cmd_serve::ServeArgs),
    /// Print an HS256 token for development and scripts.
    Token(cmd_token::TokenArgs),
    /// Publish one event through the HTTP API and print the reply.
    Publish(cmd_publish::PublishArgs),
    /// Subscribe and print each publication as one JSON line.
    Sub(cmd_sub::SubArgs),
    /// Load-test a hub on 127.0.0.1 and print its figures (docs/benchmarks.md).
    Bench(cmd_bench::BenchArgs),
    /// Check a configuration file, or print the full commented one.
    Config(cmd_config::ConfigArgs),
    /// Print TypeScript types for spec files (docs/spec.md).
    Codegen(cmd_codegen::CodegenArgs),
    /// Print a shell completion script (e.g. `herald completions bash > /etc/bash_completion.d/herald`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Cmd::Bench(args) = &cli.command
        && let Err(e) = cmd_bench::pin_before_runtime(args)
    {
        eprintln!("herald: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Serve(args) => cmd_serve::run(args).await,
            Cmd::Token(args) => cmd_token::run(args),
            Cmd::Publish(args) => cmd_publish::run(args).await,
            Cmd::Sub(args) => cmd_sub::run(args).await,
            Cmd::Bench(args) => cmd_bench::run(args).await,
            Cmd::Config(args) => cmd_config::run(args),
            Cmd::Codegen(args) => cmd_codegen::run(args),
            Cmd::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "herald",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
