//! The Helm chart: it lints, renders, applies to the real API server, and its RBAC grants the
//! operator what it uses and nothing more (checked with `kubectl auth can-i` as its ServiceAccount).

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;
use sluice_tests::controlplane::ControlPlane;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/sluice");
const KUBE_VERSION: &str = "1.35.8";

fn output_of(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn render(release: &str, namespace: &str, settings: &[&str]) -> Vec<Value> {
    let mut helm = ControlPlane::shared().helm();
    helm.args([
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
    ]);
    for setting in settings {
        helm.args(["--set", setting]);
    }
    let yaml = output_of(&mut helm);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn the_chart_lints_strictly() {
    output_of(
        ControlPlane::shared()
            .helm()
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION, CHART]),
    );
}

#[test]
fn the_chart_carries_the_generated_crds_and_a_restricted_operator() {
    let objects = render("sluice", "sluice-system", &[]);

    let crds: Vec<&str> = of_kind(&objects, "CustomResourceDefinition")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(crds, ["apiroles.sluice.dev", "dataapis.sluice.dev"]);
    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(container["image"], "sluice-operator:0.1.0");
    assert!(container["resources"]["requests"].is_object());

    for role in of_kind(&objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(&objects, "Role"))
    {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["verbs", "resources", "apiGroups"] {
                assert!(
                    !rule[field].as_array().unwrap().contains(&Value::from("*")),
                    "no wildcards: {rule}"
                );
            }
            assert!(
                !rule["resources"].as_array().unwrap().contains(&Value::from("nodes")),
                "{rule}"
            );
        }
    }
}

#[test]
fn watched_namespaces_get_roles_and_no_cluster_role() {
    let objects = render("sluice", "sluice-system", &["watchNamespaces={team-a,team-b}"]);

    assert!(of_kind(&objects, "ClusterRole").is_empty());
    let mut role_namespaces: Vec<&str> = of_kind(&objects, "Role")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    role_namespaces.sort();
    assert_eq!(
        role_namespaces,
        ["sluice-system", "team-a", "team-b"],
        "a Role per watched namespace, and the Lease's"
    );
    let deployment = of_kind(&objects, "Deployment")[0];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let watched = env.iter().find(|e| e["name"] == "SLUICE_WATCH_NAMESPACES").unwrap();
    assert_eq!(watched["value"], "team-a,team-b");
}

fn apply(objects: &[Value]) {
    let mut yaml = String::new();
    for object in objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(object).unwrap());
    }
    let mut child = ControlPlane::shared()
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "applying the chart: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether the operator's ServiceAccount may do `verb` on `resource` (`kind.group[/subresource]`),
/// in `namespace` if given.
fn can_i(service_account: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let mut kubectl = ControlPlane::shared().kubectl();
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    kubectl.args(["auth", "can-i", verb, resource, "--as", service_account]);
    if !subresource.is_empty() {
        kubectl.arg(format!("--subresource={subresource}"));
    }
    match namespace {
        Some(namespace) => kubectl.args(["-n", namespace]),
        None => kubectl.arg("--all-namespaces"),
    };
    let output = kubectl.output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

#[tokio::test]
async fn the_operator_may_do_what_it_uses_and_nothing_more() {
    let cp = ControlPlane::shared();
    let release_namespace = cp.namespace("sluice-system").await;
    let watched = cp.namespace("watched").await;
    let unwatched = cp.namespace("unwatched").await;
    let watch_setting = format!("watchNamespaces={{{watched}}}");
    apply(&render("scoped", &release_namespace, &[&watch_setting]));
    let account = format!("system:serviceaccount:{release_namespace}:scoped-sluice");

    let table: &[(&str, &str, Option<&str>, bool)] = &[
        ("list", "dataapis.sluice.dev", Some(&watched), true),
        ("watch", "apiroles.sluice.dev", Some(&watched), true),
        ("patch", "dataapis.sluice.dev/status", Some(&watched), true),
        ("update", "dataapis.sluice.dev/finalizers", Some(&watched), true),
        ("update", "dataapis.sluice.dev", Some(&watched), false),
        ("patch", "deployments.apps", Some(&watched), true),
        ("create", "secrets", Some(&watched), true),
        ("delete", "poddisruptionbudgets.policy", Some(&watched), true),
        ("create", "events.events.k8s.io", Some(&watched), true),
        ("patch", "leases.coordination.k8s.io", Some(&release_namespace), true),
        ("get", "secrets", Some(&unwatched), false),
        ("list", "dataapis.sluice.dev", Some(&unwatched), false),
        ("update", "dataapis.sluice.dev", Some(&watched), false),
        ("delete", "dataapis.sluice.dev", Some(&watched), false),
        ("delete", "deployments.apps", Some(&watched), false),
        ("get", "deployments.apps", Some(&watched), false),
        ("patch", "leases.coordination.k8s.io", Some(&watched), false),
        ("delete", "leases.coordination.k8s.io", Some(&release_namespace), false),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, false),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None, false),
        ("get", "nodes", None, false),
        ("create", "pods", Some(&watched), false),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, false),
    ];
    let wrong: Vec<String> = table
        .iter()
        .filter(|(verb, resource, namespace, allowed)| can_i(&account, verb, resource, *namespace) != *allowed)
        .map(|(verb, resource, namespace, allowed)| {
            format!(
                "{verb} {resource} in {}: expected allowed={allowed}",
                namespace.unwrap_or("the cluster")
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "RBAC differs from what the operator needs:\n{}",
        wrong.join("\n")
    );

    // Cluster-wide, it reads Secrets everywhere, but still may not touch nodes or CRDs.
    apply(&render("everywhere", &release_namespace, &[]));
    let account = format!("system:serviceaccount:{release_namespace}:everywhere-sluice");
    assert!(can_i(&account, "get", "secrets", Some(&unwatched)));
    assert!(!can_i(&account, "get", "nodes", None));
    assert!(!can_i(
        &account,
        "delete",
        "customresourcedefinitions.apiextensions.k8s.io",
        None
    ));
}
