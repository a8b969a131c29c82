//! `herald codegen --ts SPEC...`: TypeScript types for spec files (docs/spec.md), for the
//! TypeScript client's `subscribeView` to type its rows.
//!
//! The specs are read and checked as `herald serve --spec` reads them (parse, then the
//! [`Catalog`] of all of them together), so a spec that generates is one the hub loads.

use anyhow::{Context, anyhow};
use herald_spec::Catalog;
use std::path::PathBuf;

/// Arguments of `herald codegen`.
#[derive(clap::Args)]
pub struct CodegenArgs {
    /// Generate TypeScript (the only target so far; required so that others can be added).
    #[arg(long, required = true)]
    ts: bool,
    /// Spec files, read together (names are unique across them).
    #[arg(required = true, value_name = "SPEC")]
    specs: Vec<PathBuf>,
    /// Write the module to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Prints (or writes) the generated module; an error names `file:line:column`.
pub fn run(args: CodegenArgs) -> anyhow::Result<()> {
    debug_assert!(args.ts, "clap requires --ts");
    let catalog = load(&args.specs)?;
    let module = herald_spec::codegen::typescript(&catalog);
    match &args.out {
        Some(path) => std::fs::write(path, module)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{module}"),
    }
    Ok(())
}

/// Parses each spec and builds their catalog, the files named as given.
fn load(paths: &[PathBuf]) -> anyhow::Result<Catalog> {
    let mut specs = Vec::with_capacity(paths.len());
    for path in paths {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
        // SpecError reads `line:column: message`.
        let spec = herald_spec::parse_spec(&text).map_err(|e| anyhow!("{file}:{e}"))?;
        specs.push((file, spec));
    }
    // CatalogError already reads `file:line:column: message`.
    Catalog::build(&specs).map_err(|e| anyhow!("{e}"))
}
