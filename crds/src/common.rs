//! Types shared by both custom resources.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A key within a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A token-bucket rate limit applied to each caller (an API key or a JWT subject) separately.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained number of requests one caller may make per minute.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_minute: u32,
    /// Requests one caller may make at once above the sustained rate. Defaults to a tenth of
    /// `requestsPerMinute` (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The burst with its default applied.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| (self.requests_per_minute / 10).max(1))
    }
}

/// Schema for a field that holds any JSON scalar or array (a query parameter default, a
/// row-filter value). Kubernetes structural schemas allow an untyped node only when it
/// preserves unknown fields; `resolve` checks the value's shape instead.
pub fn any_json_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
