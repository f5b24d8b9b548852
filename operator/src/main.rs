//! `sluice-operator`: reconciles DataApi and ApiRole objects into runtime pods.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use sluice_operator::Settings;

/// Reconciles Sluice DataApi and ApiRole objects into governed data API pods.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version, about)]
struct Args {
    /// Runtime image for DataApis that name none.
    #[arg(long, env = "SLUICE_RUNTIME_IMAGE", default_value = concat!("sluice-runtime:", env!("CARGO_PKG_VERSION")))]
    runtime_image: String,
    /// Namespaces to watch (repeat, or comma-separate). Unset: all namespaces.
    #[arg(long = "namespace", env = "SLUICE_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Seconds between reconciles of an unchanged object, a safety net behind the watches.
    #[arg(long, env = "SLUICE_RESYNC_SECONDS", default_value_t = 600)]
    resync_seconds: u64,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<(), kube::Error> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        runtime_image: args.runtime_image,
        resync: Duration::from_secs(args.resync_seconds),
    };
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.into_iter().map(Some).collect()
    };
    futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| sluice_operator::run(client.clone(), settings.clone(), ns)),
    )
    .await;
    Ok(())
}
