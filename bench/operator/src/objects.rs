//! The objects the benchmark applies: one DSN Secret, then per DataApi two ApiRoles bound to it,
//! each with one generated API key, as a user would write them.

use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

/// The Secret every DataApi reads its DSN from. The operator only hashes it: no database is
/// reached, since the runtime pods are kwok's and run nothing.
pub const DSN_SECRET: &str = "bench-db";

/// The name of the `index`-th DataApi; zero-padded so that `kubectl get` lists them in order.
pub fn data_api_name(index: usize) -> String {
    format!("api-{index:04}")
}

/// The DSN Secret.
pub fn dsn_secret() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": DSN_SECRET },
        "stringData": { "url": "postgres://sluice:secret@postgres.bench.svc:5432/sales" },
    }))
    .expect("the DSN Secret is a valid Secret")
}

/// The `index`-th DataApi, with its REST and MCP endpoints and one replica.
pub fn data_api(index: usize) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "DataApi",
        "metadata": { "name": data_api_name(index) },
        "spec": {
            "database": {
                "engine": "postgres",
                "connectionSecretRef": { "name": DSN_SECRET, "key": "url" },
                "schemas": ["public"],
            },
            "rest": { "enabled": true },
            "mcp": { "enabled": true },
            "auth": { "apiKeyHeader": "X-API-Key" },
            "runtime": { "replicas": 1 },
        },
    })
}

/// The two roles of the `index`-th DataApi: a reader with a denied field and a row filter, and
/// a writer; each gets one generated key.
pub fn api_roles(index: usize) -> [Value; 2] {
    let api = data_api_name(index);
    [
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ApiRole",
            "metadata": { "name": format!("{api}-reader") },
            "spec": {
                "dataApis": [api],
                "rules": [{
                    "tables": ["customers"],
                    "verbs": ["read"],
                    "fields": { "deny": ["email"] },
                    "rowFilter": [{ "column": "balance", "op": "gte", "value": 0 }],
                }],
                "apiKeys": [{ "name": "dashboard" }],
            },
        }),
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ApiRole",
            "metadata": { "name": format!("{api}-writer") },
            "spec": {
                "dataApis": [api],
                "rules": [{ "tables": ["orders"], "verbs": ["read", "create"] }],
                "apiKeys": [{ "name": "ci" }],
            },
        }),
    ]
}
