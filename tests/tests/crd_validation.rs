//! The CRDs as the real API server sees them: every schema and CEL rule accepts a valid object
//! and rejects an invalid one with our message, `kubectl explain` shows our doc comments, and
//! every example manifest passes a server-side dry run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use sluice_tests::controlplane::ControlPlane;
use sluice_tests::crds::install_crds;

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("kubectl runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Applies `yaml` with a server-side dry run, in `namespace` unless the objects name their own;
/// the API server's message on refusal.
fn dry_run(namespace: Option<&str>, yaml: &str) -> Result<(), String> {
    let mut kubectl = ControlPlane::shared().kubectl();
    kubectl.args(["apply", "--server-side", "--dry-run=server", "-f", "-"]);
    if let Some(namespace) = namespace {
        kubectl.args(["-n", namespace]);
    }
    let mut child = kubectl
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn data_api(spec: &str) -> String {
    format!("apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: case }}\nspec:\n{spec}")
}

fn api_role(spec: &str) -> String {
    format!("apiVersion: sluice.dev/v1alpha1\nkind: ApiRole\nmetadata: {{ name: case }}\nspec:\n{spec}")
}

const PG: &str = "  database: { engine: postgres, connectionSecretRef: { name: db, key: url } }";

/// `(description, manifest, None for accepted or Some(part of the refusal message))`.
fn cases() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("a minimal postgres DataApi", data_api(PG), None),
        (
            "a sqlite DataApi with a path",
            data_api("  database: { engine: sqlite, path: /data/a.db }"),
            None,
        ),
        (
            "sqlite with more than one replica",
            data_api("  database: { engine: sqlite, path: /data/a.db }\n  runtime: { replicas: 2 }"),
            Some("SQLite is a single-writer file database"),
        ),
        (
            "postgres without a connection secret",
            data_api("  database: { engine: postgres }"),
            Some("set connectionSecretRef"),
        ),
        (
            "a path on postgres",
            data_api("  database: { engine: postgres, path: /x, connectionSecretRef: { name: db, key: url } }"),
            Some("spec.database.path is only for engine sqlite"),
        ),
        (
            "default page size above the maximum",
            data_api(&format!("{PG}\n  rest: {{ defaultPageSize: 500, maxPageSize: 100 }}")),
            Some("spec.rest.defaultPageSize must not exceed spec.rest.maxPageSize"),
        ),
        (
            "page sizes in order",
            data_api(&format!("{PG}\n  rest: {{ defaultPageSize: 50, maxPageSize: 100 }}")),
            None,
        ),
        (
            "more pool connections kept than allowed",
            data_api(
                "  database: { engine: postgres, connectionSecretRef: { name: db, key: url }, pool: { minConnections: 20, maxConnections: 5 } }",
            ),
            Some("minConnections must not exceed maxConnections"),
        ),
        (
            "JWT with both key sources",
            data_api(&format!(
                "{PG}\n  auth: {{ jwt: {{ issuer: i, audiences: [a], jwksUri: 'https://x/jwks', hmacSecretRef: {{ name: s, key: k }} }} }}"
            )),
            Some("set exactly one of jwksUri (RS256/ES256) or hmacSecretRef (HS256)"),
        ),
        (
            "JWT with no key source",
            data_api(&format!("{PG}\n  auth: {{ jwt: {{ issuer: i, audiences: [a] }} }}")),
            Some("set exactly one of jwksUri"),
        ),
        (
            "JWT with a JWKS URL",
            data_api(&format!(
                "{PG}\n  auth: {{ jwt: {{ issuer: i, audiences: [a], jwksUri: 'https://x/jwks' }} }}"
            )),
            None,
        ),
        (
            "an unknown engine",
            data_api("  database: { engine: oracle, connectionSecretRef: { name: db, key: url } }"),
            Some("Unsupported value: \"oracle\""),
        ),
        (
            "negative replicas",
            data_api(&format!("{PG}\n  runtime: {{ replicas: -1 }}")),
            Some("should be greater than or equal to 0"),
        ),
        (
            "a base path without a slash",
            data_api(&format!("{PG}\n  rest: {{ basePath: api }}")),
            Some("should match"),
        ),
        (
            "two queries with one name",
            data_api(&format!(
                "{PG}\n  queries: [{{ name: q, sql: 'SELECT 1' }}, {{ name: q, sql: 'SELECT 2' }}]"
            )),
            Some("duplicate entries for key [name=\"q\"]"),
        ),
        (
            "a query name with capitals",
            data_api(&format!("{PG}\n  queries: [{{ name: TopCustomers, sql: 'SELECT 1' }}]")),
            Some("should match"),
        ),
        (
            "a minimal ApiRole",
            api_role("  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read] }]"),
            None,
        ),
        (
            "fields with both allow and deny",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], fields: { allow: [a], deny: [b] } }]",
            ),
            Some("fields: set either allow or deny, not both"),
        ),
        (
            "a fixed mask without text",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], fields: { mask: [{ field: p }] } }]",
            ),
            Some("strategy fixed needs `with`"),
        ),
        (
            "a keepLast mask without a count",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], fields: { mask: [{ field: p, strategy: keepLast }] } }]",
            ),
            Some("strategy keepLast needs `keepLast`"),
        ),
        (
            "masks of every strategy",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], fields: { mask: [{ field: a, with: '***' }, { field: b, strategy: keepLast, keepLast: 4 }, { field: c, strategy: hash }, { field: d, strategy: 'null' }] } }]",
            ),
            None,
        ),
        (
            "a row filter operator outside the closed set",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: regex, value: x }] }]",
            ),
            Some("Unsupported value: \"regex\""),
        ),
        (
            "a row filter on a claim",
            api_role(
                "  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [read], rowFilter: [{ column: region, op: eq, value: '{claims.region}' }] }]",
            ),
            None,
        ),
        (
            "an unknown verb",
            api_role("  dataApis: [sales]\n  rules: [{ tables: [t], verbs: [drop] }]"),
            Some("Unsupported value: \"drop\""),
        ),
        (
            "two keys with one name",
            api_role("  dataApis: [sales]\n  apiKeys: [{ name: ci }, { name: ci }]"),
            Some("duplicate entries for key [name=\"ci\"]"),
        ),
        (
            "a key name that cannot name a Secret",
            api_role("  dataApis: [sales]\n  apiKeys: [{ name: CI_Key }]"),
            Some("should match"),
        ),
        (
            "a role bound to no DataApi",
            api_role("  dataApis: []"),
            Some("should have at least 1 items"),
        ),
    ]
}

async fn namespace(name: &str) -> String {
    let client = ControlPlane::shared().client();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap();
    match Api::<Namespace>::all(client)
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating namespace {name}: {error}"),
    }
    name.to_owned()
}

#[tokio::test]
async fn every_schema_and_cel_rule_accepts_valid_and_refuses_invalid_objects() {
    install_crds();
    let namespace = ControlPlane::shared().namespace("crd-rules").await;
    let mut failures = Vec::new();
    for (description, manifest, expected) in cases() {
        match (dry_run(Some(&namespace), &manifest), expected) {
            (Ok(()), None) => {}
            (Err(message), Some(part)) if message.contains(part) => {}
            (outcome, expected) => failures.push(format!("{description}: expected {expected:?}, got {outcome:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `kubectl explain` output for `field`, retried while the API server publishes the new CRDs'
/// OpenAPI (it lags `Established` by a few seconds).
async fn explain(field: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let output = ControlPlane::shared()
            .kubectl()
            .args(["explain", field])
            .output()
            .expect("kubectl runs");
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain {field}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn kubectl_explain_shows_our_doc_comments() {
    install_crds();
    let output = explain("dataapi.spec.database").await;

    assert!(
        output.contains("The database to expose and which of its tables."),
        "{output}"
    );
    assert!(output.contains("connectionSecretRef"), "{output}");
    assert!(output.contains("the operator never copies it"), "{output}");

    let output = explain("apirole.spec.rules.rowFilter.op").await;
    assert!(output.contains("closed set"), "{output}");
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn every_example_manifest_passes_a_server_side_dry_run() {
    install_crds();
    for name in ["default", "team-a", "team-b"] {
        namespace(name).await;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    yaml_files(&examples, &mut files);
    // Kustomizations are build instructions, not objects: they are rendered below instead.
    files.retain(|file| !file.ends_with("kustomization.yaml"));
    assert!(files.len() >= 8, "{files:?}");
    let gitops = run_ok(
        ControlPlane::shared()
            .kubectl()
            .arg("kustomize")
            .arg(examples.join("gitops")),
    );
    assert!(gitops.contains("kind: DataApi") && gitops.contains("app.kubernetes.io/part-of: sales-platform"));
    if let Err(message) = dry_run(None, &gitops) {
        panic!("the GitOps layout in examples/gitops was refused by the API server: {message}");
    }
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        if let Err(message) = dry_run(None, &yaml) {
            panic!("{} was refused by the API server: {message}", file.display());
        }
    }
}
