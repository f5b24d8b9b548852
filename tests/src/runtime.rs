//! Runs the Sluice runtime in-process over a fresh fixture database per test, on PostgreSQL,
//! MariaDB and SQLite, and talks HTTP/1.1 to it over a real socket.
//!
//! The fixture DataApi has four roles ([`ROLES`]): `admin` (everything, with a key), `clerk`
//! (narrowed by deny and allow lists, with a key), the anonymous `visitor` (an allow list and
//! `maxRows: 1`), `tenant` (row filters and masks, with a key) and `metered` (reads customers,
//! rate limited to a burst of 5 and one request a second, with two keys), `sampler` (reads
//! customers and orders, at most one row of each, with a key), and `partner`, which
//! only JWT callers get (role claim `partner`): orders of the customer in their `customer` claim.
//! Tokens are HS256 with the secret from `SLUICE_TEST_JWT_HMAC_SECRET` ([`token`]). Keys are generated per fixture; [`TestApi::call`] sends the admin's.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use sluice_crds::dataapi::Engine;
use sluice_runtime::AppState;
use sluice_runtime::audit::{AuditLog, AuditWriter};
use sluice_runtime::db::Database;
use sluice_runtime::server::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::services::{mysql_url, postgres_url};

/// The fixture: customers and orders related by a foreign key, order items with a composite
/// primary key, a read-only (DISTINCT) view, and NULLs, booleans, decimals, timestamps and JSON. `{json}`,
/// `{bool}`, `{serial}` and `{ts}` are replaced per engine.
const FIXTURE: &str = "
CREATE TABLE customers (
    id {serial} PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    email VARCHAR(200),
    vip {bool} NOT NULL DEFAULT FALSE,
    balance DECIMAL(12,2),
    joined_at {ts},
    profile {json}
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total DECIMAL(10,2) NOT NULL,
    note VARCHAR(200)
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product VARCHAR(50) NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, product)
);
CREATE VIEW vip_customers AS SELECT DISTINCT id, name FROM customers WHERE vip = TRUE;
INSERT INTO customers (id, name, email, vip, balance, joined_at, profile) VALUES
    (1, 'Ada', 'ada@example.com', TRUE, 1250.50, '2024-01-02 03:04:05', '{\"tier\": \"gold\", \"tags\": [1, 2]}'),
    (2, 'Brian', NULL, FALSE, 0.10, '2024-02-03 04:05:06', NULL),
    (3, 'Chloe', 'chloe@example.com', FALSE, NULL, NULL, '{\"tier\": \"silver\"}');
INSERT INTO orders (id, customer_id, total, note) VALUES
    (10, 1, 99.90, 'gift'),
    (11, 1, 15.00, NULL),
    (12, 2, 42.42, 'rush');
INSERT INTO order_items (order_id, product, quantity) VALUES
    (10, 'pen', 3), (10, 'ink', 1), (11, 'pad', 2), (12, 'pen', 1);
{engine_specific}
";

/// The header carrying API keys in every fixture API.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// The fixture's roles and their keys.
const ROLES: &str = "
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: admin, namespace: test }
spec:
  dataApis: [fixture]
  admin: true
  rules:
    - tables: ['*']
      verbs: [read, create, update, delete]
  apiKeys: [{ name: test }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: clerk, namespace: test }
spec:
  dataApis: [fixture]
  rules:
    - tables: [customers]
      verbs: [read, create, update]
      fields: { deny: [email, balance] }
    - tables: ['order*']
      verbs: [read]
      fields: { allow: [id, total, order_id, product, quantity] }
  apiKeys: [{ name: desk }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: visitor, namespace: test }
spec:
  dataApis: [fixture]
  rules:
    - tables: [customers]
      verbs: [read]
      fields: { allow: [id, name] }
      maxRows: 1
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: tenant, namespace: test }
spec:
  dataApis: [fixture]
  rules:
    - tables: [customers]
      verbs: [read, create, update, delete]
      fields:
        mask:
          - { field: email, strategy: keepLast, keepLast: 11 }
          - { field: balance, strategy: fixed, with: hidden }
      rowFilter: [{ column: vip, op: is, value: false }]
    - tables: [orders]
      verbs: [read, create, update, delete]
      rowFilter: [{ column: total, op: gt, value: 20 }]
  apiKeys: [{ name: app }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: metered, namespace: test }
spec:
  dataApis: [fixture]
  rules:
    - tables: [customers]
      verbs: [read]
  rateLimit: { requestsPerMinute: 60, burst: 5 }
  apiKeys: [{ name: one }, { name: two }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: sampler, namespace: test }
spec:
  dataApis: [fixture]
  rules:
    - tables: [customers, orders]
      verbs: [read]
      maxRows: 1
  apiKeys: [{ name: peek }]
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: partner, namespace: test }
spec:
  dataApis: [fixture]
  subjects: { jwtRoles: [partner] }
  rules:
    - tables: [orders]
      verbs: [read, create]
      rowFilter: [{ column: customer_id, op: eq, value: '{claims.customer}' }]
";

/// The issuer the fixture API accepts in tokens.
pub const JWT_ISSUER: &str = "https://issuer.sluice.test/";
/// The audience the fixture API accepts in tokens.
pub const JWT_AUDIENCE: &str = "sluice-fixture";

/// An HS256 token for the fixture API: issuer, audience, a subject and an hour of validity,
/// overridden and extended by `claims`.
pub fn token(claims: Value) -> String {
    token_signed_with(claims, &crate::services::jwt_secret())
}

/// [`token`], signed with `secret` (a forgery when it is not the fixture's).
pub fn token_signed_with(claims: Value, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut all = serde_json::json!({
        "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "someone", "iat": now, "exp": now + 3600
    });
    if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), claims) {
        all.extend(extra);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &all,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token encodes")
}

/// The statement timeout of every fixture API; the `slow` view takes longer.
pub const STATEMENT_TIMEOUT_MS: u32 = 2000;

fn fixture_sql(engine: Engine) -> String {
    let (serial, boolean, timestamp, json) = match engine {
        Engine::Postgres => ("INTEGER", "BOOLEAN", "TIMESTAMP", "JSONB"),
        Engine::Mysql => ("INTEGER AUTO_INCREMENT", "BOOLEAN", "DATETIME", "JSON"),
        Engine::Sqlite => ("INTEGER", "BOOLEAN", "DATETIME", "JSON"),
    };
    // A view slower than the statement timeout, where the engine can cancel a statement, and
    // a table of the engine's own types with a view the engine can update.
    let engine_specific = match engine {
        Engine::Postgres => {
            "CREATE VIEW slow AS SELECT 1 AS id, CAST(pg_sleep(5) AS TEXT) AS slept;
             CREATE TABLE special (id INTEGER PRIMARY KEY, tags TEXT[], scores INTEGER[], data BYTEA, at TIMESTAMPTZ); CREATE VIEW special_view AS SELECT id, at FROM special;"
        }
        Engine::Mysql => {
            "CREATE VIEW slow AS SELECT 1 AS id, SLEEP(5) AS slept;
             CREATE TABLE special (id INTEGER PRIMARY KEY, data BLOB, at TIMESTAMP NULL); CREATE VIEW special_view AS SELECT id, at FROM special;"
        }
        Engine::Sqlite => "",
    };
    FIXTURE
        .replace("{engine_specific}", engine_specific)
        .replace("{serial}", serial)
        .replace("{bool}", boolean)
        .replace("{ts}", timestamp)
        .replace("{json}", json)
}

/// A runtime serving a fixture database.
pub struct TestApi {
    /// The engine under test.
    pub engine: Engine,
    /// Where the runtime listens.
    pub address: SocketAddr,
    /// The REST base path.
    pub base: String,
    /// API keys by role name.
    keys: BTreeMap<String, String>,
    cleanup: Cleanup,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    /// The running runtime's state.
    pub state: std::sync::Arc<AppState>,
    /// The config it started with.
    pub config: sluice_crds::RuntimeConfig,
    audit_writer: Option<AuditWriter>,
    audit_path: std::path::PathBuf,
}

enum Cleanup {
    Postgres { url: String, schema: String },
    Mysql { url: String, database: String },
    Sqlite { path: std::path::PathBuf },
}

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("sluice_t{}_{nanos}", std::process::id())
}

/// The fixture's resolved config, and a freshly generated key for each role that has one.
fn manifest(
    engine: Engine,
    schema: Option<&str>,
    sqlite_path: Option<&str>,
) -> (sluice_crds::RuntimeConfig, BTreeMap<String, String>) {
    let database = match engine {
        Engine::Sqlite => format!("engine: sqlite\n    path: {}", sqlite_path.unwrap_or_default()),
        other => format!(
            "engine: {}\n    connectionSecretRef: {{ name: db, key: url }}\n    schemas: [{}]",
            other.as_str(),
            schema.unwrap_or_default()
        ),
    };
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: fixture, namespace: test }}\nspec:\n  database:\n    {database}\n    pool: {{ maxConnections: 4, acquireTimeoutMs: 1500, statementTimeoutMs: {STATEMENT_TIMEOUT_MS}, readBatchMs: 1000 }}\n  rest: {{ basePath: /api, defaultPageSize: 2, maxPageSize: 3, maxBodyBytes: 2048 }}\n  auth: {{ apiKeyHeader: {API_KEY_HEADER}, anonymousRole: visitor, jwt: {{ issuer: '{JWT_ISSUER}', audiences: [{JWT_AUDIENCE}], hmacSecretRef: {{ name: jwt, key: secret }} }} }}\n"
    );
    let data_api: sluice_crds::DataApi = serde_yaml::from_str(&yaml).expect("fixture DataApi parses");
    let roles: Vec<sluice_crds::ApiRole> = serde_yaml::Deserializer::from_str(ROLES)
        .map(|document| serde::Deserialize::deserialize(document).expect("fixture ApiRole parses"))
        .collect();
    let mut hashes = sluice_crds::KeyHashes::new();
    let mut keys = BTreeMap::new();
    for role in &roles {
        let name = role.metadata.name.clone().expect("fixture roles are named");
        for key in &role.spec.api_keys {
            let plaintext = sluice_crds::generate_api_key();
            hashes.insert_plaintext(&name, &key.name, &plaintext);
            keys.entry(name.clone()).or_insert_with(|| plaintext.clone());
            keys.insert(format!("{name}/{}", key.name), plaintext);
        }
    }
    let mut config = sluice_crds::resolve(&data_api, &roles, &hashes).expect("fixture DataApi resolves");
    if let Some(jwt) = &mut config.auth.jwt {
        crate::services::jwt_secret();
        jwt.hmac_secret_env = Some(crate::services::JWT_SECRET_ENV.to_owned());
    }
    (config, keys)
}

fn with_database(url: &str, database: &str) -> String {
    let (server, _) = url.rsplit_once('/').expect("the MySQL URL names a database");
    format!("{server}/{database}")
}

/// Sends the runtime's log to the test's captured output, which a failing test prints: a 500
/// shows the database error behind it. `RUST_LOG` overrides the default of warnings, plus the
/// database refusals the runtime logs at info.
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sluice_runtime::error=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Creates a fixture on `engine` (on the shared test server) and serves it. Panics (failing
/// the test) when the database is unreachable: the suite never skips.
pub async fn start(engine: Engine) -> TestApi {
    start_with(engine, |_| {}).await
}

/// Like [`start`], with the fixture's config changed by `adjust` first (e.g. shorter limits).
pub async fn start_with(engine: Engine, adjust: impl FnOnce(&mut sluice_crds::RuntimeConfig)) -> TestApi {
    let server_url = match engine {
        Engine::Postgres => postgres_url(),
        Engine::Mysql => mysql_url(),
        Engine::Sqlite => String::new(),
    };
    serve_fixture(engine, &server_url, adjust).await
}

/// Like [`start`], on the PostgreSQL or MariaDB server at `server_url` (e.g. a
/// [`crate::private_db::PrivateDb`] that the test stops and starts); ignored for SQLite.
pub async fn start_on(engine: Engine, server_url: &str) -> TestApi {
    serve_fixture(engine, server_url, |_| {}).await
}

async fn serve_fixture(
    engine: Engine,
    server_url: &str,
    adjust: impl FnOnce(&mut sluice_crds::RuntimeConfig),
) -> TestApi {
    log_to_test_output();
    let name = unique_name();
    let fixture = fixture_sql(engine);
    let ((config, keys), url, cleanup) = match engine {
        Engine::Postgres => {
            let url = server_url.to_owned();
            let admin = Database::connect(engine, &url, &Default::default()).expect("PostgreSQL URL parses");
            let script = format!("CREATE SCHEMA {name}; SET search_path TO {name}; {fixture}");
            admin
                .run_script(&script)
                .await
                .unwrap_or_else(|e| panic!("creating the PostgreSQL fixture at {url}: {e}"));
            (
                manifest(engine, Some(&name), None),
                url.clone(),
                Cleanup::Postgres { url, schema: name },
            )
        }
        Engine::Mysql => {
            let url = server_url.to_owned();
            let admin = Database::connect(engine, &url, &Default::default()).expect("MySQL URL parses");
            admin
                .run_script(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("creating a MariaDB database at {url}: {e}"));
            let fixture_url = with_database(&url, &name);
            let database = Database::connect(engine, &fixture_url, &Default::default()).expect("MySQL URL parses");
            database
                .run_script(&fixture)
                .await
                .unwrap_or_else(|e| panic!("creating the MariaDB fixture: {e}"));
            (
                manifest(engine, Some(&name), None),
                fixture_url,
                Cleanup::Mysql { url, database: name },
            )
        }
        Engine::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            let url = format!("{}?mode=rwc", Database::sqlite_url(&path));
            let database = Database::connect(engine, &url, &Default::default()).expect("SQLite URL parses");
            database
                .run_script(&fixture)
                .await
                .unwrap_or_else(|e| panic!("creating the SQLite fixture: {e}"));
            let path_text = path.display().to_string();
            (manifest(engine, None, Some(&path_text)), url, Cleanup::Sqlite { path })
        }
    };
    let mut config = config;
    adjust(&mut config);
    let database = Database::connect(engine, &url, &config.database.pool).expect("database URL parses");
    let audit_path = std::env::temp_dir().join(format!("{}-audit.jsonl", unique_name()));
    let audit_file = std::fs::File::create(&audit_path).expect("create the audit log file");
    let (audit, audit_writer) = AuditLog::start(audit_file);
    let app = sluice_runtime::build_app(config.clone(), database, audit).expect("the fixture config builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
    let address = listener.local_addr().expect("local address");
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    // Connection limits follow the live config, as in the runtime's binary.
    let state = app.state.clone();
    let limits = move || ConnectionLimits::from(&state.live().config.limits);
    let server = tokio::spawn(sluice_runtime::server::serve(
        listener,
        app.router,
        limits,
        async move {
            let _ = stop.await;
        },
    ));
    let api = TestApi {
        engine,
        address,
        base: "/api".into(),
        keys,
        cleanup,
        shutdown: Some(shutdown),
        server,
        state: app.state,
        config,
        audit_writer: Some(audit_writer),
        audit_path,
    };
    api.wait_ready().await;
    api
}

impl TestApi {
    /// Waits until `/readyz` answers 200, for at most 10 s in all.
    pub async fn wait_ready(&self) {
        let ready = async {
            while self.get("/readyz").await.status != 200 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), ready)
            .await
            .is_err()
        {
            panic!("{:?}: the runtime did not become ready within 10 s", self.engine);
        }
    }

    /// The fixture's database file, on SQLite.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.cleanup {
            Cleanup::Sqlite { path } => Some(path),
            _ => None,
        }
    }

    /// `GET path` (no base path added).
    pub async fn get(&self, path: &str) -> Reply {
        request(self.address, "GET", path, &[], None).await
    }

    /// The API key of `role`, or of `role/key name`.
    pub fn key(&self, role: &str) -> &str {
        self.keys
            .get(role)
            .unwrap_or_else(|| panic!("the fixture has no key for role {role}"))
    }

    /// A request to `base + path` as the `admin` role, which may do everything.
    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        self.call_as(Some(self.key("admin")), method, path, headers, body).await
    }

    /// A request to `base + path` with `key` in the key header, or without credentials.
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut all = headers.to_vec();
        if let Some(key) = key {
            all.push((API_KEY_HEADER, key));
        }
        request(self.address, method, &format!("{}{path}", self.base), &all, body).await
    }

    /// Starts a graceful shutdown and waits until the server has finished every request.
    pub async fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.server)
            .await
            .unwrap_or_else(|e| panic!("the server task failed: {e}"))
    }

    /// Shuts the server down, flushes the audit log and returns its lines, parsed.
    pub async fn audit_lines(&mut self) -> Vec<Value> {
        self.shut_down().await;
        if let Some(writer) = self.audit_writer.take() {
            writer.close().await.expect("the audit log flushes");
        }
        let text = std::fs::read_to_string(&self.audit_path).expect("read the audit log");
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line {line:?} is not JSON: {e}")))
            .collect()
    }

    /// Drops the fixture database.
    pub async fn cleanup(self) {
        let _ = std::fs::remove_file(&self.audit_path);
        match self.cleanup {
            Cleanup::Postgres { url, schema } => {
                if let Ok(db) = Database::connect(Engine::Postgres, &url, &Default::default()) {
                    let _ = db.run_script(&format!("DROP SCHEMA {schema} CASCADE")).await;
                }
            }
            Cleanup::Mysql { url, database } => {
                if let Ok(db) = Database::connect(Engine::Mysql, &url, &Default::default()) {
                    let _ = db.run_script(&format!("DROP DATABASE {database}")).await;
                }
            }
            Cleanup::Sqlite { path } => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut stream = TcpStream::connect(address).await.expect("connect to the runtime");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send request head");
    if let Some(body) = body {
        // A server may refuse an oversized body before reading it; that is not a client error.
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed response: {text}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Compares JSON with numbers by value, so `10.5` (SQLite) equals `10.50` (PostgreSQL, MariaDB).
pub fn same_json(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_json(x, y)),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => actual == expected,
    }
}
