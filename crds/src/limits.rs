//! `spec.limits`: how much one request and one connection may ask of a runtime pod.
//!
//! Every limit has a default that no ordinary client reaches, so a DataApi that sets none is
//! protected. A request over a limit is answered 400 `limit_exceeded` naming the limit and its
//! value (and audited); a connection over a time limit is closed. `docs/security.md` says why
//! each default is what it is.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// How much one request and one connection may ask of a runtime pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Deepest nesting of logic groups (`or=(and(…))`, `not.and(…)`) in one filter; the
    /// outermost group is depth 1.
    #[serde(default = "default_max_logic_depth")]
    #[schemars(range(min = 1, max = 64))]
    pub max_logic_depth: u32,
    /// Deepest nesting of embedded resources in `select` (`orders(customers(…))` is depth 2).
    #[serde(default = "default_max_embed_depth")]
    #[schemars(range(min = 1, max = 16))]
    pub max_embed_depth: u32,
    /// Most embedded resources in one request, at every depth together.
    #[serde(default = "default_max_embeds")]
    #[schemars(range(min = 1, max = 256))]
    pub max_embeds: u32,
    /// Most filter conditions in one request, inside logic groups included.
    #[serde(default = "default_max_filter_terms")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_filter_terms: u32,
    /// Most columns one request names in `select`, embedded ones included (`*` counts as one).
    #[serde(default = "default_max_selected_columns")]
    #[schemars(range(min = 1, max = 1_500))]
    pub max_selected_columns: u32,
    /// Most values one statement binds (filter and `in` values, written cells); above it the
    /// engines themselves refuse the statement (SQLite at 32,766).
    #[serde(default = "default_max_bind_parameters")]
    #[schemars(range(min = 100, max = 30_000))]
    pub max_bind_parameters: u32,
    /// Failed authentications (an unknown key, a token that does not verify) one client address
    /// may make per minute, in a burst of as many; past them, requests from that address that
    /// carry credentials are answered 429 before the credentials are checked, so keys cannot be
    /// guessed at speed. Requests without credentials are not affected.
    #[serde(default = "default_failed_auth_per_minute")]
    #[schemars(range(min = 1, max = 100_000))]
    pub failed_auth_per_minute: u32,
    /// Longest a client may take to send a request's headers, in seconds, counted from the
    /// connection's start for its first request and from the first byte of each later one (the
    /// wait between requests is bounded by `idleTimeoutSeconds`).
    #[serde(default = "default_header_read_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub header_read_timeout_seconds: u32,
    /// Longest a client may take to send a request's body, in seconds, counted from the end of
    /// its headers.
    #[serde(default = "default_body_read_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub body_read_timeout_seconds: u32,
    /// Longest a kept-alive connection may stay idle between requests, in seconds. Keep it above
    /// the idle timeout of any load balancer in front, so that the balancer closes first.
    #[serde(default = "default_idle_timeout_seconds")]
    #[schemars(range(min = 1, max = 3_600))]
    pub idle_timeout_seconds: u32,
    /// Longest a pod waits for requests in flight after SIGTERM before it exits anyway, in
    /// seconds; idle connections are closed at once. The operator sets the pod's
    /// `terminationGracePeriodSeconds` above it.
    #[serde(default = "default_shutdown_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub shutdown_timeout_seconds: u32,
}

fn default_max_logic_depth() -> u32 {
    8
}
fn default_max_embed_depth() -> u32 {
    4
}
fn default_max_embeds() -> u32 {
    16
}
fn default_max_filter_terms() -> u32 {
    100
}
fn default_max_selected_columns() -> u32 {
    200
}
fn default_max_bind_parameters() -> u32 {
    10_000
}
fn default_failed_auth_per_minute() -> u32 {
    30
}
fn default_header_read_timeout_seconds() -> u32 {
    10
}
fn default_body_read_timeout_seconds() -> u32 {
    30
}
fn default_idle_timeout_seconds() -> u32 {
    75
}
fn default_shutdown_timeout_seconds() -> u32 {
    20
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_logic_depth: default_max_logic_depth(),
            max_embed_depth: default_max_embed_depth(),
            max_embeds: default_max_embeds(),
            max_filter_terms: default_max_filter_terms(),
            max_selected_columns: default_max_selected_columns(),
            max_bind_parameters: default_max_bind_parameters(),
            failed_auth_per_minute: default_failed_auth_per_minute(),
            header_read_timeout_seconds: default_header_read_timeout_seconds(),
            body_read_timeout_seconds: default_body_read_timeout_seconds(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            shutdown_timeout_seconds: default_shutdown_timeout_seconds(),
        }
    }
}

impl LimitsSpec {
    /// The first limit set to 0, by its field name. Zero would refuse every request or close
    /// every connection: the CRD's minimum of 1 keeps it out of a cluster, [`crate::resolve`]
    /// out of `serve --manifests`.
    pub fn first_zero(&self) -> Option<&'static str> {
        [
            ("maxLogicDepth", self.max_logic_depth),
            ("maxEmbedDepth", self.max_embed_depth),
            ("maxEmbeds", self.max_embeds),
            ("maxFilterTerms", self.max_filter_terms),
            ("maxSelectedColumns", self.max_selected_columns),
            ("maxBindParameters", self.max_bind_parameters),
            ("failedAuthPerMinute", self.failed_auth_per_minute),
            ("headerReadTimeoutSeconds", self.header_read_timeout_seconds),
            ("bodyReadTimeoutSeconds", self.body_read_timeout_seconds),
            ("idleTimeoutSeconds", self.idle_timeout_seconds),
            ("shutdownTimeoutSeconds", self.shutdown_timeout_seconds),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0)
        .map(|(field, _)| field)
    }

    /// [`Self::header_read_timeout_seconds`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.header_read_timeout_seconds))
    }

    /// [`Self::body_read_timeout_seconds`] as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.body_read_timeout_seconds))
    }

    /// [`Self::idle_timeout_seconds`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.idle_timeout_seconds))
    }

    /// [`Self::shutdown_timeout_seconds`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.shutdown_timeout_seconds))
    }
}
