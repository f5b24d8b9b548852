//! Governance beyond the per-request rules (those are the bypass table in `runtime_rest`): rate
//! limits, the audit log under concurrent load, hot reload of the config file while clients keep
//! calling, the Prometheus metrics, the admin-only schema refresh, and row filters and masks
//! holding for reads that share one statement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_crds::dataapi::Engine;
use sluice_tests::runtime::{Reply, TestApi, start, token};

async fn as_key(api: &TestApi, key: &str, path: &str) -> Reply {
    api.call_as(Some(key), "GET", path, &[], None).await
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_while_other_callers_are_unaffected() {
    let api = start(Engine::Sqlite).await;
    let first = api.key("metered/one").to_owned();
    let second = api.key("metered/two").to_owned();
    let burst = futures::future::join_all((0..8).map(|_| as_key(&api, &first, "/customers?select=id"))).await;
    let mut statuses: Vec<u16> = burst.iter().map(|reply| reply.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "a burst of 5 is allowed, the rest refused"
    );
    for reply in &burst {
        assert_eq!(reply.header("ratelimit-limit"), Some("5"), "{:?}", reply.headers);
        if reply.status == 429 {
            assert_eq!(reply.json()["code"], "rate_limited", "{}", reply.body);
            assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
            let wait: u64 = reply
                .header("retry-after")
                .and_then(|value| value.parse().ok())
                .expect("a numeric Retry-After");
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
            assert!(!reply.body.contains(&first), "the refusal never echoes the key");
        }
    }
    // The other key of the same role, the anonymous role and an unlimited role are untouched.
    for _ in 0..5 {
        let reply = as_key(&api, &second, "/customers?select=id").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(api.call_as(None, "GET", "/customers", &[], None).await.status, 200);
    assert_eq!(api.call("GET", "/customers", &[], None).await.status, 200);
    // One token a second refills the bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(as_key(&api, &first, "/customers?select=id").await.status, 200);
    let metrics = api.get("/metrics").await;
    assert!(
        metrics
            .body
            .contains("sluice_runtime_rate_limited_total{role=\"metered\"} 3"),
        "{}",
        metrics.body
    );
    api.cleanup().await;
}

/// Every call is one audit line, under concurrent load from several callers, denied ones
/// included, and no line carries a key or a token.
#[tokio::test]
async fn concurrent_calls_give_exactly_one_audit_line_each() {
    let api = start(Engine::Sqlite).await;
    let admin = api.key("admin").to_owned();
    let clerk = api.key("clerk").to_owned();
    let tenant = api.key("tenant").to_owned();
    let partner = token(json!({"roles": ["partner"], "customer": 1, "sub": "partner-7"}));
    let bearer = format!("Bearer {partner}");
    let stranger = sluice_crds::generate_api_key();
    let secrets = [
        admin.clone(),
        clerk.clone(),
        tenant.clone(),
        partner.clone(),
        stranger.clone(),
    ];
    const CALLS: usize = 2400;
    let api = Arc::new(api);
    let mut tasks = Vec::new();
    for worker in 0..12 {
        let api = api.clone();
        let (admin, clerk, tenant, bearer, stranger) = (
            admin.clone(),
            clerk.clone(),
            tenant.clone(),
            bearer.clone(),
            stranger.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for call in (worker..CALLS).step_by(12) {
                let reply = match call % 6 {
                    0 => {
                        api.call_as(Some(&admin), "GET", "/customers?select=id,orders(id)", &[], None)
                            .await
                    }
                    1 => {
                        api.call_as(Some(&clerk), "GET", "/customers?select=id,email", &[], None)
                            .await
                    }
                    2 => {
                        api.call_as(Some(&tenant), "GET", "/customers?email=eq.x", &[], None)
                            .await
                    }
                    3 => {
                        api.call_as(None, "GET", "/orders?select=id", &[("Authorization", &bearer)], None)
                            .await
                    }
                    4 => api.call_as(Some(&stranger), "GET", "/customers", &[], None).await,
                    _ => api.call_as(None, "GET", "/customers?limit=1", &[], None).await,
                };
                statuses.push((call % 6, reply.status));
            }
            statuses
        }));
    }
    let mut expected: BTreeMap<(usize, u16), usize> = BTreeMap::new();
    for task in tasks {
        for outcome in task.await.expect("a load task") {
            *expected.entry(outcome).or_default() += 1;
        }
    }
    assert_eq!(expected.values().sum::<usize>(), CALLS);
    let mut api = Arc::into_inner(api).expect("every task finished");
    let lines = api.audit_lines().await;
    let served: Vec<&Value> = lines
        .iter()
        .filter(|line| line["path"].as_str().is_some_and(|path| path.starts_with("/api/")))
        .collect();
    assert_eq!(served.len(), CALLS, "one line per call");
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for line in &served {
        *by_status
            .entry(line["status"].as_u64().unwrap_or_default() as u16)
            .or_default() += 1;
        for field in ["time", "requestId", "transport", "method", "status", "durationMs"] {
            assert!(line.get(field).is_some(), "{field} missing from {line}");
        }
        let text = line.to_string();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a credential leaked into {text}");
        }
    }
    let mut wanted: BTreeMap<u16, usize> = BTreeMap::new();
    for ((_, status), count) in &expected {
        *wanted.entry(*status).or_default() += count;
    }
    assert_eq!(by_status, wanted, "the audit statuses are the statuses served");
    let partner_line = served
        .iter()
        .find(|line| line["caller"] == "jwt:partner-7")
        .expect("a line for the token caller");
    assert_eq!(partner_line["role"], "partner");
    assert_eq!(partner_line["table"], "orders");
    assert_eq!(partner_line["verb"], "read");
    assert_eq!(partner_line["rows"], 2);
    assert_eq!(partner_line["transport"], "rest");
    let denied = served
        .iter()
        .find(|line| line["role"] == "tenant")
        .expect("a line for the masked-filter refusal");
    assert_eq!(
        (denied["status"].clone(), denied["error"].clone()),
        (json!(403), json!("masked_column"))
    );
    let stranger_line = served
        .iter()
        .find(|line| line["status"] == 401)
        .expect("a line for the unknown key");
    assert!(stranger_line.get("caller").is_none(), "{stranger_line}");
    let fingerprints: std::collections::BTreeSet<&str> = served
        .iter()
        .filter(|line| line["role"] == "admin")
        .filter_map(|line| line["fingerprint"].as_str())
        .collect();
    assert_eq!(fingerprints.len(), 1, "one query shape, one fingerprint");
    api.cleanup().await;
}

/// While clients keep calling, a role change written to the config file applies within two
/// seconds, no request fails, and a broken file leaves the last good config in force.
#[tokio::test]
async fn a_role_change_in_the_config_file_applies_within_two_seconds_without_failing_requests() {
    let api = start(Engine::Sqlite).await;
    let file = std::env::temp_dir().join(format!("sluice-reload-{}.json", std::process::id()));
    std::fs::write(&file, api.config.to_canonical_json()).expect("write the config file");
    tokio::spawn(sluice_runtime::reload::follow_config_file(
        api.state.clone(),
        file.clone(),
    ));
    let clerk = api.key("clerk").to_owned();
    let api = Arc::new(api);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (api, stop, failures, calls, clerk) = (
            api.clone(),
            stop.clone(),
            failures.clone(),
            calls.clone(),
            clerk.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = api
                    .call_as(Some(&clerk), "GET", "/customers?select=id", &[], None)
                    .await;
                calls.fetch_add(1, Ordering::Relaxed);
                if reply.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("a request failed during reload: {} {}", reply.status, reply.body);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.call_as(Some(&clerk), "GET", "/customers?select=name&limit=1", &[], None)
            .await
            .status,
        200
    );
    let mut changed = api.config.clone();
    let clerk_role = changed.roles.get_mut("clerk").expect("the clerk role");
    clerk_role.rules[0]
        .fields
        .as_mut()
        .expect("the clerk's customers rule has fields")
        .deny
        .push("name".into());
    std::fs::write(&file, changed.to_canonical_json()).expect("rewrite the config file");
    let written = Instant::now();
    loop {
        let reply = api
            .call_as(Some(&clerk), "GET", "/customers?select=name&limit=1", &[], None)
            .await;
        if reply.status == 400 && reply.json()["code"] == "unknown_column" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "the role change did not apply within 2 s: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied_after = written.elapsed();

    std::fs::write(&file, "{ not json").expect("write a broken config file");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let still = api
        .call_as(Some(&clerk), "GET", "/customers?select=name&limit=1", &[], None)
        .await;
    assert_eq!(
        still.status, 400,
        "the broken file must not replace the last good config"
    );
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client task");
    }
    let metrics = api.get("/metrics").await.body;
    assert!(
        metrics.contains("sluice_runtime_config_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_runtime_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(calls.load(Ordering::Relaxed) > 10, "the clients kept calling");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed during the reload (applied after {applied_after:?})"
    );
    let _ = std::fs::remove_file(&file);
    Arc::into_inner(api).expect("clients finished").cleanup().await;
}

#[tokio::test]
async fn metrics_count_requests_rows_and_authentication_failures() {
    let api = start(Engine::Sqlite).await;
    assert_eq!(api.call("GET", "/customers?limit=3", &[], None).await.status, 200);
    assert_eq!(api.call("GET", "/nothing_here", &[], None).await.status, 404);
    let stranger = sluice_crds::generate_api_key();
    assert_eq!(
        api.call_as(Some(&stranger), "GET", "/customers", &[], None)
            .await
            .status,
        401
    );
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    for series in [
        "sluice_runtime_requests_total{transport=\"rest\",table=\"customers\",verb=\"read\",status=\"200\"} 1",
        "sluice_runtime_requests_total{transport=\"rest\",table=\"-\",verb=\"-\",status=\"404\"} 1",
        "sluice_runtime_rows_total{table=\"customers\"} 3",
        "sluice_runtime_auth_failures_total{reason=\"invalid_key\"} 1",
        "sluice_runtime_request_duration_seconds_bucket",
        "sluice_runtime_db_pool_max_connections",
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} missing from:\n{}",
            metrics.body
        );
    }
    api.cleanup().await;
}

#[tokio::test]
async fn only_admin_roles_may_refresh_the_schema() {
    let api = start(Engine::Sqlite).await;
    async fn refresh(api: &TestApi, key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = key
            .map(|key| vec![(sluice_tests::runtime::API_KEY_HEADER, key)])
            .unwrap_or_default();
        sluice_tests::runtime::request(api.address, "POST", "/_admin/refresh", &headers, None).await
    }
    let clerk = refresh(&api, Some(api.key("clerk"))).await;
    assert_eq!(
        (clerk.status, clerk.json()["code"].clone()),
        (403, json!("not_admin")),
        "{}",
        clerk.body
    );
    let anonymous = refresh(&api, None).await;
    assert_eq!(
        anonymous.status, 403,
        "the anonymous role is no admin: {}",
        anonymous.body
    );
    let admin = refresh(&api, Some(api.key("admin"))).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert_eq!(admin.json()["refreshed"], true);
    assert!(
        admin.json()["tables"].as_u64().is_some_and(|tables| tables >= 4),
        "{}",
        admin.body
    );
    api.cleanup().await;
}

/// The value of the sample line named exactly `series` in a metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Concurrent reads of one shape share a statement on PostgreSQL; each caller must still get
/// exactly its own rows, filtered by its own claims and masked for its own role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_share_a_statement_keep_each_callers_rows_and_masks() {
    let api = start(Engine::Postgres).await;
    let partner = |customer: u64| {
        let token = token(json!({"roles": ["partner"], "customer": customer}));
        ("Authorization", format!("Bearer {token}"))
    };
    let key = |role: &str| (sluice_tests::runtime::API_KEY_HEADER, api.key(role).to_owned());
    let mut calls: Vec<((&str, String), String)> = Vec::new();
    for customer in 1..=3 {
        calls.push((partner(customer), "/orders?order=id".to_owned()));
        for order in 10..=12 {
            calls.push((partner(customer), format!("/orders/{order}")));
        }
    }
    for id in 1..=3 {
        calls.push((key("tenant"), format!("/customers/{id}")));
        calls.push((key("admin"), format!("/customers/{id}")));
        calls.push((key("clerk"), format!("/customers/{id}")));
    }
    /// The status, and the body of a 200 (an error's body carries its request's id).
    async fn call(api: &TestApi, (header, path): &((&str, String), String)) -> (u16, String) {
        let reply = api
            .call_as(None, "GET", path, &[(header.0, header.1.as_str())], None)
            .await;
        (
            reply.status,
            if reply.status == 200 { reply.body } else { String::new() },
        )
    }

    let mut alone = Vec::new();
    for each in &calls {
        alone.push(call(&api, each).await);
    }
    let orders = |reply: &(u16, String)| -> Vec<u64> {
        let rows: Value = serde_json::from_str(&reply.1).expect("JSON rows");
        rows.as_array()
            .expect("an array")
            .iter()
            .map(|row| row["id"].as_u64().expect("an id"))
            .collect()
    };
    assert_eq!(orders(&alone[0]), [10, 11], "partner of customer 1");
    assert_eq!(orders(&alone[4]), [12], "partner of customer 2");
    assert_eq!(orders(&alone[8]), Vec::<u64>::new(), "partner of customer 3");
    assert_eq!((alone[3].0, alone[7].0), (404, 200), "order 12 is customer 2's");
    assert_eq!(alone[12].0, 404, "the tenant does not see the VIP customer 1");
    assert!(
        alone[15].1.contains("\"balance\":\"hidden\""),
        "the tenant's mask: {}",
        alone[15].1
    );
    assert!(
        alone[16].1.contains("\"balance\":0.1"),
        "the admin's unmasked row: {}",
        alone[16].1
    );

    let batched_reads = "sluice_runtime_db_batched_reads_total";
    let mut bursts = 0;
    while sample(&api.get("/metrics").await.body, batched_reads).unwrap_or_default() == 0.0 {
        bursts += 1;
        assert!(
            bursts <= 50,
            "no two of {} concurrent reads shared a statement in 50 bursts",
            calls.len() * 4
        );
        let together =
            futures::future::join_all(calls.iter().cycle().take(calls.len() * 4).map(|each| call(&api, each))).await;
        for (index, reply) in together.iter().enumerate() {
            let (header, path) = &calls[index % calls.len()];
            assert_eq!(reply, &alone[index % calls.len()], "{path} as {}", header.0);
        }
    }
    let metrics = api.get("/metrics").await.body;
    assert!(
        sample(&metrics, "sluice_runtime_db_batched_statements_total").unwrap_or_default() >= 1.0,
        "{metrics}"
    );
    api.cleanup().await;
}
