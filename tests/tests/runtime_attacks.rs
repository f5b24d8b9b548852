//! Requests an attacker would send, table-driven over REST and MCP on PostgreSQL, MariaDB and
//! SQLite: each gets its documented 4xx with a stable code, the runtime stays up, a probe from
//! another role keeps being answered within a second while the attack runs, and every call has
//! its audit line.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_crds::dataapi::Engine;
use sluice_tests::runtime::{API_KEY_HEADER, Reply, TestApi, request, start, start_with};

/// Who sends an attack request.
#[derive(Clone, Copy, Debug)]
enum As {
    Anonymous,
    Role(&'static str),
}

/// One attack: what is sent, and the status and error code it must get.
struct Attack {
    name: &'static str,
    caller: As,
    send: Send,
    status: u16,
    code: &'static str,
}

enum Send {
    /// `GET <base>/<path>`.
    Get(String),
    /// `POST <base>/<path>` with extra headers and a body.
    Post(String, Vec<(&'static str, &'static str)>, &'static str),
    /// An MCP `tools/call` (2026-07-28, stateless) of a tool with arguments.
    Tool(&'static str, Value),
}

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn list(count: usize, item: impl Fn(usize) -> String) -> String {
    (0..count).map(item).collect::<Vec<_>>().join(",")
}

fn attacks() -> Vec<Attack> {
    let too_many_filters: Vec<Value> = (0..101)
        .map(|index| json!({ "column": "id", "op": "neq", "value": index }))
        .collect();
    let huge_in: Vec<Value> = (0..10_001).map(|index| json!(index)).collect();
    vec![
        Attack {
            name: "logic groups nested 2,000 deep",
            caller: As::Anonymous,
            send: Send::Get(format!("customers?or=({})", nested("and(", "id.eq.1", ")", 2_000))),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            // About 40 KB: longer URLs are refused 414 before any handler runs.
            name: "embeds nested 5,000 deep",
            caller: As::Anonymous,
            send: Send::Get(format!("customers?select=id,{}", nested("orders(", "id", ")", 5_000))),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "embeds nested 5 deep",
            caller: As::Role("admin"),
            send: Send::Get(format!(
                "customers?select=id,{}",
                nested("orders(customers(", "id", "))", 3)
            )),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "17 embeds side by side",
            caller: As::Role("admin"),
            send: Send::Get(format!(
                "customers?select=id,{}",
                list(17, |i| format!("o{i}:orders(id)"))
            )),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "5,000 selected columns",
            caller: As::Role("admin"),
            send: Send::Get(format!("customers?select={}", list(5_000, |i| format!("c{i}:id")))),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "101 filter terms",
            caller: As::Role("admin"),
            send: Send::Get(format!("customers?or=({})", list(101, |i| format!("id.eq.{i}")))),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "10,001 in values",
            caller: As::Role("admin"),
            send: Send::Get(format!("customers?id=in.({})", list(10_001, |i| i.to_string()))),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "is.true on a text column",
            caller: As::Role("admin"),
            send: Send::Get("customers?name=is.true".into()),
            status: 400,
            code: "bad_query",
        },
        Attack {
            name: "a write posted as text/plain",
            caller: As::Role("admin"),
            send: Send::Post(
                "customers".into(),
                vec![("Content-Type", "text/plain")],
                r#"{"name":"Mallory"}"#,
            ),
            status: 415,
            code: "unsupported_media_type",
        },
        Attack {
            name: "MCP: 101 filters",
            caller: As::Role("admin"),
            send: Send::Tool(
                "query_rows",
                json!({ "table": "customers", "filters": too_many_filters }),
            ),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "MCP: in with 10,001 values",
            caller: As::Role("admin"),
            send: Send::Tool(
                "query_rows",
                json!({ "table": "customers", "filters": [{ "column": "id", "op": "in", "value": huge_in }] }),
            ),
            status: 400,
            code: "limit_exceeded",
        },
        Attack {
            name: "MCP: is true on a text column",
            caller: As::Role("admin"),
            send: Send::Tool(
                "query_rows",
                json!({ "table": "customers", "filters": [{ "column": "name", "op": "is", "value": true }] }),
            ),
            status: 400,
            code: "bad_query",
        },
        Attack {
            name: "MCP: 201 selected columns",
            caller: As::Role("admin"),
            send: Send::Tool("query_rows", json!({ "table": "customers", "select": vec!["id"; 201] })),
            status: 400,
            code: "limit_exceeded",
        },
    ]
}

/// A 2026-07-28 stateless `tools/call`.
async fn call_tool(api: &TestApi, key: Option<&str>, tool: &str, arguments: &Value) -> Reply {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "attacker", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {} } }
    })
    .to_string();
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    ];
    if let Some(key) = key {
        headers.push((API_KEY_HEADER, key));
    }
    request(api.address, "POST", "/mcp", &headers, Some(&body)).await
}

/// The status and error code of an attack's answer: HTTP's for REST; for MCP, the tool
/// error's code (a tool error travels in a 200 JSON-RPC answer; its status is in the audit line).
fn outcome(attack: &Attack, reply: &Reply) -> (u16, String) {
    let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|_| json!({ "raw": reply.body }));
    match attack.send {
        Send::Tool(..) => {
            let result = &body["result"];
            let error: Value = result["content"][0]["text"]
                .as_str()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_default();
            let status = if result["isError"] == json!(true) {
                attack.status
            } else {
                reply.status
            };
            (status, error["code"].as_str().unwrap_or_default().to_owned())
        }
        _ => (reply.status, body["code"].as_str().unwrap_or_default().to_owned()),
    }
}

async fn send(api: &TestApi, attack: &Attack) -> Reply {
    let key = match attack.caller {
        As::Anonymous => None,
        As::Role(role) => Some(api.key(role)),
    };
    match &attack.send {
        Send::Get(path) => api.call_as(key, "GET", &format!("/{path}"), &[], None).await,
        Send::Post(path, headers, body) => api.call_as(key, "POST", &format!("/{path}"), headers, Some(body)).await,
        Send::Tool(tool, arguments) => call_tool(api, key, tool, arguments).await,
    }
}

/// Sends every attack at once while another role probes; returns the probe's slowest answer.
async fn attack_while_probing(api: &TestApi) -> Duration {
    let attacks = attacks();
    let done = std::sync::atomic::AtomicBool::new(false);
    let probe = async {
        let mut slowest = Duration::ZERO;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            let reply = api
                .call_as(Some(api.key("clerk")), "GET", "/customers?limit=1", &[], None)
                .await;
            assert_eq!(
                reply.status, 200,
                "{:?}: the probe was refused: {}",
                api.engine, reply.body
            );
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    };
    let run = async {
        let replies = futures::future::join_all(attacks.iter().map(|attack| send(api, attack))).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        replies
    };
    let (replies, slowest) = tokio::join!(run, probe);
    for (attack, reply) in attacks.iter().zip(&replies) {
        assert_eq!(
            outcome(attack, reply),
            (attack.status, attack.code.to_owned()),
            "{:?}: {}: {}",
            api.engine,
            attack.name,
            reply.body.chars().take(600).collect::<String>()
        );
        assert!(
            !reply.body.contains("SELECT") && !reply.body.contains("sqlx"),
            "{:?}: {} leaks SQL: {}",
            api.engine,
            attack.name,
            reply.body
        );
    }
    slowest
}

async fn attacks_are_refused_and_audited(engine: Engine) {
    // The fixture's 2 KB body limit would refuse the large MCP arguments before any limit
    // under test sees them.
    let mut api = start_with(engine, |config| config.rest.max_body_bytes = 1_048_576).await;
    let slowest = attack_while_probing(&api).await;
    assert!(
        slowest < Duration::from_secs(1),
        "{engine:?}: a probe took {slowest:?} while the attack ran"
    );
    assert_eq!(api.get("/healthz").await.status, 200, "{engine:?}: the runtime is down");
    let audit = api.audit_lines().await;
    for attack in attacks() {
        let refused = audit.iter().any(|line| {
            line["status"].as_u64() == Some(u64::from(attack.status)) && line["error"].as_str() == Some(attack.code)
        });
        assert!(refused, "{engine:?}: no audit line for {}", attack.name);
    }
    let refusals = audit.iter().filter(|line| line["error"] == "limit_exceeded").count();
    let expected = attacks()
        .iter()
        .filter(|attack| attack.code == "limit_exceeded")
        .count();
    assert_eq!(refusals, expected, "{engine:?}: one audit line per refused request");
    api.cleanup().await;
}

#[tokio::test]
async fn attacks_are_refused_and_audited_on_postgres() {
    attacks_are_refused_and_audited(Engine::Postgres).await;
}

#[tokio::test]
async fn attacks_are_refused_and_audited_on_mariadb() {
    attacks_are_refused_and_audited(Engine::Mysql).await;
}

#[tokio::test]
async fn attacks_are_refused_and_audited_on_sqlite() {
    attacks_are_refused_and_audited(Engine::Sqlite).await;
}

/// Caps that cap: embedded rows and tool results obey the role's `maxRows`, and a JSON
/// document nested deeper than a JSON parser's default limit reads back over REST and MCP.
async fn caps_hold_and_deep_documents_read_back(engine: Engine) {
    let api = start(engine).await;
    let sampler = Some(api.key("sampler"));
    let reply = api
        .call_as(sampler, "GET", "/customers?select=id,orders(id)&id=eq.1", &[], None)
        .await;
    assert_eq!(reply.status, 200, "{engine:?}: {}", reply.body);
    let rows = reply.json();
    assert_eq!(
        rows[0]["orders"].as_array().map(Vec::len),
        Some(1),
        "{engine:?}: embedded rows obey maxRows: {rows}"
    );
    let reply = call_tool(&api, sampler, "query_rows", &json!({ "table": "customers" })).await;
    let result: Value = serde_json::from_str(&reply.body).expect("JSON-RPC");
    let content = &result["result"]["structuredContent"];
    assert_eq!(
        (content["returned"].clone(), content["truncated"].clone()),
        (json!(1), json!(true)),
        "{engine:?}: a capped result says so: {content}"
    );

    // MariaDB refuses JSON nested deeper than 32 levels, below any parser's limit.
    if engine != Engine::Mysql {
        let document = nested("[", "1", "]", 900);
        let table = match api.config.database.schemas.first() {
            Some(schema) if engine == Engine::Postgres => format!("{schema}.customers"),
            _ => "customers".to_owned(),
        };
        let sql = format!("INSERT INTO {table} (id, name, vip, profile) VALUES (9, 'Deep', FALSE, '{document}')");
        api.state
            .database
            .run_script(&sql)
            .await
            .expect("insert a deep document");
        let reply = api.call("GET", "/customers?id=eq.9&select=profile", &[], None).await;
        assert_eq!(reply.status, 200, "{engine:?}: {}", reply.body);
        assert!(reply.body.contains(&document), "{engine:?}: REST returns the document");
        for role in ["admin", "tenant"] {
            let reply = call_tool(
                &api,
                Some(api.key(role)),
                "get_row",
                &json!({ "table": "customers", "key": { "id": 9 } }),
            )
            .await;
            assert!(
                reply.body.contains(&document) && !reply.body.contains("\"isError\":true"),
                "{engine:?}: {role} reads the deep document over MCP: {}",
                reply.body.chars().take(300).collect::<String>()
            );
        }
    }
    api.cleanup().await;
}

#[tokio::test]
async fn caps_hold_and_deep_documents_read_back_on_postgres() {
    caps_hold_and_deep_documents_read_back(Engine::Postgres).await;
}

#[tokio::test]
async fn caps_hold_and_deep_documents_read_back_on_mariadb() {
    caps_hold_and_deep_documents_read_back(Engine::Mysql).await;
}

#[tokio::test]
async fn caps_hold_and_deep_documents_read_back_on_sqlite() {
    caps_hold_and_deep_documents_read_back(Engine::Sqlite).await;
}

/// Keys cannot be guessed at speed: past `failedAuthPerMinute` failures, an address's requests
/// with credentials are refused before their credentials are checked, a right key included,
/// while requests without credentials still get the anonymous role.
#[tokio::test]
async fn failed_authentications_are_throttled_per_address() {
    let mut api = start_with(Engine::Sqlite, |config| config.limits.failed_auth_per_minute = 5).await;
    for attempt in 0..5 {
        let reply = api.call_as(Some("sluice_guess"), "GET", "/customers", &[], None).await;
        assert_eq!(reply.status, 401, "attempt {attempt}: {}", reply.body);
    }
    let reply = api.call_as(Some("sluice_guess"), "GET", "/customers", &[], None).await;
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (429, json!("rate_limited")),
        "{}",
        reply.body
    );
    assert!(reply.header("retry-after").is_some_and(|seconds| seconds != "0"));
    let right_key = api
        .call_as(Some(api.key("admin")), "GET", "/customers", &[], None)
        .await;
    assert_eq!(
        right_key.status, 429,
        "credentials are not checked while the address is throttled"
    );
    let anonymous = api.call_as(None, "GET", "/customers?limit=1", &[], None).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    let audit = api.audit_lines().await;
    let throttled = audit.iter().filter(|line| line["status"] == 429).count();
    let refused = audit.iter().filter(|line| line["status"] == 401).count();
    assert_eq!((refused, throttled), (5, 2), "every attempt has its audit line");
    api.cleanup().await;
}
