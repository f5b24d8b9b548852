//! `sluice-operator`: reconciles DataApi and ApiRole objects into runtime pods.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use sluice_operator::leader::{LeaderElector, LeaseSettings, replica_identity};
use sluice_operator::metrics::{self, Role};
use sluice_operator::{Metrics, Settings};
use tokio::net::TcpListener;
use tracing::{error, info};

// glibc's malloc was ~17% of the operator's CPU while 1,000 DataApis converged (bench/README.md):
// watch events and API responses are decoded into many small, short-lived strings and maps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reconciles Sluice DataApi and ApiRole objects into governed data API pods.
///
/// Several replicas may run at once: they elect a leader through a coordination.k8s.io/v1
/// Lease, and only the leader reconciles. The others stand by and take over within the Lease
/// duration when the leader dies, or at their next check when it shuts down (SIGTERM or
/// Ctrl-C), since a leader that stops gracefully releases the Lease.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version, about, long_about)]
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
    /// Reconciles in flight at once, per controller (DataApi and ApiRole).
    #[arg(long, env = "SLUICE_RECONCILE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of the HTTP server for /healthz (the process answers), /readyz (leading, or
    /// standing by for the Lease) and /metrics (Prometheus text format).
    #[arg(long, env = "SLUICE_METRICS_ADDRESS", default_value = "0.0.0.0:8081")]
    metrics_address: SocketAddr,
    /// Elect a leader through a Lease so that only one replica reconciles. Turn off
    /// (`--leader-election=false`) only for a single local process.
    #[arg(long, env = "SLUICE_LEADER_ELECTION", action = ArgAction::Set, default_value_t = true)]
    leader_election: bool,
    /// Namespace of the leader election Lease. Default: the pod's namespace (env
    /// POD_NAMESPACE), else `default`.
    #[arg(long, env = "SLUICE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader election Lease; replicas of one operator must share it.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-operator")]
    lease_name: String,
    /// Seconds a leader's claim lasts after its last renewal: how long standbys wait before
    /// taking over from a leader that died without releasing the Lease.
    #[arg(long, env = "SLUICE_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration_seconds: u64,
    /// Seconds between the leader's renewals, and between a standby's checks of the Lease.
    /// Must be less than half the Lease duration, so that a missed renewal can be retried.
    #[arg(long, env = "SLUICE_LEASE_RENEW_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    lease_renew_seconds: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Why the operator stopped with a failure.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("--lease-renew-seconds ({renew}) must be less than half of --lease-duration-seconds ({duration})")]
    RenewTooSlow { renew: u64, duration: u64 },
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot listen on --metrics-address {address}: {source}")]
    MetricsAddress {
        address: SocketAddr,
        source: std::io::Error,
    },
    // Exiting rather than standing by again hands the pod back to Kubernetes, which restarts it
    // with fresh caches as a standby.
    #[error("stopped reconciling: {0}")]
    LostLeadership(#[from] sluice_operator::leader::LeadershipLost),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    match operate(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            error!(%failure, "sluice-operator failed");
            ExitCode::FAILURE
        }
    }
}

async fn operate(args: Args) -> Result<(), Failure> {
    if args.leader_election && args.lease_renew_seconds * 2 >= args.lease_duration_seconds {
        return Err(Failure::RenewTooSlow {
            renew: args.lease_renew_seconds,
            duration: args.lease_duration_seconds,
        });
    }
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener = TcpListener::bind(args.metrics_address)
        .await
        .map_err(|source| Failure::MetricsAddress {
            address: args.metrics_address,
            source,
        })?;
    let server = metrics::serve(listener, metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = server.await {
            error!(%error, "the health and metrics server stopped");
        }
    });

    let settings = Settings {
        runtime_image: args.runtime_image,
        resync: Duration::from_secs(args.resync_seconds),
        concurrency: args.concurrency,
    };
    // The chart passes an empty SLUICE_WATCH_NAMESPACES for "all namespaces"; empty entries name none.
    let namespaces: Vec<String> = args
        .namespaces
        .into_iter()
        .map(|namespace| namespace.trim().to_owned())
        .filter(|namespace| !namespace.is_empty())
        .collect();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    // Each controller stops on SIGTERM or Ctrl-C by itself (`shutdown_on_signal`).
    let controllers = futures::future::join_all(scopes.into_iter().map(|namespace| {
        sluice_operator::run_with_metrics(client.clone(), settings.clone(), namespace, metrics.clone())
    }));

    if !args.leader_election {
        metrics.set_role(Role::Leader);
        controllers.await;
        return Ok(());
    }
    let lease = LeaseSettings {
        namespace: args
            .lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()))
            .unwrap_or_else(|| "default".to_owned()),
        name: args.lease_name,
        identity: replica_identity(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew_interval: Duration::from_secs(args.lease_renew_seconds),
    };
    info!(identity = %lease.identity, lease = %format!("{}/{}", lease.namespace, lease.name), "contending for the Lease");
    let mut elector = LeaderElector::new(client.clone(), lease, metrics.clone());
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown_signal() => {
            info!("shutting down while standing by");
            return Ok(());
        }
    }
    tokio::select! {
        _ = controllers => {}
        lost = elector.hold() => return Err(lost.into()),
    }
    // The controllers stopped on a shutdown signal: let a standby take over at once.
    if let Err(error) = elector.release().await {
        error!(%error, "could not release the Lease; standbys take over once it expires");
    }
    Ok(())
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
