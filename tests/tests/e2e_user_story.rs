//! The user story of issue 8, end to end on a real API server: a platform engineer installs the
//! Helm chart, applies a DSN Secret, a DataApi and its ApiRoles, and gets a governed API.
//!
//! Everything is real except the container runtime: the operator runs as a process under the
//! chart's ServiceAccount identity (a kubeconfig that impersonates it), kwok plays the kubelet
//! for pod status, and the runtime runs as a process started exactly as its pod would be (args
//! and env from the Deployment's pod template, the config file from the mounted Secret, which
//! the test keeps in step with the API server as the kubelet would).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::ListParams;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_crds::RuntimeConfig;
use sluice_crds::config::CONFIG_FILE_NAME;
use sluice_tests::controlplane::ControlPlane;
use sluice_tests::e2e::{
    Kubelet, PostgresSchema, Process, WorkDir, can_i, container_env, free_port, kubectl, kubectl_apply, relocate_paths,
    secret_data, secret_mounts, workspace_binaries, write_impersonating_kubeconfig,
};
use sluice_tests::runtime::{JWT_AUDIENCE, JWT_ISSUER, Reply, request, token};
use sluice_tests::services::{jwt_secret, postgres_url};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/sluice");
/// The control plane's Kubernetes version, for `helm template`'s capability checks.
const KUBE_VERSION: &str = "1.35.8";
const RELEASE: &str = "sluice";
const DATA_API: &str = "sales";
/// The DataApi's children, named by the operator.
const WORKLOAD: &str = "sluice-sales";
const CONFIG_SECRET: &str = "sluice-sales-config";
/// The Secret the operator generates for the analyst's `dashboard` key, and its data key.
const ANALYST_KEY_SECRET: &str = "analyst-key-dashboard";
const GENERATED_KEY_DATA: &str = "api-key";
/// The admin brings its own key (`secretRef`).
const ADMIN_KEY: &str = "sluice_e2e_admin_key_brought_by_the_team_0123456789abcdef";
const API_KEY_HEADER: &str = "X-API-Key";
/// Bound of every wait on the cluster; generous for a 2-core machine that may be compiling.
const WAIT: Duration = Duration::from_secs(90);
/// "Within a few seconds": how long a role change may take to reach the running runtime.
const HOT_RELOAD_WITHIN: Duration = Duration::from_secs(8);

/// The team's data: two tenants' customers and orders.
const DATASET: &str = "
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    balance NUMERIC(12,2)
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total NUMERIC(10,2) NOT NULL
);
CREATE TABLE customers_audit (id INTEGER PRIMARY KEY, note TEXT);
INSERT INTO customers VALUES
    (1, 'acme', 'Ada', 'ada@acme.test', '+44 20 7946 0001', 1250.50),
    (2, 'acme', 'Brian', 'brian@acme.test', '+1 908 555 0102', 80.00),
    (3, 'globex', 'Chloe', 'chloe@globex.test', '+33 1 70 00 0003', 4100.00);
INSERT INTO orders VALUES (10, 'acme', 1, 99.90), (11, 'acme', 2, 15.00), (12, 'globex', 3, 42.42);
INSERT INTO customers_audit VALUES (1, 'never served');
";

/// What the team commits, adapted from examples/postgres: its own schema, HS256 tokens from a
/// Secret instead of a JWKS URL, and no named query.
const STORY: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: sales-db, namespace: {ns} }
type: Opaque
stringData: { url: "{dsn}" }
---
apiVersion: v1
kind: Secret
metadata: { name: sales-jwt, namespace: {ns} }
type: Opaque
stringData: { secret: "{jwt_secret}" }
---
apiVersion: v1
kind: Secret
metadata: { name: ci-token, namespace: {ns} }
type: Opaque
stringData: { token: "{admin_key}" }
---
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: { name: sales, namespace: {ns} }
spec:
  database:
    engine: postgres
    connectionSecretRef: { name: sales-db, key: url }
    schemas: [{schema}]
    include: ["customers", "orders*"]
    exclude: ["*_audit"]
    pool: { maxConnections: 4, statementTimeoutMs: 5000 }
  rest: { enabled: true, basePath: /api/v1, defaultPageSize: 100, maxPageSize: 1000 }
  mcp: { enabled: true, path: /mcp }
  auth:
    apiKeyHeader: X-API-Key
    jwt:
      issuer: "{issuer}"
      audiences: ["{audience}"]
      hmacSecretRef: { name: sales-jwt, key: secret }
      roleClaim: roles
  rateLimit: { requestsPerMinute: 600, burst: 100 }
  audit: { enabled: true, includeBodies: false }
  runtime: { replicas: 2 }
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: tenant-app, namespace: {ns} }
spec:
  dataApis: [sales]
  description: The storefront, limited to its own tenant's rows
  subjects: { jwtRoles: [storefront] }
  rules:
    - tables: ["customers", "orders"]
      verbs: [read, create, update]
      rowFilter:
        - { column: tenant_id, op: eq, value: "{claims.tenant}" }
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: admin, namespace: {ns} }
spec:
  dataApis: [sales]
  description: Full access for the data team
  subjects: { jwtRoles: [sales-admins] }
  admin: true
  rules:
    - tables: ["*"]
      verbs: [read, create, update, delete]
  mcp: { enabled: false }
  apiKeys:
    - name: ci
      secretRef: { name: ci-token, key: token }
"#;

/// The analyst as first committed (`{fields}` is its field rules on customers and orders).
const ANALYST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: analyst, namespace: {ns} }
spec:
  dataApis: [sales]
  description: Read-only analyst access
  subjects: { jwtRoles: [analysts] }
  rules:
    - tables: ["customers", "orders"]
      verbs: [read]
      fields: {fields}
      maxRows: 500
  mcp: { enabled: true }
  apiKeys:
    - name: dashboard
"#;
const ANALYST_FIELDS: &str = "{ deny: [email], mask: [{ field: phone, strategy: keepLast, keepLast: 4 }] }";
/// Step 6: the phone number is denied too.
const ANALYST_FIELDS_TIGHTENED: &str = "{ deny: [email, phone] }";

fn say(step: u8, message: impl AsRef<str>) {
    println!("[e2e step {step}] {}", message.as_ref());
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_owned(), |text, (name, value)| {
        text.replace(&format!("{{{name}}}"), value)
    })
}

fn analyst(namespace: &str, fields: &str) -> String {
    fill(ANALYST, &[("ns", namespace), ("fields", fields)])
}

/// `helm template` of the chart as a list of objects.
fn render_chart(release: &str, namespace: &str, settings: &[&str]) -> Vec<Value> {
    let mut helm = ControlPlane::shared().helm();
    helm.args(["template", release, CHART, "--namespace", namespace]).args([
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
    ]);
    for setting in settings {
        helm.args(["--set", setting]);
    }
    let output = helm.output().expect("helm runs");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8_lossy(&output.stdout);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| Value::deserialize(document).expect("helm renders YAML"))
        .filter(|object| !object.is_null())
        .collect()
}

fn to_yaml(objects: &[&Value]) -> String {
    objects
        .iter()
        .map(|object| format!("---\n{}", serde_yaml::to_string(object).expect("serialise an object")))
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|object| object["kind"] == kind).collect()
}

/// Step 1: the chart, rendered by helm and applied server-side; the CRDs are established.
fn install_chart(release_namespace: &str) -> Vec<Value> {
    let objects = render_chart(RELEASE, release_namespace, &[]);
    let kinds: Vec<String> = objects
        .iter()
        .map(|object| {
            format!(
                "{}/{}",
                object["kind"].as_str().unwrap_or("?"),
                object["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    say(
        1,
        format!("helm template rendered {} objects: {}", objects.len(), kinds.join(", ")),
    );
    let applied = kubectl_apply(&to_yaml(&objects.iter().collect::<Vec<_>>()));
    say(1, format!("kubectl apply --server-side:\n{}", applied.trim_end()));
    let established = kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/dataapis.sluice.dev",
        "crd/apiroles.sluice.dev",
    ]);
    say(1, established.trim_end());
    objects
}

/// Step 2, first half: what the chart's ServiceAccount may and may not do, cluster-wide (the
/// chart's default) and with `watchNamespaces` (only its RBAC objects are applied).
async fn check_rbac(cp: &ControlPlane, release_namespace: &str, team: &str, account: &str) {
    let elsewhere = cp.namespace("elsewhere").await;
    let cluster_wide: &[(&str, &str, Option<&str>, bool)] = &[
        ("list", "dataapis.sluice.dev", None, true),
        ("watch", "apiroles.sluice.dev", None, true),
        ("patch", "dataapis.sluice.dev/status", Some(team), true),
        ("update", "dataapis.sluice.dev/finalizers", Some(team), true),
        ("patch", "apiroles.sluice.dev/status", Some(team), true),
        ("get", "secrets", Some(team), true),
        ("create", "secrets", Some(team), true),
        ("patch", "deployments.apps", Some(team), true),
        ("patch", "services", Some(team), true),
        ("create", "poddisruptionbudgets.policy", Some(team), true),
        ("create", "events.events.k8s.io", Some(team), true),
        ("get", "leases.coordination.k8s.io", Some(release_namespace), true),
        ("patch", "leases.coordination.k8s.io", Some(release_namespace), true),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, false),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", None, false),
        ("get", "nodes", None, false),
        ("patch", "nodes", None, false),
        ("delete", "nodes", None, false),
        ("update", "dataapis.sluice.dev", Some(team), false),
        ("delete", "dataapis.sluice.dev", Some(team), false),
        ("delete", "deployments.apps", Some(team), false),
        ("create", "pods", Some(team), false),
        ("create", "pods/exec", Some(team), false),
        ("delete", "leases.coordination.k8s.io", Some(release_namespace), false),
        ("patch", "leases.coordination.k8s.io", Some(team), false),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, false),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None, false),
        ("impersonate", "serviceaccounts", Some(team), false),
    ];
    assert_can_i_table(2, account, cluster_wide);

    // The same chart with watchNamespaces: Roles only where it watches, so other namespaces'
    // Secrets are out of reach.
    let scoped_release = "scoped";
    let setting = format!("watchNamespaces={{{team}}}");
    let scoped = render_chart(scoped_release, release_namespace, &[&setting]);
    assert!(
        of_kind(&scoped, "ClusterRole").is_empty(),
        "with watchNamespaces the chart renders no ClusterRole"
    );
    let rbac: Vec<&Value> = scoped
        .iter()
        .filter(|object| ["ServiceAccount", "Role", "RoleBinding"].contains(&object["kind"].as_str().unwrap_or("")))
        .collect();
    kubectl_apply(&to_yaml(&rbac));
    let scoped_account = format!(
        "system:serviceaccount:{release_namespace}:{}",
        of_kind(&scoped, "ServiceAccount")[0]["metadata"]["name"]
            .as_str()
            .expect("a named ServiceAccount")
    );
    let namespaced: &[(&str, &str, Option<&str>, bool)] = &[
        ("get", "secrets", Some(team), true),
        ("watch", "dataapis.sluice.dev", Some(team), true),
        ("patch", "deployments.apps", Some(team), true),
        ("patch", "leases.coordination.k8s.io", Some(release_namespace), true),
        ("get", "secrets", Some(&elsewhere), false),
        ("list", "secrets", None, false),
        ("list", "dataapis.sluice.dev", Some(&elsewhere), false),
        ("list", "dataapis.sluice.dev", None, false),
        ("patch", "deployments.apps", Some(&elsewhere), false),
        ("get", "nodes", None, false),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, false),
    ];
    assert_can_i_table(2, &scoped_account, namespaced);
}

fn assert_can_i_table(step: u8, account: &str, table: &[(&str, &str, Option<&str>, bool)]) {
    let mut wrong = Vec::new();
    let mut lines = Vec::new();
    for (verb, resource, namespace, expected) in table {
        let allowed = can_i(account, verb, resource, *namespace);
        let answer = if allowed { "yes" } else { "no" };
        let place = namespace.map_or_else(|| "cluster-wide".to_owned(), |namespace| format!("in {namespace}"));
        lines.push(format!("  {answer:<3} {verb} {resource} {place}"));
        if allowed != *expected {
            wrong.push(format!(
                "{verb} {resource} {place}: got {answer}, expected {}",
                if *expected { "yes" } else { "no" }
            ));
        }
    }
    say(
        step,
        format!("kubectl auth can-i --as={account}:\n{}", lines.join("\n")),
    );
    assert!(
        wrong.is_empty(),
        "the chart's RBAC for {account} is wrong:\n{}",
        wrong.join("\n")
    );
}

/// Step 2, second half: the operator binary with the env of the chart's Deployment, under the
/// chart's ServiceAccount identity. Returns the process and its metrics address.
async fn start_operator(
    binary: &std::path::Path,
    chart: &[Value],
    release_namespace: &str,
    account: &str,
    work_dir: &std::path::Path,
) -> (Process, SocketAddr) {
    let deployment: Deployment =
        serde_json::from_value(of_kind(chart, "Deployment")[0].clone()).expect("the chart's Deployment parses");
    let pod = deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod template");
    let container = &pod.containers[0];
    let kubeconfig = work_dir.join("operator-kubeconfig.yaml");
    write_impersonating_kubeconfig(&kubeconfig, account);
    let pod_fields = BTreeMap::from([
        ("metadata.name", format!("{RELEASE}-e2e-pod")),
        ("metadata.namespace", release_namespace.to_owned()),
    ]);
    let secrets = Api::<Secret>::namespaced(ControlPlane::shared().client(), release_namespace);
    let mut env = container_env(container, &secrets, &pod_fields).await;
    // The pod's 0.0.0.0:<port> is the node's; on this machine it would collide.
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    for (name, value) in &mut env {
        if name == "SLUICE_METRICS_ADDRESS" {
            *value = metrics.to_string();
        }
    }
    // In the pod, the client uses the mounted ServiceAccount token; here, the same identity
    // through impersonation.
    env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
    say(
        2,
        format!(
            "starting sluice-operator as {account} with the chart's env: {}",
            env.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let args = container.args.clone().unwrap_or_default();
    let mut operator = Process::start("sluice-operator", binary, &args, &env);
    // Ready means leading: the Lease was taken with the chart's Role.
    operator.wait_http_ok(metrics, "/readyz", WAIT).await;
    say(2, format!("the operator leads (GET /readyz on {metrics} is 200)"));
    let scope = operator
        .log()
        .lines()
        .find(|line| line.contains("controllers started"))
        .map(str::to_owned);
    say(
        2,
        format!(
            "operator log: {}",
            scope.unwrap_or_else(|| "(no \"controllers started\" line yet)".into())
        ),
    );
    (operator, metrics)
}

/// Step 4: the runtime as the Deployment's pod would run it. Returns the process, its address
/// and the simulated kubelet that keeps its config file in step with the config Secret.
async fn start_runtime(
    binary: &std::path::Path,
    client: &kube::Client,
    team: &str,
    work_dir: &std::path::Path,
) -> (Process, SocketAddr, Kubelet) {
    let deployment = Api::<Deployment>::namespaced(client.clone(), team)
        .get(WORKLOAD)
        .await
        .expect("the runtime Deployment");
    let pod = deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod template");
    let container = pod
        .containers
        .iter()
        .find(|container| container.name == "runtime")
        .expect("a runtime container");
    let secrets = Api::<Secret>::namespaced(client.clone(), team);
    let mounts = secret_mounts(&pod, container, &work_dir.join("volumes"));
    assert!(
        mounts.iter().any(|mount| mount.secret_name == CONFIG_SECRET),
        "the runtime container mounts the config Secret {CONFIG_SECRET}: {mounts:?}"
    );
    let kubelet = Kubelet::mount(secrets.clone(), mounts.clone()).await;
    let env = container_env(container, &secrets, &BTreeMap::new()).await;
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let template_args = container.args.clone().unwrap_or_default();
    let mut args = relocate_paths(&template_args, &mounts);
    let listen = args
        .iter()
        .position(|arg| arg == "--listen")
        .expect("the pod template passes --listen");
    args[listen + 1] = address.to_string();
    say(
        4,
        format!(
            "pod template args {template_args:?} -> {args:?}; env: {}; mounts: {}",
            env.iter()
                .map(|(name, _)| format!("{name}=<from the pod template>"))
                .collect::<Vec<_>>()
                .join(" "),
            mounts
                .iter()
                .map(|mount| format!(
                    "{} (Secret {}) at {}",
                    mount.mount_path,
                    mount.secret_name,
                    mount.dir.display()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let mut runtime = Process::start("sluice-runtime", binary, &args, &env);
    runtime.wait_http_ok(address, "/readyz", WAIT).await;
    say(
        4,
        format!("sluice-runtime (pid {}) is ready on {address}", runtime.id()),
    );
    (runtime, address, kubelet)
}

async fn rendered_config(secrets: &Api<Secret>) -> RuntimeConfig {
    let secret = secrets.get(CONFIG_SECRET).await.expect("the config Secret");
    let json = secret_data(&secret, CONFIG_FILE_NAME).expect("the config Secret carries the config");
    serde_json::from_str(&json).expect("the config Secret holds a RuntimeConfig")
}

async fn get_as(address: SocketAddr, path: &str, credential: &[(&str, &str)]) -> Reply {
    request(address, "GET", path, credential, None).await
}

fn rows(reply: &Reply, what: &str) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    reply
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {}", reply.body))
        .clone()
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .map(|row| row["id"].as_i64().expect("rows have an integer id"))
        .collect()
}

/// Step 5 (REST): each credential gets its role's view.
async fn check_role_views(address: SocketAddr, base: &str, analyst_key: &str) {
    let admin = [(API_KEY_HEADER, ADMIN_KEY)];
    let analyst = [(API_KEY_HEADER, analyst_key)];

    let everything = rows(
        &get_as(address, &format!("{base}/customers?order=id"), &admin).await,
        "admin",
    );
    say(5, format!("admin key (brought in Secret ci-token): {everything:?}"));
    assert_eq!(ids(&everything), [1, 2, 3]);
    assert_eq!(everything[0]["email"], "ada@acme.test", "the admin sees every field");

    let seen = rows(
        &get_as(address, &format!("{base}/customers?order=id"), &analyst).await,
        "analyst",
    );
    say(5, format!("analyst with the operator-generated key: {seen:?}"));
    assert_eq!(ids(&seen), [1, 2, 3]);
    for (row, full) in seen.iter().zip(&everything) {
        assert!(
            row.get("email").is_none(),
            "the analyst never sees e-mail addresses: {row}"
        );
        let (masked, phone) = (row["phone"].as_str(), full["phone"].as_str().expect("a phone number"));
        assert!(
            masked.is_some_and(|masked| masked != phone && masked.ends_with(&phone[phone.len() - 4..])),
            "the analyst sees only the last 4 characters of {phone}: {row}"
        );
    }

    for probe in [
        "customers?select=id,email",
        "customers?email=eq.ada@acme.test",
        "customers?order=email",
    ] {
        let reply = get_as(address, &format!("{base}/{probe}"), &analyst).await;
        say(5, format!("analyst GET {probe} -> {} {}", reply.status, reply.body));
        // A denied field does not exist for the role, as a table it cannot read does not.
        assert!(
            reply.status == 400 && reply.json()["code"] == "unknown_column" && !reply.body.contains("acme.test"),
            "a denied field can be neither selected, filtered nor ordered on: {} {}",
            reply.status,
            reply.body
        );
    }
    let audit = get_as(address, &format!("{base}/customers_audit"), &admin).await;
    say(
        5,
        format!(
            "admin GET customers_audit (excluded by the DataApi) -> {}",
            audit.status
        ),
    );
    assert_eq!(audit.status, 404, "an excluded table is not served: {}", audit.body);

    for (tenant, expected_customers, expected_orders) in [
        ("acme", [1, 2].as_slice(), [10, 11].as_slice()),
        ("globex", &[3], &[12]),
    ] {
        let bearer = format!(
            "Bearer {}",
            token(json!({ "sub": format!("storefront-{tenant}"), "roles": ["storefront"], "tenant": tenant }))
        );
        let credential = [("Authorization", bearer.as_str())];
        let customers = rows(
            &get_as(address, &format!("{base}/customers?order=id"), &credential).await,
            tenant,
        );
        let orders = rows(
            &get_as(address, &format!("{base}/orders?order=id"), &credential).await,
            tenant,
        );
        say(
            5,
            format!(
                "tenant-app JWT for {tenant}: customers {:?}, orders {:?}",
                ids(&customers),
                ids(&orders)
            ),
        );
        assert_eq!(
            ids(&customers),
            expected_customers,
            "the tenant app only sees its tenant's customers"
        );
        assert_eq!(
            ids(&orders),
            expected_orders,
            "the tenant app only sees its tenant's orders"
        );
        let other = rows(
            &get_as(
                address,
                &format!("{base}/customers?tenant_id=neq.{tenant}"),
                &credential,
            )
            .await,
            tenant,
        );
        assert!(other.is_empty(), "asking for other tenants' rows gives none: {other:?}");
    }

    let anonymous = get_as(address, &format!("{base}/customers"), &[]).await;
    say(
        5,
        format!(
            "no credentials -> {} (WWW-Authenticate: {:?})",
            anonymous.status,
            anonymous.header("www-authenticate")
        ),
    );
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    let forged = get_as(
        address,
        &format!("{base}/customers"),
        &[(API_KEY_HEADER, "sluice_not_a_key")],
    )
    .await;
    assert_eq!(forged.status, 401, "an unknown key is refused: {}", forged.body);
}

/// The runtime's audit lines (its standard output) name the callers of step 5, never their keys.
/// The runtime writes them in batches (a line waits up to 20 ms), so the last calls' lines may
/// land a moment after their responses.
async fn check_audit(runtime: &Process, analyst_key: &str) {
    let audit_lines = |log: &str| -> Vec<Value> {
        log.lines()
            .filter(|line| line.starts_with('{'))
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|line: &Value| line.get("requestId").is_some())
            .collect()
    };
    let callers_of = |audit: &[Value]| -> std::collections::BTreeSet<String> {
        audit
            .iter()
            .filter_map(|line| line["caller"].as_str().map(str::to_owned))
            .collect()
    };
    let expected = ["analyst/dashboard", "admin/ci"];
    let deadline = Instant::now() + Duration::from_secs(5);
    let (log, audit) = loop {
        let log = runtime.log();
        let audit = audit_lines(&log);
        let callers = callers_of(&audit);
        if expected.iter().all(|caller| callers.contains(*caller)) || Instant::now() > deadline {
            break (log, audit);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let callers = callers_of(&audit);
    say(
        5,
        format!(
            "{} audit lines on the runtime's stdout, callers {callers:?}",
            audit.len()
        ),
    );
    assert!(
        callers.contains("analyst/dashboard") && callers.contains("admin/ci"),
        "every call is audited with its caller: {callers:?}"
    );
    assert!(
        !log.contains(analyst_key) && !log.contains(ADMIN_KEY),
        "the runtime's output never carries a key"
    );
}

fn initialize_request() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": { "name": "sluice-e2e", "version": "0.1.0" }
        }
    })
}

async fn mcp_post(address: SocketAddr, path: &str, key: &str, session: Option<&str>, body: &Value) -> Reply {
    let mut headers = vec![
        (API_KEY_HEADER, key),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session));
    }
    let body = body.to_string();
    let exchange = request(address, "POST", path, &headers, Some(&body));
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .unwrap_or_else(|_| panic!("MCP POST {path} {body} got no complete answer within 15 s"))
}

/// The JSON-RPC message of an MCP answer, sent as JSON or as one server-sent event.
fn mcp_message(reply: &Reply) -> Value {
    assert!(reply.status == 200, "MCP answered {}: {}", reply.status, reply.body);
    let event_stream = reply
        .header("content-type")
        .is_some_and(|kind| kind.starts_with("text/event-stream"));
    let json = if event_stream {
        reply
            .body
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim)
            .find(|data| data.contains("\"jsonrpc\""))
            .unwrap_or_else(|| panic!("no JSON-RPC message in the event stream: {}", reply.body))
            .to_owned()
    } else {
        reply.body.clone()
    };
    let message: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("MCP message is not JSON ({e}): {json}"));
    assert!(message.get("error").is_none(), "MCP error: {message}");
    message
}

/// Step 5 (MCP): `initialize`, `tools/list` and `tools/call query_rows` with the analyst's key
/// give the analyst's view.
async fn check_mcp(address: SocketAddr, path: &str, analyst_key: &str) {
    let initialized = mcp_post(address, path, analyst_key, None, &initialize_request()).await;
    let session = initialized.header("mcp-session-id").map(str::to_owned);
    let server = mcp_message(&initialized);
    say(5, format!("MCP initialize -> {}", server["result"]["serverInfo"]));
    let notified = mcp_post(
        address,
        path,
        analyst_key,
        session.as_deref(),
        &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert!(
        matches!(notified.status, 200 | 202),
        "notifications/initialized: {} {}",
        notified.status,
        notified.body
    );

    let listed = mcp_message(
        &mcp_post(
            address,
            path,
            analyst_key,
            session.as_deref(),
            &json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
        )
        .await,
    );
    let tools: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .expect("tools/list returns tools")
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    say(5, format!("MCP tools/list for the analyst: {tools:?}"));
    assert!(tools.contains(&"query_rows"), "the analyst may query rows: {tools:?}");
    assert!(
        !tools.iter().any(|tool| tool.starts_with("delete")),
        "a read-only role gets no write tools: {tools:?}"
    );

    let called = mcp_message(
        &mcp_post(
            address,
            path,
            analyst_key,
            session.as_deref(),
            &json!({
                "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": { "name": "query_rows", "arguments": { "table": "customers" } }
            }),
        )
        .await,
    );
    let result = &called["result"];
    say(5, format!("MCP tools/call query_rows customers -> {result}"));
    assert_ne!(result["isError"], true, "query_rows failed: {result}");
    let text = result.to_string();
    assert!(text.contains("Ada"), "the analyst's rows come back: {text}");
    assert!(
        !text.contains("acme.test"),
        "MCP results hide the denied e-mail field: {text}"
    );
}

/// The runtime Deployment's pod template (as JSON) and generation: what a rollout would change.
async fn pod_template(deployments: &Api<Deployment>) -> (Value, Option<i64>) {
    let deployment = deployments.get(WORKLOAD).await.expect("the runtime Deployment");
    let template = serde_json::to_value(&deployment.spec.as_ref().expect("a spec").template).expect("serialise");
    (template, deployment.metadata.generation)
}

async fn pod_names(pods: &Api<Pod>) -> Vec<String> {
    let listed = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={DATA_API}")))
        .await
        .expect("list the runtime pods");
    let mut names: Vec<String> = listed
        .items
        .into_iter()
        .map(|pod| {
            let phase = pod.status.and_then(|status| status.phase).unwrap_or_default();
            format!("{} ({phase})", pod.metadata.name.unwrap_or_default())
        })
        .collect();
    names.sort();
    names
}

/// Step 6: tightening the analyst with `kubectl apply` reaches the running runtime through the
/// config Secret alone: no new pod template, no restart.
async fn check_hot_reload(
    client: &kube::Client,
    team: &str,
    address: SocketAddr,
    base: &str,
    analyst_key: &str,
    runtime: &mut Process,
    kubelet: &Kubelet,
) {
    let deployments = Api::<Deployment>::namespaced(client.clone(), team);
    let pods = Api::<Pod>::namespaced(client.clone(), team);
    let (template_before, generation_before) = pod_template(&deployments).await;
    let pods_before = pod_names(&pods).await;
    let pid = runtime.id();
    let updates_before = kubelet.updates();

    let applied = kubectl_apply(&analyst(team, ANALYST_FIELDS_TIGHTENED));
    let changed_at = Instant::now();
    say(
        6,
        format!("kubectl apply (analyst denies email and phone): {}", applied.trim_end()),
    );

    let analyst = [(API_KEY_HEADER, analyst_key)];
    loop {
        runtime.assert_running();
        let seen = rows(
            &get_as(address, &format!("{base}/customers?order=id"), &analyst).await,
            "analyst",
        );
        if seen.iter().all(|row| row.get("phone").is_none()) {
            say(
                6,
                format!(
                    "the running runtime hides phone {:.1}s after kubectl apply ({} config file rewrite(s) by the simulated kubelet): {seen:?}",
                    changed_at.elapsed().as_secs_f64(),
                    kubelet.updates() - updates_before
                ),
            );
            assert!(
                seen.iter().all(|row| row.get("email").is_none()),
                "email stays denied: {seen:?}"
            );
            break;
        }
        assert!(
            changed_at.elapsed() < HOT_RELOAD_WITHIN,
            "the analyst still sees phone {HOT_RELOAD_WITHIN:?} after the change (kubelet rewrites: {}): {seen:?}\n{}",
            kubelet.updates() - updates_before,
            runtime.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = get_as(address, &format!("{base}/customers?select=id,phone"), &analyst).await;
    assert!(
        refused.status == 400 && refused.json()["code"] == "unknown_column",
        "phone is now denied, not just left out: {} {}",
        refused.status,
        refused.body
    );

    let (template_after, generation_after) = pod_template(&deployments).await;
    let pods_after = pod_names(&pods).await;
    let hash = |template: &Value| template["metadata"]["annotations"]["sluice.dev/restart-hash"].clone();
    say(
        6,
        format!(
            "pod template restart hash {} -> {}, Deployment generation {generation_before:?} -> {generation_after:?}, pods {pods_before:?} -> {pods_after:?}, runtime pid {pid} -> {}",
            hash(&template_before),
            hash(&template_after),
            runtime.id()
        ),
    );
    assert!(
        hash(&template_before).is_string(),
        "the pod template carries a restart hash"
    );
    assert_eq!(
        template_before, template_after,
        "a role change leaves the pod template alone"
    );
    assert_eq!(
        generation_before, generation_after,
        "a role change does not roll the Deployment"
    );
    assert_eq!(pods_before, pods_after, "no pod was replaced");
    runtime.assert_running();
}

/// Step 8: what `kubectl get -o wide` and `kubectl describe` tell the user.
fn check_kubectl_views(team: &str) {
    let table = kubectl(&["get", "dataapis", "-n", team, "-o", "wide"]);
    say(8, format!("kubectl get dataapis -o wide:\n{}", table.trim_end()));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header line").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ENGINE", "READY", "REPLICAS", "DESIRED", "URL", "REASON", "AGE"],
        "the printer columns"
    );
    let row: Vec<&str> = lines
        .next()
        .expect("a row for the DataApi")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], [DATA_API, "postgres", "True", "2", "2"], "{row:?}");
    assert_eq!(row[5], format!("http://{WORKLOAD}.{team}.svc"), "{row:?}");
    assert_eq!(row[6], "Serving", "{row:?}");

    let described = kubectl(&["describe", "dataapi", DATA_API, "-n", team]);
    say(
        8,
        format!("kubectl describe dataapi {DATA_API}:\n{}", described.trim_end()),
    );
    for expected in [
        "Conditions:",
        "the API serves with the current configuration",
        "configuration resolved",
        "Serving",
        "Events:",
    ] {
        assert!(described.contains(expected), "kubectl describe shows {expected:?}");
    }
}

/// Step 7: deleting the DataApi takes its children with it (the garbage collector). The
/// collector learns a new CRD's kind at its next discovery sync (every 30 s), so right after the
/// chart is installed this takes up to that long, as it would on a real cluster.
async fn check_deletion(client: &kube::Client, team: &str) {
    let deleted_at = Instant::now();
    let output = kubectl(&["delete", "dataapi", DATA_API, "-n", team, "--timeout=60s"]);
    say(7, output.trim_end());
    let deployments = Api::<Deployment>::namespaced(client.clone(), team);
    let services = Api::<Service>::namespaced(client.clone(), team);
    let secrets = Api::<Secret>::namespaced(client.clone(), team);
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), team);
    let pods = Api::<Pod>::namespaced(client.clone(), team);
    loop {
        let remaining = [
            (
                "Deployment",
                deployments.get_opt(WORKLOAD).await.expect("get").is_some(),
            ),
            ("Service", services.get_opt(WORKLOAD).await.expect("get").is_some()),
            (
                "config Secret",
                secrets.get_opt(CONFIG_SECRET).await.expect("get").is_some(),
            ),
            (
                "PodDisruptionBudget",
                budgets.get_opt(WORKLOAD).await.expect("get").is_some(),
            ),
            ("pods", !pod_names(&pods).await.is_empty()),
        ];
        let left: Vec<&str> = remaining
            .iter()
            .filter(|(_, exists)| *exists)
            .map(|(what, _)| *what)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            deleted_at.elapsed() < WAIT,
            "still there {WAIT:?} after deleting the DataApi: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(
        7,
        format!(
            "Deployment, Service, config Secret, PodDisruptionBudget and pods gone {:.1}s after kubectl delete",
            deleted_at.elapsed().as_secs_f64()
        ),
    );
    assert!(
        secrets.get_opt(ANALYST_KEY_SECRET).await.expect("get").is_some(),
        "the key Secret belongs to its ApiRole and outlives the DataApi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_engineer_installs_sluice_and_gets_a_governed_api() {
    let started = Instant::now();
    let dsn = postgres_url();
    let hmac_secret = jwt_secret();
    let work_dir = WorkDir::create("sluice-e2e");
    let built_at = Instant::now();
    let [operator_binary, runtime_binary] = workspace_binaries(
        [
            ("sluice-operator", "sluice-operator"),
            ("sluice-runtime", "sluice-runtime"),
        ],
        &work_dir.path,
    );
    let build_time = built_at.elapsed();
    println!(
        "[e2e] sluice-operator and sluice-runtime built in {:.1}s",
        build_time.as_secs_f64()
    );
    let cp = ControlPlane::shared();
    let client = cp.client();

    // 1. helm template + server-side apply; CRDs established.
    let release_namespace = cp.namespace("sluice-system").await;
    let team = cp.namespace("team-a").await;
    let chart = install_chart(&release_namespace);

    // 2. The chart's ServiceAccount: what it may do, then the operator running as it.
    let service_account = of_kind(&chart, "ServiceAccount")[0]["metadata"]["name"]
        .as_str()
        .expect("the chart's ServiceAccount is named")
        .to_owned();
    let account = format!("system:serviceaccount:{release_namespace}:{service_account}");
    check_rbac(cp, &release_namespace, &team, &account).await;
    let (mut operator, operator_metrics) =
        start_operator(&operator_binary, &chart, &release_namespace, &account, &work_dir.path).await;

    // 3. The team's objects; kubectl wait for Ready.
    let schema = PostgresSchema::create(&dsn, &format!("sluice_e2e_{}", std::process::id()), DATASET).await;
    let story = fill(
        STORY,
        &[
            ("ns", &team),
            ("dsn", &dsn),
            ("jwt_secret", &hmac_secret),
            ("admin_key", ADMIN_KEY),
            ("schema", &schema.name),
            ("issuer", JWT_ISSUER),
            ("audience", JWT_AUDIENCE),
        ],
    );
    let applied = kubectl_apply(&format!("{story}---{}", analyst(&team, ANALYST_FIELDS)));
    say(
        3,
        format!("kubectl apply (schema {}):\n{}", schema.name, applied.trim_end()),
    );
    let waited_at = Instant::now();
    let ready = ControlPlane::shared()
        .kubectl()
        .args([
            "wait",
            "--for=condition=Ready",
            &format!("dataapi/{DATA_API}"),
            "-n",
            &team,
        ])
        .arg(format!("--timeout={}s", WAIT.as_secs()))
        .output()
        .expect("kubectl runs");
    assert!(
        ready.status.success(),
        "kubectl wait --for=condition=Ready failed: {}\n{}\n{}",
        String::from_utf8_lossy(&ready.stderr),
        ControlPlane::shared()
            .kubectl()
            .args(["describe", "dataapi", DATA_API, "-n", &team])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default(),
        operator.log_tail()
    );
    say(
        3,
        format!(
            "{} after {:.1}s; runtime pods (kwok): {:?}",
            String::from_utf8_lossy(&ready.stdout).trim_end(),
            waited_at.elapsed().as_secs_f64(),
            pod_names(&Api::<Pod>::namespaced(client.clone(), &team)).await
        ),
    );

    // 4. The runtime, started as its pod would be.
    let (mut runtime, address, kubelet) = start_runtime(&runtime_binary, &client, &team, &work_dir.path).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &team);
    let config = rendered_config(&secrets).await;
    let analyst_key_secret = secrets.get(ANALYST_KEY_SECRET).await.expect("the generated key Secret");
    let analyst_key = secret_data(&analyst_key_secret, GENERATED_KEY_DATA).expect("the Secret carries the key");
    say(
        4,
        format!("the analyst's key comes from Secret {ANALYST_KEY_SECRET} (generated by the operator)"),
    );

    // 5. The role views, over REST and MCP.
    let base = config.rest.base_path.trim_end_matches('/').to_owned();
    check_role_views(address, &base, &analyst_key).await;
    check_audit(&runtime, &analyst_key).await;
    check_mcp(address, &config.mcp.path, &analyst_key).await;

    // 6. A role change, hot.
    check_hot_reload(&client, &team, address, &base, &analyst_key, &mut runtime, &kubelet).await;

    // 8. What kubectl shows, before the delete.
    check_kubectl_views(&team);

    // 7. Delete; the garbage collector takes the children.
    check_deletion(&client, &team).await;
    drop(kubelet);
    drop(runtime);

    // The operator did all this as the chart's ServiceAccount, and was never refused.
    operator.assert_running();
    let log = operator.log();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the operator was refused something by the chart's RBAC:\n{}",
        operator.log_tail()
    );
    say(2, format!("the operator log ({operator_metrics}) has no RBAC refusal"));
    drop(operator);
    drop(schema);
    println!(
        "[e2e] the user story passed in {:.1}s ({:.1}s after building the binaries)",
        started.elapsed().as_secs_f64(),
        (started.elapsed() - build_time).as_secs_f64()
    );
}
