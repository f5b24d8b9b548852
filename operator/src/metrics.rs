//! What the operator tells Prometheus and the kubelet: reconcile counts, failures by kind and
//! durations per controller, whether this replica leads, and the `/healthz`, `/readyz` and
//! `/metrics` endpoints that serve them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

use crate::error::Error;

/// The controller a reconcile belongs to, as the `controller` label spells it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ControllerKind {
    /// The DataApi controller.
    DataApi,
    /// The ApiRole controller.
    ApiRole,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: ControllerKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: ControllerKind,
    kind: &'static str,
}

/// Where this replica stands in leader election, which decides `/readyz` and the leader gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not yet in touch with the Lease, or shutting down: not ready.
    Starting = 0,
    /// Another replica holds the Lease; this one waits to take over. Ready, following the
    /// Kubernetes convention that a healthy standby is ready (it serves no traffic either way).
    Standby = 1,
    /// Holds the Lease (or runs without leader election) and runs the controllers: ready.
    Leader = 2,
}

/// The operator's metrics registry and health state, shared by the controllers, the leader
/// election and the HTTP server.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    role: AtomicU8,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started, per controller", reconciles.clone());
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, per controller and error kind",
            failures.clone(),
        );
        // 5 ms to about 20 s: a reconcile is a handful of API calls, slow ones wait on a busy server.
        let durations: Family<ControllerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 13)));
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, per controller",
            durations.clone(),
        );
        // Series that exist from the start, at zero, let `rate()` and alerts see the first
        // reconcile, and show a standby's zero rather than nothing.
        for controller in [ControllerKind::DataApi, ControllerKind::ApiRole] {
            drop(reconciles.get_or_create(&ControllerLabels { controller }));
            drop(durations.get_or_create(&ControllerLabels { controller }));
        }
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and runs the controllers, else 0",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            leader,
            role: AtomicU8::new(Role::Starting as u8),
        }
    }
}

impl Metrics {
    /// Counts a reconcile of `controller` and times it until the returned guard drops.
    pub fn reconcile_started(&self, controller: ControllerKind) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&ControllerLabels { controller }).inc();
        ReconcileTimer {
            metrics: self,
            controller,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile of `controller` by the kind of `error`.
    pub fn reconcile_failed(&self, controller: ControllerKind, error: &Error) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                kind: error.metric_label(),
            })
            .inc();
    }

    /// Records where this replica stands in leader election.
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        self.leader.set(i64::from(role == Role::Leader));
    }

    fn is_ready(&self) -> bool {
        self.role.load(Ordering::Relaxed) != Role::Starting as u8
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Observes a reconcile's duration when dropped, so that every way out of a reconcile counts.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: ControllerKind,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Serves `/healthz` (the process answers), `/readyz` (a leader or a standby, see [`Role`]) and
/// `/metrics` (Prometheus text format) on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    axum::serve(listener, app).await
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not in touch with the leader election Lease yet",
        )
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconciles_failures_durations_and_leadership() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started(ControllerKind::DataApi));
        metrics.reconcile_failed(
            ControllerKind::ApiRole,
            &Error::Kube {
                action: "testing".into(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
        );
        metrics.set_role(Role::Leader);

        let text = metrics.encode();

        assert!(
            text.contains("sluice_operator_reconciles_total{controller=\"DataApi\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_operator_reconcile_errors_total{controller=\"ApiRole\",kind=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_operator_reconcile_duration_seconds_count{controller=\"DataApi\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_operator_leader 1"), "{text}");
    }

    #[test]
    fn standbys_are_ready_and_starting_replicas_are_not() {
        let metrics = Metrics::default();
        assert!(!metrics.is_ready());

        metrics.set_role(Role::Standby);
        assert!(metrics.is_ready());
        let text = metrics.encode();
        assert!(text.contains("sluice_operator_leader 0"), "{text}");
        assert!(
            text.contains("sluice_operator_reconciles_total{controller=\"ApiRole\"} 0"),
            "{text}"
        );
    }
}
