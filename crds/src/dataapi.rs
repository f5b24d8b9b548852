//! The `DataApi` custom resource: one database exposed as a governed REST and MCP API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{RateLimit, SecretKeyRef, any_json_value};
use crate::limits::LimitsSpec;

/// A database exposed as a governed data API: which tables, over which transports, with which
/// authentication, limits and audit, and how its runtime pods run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "DataApi",
    doc = "A database exposed as a governed REST API and MCP endpoint, served by runtime pods the Sluice operator manages.",
    plural = "dataapis",
    singular = "dataapi",
    namespaced,
    status = "DataApiStatus",
    shortname = "dapi",
    category = "sluice",
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.database.engine"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","description":"Runtime pods ready to serve","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","priority":1,"description":"Runtime pods requested","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.database.engine != 'sqlite' || !has(self.runtime) || !has(self.runtime.replicas) || self.runtime.replicas <= 1").message("spec.runtime.replicas: SQLite is a single-writer file database; run at most 1 replica or use postgres/mysql").reason(Reason::FieldValueInvalid))]
pub struct DataApiSpec {
    /// The database to expose and which of its tables.
    pub database: DatabaseSpec,
    /// The REST API: paths and paging.
    #[serde(default)]
    pub rest: RestSpec,
    /// The MCP (Model Context Protocol) endpoint that lets AI agents call the same governed data as tools.
    #[serde(default)]
    pub mcp: McpSpec,
    /// How callers authenticate: API keys, JWT bearer tokens, or an anonymous role.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The default rate limit per caller, for roles that set none. Unset: no default limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The audit log: one JSON line per call.
    #[serde(default)]
    pub audit: AuditSpec,
    /// How much one request and one connection may ask of a runtime pod; every limit has a default.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Named, reviewed, parameterised SQL queries. Each is served at `REST <basePath>/_query/<name>`
    /// and as one MCP tool. Their SQL is written by the DataApi's author, never by callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub queries: Vec<NamedQuery>,
    /// How the runtime pods run.
    #[serde(default)]
    pub runtime: RuntimeSpec,
}

/// A database engine Sluice can serve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL 12 or later.
    Postgres,
    /// MySQL 8 or MariaDB 10.5 or later.
    Mysql,
    /// SQLite 3, a file on a volume of the runtime pod.
    Sqlite,
}

impl Engine {
    /// The lowercase name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Sqlite => "sqlite",
        }
    }
}

/// The database and which of its objects to expose.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.engine == 'sqlite' ? (has(self.connectionSecretRef) || has(self.path)) : has(self.connectionSecretRef)").message("spec.database: set connectionSecretRef (a Secret key holding the connection URL); SQLite may instead set path").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.path) || self.engine == 'sqlite'").message("spec.database.path is only for engine sqlite; use connectionSecretRef for postgres and mysql").reason(Reason::FieldValueForbidden))]
pub struct DatabaseSpec {
    /// The database engine: `postgres`, `mysql` (MySQL and MariaDB) or `sqlite`.
    pub engine: Engine,
    /// A key of a Secret in this namespace holding the connection URL, for example
    /// `postgres://user:password@host:5432/db`. It reaches the pods as an environment variable;
    /// the operator never copies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<SecretKeyRef>,
    /// SQLite only: the database file's path inside the runtime pod (on a volume mounted through
    /// `runtime.podTemplate`), instead of a connection URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
    /// Schemas to expose. Empty: `public` on PostgreSQL, the connection's database on MySQL,
    /// `main` on SQLite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub schemas: Vec<String>,
    /// Glob patterns (`*`, `?`) of the tables and views to expose. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,
    /// Glob patterns of tables and views to hide, applied after `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
    /// Refuse every write, whatever the roles allow; reads run in read-only transactions.
    #[serde(default)]
    pub read_only: bool,
    /// The connection pool of each runtime pod.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Re-read the database schema this often, in seconds. Unset: only at start and on
    /// `POST /_admin/refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86_400))]
    pub schema_refresh_seconds: Option<u32>,
}

/// Connection pool settings, per runtime pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minConnections) || !has(self.maxConnections) || self.minConnections <= self.maxConnections").message("spec.database.pool.minConnections must not exceed maxConnections").reason(Reason::FieldValueInvalid))]
pub struct PoolSpec {
    /// Most connections one pod opens for reads (one more serves health checks), and again for
    /// writes; SQLite writes through one connection, since it lets one writer in at a time.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_connections: u32,
    /// Connections one pod keeps open when idle.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_connections: u32,
    /// How long a request waits for a free connection before it is answered 503, in milliseconds.
    #[serde(default = "default_acquire_timeout_ms")]
    #[schemars(range(min = 1, max = 600_000))]
    pub acquire_timeout_ms: u32,
    /// Longest a single statement may run before the database cancels it, in milliseconds.
    #[serde(default = "default_statement_timeout_ms")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub statement_timeout_ms: u32,
    /// PostgreSQL reads of the same shape that arrive together share one statement, which runs
    /// them one after another, while that statement would take at most this long, in
    /// milliseconds: it bounds what sharing may add to a read's latency, so slower reads run
    /// alone, in parallel. 0 sends every read alone.
    #[serde(default = "default_read_batch_ms")]
    #[schemars(range(min = 0, max = 1000))]
    pub read_batch_ms: u32,
}

fn default_max_connections() -> u32 {
    10
}
fn default_acquire_timeout_ms() -> u32 {
    3_000
}
fn default_statement_timeout_ms() -> u32 {
    10_000
}
fn default_read_batch_ms() -> u32 {
    2
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            min_connections: 0,
            acquire_timeout_ms: default_acquire_timeout_ms(),
            statement_timeout_ms: default_statement_timeout_ms(),
            read_batch_ms: default_read_batch_ms(),
        }
    }
}

/// The REST API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.defaultPageSize) || !has(self.maxPageSize) || self.defaultPageSize <= self.maxPageSize").message("spec.rest.defaultPageSize must not exceed spec.rest.maxPageSize").reason(Reason::FieldValueInvalid))]
pub struct RestSpec {
    /// Serve the REST API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path prefix of every REST route.
    #[serde(default = "default_base_path")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"), length(max = 200))]
    pub base_path: String,
    /// Rows returned when a request sets no `limit`.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 100_000))]
    pub default_page_size: u32,
    /// Most rows one request may return; larger `limit`s are clamped to it.
    #[serde(default = "default_max_page_size")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_page_size: u32,
    /// Largest request body accepted, in bytes; larger bodies are answered 413.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 104_857_600))]
    pub max_body_bytes: u64,
}

fn default_true() -> bool {
    true
}
fn default_base_path() -> String {
    "/api/v1".into()
}
fn default_page_size() -> u32 {
    100
}
fn default_max_page_size() -> u32 {
    1000
}
fn default_max_body_bytes() -> u64 {
    1_048_576
}

impl Default for RestSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            base_path: default_base_path(),
            default_page_size: default_page_size(),
            max_page_size: default_max_page_size(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

/// The MCP endpoint (Streamable HTTP).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpSpec {
    /// Serve the MCP endpoint.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path of the MCP endpoint.
    #[serde(default = "default_mcp_path")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"), length(max = 200))]
    pub path: String,
    /// Most rows one tool call returns; results beyond it are cut and marked `truncated`.
    #[serde(default = "default_mcp_max_rows")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_rows: u32,
    /// Browser origins allowed to call the endpoint (`Origin` header). Requests without an
    /// `Origin` header (agents, CLIs) are always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub allowed_origins: Vec<String>,
}

fn default_mcp_path() -> String {
    "/mcp".into()
}
fn default_mcp_max_rows() -> u32 {
    200
}

impl Default for McpSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_mcp_path(),
            max_rows: default_mcp_max_rows(),
            allowed_origins: Vec::new(),
        }
    }
}

/// How callers authenticate. A request carrying no credentials gets the anonymous role, if one
/// is named, and 401 otherwise.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// HTTP header that carries an API key.
    #[serde(default = "default_api_key_header")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]+$"), length(min = 1, max = 100))]
    pub api_key_header: String,
    /// Accept JWT bearer tokens from this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// The ApiRole given to requests without credentials. Unset: such requests are refused (401).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub anonymous_role: Option<String>,
}

fn default_api_key_header() -> String {
    "X-API-Key".into()
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            api_key_header: default_api_key_header(),
            jwt: None,
            anonymous_role: None,
        }
    }
}

/// JWT bearer tokens: which issuer and audiences to trust, where the signing keys are, and
/// which claim names the caller's roles.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksUri) != has(self.hmacSecretRef)").message("spec.auth.jwt: set exactly one of jwksUri (RS256/ES256) or hmacSecretRef (HS256)").reason(Reason::FieldValueInvalid))]
pub struct JwtSpec {
    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 1024)))]
    pub audiences: Vec<String>,
    /// URL of the issuer's JSON Web Key Set, for RS256 and ES256 tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// A Secret key holding the shared secret for HS256 tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeyRef>,
    /// Claim holding the caller's role names (a string or a list of strings), matched against
    /// `ApiRole.spec.subjects.jwtRoles`. Dots address nested claims (`realm_access.roles`).
    #[serde(default = "default_role_claim")]
    #[schemars(length(min = 1, max = 200))]
    pub role_claim: String,
    /// Tolerated clock difference when checking `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    #[schemars(range(min = 0, max = 300))]
    pub leeway_seconds: u32,
}

fn default_role_claim() -> String {
    "roles".into()
}
fn default_leeway_seconds() -> u32 {
    30
}

/// The audit log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Write one JSON line per call to the runtime's standard output.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Also record request bodies and tool arguments, with denied and masked fields redacted.
    #[serde(default)]
    pub include_bodies: bool,
}

impl Default for AuditSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            include_bodies: false,
        }
    }
}

/// The MCP endpoint's built-in tools. A named query is offered to agents as a tool of its own
/// name, so it may not take one of these.
pub const BUILT_IN_TOOLS: [&str; 8] = [
    "list_tables",
    "describe_table",
    "query_rows",
    "get_row",
    "count_rows",
    "insert_rows",
    "update_rows",
    "delete_rows",
];

/// A named, parameterised SQL query written by the DataApi's author.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedQuery {
    /// Name in URLs and MCP tool names: lowercase letters, digits and underscores; not the name of
    /// a built-in MCP tool (list_tables, describe_table, query_rows, get_row, count_rows,
    /// insert_rows, update_rows, delete_rows).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,62}$"))]
    pub name: String,
    /// What the query answers; shown in OpenAPI and to agents as the tool description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// The SQL, with parameters written `:name`. Runs in a read-only transaction unless `write` is set.
    #[schemars(length(min = 1, max = 65_536))]
    pub sql: String,
    /// The query's parameters, bound as values, never spliced into the SQL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub parameters: Vec<QueryParameter>,
    /// The query modifies data: it runs in a read-write transaction and needs the `create`,
    /// `update` or `delete` verb on the `_query/<name>` table rule.
    #[serde(default)]
    pub write: bool,
}

/// A typed parameter of a named query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParameter {
    /// Name, as written `:name` in the SQL.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub name: String,
    /// Value type; input is checked against it before the query runs.
    #[serde(rename = "type")]
    pub param_type: ParameterType,
    /// What the parameter means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// Value used when the caller gives none. Without a default the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_value")]
    pub default: Option<serde_json::Value>,
    /// Smallest accepted value (integer and number parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest accepted value (integer and number parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

/// The type of a named-query parameter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// Text.
    String,
    /// A whole number (64-bit).
    Integer,
    /// A decimal number.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// How the runtime pods run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Number of runtime pods. SQLite allows at most 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Runtime container image. Unset: the operator's default runtime image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Compute resources of the runtime container. Unset: a small default (50m CPU, 64Mi memory requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Additions to the runtime pods: labels, annotations, scheduling and volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
}

fn default_replicas() -> i32 {
    1
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
            pod_template: None,
        }
    }
}

/// Additions merged into the runtime pods the operator renders. Security settings are not
/// overridable: pods always run non-root with a read-only root filesystem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels (Sluice's own `app.kubernetes.io/*` labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Scheduling affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread across topology domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Service account the pods run as. The runtime never calls the Kubernetes API, so the
    /// default is a token-less pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Secrets for pulling the runtime image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra volumes, for example the one holding a SQLite file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volume_list")]
    pub volumes: Vec<serde_json::Value>,
    /// Where the extra volumes are mounted in the runtime container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
}

/// Volumes are kept as raw objects: the full `Volume` schema is several thousand lines of
/// CRD, and the API server validates them again when the operator applies the Deployment.
fn volume_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": { "name": { "type": "string" } },
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// What the operator observed of a DataApi.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataApiStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ConfigValid`, `Available`, `Progressing` and the summary `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// In-cluster base URL of the API (the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// In-cluster URL of the REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_url: Option<String>,
    /// In-cluster URL of the MCP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_url: Option<String>,
    /// In-cluster URL of the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi_url: Option<String>,
    /// Runtime pods requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Runtime pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// ApiRoles bound to this DataApi.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_roles: Vec<String>,
    /// Name of the Secret holding the rendered runtime configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_secret: Option<String>,
}
