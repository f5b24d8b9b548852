//! The resolved runtime configuration: everything one runtime pod needs, in one document.
//!
//! The operator renders it into a Secret (it carries API-key hashes); `sluice-runtime serve
//! --config FILE` reads it. It is self-contained: no field refers back to Kubernetes objects,
//! except the names of environment variables that carry the secrets the operator never copies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apirole::AccessRule;
use crate::common::RateLimit;
use crate::dataapi::{AuditSpec, Engine, McpSpec, NamedQuery, PoolSpec, RestSpec};
use crate::limits::LimitsSpec;

/// Version of the document's layout; the runtime refuses a config with a version it does not know.
pub const CONFIG_FORMAT_VERSION: u32 = 1;
/// Environment variable that carries the database connection URL into a runtime pod.
pub const DATABASE_URL_ENV: &str = "SLUICE_DATABASE_URL";
/// Environment variable that carries the HS256 JWT secret into a runtime pod.
pub const JWT_HMAC_SECRET_ENV: &str = "SLUICE_JWT_HMAC_SECRET";
/// The key under which the rendered config is stored in its Secret, and its file name when mounted.
pub const CONFIG_FILE_NAME: &str = "runtime-config.json";

/// Everything one runtime pod needs to serve a DataApi.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Layout version, [`CONFIG_FORMAT_VERSION`].
    pub format_version: u32,
    /// The DataApi this config was resolved from.
    pub data_api: ObjectName,
    /// The database and which of its objects to expose.
    pub database: DatabaseConfig,
    /// The REST API.
    pub rest: RestSpec,
    /// The MCP endpoint.
    pub mcp: McpSpec,
    /// Authentication.
    pub auth: AuthConfig,
    /// The audit log.
    pub audit: AuditSpec,
    /// Request and connection limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Named queries.
    pub queries: Vec<NamedQuery>,
    /// Roles bound to this DataApi, by ApiRole name.
    pub roles: BTreeMap<String, RoleConfig>,
    /// API keys, as hashes only.
    pub api_keys: Vec<ApiKeyEntry>,
}

impl RuntimeConfig {
    /// The config as canonical JSON: the same input always gives the same bytes, so the
    /// operator can compare and hash it.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("RuntimeConfig has only string map keys")
    }
}

/// A namespaced object's identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectName {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The database, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The engine.
    pub engine: Engine,
    /// Environment variable holding the connection URL, when the DataApi names a Secret.
    pub url_env: Option<String>,
    /// SQLite file path, when the DataApi names one instead of a URL.
    pub path: Option<String>,
    /// Schemas to expose; never empty (the engine's default is filled in).
    pub schemas: Vec<String>,
    /// Glob patterns of exposed tables; empty means all.
    pub include: Vec<String>,
    /// Glob patterns of hidden tables.
    pub exclude: Vec<String>,
    /// Refuse every write.
    pub read_only: bool,
    /// Connection pool settings.
    pub pool: PoolSpec,
    /// Schema refresh interval in seconds, if any.
    pub schema_refresh_seconds: Option<u32>,
}

/// Authentication, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Header carrying API keys.
    pub api_key_header: String,
    /// JWT validation, if configured.
    pub jwt: Option<JwtConfig>,
    /// Role of requests without credentials; `None` refuses them.
    pub anonymous_role: Option<String>,
}

/// JWT validation, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtConfig {
    /// Required issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL for RS256/ES256.
    pub jwks_uri: Option<String>,
    /// Environment variable holding the HS256 secret.
    pub hmac_secret_env: Option<String>,
    /// Claim (dotted path) holding role names.
    pub role_claim: String,
    /// Clock skew tolerance in seconds.
    pub leeway_seconds: u32,
    /// Role-claim value to ApiRole name.
    pub role_map: BTreeMap<String, String>,
}

/// One role, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleConfig {
    /// What the role is for.
    pub description: Option<String>,
    /// Grants; anything no rule allows is denied.
    pub rules: Vec<AccessRule>,
    /// Per-caller limit: the role's own, else the DataApi's default; `None` is unlimited.
    pub rate_limit: Option<ResolvedRateLimit>,
    /// May use the MCP endpoint.
    pub mcp_enabled: bool,
    /// May call administrative endpoints.
    pub admin: bool,
}

/// A rate limit with its burst default applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedRateLimit {
    /// Sustained requests per minute.
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl From<&RateLimit> for ResolvedRateLimit {
    fn from(limit: &RateLimit) -> Self {
        Self {
            requests_per_minute: limit.requests_per_minute,
            burst: limit.effective_burst(),
        }
    }
}

/// An API key as the runtime knows it: never the key itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// `<role>/<key name>`: the caller id in audit lines and rate-limit buckets.
    pub id: String,
    /// The ApiRole the key grants.
    pub role: String,
    /// Lowercase hex SHA-256 of the key (see [`crate::hash_api_key`]).
    pub sha256: String,
}
