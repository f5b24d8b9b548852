//! The `ApiRole` custom resource: who may do what through one or more DataApis.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{RateLimit, SecretKeyRef, any_json_value};

/// Who may do what: per table and verb, per field (hide or mask), per row (predicates bound to
/// the caller's claims), its own rate limit, and the API keys issued to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ApiRole",
    doc = "Who may do what through one or more DataApis: tables and verbs, fields, rows, rate limit and API keys.",
    plural = "apiroles",
    singular = "apirole",
    namespaced,
    status = "ApiRoleStatus",
    shortname = "arole",
    category = "sluice",
    printcolumn = r#"{"name":"Data APIs","type":"string","jsonPath":".spec.dataApis"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiRoleSpec {
    /// Names of the DataApis in this namespace this role applies to.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    pub data_apis: Vec<String>,
    /// What this role is for; shown in OpenAPI and audit tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// Which authenticated callers get this role besides holders of its API keys.
    #[serde(default)]
    pub subjects: Subjects,
    /// What the role may do. Anything no rule allows is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub rules: Vec<AccessRule>,
    /// Rate limit per caller with this role. Unset: the DataApi's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Access through the MCP endpoint.
    #[serde(default)]
    pub mcp: RoleMcp,
    /// May call administrative endpoints such as `POST /_admin/refresh`.
    #[serde(default)]
    pub admin: bool,
    /// API keys issued to this role. Without `secretRef` the operator generates a random key
    /// into the Secret `<role>-key-<name>`; with it, the key is read from that Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 64))]
    pub api_keys: Vec<ApiKeySpec>,
}

/// Callers mapped to a role through their JWT.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// Values of the DataApi's JWT role claim that map to this role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub jwt_roles: Vec<String>,
}

/// A verb a rule can allow.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// `GET`, MCP `query_rows`, `get_row`, `count_rows`, read-only named queries.
    Read,
    /// `POST`, MCP `insert_rows`.
    Create,
    /// `PATCH`, `PUT`, MCP `update_rows`, upserts (with `create`).
    Update,
    /// `DELETE`, MCP `delete_rows`.
    Delete,
}

/// One grant: verbs on tables, narrowed to fields and rows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// Glob patterns (`*`, `?`) of table and view names; `_query/<name>` names a named query.
    #[schemars(length(min = 1, max = 128), inner(length(min = 1, max = 256)))]
    pub tables: Vec<String>,
    /// Allowed verbs.
    #[schemars(length(min = 1, max = 4))]
    pub verbs: Vec<Verb>,
    /// Which columns the role sees and writes. Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldRules>,
    /// Predicates every row the role reads, updates or deletes must satisfy, and every row it
    /// inserts or updates must still satisfy afterwards. All must hold (AND).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub row_filter: Vec<RowPredicate>,
    /// Most rows one response may carry for this role, whatever `limit` asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_rows: Option<u32>,
}

/// Column visibility. `allow` and `deny` are mutually exclusive; masks apply to visible columns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allow) || !has(self.deny) || size(self.allow) == 0 || size(self.deny) == 0").message("fields: set either allow or deny, not both").reason(Reason::FieldValueInvalid))]
pub struct FieldRules {
    /// Only these columns are visible and writable.
    #[serde(default)]
    #[schemars(length(max = 512), inner(length(min = 1, max = 128)))]
    pub allow: Vec<String>,
    /// These columns are invisible: not selectable, filterable, orderable or writable.
    #[serde(default)]
    #[schemars(length(max = 512), inner(length(min = 1, max = 128)))]
    pub deny: Vec<String>,
    /// Columns returned with their value replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub mask: Vec<FieldMask>,
}

/// How one column's value is hidden from this role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.strategy) && self.strategy != 'fixed') || has(self.with)").message("mask: strategy fixed needs `with`, the text shown instead of the value").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.strategy) || self.strategy != 'keepLast' || has(self.keepLast)").message("mask: strategy keepLast needs `keepLast`, the number of trailing characters kept").reason(Reason::FieldValueRequired))]
pub struct FieldMask {
    /// The masked column.
    #[schemars(length(min = 1, max = 128))]
    pub field: String,
    /// How the value is replaced.
    #[serde(default)]
    pub strategy: MaskStrategy,
    /// Text shown instead of the value (strategy `fixed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub with: Option<String>,
    /// Trailing characters kept, the rest replaced by `*` (strategy `keepLast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub keep_last: Option<u32>,
}

/// How a masked value is replaced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MaskStrategy {
    /// Replaced by the text in `with`.
    #[default]
    Fixed,
    /// Replaced by `null`.
    Null,
    /// Replaced by a SHA-256 hex digest, so equal values still compare equal.
    Hash,
    /// All but the last `keepLast` characters replaced by `*`.
    KeepLast,
}

/// A comparison every affected row must satisfy. `value` may contain `{claims.<name>}`
/// placeholders, replaced by the caller's JWT claims and always bound as SQL parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowPredicate {
    /// The column compared.
    #[schemars(length(min = 1, max = 128))]
    pub column: String,
    /// The comparison, from a closed set compiled to parameterised SQL: `eq`, `neq`, `gt`, `gte`,
    /// `lt`, `lte`, `like`, `ilike`, `in`, `is`.
    pub op: FilterOperator,
    /// The value compared with: a string (with optional `{claims.<name>}` placeholders), number,
    /// boolean or null; for `in`, a list, or a single placeholder naming a list claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_value")]
    pub value: Option<serde_json::Value>,
    /// Negate the comparison (`NOT`).
    #[serde(default)]
    pub negate: bool,
}

/// Row-filter operators: a closed set, compiled to parameterised SQL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FilterOperator {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// SQL `LIKE` pattern, `*` also accepted as `%`.
    Like,
    /// Case-insensitive `LIKE`.
    Ilike,
    /// One of a list.
    In,
    /// `IS NULL`, `IS TRUE`, `IS FALSE`.
    Is,
}

/// MCP access for this role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleMcp {
    /// Callers with this role may use the MCP endpoint.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl Default for RoleMcp {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// An API key issued to the role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Name of the key, unique within the role (a DNS label: it becomes part of a Secret name).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(min = 1, max = 63))]
    pub name: String,
    /// Read the key from this Secret instead of generating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// What the operator observed of an ApiRole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiRoleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` when every named DataApi exists and every key resolves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// DataApis that exist and include this role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_data_apis: Vec<String>,
    /// Number of API keys with a usable Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i32>,
    /// Secrets the operator generated keys into, one per key without `secretRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_secrets: Vec<String>,
}

/// The name of the Secret the operator generates for a role's key.
pub fn generated_key_secret_name(role: &str, key: &str) -> String {
    format!("{role}-key-{key}")
}
