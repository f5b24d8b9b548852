//! What the runtime tells Prometheus: requests, latency, rows, rate-limit refusals,
//! authentication failures, config reloads and database pool usage, rendered for `/metrics`.
//!
//! # Bounded labels
//! Every label value comes from a fixed set or from the config, never from the request as sent:
//! - `table` is a table the schema exposes, or [`UNRESOLVED`] when the request named none or one
//!   that does not exist: callers pass `Some(name)` only for a table they resolved (from a
//!   [`crate::plan::Plan`] or a schema lookup), so probing random paths adds no series.
//! - `verb` is one of the four [`Verb`]s, or [`UNRESOLVED`].
//! - `status` is the numeric HTTP status; the runtime answers with a fixed handful of codes.
//! - `role` is an ApiRole name from the config; `reason` and `result` are fixed enums.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::{Transport, verb_name};
use crate::batch::BatchCounters;
use crate::plan::Verb;

/// The label value for a table or verb the request did not resolve to.
pub const UNRESOLVED: &str = "-";
/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request duration buckets in seconds: 0.5 ms (a cached primary-key read) to 5 s (a slow
/// report); anything slower lands in `+Inf`.
const DURATION_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why a request could not be authenticated, as the `reason` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials, and the API has no anonymous role.
    Missing,
    /// An API key that matches no key of this API.
    InvalidKey,
    /// A bearer token that is malformed, expired, badly signed or for another audience.
    InvalidToken,
    /// A valid token whose role claim maps to no ApiRole of this API.
    NoRole,
    /// An `Authorization` scheme the API does not accept.
    UnsupportedScheme,
}

impl AuthFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::InvalidKey => "invalid_key",
            Self::InvalidToken => "invalid_token",
            Self::NoRole => "no_role",
            Self::UnsupportedScheme => "unsupported_scheme",
        }
    }
}

/// One served request, REST or MCP, once its status is known.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome<'a> {
    /// Where the request came in.
    pub transport: Transport,
    /// The table, only when resolved against the schema (see the module docs).
    pub table: Option<&'a str>,
    /// The verb, when the request resolved to a table operation.
    pub verb: Option<Verb>,
    /// The HTTP status (for MCP, the status of the HTTP exchange carrying the call).
    pub status: u16,
    /// Rows returned, or changed by a write; the same number as the audit line's `rows`.
    pub rows: u64,
    /// Time from receiving the request to knowing the response.
    pub duration: Duration,
}

/// Database pool usage, read when `/metrics` is scraped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections lent to a query.
    pub in_use: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    transport: &'static str,
    table: String,
    verb: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    transport: &'static str,
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// The runtime's metrics registry, shared by every request task.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    rows: Family<TableLabels, Counter>,
    rate_limited: Family<RoleLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_runtime");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, per transport, table, verb and HTTP status",
            requests.clone(),
        );
        let durations: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time to serve a request, per transport and verb",
            durations.clone(),
        );
        let rows = Family::<TableLabels, Counter>::default();
        registry.register("rows", "Rows returned or changed, per table", rows.clone());
        let rate_limited = Family::<RoleLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by the per-caller rate limit, per role",
            rate_limited.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused with 401, per reason",
            auth_failures.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config changes seen, per result: applied, or rejected and the previous config kept",
            reloads.clone(),
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections open, per state: in_use or idle",
            pool_connections.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "The most database connections the pool opens",
            pool_max.clone(),
        );
        // Zero-valued series from the start let `rate()` and alerts see the first increment.
        for result in ["applied", "rejected"] {
            drop(reloads.get_or_create(&ResultLabels { result }));
        }
        Self {
            registry,
            requests,
            durations,
            rows,
            rate_limited,
            auth_failures,
            reloads,
            pool_connections,
            pool_max,
        }
    }
}

impl Metrics {
    /// Also exports `counters`: how many reads shared a statement ([`crate::batch`]).
    pub fn with_read_batches(mut self, counters: &BatchCounters) -> Self {
        self.registry.register(
            "db_batched_statements",
            "Statements that served more than one read at once",
            counters.statements.clone(),
        );
        self.registry.register(
            "db_batched_reads",
            "Reads served by a statement shared with other reads",
            counters.reads.clone(),
        );
        self
    }

    /// Counts a served request, its duration and its rows.
    pub fn record_request(&self, outcome: &RequestOutcome<'_>) {
        let table = outcome.table.unwrap_or(UNRESOLVED);
        let verb = outcome.verb.map_or(UNRESOLVED, verb_name);
        let transport = outcome.transport.as_str();
        self.requests
            .get_or_create(&RequestLabels {
                transport,
                table: table.to_owned(),
                verb,
                status: outcome.status,
            })
            .inc();
        self.durations
            .get_or_create(&DurationLabels { transport, verb })
            .observe(outcome.duration.as_secs_f64());
        if outcome.rows > 0 {
            self.rows
                .get_or_create(&TableLabels {
                    table: table.to_owned(),
                })
                .inc_by(outcome.rows);
        }
    }

    /// Counts a request refused by the rate limit of `role`.
    pub fn record_rate_limited(&self, role: &str) {
        self.rate_limited
            .get_or_create(&RoleLabels { role: role.to_owned() })
            .inc();
    }

    /// Counts a request refused by authentication.
    pub fn record_auth_failure(&self, failure: AuthFailure) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: failure.as_str(),
            })
            .inc();
    }

    /// Counts a config change: `applied`, or rejected with the previous config kept.
    pub fn record_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Every metric in OpenMetrics text ([`CONTENT_TYPE`]), with the pool gauges set from `pool`.
    pub fn render(&self, pool: PoolStats) -> String {
        for (state, connections) in [("in_use", pool.in_use), ("idle", pool.idle)] {
            self.pool_connections
                .get_or_create(&PoolLabels { state })
                .set(i64::from(connections));
        }
        self.pool_max.set(i64::from(pool.max));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample line whose name and labels are exactly `series`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.rsplit_once(' ').filter(|(name, _)| *name == series))
            .map(|(_, value)| value.parse().expect("sample values are numbers"))
    }

    fn read(table: Option<&str>, status: u16, rows: u64, millis: u64) -> RequestOutcome<'_> {
        RequestOutcome {
            transport: Transport::Rest,
            table,
            verb: Some(Verb::Read),
            status,
            rows,
            duration: Duration::from_millis(millis),
        }
    }

    #[test]
    fn counts_requests_rows_and_durations() {
        let metrics = Metrics::default();
        metrics.record_request(&read(Some("customers"), 200, 20, 3));
        metrics.record_request(&read(Some("customers"), 200, 5, 30));
        metrics.record_request(&RequestOutcome {
            transport: Transport::Mcp,
            table: Some("orders"),
            verb: Some(Verb::Delete),
            status: 204,
            rows: 2,
            duration: Duration::from_micros(300),
        });

        let text = metrics.render(PoolStats::default());

        let customers = r#"sluice_runtime_requests_total{transport="rest",table="customers",verb="read",status="200"}"#;
        assert_eq!(sample(&text, customers), Some(2.0), "{text}");
        let orders = r#"sluice_runtime_requests_total{transport="mcp",table="orders",verb="delete",status="204"}"#;
        assert_eq!(sample(&text, orders), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, r#"sluice_runtime_rows_total{table="customers"}"#),
            Some(25.0)
        );
        assert_eq!(sample(&text, r#"sluice_runtime_rows_total{table="orders"}"#), Some(2.0));
        let rest_reads = r#"sluice_runtime_request_duration_seconds_count{transport="rest",verb="read"}"#;
        assert_eq!(sample(&text, rest_reads), Some(2.0), "{text}");
        let under_5ms = r#"sluice_runtime_request_duration_seconds_bucket{le="0.005",transport="rest",verb="read"}"#;
        assert_eq!(sample(&text, under_5ms), Some(1.0), "{text}");
        let mcp_fast = r#"sluice_runtime_request_duration_seconds_bucket{le="0.0005",transport="mcp",verb="delete"}"#;
        assert_eq!(sample(&text, mcp_fast), Some(1.0), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn unresolved_tables_and_verbs_share_one_series() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.record_request(&RequestOutcome {
                transport: Transport::Rest,
                table: None,
                verb: None,
                status: 404,
                rows: 0,
                duration: Duration::from_millis(1),
            });
        }

        let text = metrics.render(PoolStats::default());

        let unresolved = r#"sluice_runtime_requests_total{transport="rest",table="-",verb="-",status="404"}"#;
        assert_eq!(sample(&text, unresolved), Some(3.0), "{text}");
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("sluice_runtime_requests_total"))
                .count(),
            1
        );
        assert!(
            !text.contains("sluice_runtime_rows_total{"),
            "no rows, no series: {text}"
        );
    }

    #[test]
    fn counts_refusals_reloads_and_reports_the_pool() {
        let metrics = Metrics::default();
        metrics.record_rate_limited("analyst");
        metrics.record_rate_limited("analyst");
        metrics.record_auth_failure(AuthFailure::InvalidKey);
        metrics.record_auth_failure(AuthFailure::Missing);
        metrics.record_auth_failure(AuthFailure::InvalidKey);
        metrics.record_reload(true);

        let text = metrics.render(PoolStats {
            in_use: 3,
            idle: 2,
            max: 10,
        });

        assert_eq!(
            sample(&text, r#"sluice_runtime_rate_limited_total{role="analyst"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_auth_failures_total{reason="invalid_key"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_auth_failures_total{reason="missing"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_config_reloads_total{result="applied"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_config_reloads_total{result="rejected"}"#),
            Some(0.0),
            "present at zero before the first rejection"
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_db_pool_connections{state="in_use"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_runtime_db_pool_connections{state="idle"}"#),
            Some(2.0)
        );
        assert_eq!(sample(&text, "sluice_runtime_db_pool_max_connections"), Some(10.0));

        let later = metrics.render(PoolStats {
            in_use: 0,
            idle: 5,
            max: 10,
        });
        assert_eq!(
            sample(&later, r#"sluice_runtime_db_pool_connections{state="in_use"}"#),
            Some(0.0),
            "each scrape reports the pool as it is then"
        );
    }
}
