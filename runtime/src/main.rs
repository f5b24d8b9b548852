//! `sluice-runtime`: serves one DataApi's database as a governed REST API and MCP endpoint.

use clap::Parser;

/// Serves a database as a governed REST API and MCP endpoint.
#[derive(Parser, Debug)]
#[command(name = "sluice-runtime", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
    eprintln!(
        "sluice-runtime {}: serving is not built yet (see the project's issues); nothing to do",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
