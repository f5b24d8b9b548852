//! The MCP endpoint over a real socket, driven by rmcp's own client under both protocol
//! revisions (2025-11-25 `initialize` with a session and SSE responses; 2026-07-28
//! `server/discover`, stateless, JSON responses), and by raw HTTP for what a client library
//! would never send, and by an agent written with the official Python SDK (`mcp` from PyPI,
//! installed into a venv under `~/.cache/sluice/`; the test fails when it cannot be installed).
//! SQLite fixture; the same governed pipeline as REST runs underneath.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion, ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::{Value, json};
use sluice_crds::dataapi::Engine;
use sluice_runtime::audit::{AuditLog, AuditWriter};
use sluice_runtime::db::Database;

const KEY_HEADER: &str = "X-API-Key";

const FIXTURE: &str = "
CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(100), vip BOOLEAN NOT NULL DEFAULT FALSE, balance NUMERIC(10,2));
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), total NUMERIC(10,2) NOT NULL);
CREATE TABLE notes (body VARCHAR(100));
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', TRUE, 10.5), (2, 'Brian', NULL, FALSE, 0), (3, 'Cleo', 'cleo@example.com', FALSE, 7);
INSERT INTO orders VALUES (10, 1, 99.9), (11, 1, 15), (12, 2, 3);
INSERT INTO notes VALUES ('a note');
";

const QUERIES: &str = "  queries:
    - name: top_customers
      description: Customers by balance, largest first
      sql: \"SELECT id, name, balance FROM customers WHERE balance >= :min ORDER BY balance DESC LIMIT :limit\"
      parameters:
        - { name: limit, type: integer, default: 10, minimum: 1, maximum: 100 }
        - { name: min, type: number, default: 0 }
    - name: rename_customer
      description: Renames a customer
      sql: \"UPDATE customers SET name = :name WHERE id = :id\"
      write: true
      parameters:
        - { name: id, type: integer }
        - { name: name, type: string }
";

const ROLES: &str = "
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: admin, namespace: test }
spec:
  dataApis: [shop]
  rules:
    - tables: ['*']
      verbs: [read, create, update, delete]
  apiKeys: [{ name: agent }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: clerk, namespace: test }
spec:
  dataApis: [shop]
  rules:
    - tables: [customers, orders]
      verbs: [read]
      fields: { deny: [email] }
    - tables: [_query/top_customers]
      verbs: [read]
  apiKeys: [{ name: desk }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: tenant, namespace: test }
spec:
  dataApis: [shop]
  rules:
    - tables: [customers]
      verbs: [read]
      fields: { mask: [{ field: email, strategy: keepLast, keepLast: 11 }] }
      rowFilter: [{ column: vip, op: is, value: false }]
  rateLimit: { requestsPerMinute: 60, burst: 8 }
  apiKeys: [{ name: bot }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: batch, namespace: test }
spec:
  dataApis: [shop]
  mcp: { enabled: false }
  rules:
    - tables: ['*']
      verbs: [read]
  apiKeys: [{ name: job }]
";

/// A runtime serving the fixture on an ephemeral port.
struct Api {
    address: SocketAddr,
    keys: BTreeMap<String, String>,
    database: Database,
    cleanup: Cleanup,
    audit_path: PathBuf,
    audit_writer: Option<AuditWriter>,
    state: std::sync::Arc<sluice_runtime::AppState>,
    config: sluice_crds::RuntimeConfig,
}

/// What to remove when a fixture ends.
enum Cleanup {
    File(PathBuf),
    Postgres { url: String, schema: String },
    Mysql { url: String, database: String },
}

fn required_url(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run `source scripts/services.sh` to start the test databases")
    })
}

impl Api {
    async fn start(name: &str) -> Self {
        Self::start_on(Engine::Sqlite, name).await
    }

    /// The fixture on `engine`: a file for SQLite, a fresh schema or database on the shared
    /// PostgreSQL or MariaDB test server.
    async fn start_on(engine: Engine, name: &str) -> Self {
        Self::start_with(engine, name, "").await
    }

    /// The fixture on `engine`, with `auth` added to the DataApi's `spec.auth` fields.
    async fn start_with(engine: Engine, name: &str, auth: &str) -> Self {
        let unique = format!("sluice_mcp_{name}_{}", std::process::id());
        let audit_path = std::env::temp_dir().join(format!("{unique}-audit.jsonl"));
        let (url, database_yaml, cleanup) = match engine {
            Engine::Sqlite => {
                let path = std::env::temp_dir().join(format!("{unique}.db"));
                let _ = std::fs::remove_file(&path);
                let url = format!("{}?mode=rwc", Database::sqlite_url(&path));
                let yaml = format!("engine: sqlite\n    path: {}", path.display());
                (url, yaml, Cleanup::File(path))
            }
            Engine::Postgres => {
                let server = required_url("SLUICE_TEST_POSTGRES_URL");
                let admin = Database::connect(engine, &server, &Default::default()).expect("PostgreSQL URL");
                admin
                    .run_script(&format!(
                        "DROP SCHEMA IF EXISTS {unique} CASCADE; CREATE SCHEMA {unique}"
                    ))
                    .await
                    .expect("create a schema");
                let separator = if server.contains('?') { '&' } else { '?' };
                let url = format!("{server}{separator}options[search_path]={unique}");
                let yaml = format!(
                    "engine: postgres\n    connectionSecretRef: {{ name: db, key: url }}\n    schemas: [{unique}]"
                );
                let cleanup = Cleanup::Postgres {
                    url: server,
                    schema: unique,
                };
                (url, yaml, cleanup)
            }
            Engine::Mysql => {
                let server = required_url("SLUICE_TEST_MYSQL_URL");
                let admin = Database::connect(engine, &server, &Default::default()).expect("MySQL URL");
                admin
                    .run_script(&format!("DROP DATABASE IF EXISTS {unique}; CREATE DATABASE {unique}"))
                    .await
                    .expect("create a database");
                let (base, _) = server.rsplit_once('/').expect("the MySQL URL names a database");
                let url = format!("{base}/{unique}");
                let yaml = format!(
                    "engine: mysql\n    connectionSecretRef: {{ name: db, key: url }}\n    schemas: [{unique}]"
                );
                let cleanup = Cleanup::Mysql {
                    url: server,
                    database: unique,
                };
                (url, yaml, cleanup)
            }
        };
        let database = Database::connect(engine, &url, &Default::default()).expect("database URL");
        database.run_script(FIXTURE).await.expect("create the fixture");
        let yaml = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: shop, namespace: test }}\nspec:\n  database:\n    {database_yaml}\n  rest: {{ basePath: /api, defaultPageSize: 2, maxPageSize: 50 }}\n  mcp: {{ maxRows: 2, allowedOrigins: ['https://console.example.com'] }}\n  auth: {{ apiKeyHeader: {KEY_HEADER}{auth} }}\n{QUERIES}",
        );
        let data_api: sluice_crds::DataApi = serde_yaml::from_str(&yaml).expect("DataApi parses");
        let roles: Vec<sluice_crds::ApiRole> = serde_yaml::Deserializer::from_str(ROLES)
            .map(|document| serde::Deserialize::deserialize(document).expect("ApiRole parses"))
            .collect();
        let mut hashes = sluice_crds::KeyHashes::new();
        let mut keys = BTreeMap::new();
        for role in &roles {
            let role_name = role.metadata.name.clone().expect("named role");
            for key in &role.spec.api_keys {
                let plaintext = sluice_crds::generate_api_key();
                hashes.insert_plaintext(&role_name, &key.name, &plaintext);
                keys.insert(role_name.clone(), plaintext);
            }
        }
        let config = sluice_crds::resolve(&data_api, &roles, &hashes).expect("DataApi resolves");
        let audit_file = std::fs::File::create(&audit_path).expect("create the audit file");
        let (audit, audit_writer) = AuditLog::start(audit_file);
        let app = sluice_runtime::build_app(config.clone(), database.clone(), audit).expect("the fixture builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let limits = sluice_runtime::server::ConnectionLimits::from(&config.limits);
        tokio::spawn(sluice_runtime::server::serve(
            listener,
            app.router.clone(),
            move || limits,
            std::future::pending(),
        ));
        let api = Self {
            address,
            keys,
            database,
            cleanup,
            audit_path,
            audit_writer: Some(audit_writer),
            state: app.state.clone(),
            config,
        };
        for _ in 0..100 {
            if api.raw(reqwest::Method::GET, "/readyz", &[], None).await.0 == 200 {
                return api;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the runtime did not become ready");
    }

    /// Flushes the audit log and returns its lines, parsed.
    async fn audit_lines(&mut self) -> Vec<Value> {
        if let Some(writer) = self.audit_writer.take() {
            writer.close().await.expect("the audit log flushes");
        }
        let text = std::fs::read_to_string(&self.audit_path).expect("read the audit log");
        let _ = std::fs::remove_file(&self.audit_path);
        text.lines()
            .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
            .collect()
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    /// An rmcp client for `role`, speaking 2026-07-28 (`discover`) or 2025-11-25 (`initialize`).
    async fn client(&self, role: &str, discover: bool) -> RunningService<RoleClient, ClientConfig> {
        let mut headers = HashMap::new();
        headers.insert(
            KEY_HEADER.parse().expect("header name"),
            self.keys[role].parse().expect("header value"),
        );
        let mut transport_config = StreamableHttpClientTransportConfig::with_uri(self.url());
        transport_config.custom_headers = headers;
        let transport = StreamableHttpClientTransport::from_config(transport_config);
        let mut config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("sluice-mcp-test", "1.0.0"),
        );
        let lifecycle = if discover {
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            }
        } else {
            config.protocol_version = ProtocolVersion::V_2025_11_25;
            ClientLifecycleMode::Initialize
        };
        config
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .unwrap_or_else(|error| panic!("{role} connects (discover: {discover}): {error}"))
    }

    /// A raw HTTP request: status, headers, body.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = reqwest::Client::new().request(method, format!("http://{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    async fn customers(&self) -> Vec<String> {
        let text = match self.database.engine() {
            Engine::Sqlite => "SELECT id || ':' || name || ':' || COALESCE(email, '') FROM customers ORDER BY id",
            _ => "SELECT CONCAT(id, ':', name, ':', COALESCE(email, '')) FROM customers ORDER BY id",
        };
        let statement = sluice_runtime::sql::Statement {
            text: text.into(),
            binds: Vec::new(),
            members: None,
        };
        self.database
            .fetch_strings(&statement)
            .await
            .expect("read customers")
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Cleanup::File(path) = &self.cleanup {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Api {
    /// Drops the fixture's schema or database on a shared server (a SQLite file goes on drop).
    async fn clean_up(self) {
        match &self.cleanup {
            Cleanup::File(_) => {}
            Cleanup::Postgres { url, schema } => {
                let admin = Database::connect(Engine::Postgres, url, &Default::default()).expect("PostgreSQL URL");
                let _ = admin.run_script(&format!("DROP SCHEMA {schema} CASCADE")).await;
            }
            Cleanup::Mysql { url, database } => {
                let admin = Database::connect(Engine::Mysql, url, &Default::default()).expect("MySQL URL");
                let _ = admin.run_script(&format!("DROP DATABASE {database}")).await;
            }
        }
    }
}

fn arguments(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("arguments must be an object, not {other}"),
    }
}

async fn call(client: &RunningService<RoleClient, ClientConfig>, tool: &str, args: Value) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments(args)))
        .await
        .unwrap_or_else(|error| panic!("{tool} answers: {error}"))
}

/// The structured content of a successful call.
async fn ok(client: &RunningService<RoleClient, ClientConfig>, tool: &str, args: Value) -> Value {
    let result = call(client, tool, args.clone()).await;
    assert_ne!(result.is_error, Some(true), "{tool} {args} failed: {result:?}");
    let structured = result.structured_content.clone().expect("structured content");
    let text = result.content[0].as_text().expect("text content").text.clone();
    assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON text"), structured);
    structured
}

/// The error document of a failed call.
async fn tool_error(client: &RunningService<RoleClient, ClientConfig>, tool: &str, args: Value) -> Value {
    let result = call(client, tool, args.clone()).await;
    assert_eq!(result.is_error, Some(true), "{tool} {args} should fail: {result:?}");
    let text = &result.content[0].as_text().expect("text content").text;
    let error: Value = serde_json::from_str(text).expect("JSON error");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    error
}

async fn tool_names(client: &RunningService<RoleClient, ClientConfig>) -> Vec<String> {
    let tools = client.list_tools(None).await.expect("tools/list");
    tools.tools.iter().map(|tool| tool.name.to_string()).collect()
}

#[tokio::test]
async fn every_tool_and_resource_works_under_both_revisions() {
    let api = Api::start("tools").await;
    for (discover, id) in [(false, 20), (true, 30)] {
        let client = api.client("admin", discover).await;
        let info = client.peer_info().expect("server info");
        assert!(
            info.server_info
                .as_ref()
                .is_some_and(|server| server.name.contains("shop")),
            "{:?}",
            info.server_info
        );
        assert!(
            info.instructions
                .as_deref()
                .is_some_and(|text| text.contains("list_tables"))
        );
        assert_eq!(
            tool_names(&client).await,
            [
                "list_tables",
                "describe_table",
                "query_rows",
                "count_rows",
                "get_row",
                "insert_rows",
                "update_rows",
                "delete_rows",
                "top_customers",
                "rename_customer"
            ]
        );
        let tools = client.list_tools(None).await.expect("tools/list");
        let query = tools
            .tools
            .iter()
            .find(|tool| tool.name == "query_rows")
            .expect("query_rows");
        let annotations = query.annotations.clone().expect("annotations");
        assert_eq!(
            (annotations.read_only_hint, annotations.open_world_hint),
            (Some(true), Some(false))
        );
        assert!(query.output_schema.is_some());
        let delete = tools
            .tools
            .iter()
            .find(|tool| tool.name == "delete_rows")
            .expect("delete_rows");
        assert_eq!(
            delete.annotations.clone().expect("annotations").destructive_hint,
            Some(true)
        );

        let tables = ok(&client, "list_tables", json!({})).await;
        let names: Vec<&str> = tables["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .filter_map(|table| table["name"].as_str())
            .collect();
        assert_eq!(names, ["customers", "notes", "orders"]);
        let described = ok(&client, "describe_table", json!({ "table": "orders" })).await;
        assert_eq!(described["primaryKey"], json!(["id"]));
        assert_eq!(described["foreignKeys"][0]["references"]["table"], "customers");

        let page = ok(
            &client,
            "query_rows",
            json!({ "table": "customers", "select": ["id", "name"], "order": [{ "column": "id", "descending": true }] }),
        )
        .await;
        assert_eq!(
            page,
            json!({ "rows": [{ "id": 3, "name": "Cleo" }, { "id": 2, "name": "Brian" }], "returned": 2, "truncated": true,
                    "nextOffset": 2, "hint": "more rows match: call again with offset 2" })
        );
        let next = ok(
            &client,
            "query_rows",
            json!({ "table": "customers", "select": ["id"], "order": [{ "column": "id", "descending": true }], "offset": 2 }),
        )
        .await;
        assert_eq!(
            next,
            json!({ "rows": [{ "id": 1 }], "returned": 1, "truncated": false })
        );
        let filtered = ok(
            &client,
            "query_rows",
            json!({ "table": "customers", "select": ["name"], "filters": [
                { "column": "email", "op": "is", "value": null, "negate": true },
                { "column": "name", "op": "like", "value": "C*" }
            ] }),
        )
        .await;
        assert_eq!(filtered["rows"], json!([{ "name": "Cleo" }]));
        let row = ok(&client, "get_row", json!({ "table": "orders", "key": { "id": 10 } })).await;
        assert_eq!(row, json!({ "row": { "id": 10, "customer_id": 1, "total": 99.9 } }));
        let count = ok(
            &client,
            "count_rows",
            json!({ "table": "orders", "filters": [{ "column": "customer_id", "op": "eq", "value": 1 }] }),
        )
        .await;
        assert_eq!(count, json!({ "count": 2 }));

        let inserted = ok(
            &client,
            "insert_rows",
            json!({ "table": "customers", "rows": [{ "id": id, "name": "New" }, { "id": id + 1, "name": "Newer" }] }),
        )
        .await;
        assert_eq!(
            (inserted["inserted"].clone(), inserted["returned"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(inserted["rows"][1]["name"], "Newer");
        let updated = ok(
            &client,
            "update_rows",
            json!({ "table": "customers", "set": { "vip": true }, "filters": [{ "column": "id", "op": "in", "value": [id, id + 1] }] }),
        )
        .await;
        assert_eq!(updated["updated"], 2);
        assert_eq!(updated["rows"][0]["vip"], true);
        let deleted = ok(
            &client,
            "delete_rows",
            json!({ "table": "customers", "filters": [{ "column": "id", "op": "gte", "value": id }] }),
        )
        .await;
        assert_eq!(deleted["deleted"], 2);

        let top = ok(&client, "top_customers", json!({ "min": 5 })).await;
        assert_eq!(
            top,
            json!({ "rows": [{ "id": 1, "name": "Ada", "balance": 10.5 }, { "id": 3, "name": "Cleo", "balance": 7 }],
                    "returned": 2, "truncated": false })
        );
        let capped = ok(&client, "top_customers", json!({ "limit": 3 })).await;
        assert_eq!(
            (capped["returned"].clone(), capped["truncated"].clone()),
            (json!(2), json!(true))
        );
        let renamed = ok(&client, "rename_customer", json!({ "id": 2, "name": "Bri" })).await;
        assert_eq!(renamed, json!({ "affected": 1 }));
        ok(&client, "rename_customer", json!({ "id": 2, "name": "Brian" })).await;

        let resources = client.list_resources(None).await.expect("resources/list");
        let uris: Vec<&str> = resources.resources.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "sluice://tables/customers",
                "sluice://tables/notes",
                "sluice://tables/orders"
            ]
        );
        let read = client
            .read_resource(ReadResourceRequestParams::new("sluice://tables/orders"))
            .await
            .expect("resources/read");
        let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
            panic!("text resource expected: {read:?}");
        };
        assert_eq!(
            serde_json::from_str::<Value>(text).expect("JSON")["primaryKey"],
            json!(["id"])
        );
        client.cancel().await.expect("disconnect");
    }
    assert_eq!(
        api.customers().await,
        ["1:Ada:ada@example.com", "2:Brian:", "3:Cleo:cleo@example.com"]
    );
}

#[tokio::test]
async fn a_read_only_role_sees_no_write_tools_and_no_denied_fields() {
    let api = Api::start("clerk").await;
    for discover in [false, true] {
        let client = api.client("clerk", discover).await;
        assert_eq!(
            tool_names(&client).await,
            [
                "list_tables",
                "describe_table",
                "query_rows",
                "count_rows",
                "get_row",
                "top_customers"
            ]
        );
        let tools = client.list_tools(None).await.expect("tools/list");
        let schemas = serde_json::to_string(&tools.tools).expect("tools serialize");
        assert!(!schemas.contains("email"), "a denied field is in a schema: {schemas}");
        assert!(!schemas.contains("notes"), "an unreadable table is in a schema");
        let rows = ok(&client, "query_rows", json!({ "table": "customers", "limit": 1 })).await;
        assert_eq!(
            rows["rows"],
            json!([{ "id": 1, "name": "Ada", "vip": true, "balance": 10.5 }])
        );
        let described = ok(&client, "describe_table", json!({ "table": "customers" })).await;
        assert_eq!(described["verbs"], json!(["read"]));
        assert!(!described.to_string().contains("email"));
        let denied = tool_error(
            &client,
            "query_rows",
            json!({ "table": "customers", "filters": [{ "column": "email", "op": "eq", "value": "ada@example.com" }] }),
        )
        .await;
        assert_eq!(denied["code"], "unknown_column");
        assert!(
            denied["hint"]
                .as_str()
                .is_some_and(|hint| hint.contains("describe_table"))
        );
        let hidden = tool_error(&client, "describe_table", json!({ "table": "notes" })).await;
        assert_eq!(hidden["code"], "unknown_table");
        for (tool, args) in [
            (
                "insert_rows",
                json!({ "table": "customers", "rows": [{ "id": 9, "name": "X" }] }),
            ),
            (
                "update_rows",
                json!({ "table": "customers", "set": { "name": "X" }, "filters": [{ "column": "id", "op": "eq", "value": 1 }] }),
            ),
            (
                "delete_rows",
                json!({ "table": "customers", "filters": [{ "column": "id", "op": "eq", "value": 1 }] }),
            ),
        ] {
            let write = client
                .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments(args)))
                .await
                .expect_err("a write tool not offered is unknown");
            assert!(write.to_string().contains("unknown tool"), "{tool}: {write}");
        }
        let resources = client.list_resources(None).await.expect("resources/list");
        assert_eq!(resources.resources.len(), 2);
        client.cancel().await.expect("disconnect");
    }
    assert_eq!(api.customers().await.len(), 3);
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_changes_nothing() {
    let api = Api::start("bad").await;
    let client = api.client("admin", true).await;
    let before = api.customers().await;
    let unknown = client
        .call_tool(CallToolRequestParams::new("drop_tables").with_arguments(JsonObject::new()))
        .await
        .expect_err("an unknown tool is a protocol error");
    assert!(unknown.to_string().contains("unknown tool"), "{unknown}");
    let cases = [
        ("query_rows", json!({}), "invalid_arguments", "missing field `table`"),
        (
            "query_rows",
            json!({ "table": "customers", "where": "1=1" }),
            "invalid_arguments",
            "unknown field `where`",
        ),
        (
            "query_rows",
            json!({ "table": "customers", "limit": "ten" }),
            "invalid_arguments",
            "invalid type",
        ),
        (
            "query_rows",
            json!({ "table": "customers", "limit": 3 }),
            "bad_query",
            "above the cap of 2 rows",
        ),
        ("query_rows", json!({ "table": "secrets" }), "unknown_table", "secrets"),
        (
            "query_rows",
            json!({ "table": "customers", "select": ["nope"] }),
            "unknown_column",
            "nope",
        ),
        (
            "query_rows",
            json!({ "table": "customers", "filters": [{ "column": "id", "op": "eq", "value": "one" }] }),
            "wrong_type",
            "expects an integer",
        ),
        (
            "query_rows",
            json!({ "table": "customers", "filters": [{ "column": "id", "op": "between", "value": 1 }] }),
            "invalid_arguments",
            "unknown variant `between`",
        ),
        (
            "get_row",
            json!({ "table": "customers", "key": { "name": "Ada" } }),
            "bad_query",
            "the key of \"customers\" is id",
        ),
        (
            "get_row",
            json!({ "table": "customers", "key": { "id": 99 } }),
            "not_found",
            "99",
        ),
        (
            "get_row",
            json!({ "table": "notes", "key": { "body": "a note" } }),
            "bad_query",
            "no primary key",
        ),
        (
            "insert_rows",
            json!({ "table": "customers", "rows": [{ "id": 1, "name": "Dup" }] }),
            "conflict",
            "unique",
        ),
        (
            "insert_rows",
            json!({ "table": "customers", "rows": [{ "id": 50, "name": "X", "shoe_size": 9 }] }),
            "unknown_column",
            "shoe_size",
        ),
        (
            "update_rows",
            json!({ "table": "customers", "set": { "name": "Everyone" }, "filters": [] }),
            "filter_required",
            "without a filter",
        ),
        (
            "update_rows",
            json!({ "table": "customers", "set": { "vip": "maybe" }, "filters": [{ "column": "id", "op": "eq", "value": 1 }] }),
            "wrong_type",
            "vip",
        ),
        (
            "delete_rows",
            json!({ "table": "customers" }),
            "invalid_arguments",
            "missing field `filters`",
        ),
        (
            "delete_rows",
            json!({ "table": "customers", "filters": [] }),
            "filter_required",
            "without a filter",
        ),
        (
            "top_customers",
            json!({ "limit": 500 }),
            "bad_query",
            "outside its range",
        ),
        (
            "top_customers",
            json!({ "limit": "ten" }),
            "wrong_type",
            "expects an integer",
        ),
        (
            "top_customers",
            json!({ "top": 1 }),
            "bad_query",
            "no parameter \"top\"",
        ),
        (
            "rename_customer",
            json!({ "id": 1 }),
            "bad_query",
            "needs the parameter \"name\"",
        ),
    ];
    for (tool, args, code, says) in cases {
        let error = tool_error(&client, tool, args.clone()).await;
        assert_eq!(error["code"], code, "{tool} {args}: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(says)),
            "{tool} {args}: {error}"
        );
    }
    assert_eq!(api.customers().await, before);
    client.cancel().await.expect("disconnect");
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const LIST_TOOLS_2026: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

const CALL_LIST_TABLES_2026: &str = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"list_tables","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

#[tokio::test]
async fn http_refusals_and_response_kinds() {
    let api = Api::start("http").await;
    let admin = api.keys["admin"].clone();
    let accept = ("Accept", "application/json, text/event-stream");
    let json_body = ("Content-Type", "application/json");
    let key = (KEY_HEADER, admin.as_str());
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let api = &api;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            api.raw(reqwest::Method::POST, "/mcp", &headers, Some(body)).await
        }
    };
    let base = |extra: &[(&'static str, &str)]| {
        let mut headers = vec![(accept.0, accept.1.to_owned()), (json_body.0, json_body.1.to_owned())];
        headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        headers
    };

    let (status, headers, body) = post(base(&[]), INITIALIZE).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or_default().contains(KEY_HEADER))
    );
    let (status, _, body) = post(base(&[(KEY_HEADER, "sluice_wrong")]), INITIALIZE).await;
    assert_eq!(status, 401, "{body}");
    let batch = api.keys["batch"].clone();
    let (status, _, body) = post(base(&[(KEY_HEADER, batch.as_str())]), INITIALIZE).await;
    assert_eq!((status, body.contains("mcp_disabled")), (403, true), "{body}");
    let (status, _, body) = post(base(&[key, ("Origin", "https://evil.example")]), INITIALIZE).await;
    assert_eq!((status, body.contains("origin_not_allowed")), (403, true), "{body}");

    let (status, headers, body) = post(base(&[key, ("Origin", "https://console.example.com")]), INITIALIZE).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "a 2025-11-25 session answers with SSE: {headers:?}"
    );
    assert!(
        headers.contains_key("content-length") && !headers.contains_key("transfer-encoding"),
        "a quick SSE answer is sent whole, in one write: {headers:?}"
    );
    assert!(headers.get("mcp-session-id").is_some());
    assert!(body.contains("\"protocolVersion\":\"2025-11-25\""), "{body}");

    let (status, headers, body) = post(
        base(&[
            key,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/list"),
        ]),
        LIST_TOOLS_2026,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let listed: Value = serde_json::from_str(&body).expect("JSON-RPC response");
    assert_eq!(listed["result"]["cacheScope"], "private");
    assert_eq!(listed["result"]["ttlMs"], 60000);

    let (status, _, body) = post(
        base(&[
            key,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
        ]),
        LIST_TOOLS_2026,
    )
    .await;
    assert_eq!(status, 400, "Mcp-Method must match the body: {body}");
    let (status, _, body) = post(
        base(&[
            key,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "delete_rows"),
        ]),
        CALL_LIST_TABLES_2026,
    )
    .await;
    assert_eq!(status, 400, "Mcp-Name must match the tool called: {body}");
    let (status, _, body) = post(
        base(&[
            key,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "list_tables"),
        ]),
        CALL_LIST_TABLES_2026,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\\\"customers\\\""), "{body}");

    let (status, _, body) = post(base(&[key]), r#"{"jsonrpc":"2.0","id":3,"method":"tools/list""#).await;
    assert!((400..500).contains(&status), "malformed JSON-RPC: {status} {body}");

    let (status, _, body) = post(
        base(&[key, ("MCP-Protocol-Version", "2025-11-25")]),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "a 2025-11-25 request without a session: {status} {body}"
    );
    let (status, _, body) = post(
        base(&[
            key,
            ("MCP-Protocol-Version", "2025-11-25"),
            ("Mcp-Session-Id", "no-such-session"),
        ]),
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(status, 404, "an unknown session: {body}");
}

/// The official Python MCP SDK the second-language test drives the endpoint with.
const PYTHON_SDK: &str = "mcp==2.3.0";

async fn run(command: &mut tokio::process::Command, what: &str) -> String {
    let output = command
        .output()
        .await
        .unwrap_or_else(|error| panic!("{what}: cannot run {command:?}: {error}; install Python 3.10+ with venv"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed ({}):\n{text}", output.status);
    text
}

/// A Python with the SDK installed, in a venv kept between runs.
async fn python_with_sdk() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home)
        .join(".cache/sluice")
        .join(format!("python-{}", PYTHON_SDK.replace("==", "-")));
    let python = venv.join("bin/python");
    let installed = tokio::process::Command::new(&python)
        .args(["-c", "import mcp"])
        .status()
        .await
        .is_ok_and(|status| status.success());
    if !installed {
        run(
            tokio::process::Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "creating a Python venv",
        )
        .await;
        run(
            tokio::process::Command::new(venv.join("bin/pip")).args(["install", "--quiet", PYTHON_SDK]),
            "installing the Python MCP SDK from PyPI",
        )
        .await;
    }
    python
}

#[tokio::test]
async fn the_official_python_sdk_calls_every_tool_under_both_revisions() {
    let python = python_with_sdk().await;
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_python/agent.py");
    let api = Api::start("python").await;
    for mode in ["legacy", "auto"] {
        let output = run(
            tokio::process::Command::new(&python)
                .arg(&agent)
                .arg(api.url())
                .arg(&api.keys["admin"])
                .arg(mode),
            &format!("the Python agent ({mode})"),
        )
        .await;
        assert!(output.contains("every check passed"), "{output}");
    }
    assert_eq!(api.customers().await.len(), 3);
}

#[tokio::test]
async fn tools_and_named_queries_work_on_postgres_and_mariadb() {
    for engine in [Engine::Postgres, Engine::Mysql] {
        let api = Api::start_on(engine, "engines").await;
        for discover in [false, true] {
            let client = api.client("admin", discover).await;
            let page = ok(
                &client,
                "query_rows",
                json!({ "table": "customers", "select": ["id", "name", "vip"], "filters": [{ "column": "vip", "op": "is", "value": false }] }),
            )
            .await;
            assert_eq!(
                page["rows"],
                json!([{ "id": 2, "name": "Brian", "vip": false }, { "id": 3, "name": "Cleo", "vip": false }]),
                "{engine:?}"
            );
            let row = ok(
                &client,
                "get_row",
                json!({ "table": "orders", "key": { "id": 12 }, "select": ["customer_id"] }),
            )
            .await;
            assert_eq!(row, json!({ "row": { "customer_id": 2 } }), "{engine:?}");
            let count = ok(&client, "count_rows", json!({ "table": "orders" })).await;
            assert_eq!(count, json!({ "count": 3 }), "{engine:?}");
            let inserted = ok(
                &client,
                "insert_rows",
                json!({ "table": "customers", "rows": [{ "id": 40, "name": "E" }] }),
            )
            .await;
            assert_eq!(inserted["rows"][0]["name"], "E", "{engine:?}");
            let updated = ok(
                &client,
                "update_rows",
                json!({ "table": "customers", "set": { "name": "F" }, "filters": [{ "column": "id", "op": "eq", "value": 40 }] }),
            )
            .await;
            assert_eq!(updated["rows"][0]["name"], "F", "{engine:?}");
            let deleted = ok(
                &client,
                "delete_rows",
                json!({ "table": "customers", "filters": [{ "column": "id", "op": "eq", "value": 40 }] }),
            )
            .await;
            assert_eq!(deleted["deleted"], 1, "{engine:?}");
            let top = ok(&client, "top_customers", json!({ "min": 5 })).await;
            let names: Vec<&str> = top["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .filter_map(|row| row["name"].as_str())
                .collect();
            assert_eq!(names, ["Ada", "Cleo"], "{engine:?}: {top}");
            assert_eq!(top["rows"][0]["balance"].as_f64(), Some(10.5), "{engine:?}: {top}");
            let renamed = ok(&client, "rename_customer", json!({ "id": 2, "name": "Bri" })).await;
            assert_eq!(renamed, json!({ "affected": 1 }), "{engine:?}");
            ok(&client, "rename_customer", json!({ "id": 2, "name": "Brian" })).await;
            client.cancel().await.expect("disconnect");
        }
        assert_eq!(
            api.customers().await,
            ["1:Ada:ada@example.com", "2:Brian:", "3:Cleo:cleo@example.com"],
            "{engine:?}"
        );
        api.clean_up().await;
    }
}

#[tokio::test]
async fn with_jwt_a_401_points_at_the_protected_resource_metadata() {
    let jwt =
        ", jwt: { issuer: 'https://login.example.com/', audiences: [shop], jwksUri: 'https://login.example.com/jwks' }";
    let api = Api::start_with(Engine::Sqlite, "jwt", jwt).await;
    let (status, headers, body) = api
        .raw(
            reqwest::Method::POST,
            "/mcp",
            &[
                ("Accept", "application/json, text/event-stream"),
                ("Content-Type", "application/json"),
            ],
            Some(INITIALIZE),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let metadata_url = format!("http://{}/.well-known/oauth-protected-resource/mcp", api.address);
    let challenge = headers["www-authenticate"].to_str().expect("ASCII challenge");
    assert!(
        challenge.ends_with(&format!("Bearer resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let (status, _, body) = api
        .raw(
            reqwest::Method::GET,
            "/.well-known/oauth-protected-resource/mcp",
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let metadata: Value = serde_json::from_str(&body).expect("JSON metadata");
    assert_eq!(metadata["resource"], format!("http://{}/mcp", api.address));
    assert_eq!(metadata["authorization_servers"], json!(["https://login.example.com/"]));
}

/// The tenant role reads customers through a row filter (no VIPs) and a mask, rate limited to a
/// burst of 8: agents get exactly what REST clients get, and every tool call is one audit line.
#[tokio::test]
async fn row_filters_masks_rate_limits_and_audit_apply_to_tool_calls() {
    let mut api = Api::start("governed").await;
    let client = api.client("tenant", false).await;
    let rows = ok(
        &client,
        "query_rows",
        json!({"table": "customers", "select": ["id", "email"]}),
    )
    .await;
    assert_eq!(
        rows["rows"],
        json!([{"id": 2, "email": null}, {"id": 3, "email": "*****example.com"}]),
        "{rows}"
    );
    let outside = tool_error(&client, "get_row", json!({"table": "customers", "key": {"id": 1}})).await;
    assert_eq!(
        outside["code"], "not_found",
        "a row outside the filter does not exist: {outside}"
    );
    let masked = tool_error(
        &client,
        "query_rows",
        json!({"table": "customers", "filters": [{"column": "email", "op": "like", "value": "ada%"}]}),
    )
    .await;
    assert_eq!(masked["code"], "masked_column", "{masked}");
    let counted = ok(&client, "count_rows", json!({"table": "customers"})).await;
    assert!(
        counted.to_string().contains('2'),
        "count_rows counts only rows inside the filter: {counted}"
    );
    // The burst of 8 is spent by now (connect, list and four calls); raw calls get 429.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).to_string();
        let (status, headers, _) = api
            .raw(
                reqwest::Method::POST,
                "/mcp",
                &[
                    (KEY_HEADER, api.keys["tenant"].as_str()),
                    ("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream"),
                    ("mcp-protocol-version", "2026-07-28"),
                ],
                Some(&body),
            )
            .await;
        if status == 429 {
            assert!(headers.get("retry-after").is_some(), "{headers:?}");
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&429),
        "the tenant's burst of 8 must run out: {statuses:?}"
    );
    client.cancel().await.expect("close the client");
    let lines = api.audit_lines().await;
    let calls: Vec<&Value> = lines.iter().filter(|line| line["tool"].is_string()).collect();
    assert_eq!(calls.len(), 4, "one line per tool call: {lines:?}");
    for line in &calls {
        assert_eq!(line["transport"], "mcp");
        assert_eq!(line["method"], "tools/call");
        assert_eq!(line["role"], "tenant");
        assert_eq!(line["client"]["name"], "sluice-mcp-test", "{line}");
        assert!(line["mcpSession"].is_string(), "a 2025-11-25 session id: {line}");
        assert!(!line.to_string().contains(&api.keys["tenant"]), "no key in {line}");
    }
    assert_eq!(calls[0]["table"], "customers");
    assert_eq!(calls[0]["rows"], 2);
    assert_eq!(calls[2]["error"], "masked_column");
    let refused = lines
        .iter()
        .filter(|line| line["status"] == 429 && line["method"] == "POST")
        .count();
    assert_eq!(
        refused,
        statuses.iter().filter(|status| **status == 429).count(),
        "429s are audited too"
    );
}

/// A 2025-11-25 session hears `notifications/tools/list_changed` on its stream when a config
/// reload may have changed its tools, and lists the new tools.
#[tokio::test]
async fn a_config_reload_tells_sessions_their_tool_list_changed() {
    let api = Api::start("reload").await;
    let key = api.keys["clerk"].clone();
    let client = reqwest::Client::new();
    let url = api.url();
    let post = |body: &'static str, session: Option<String>| {
        let mut request = client
            .post(&url)
            .header(KEY_HEADER, &key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let initialized = post(INITIALIZE, None).await.expect("initialize");
    let session = initialized
        .headers()
        .get("mcp-session-id")
        .and_then(|value| value.to_str().ok())
        .expect("a session id")
        .to_owned();
    let notified = post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(session.clone()),
    )
    .await
    .expect("initialized");
    assert_eq!(notified.status(), 202);
    let mut stream = client
        .get(&url)
        .header(KEY_HEADER, &key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("open the session's stream");
    assert_eq!(stream.status(), 200);
    let mut changed = api.config.clone();
    changed
        .roles
        .get_mut("clerk")
        .expect("clerk")
        .rules
        .retain(|rule| !rule.tables.iter().any(|table| table.starts_with("_query/")));
    api.state.apply(changed).await.expect("the new config applies");
    let mut received = String::new();
    let heard = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            received.push_str(&String::from_utf8_lossy(&chunk));
            if received.contains("notifications/tools/list_changed") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        heard,
        Ok(true),
        "no list_changed notification on the stream: {received}"
    );
    let tools = api.client("clerk", true).await;
    assert!(
        !tool_names(&tools).await.iter().any(|name| name == "top_customers"),
        "the new list no longer offers the named query"
    );
}
