//! `sluice-operator`: reconciles DataApi and ApiRole objects into runtime pods.

use clap::Parser;

/// Reconciles Sluice DataApi and ApiRole objects into governed data API pods.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
    eprintln!(
        "sluice-operator {}: the controllers are not built yet (see the project's issues); nothing to do",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
