//! The test control plane itself works: it runs the pinned Kubernetes version,
//! schedules pods onto the kwok node where they become Ready, and runs the
//! garbage collector.

use std::{future::Future, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, core::v1::Pod};
use kube::{
    Api, Resource,
    api::{DeleteParams, ListParams, PostParams},
    runtime::wait::{Condition, await_condition, conditions},
};
use serde_json::json;
use sluice_tests::controlplane::{ControlPlane, FAKE_NODE_NAME};

/// How long a single wait in these tests may take.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn serves_the_pinned_kubernetes_version() -> Result<()> {
    let control_plane = ControlPlane::shared();
    let pinned = pinned_kubernetes_version()?;

    let served = control_plane.client().apiserver_version().await?;
    assert_eq!(served.git_version, pinned, "kube-apiserver /version");
    assert_eq!(
        format!("v{}.{}.", served.major, served.minor),
        pinned[..=pinned.rfind('.').context("the pinned version has no patch")?],
        "major and minor in /version"
    );

    let kubectl = control_plane
        .kubectl()
        .args(["version", "--client", "-o", "json"])
        .output()?;
    assert!(
        kubectl.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
    let kubectl_version: serde_json::Value = serde_json::from_slice(&kubectl.stdout)?;
    assert_eq!(
        kubectl_version["clientVersion"]["gitVersion"],
        pinned.as_str(),
        "kubectl's version"
    );
    Ok(())
}

#[tokio::test]
async fn deployment_becomes_available_on_the_kwok_node() -> Result<()> {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.namespace("deployment").await;
    let client = control_plane.client();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);

    deployments
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await?;
    within(
        "deployment web to become Available",
        await_condition(deployments, "web", is_available()),
    )
    .await??;

    let pods = Api::<Pod>::namespaced(client, &namespace)
        .list(&ListParams::default())
        .await?;
    assert_eq!(pods.items.len(), 2, "pods of deployment web");
    for pod in pods.items {
        let spec = pod.spec.context("pod without spec")?;
        let status = pod.status.context("pod without status")?;
        assert_eq!(
            spec.node_name.as_deref(),
            Some(FAKE_NODE_NAME),
            "node of pod {:?}",
            pod.metadata.name
        );
        assert_eq!(
            status.phase.as_deref(),
            Some("Running"),
            "phase of pod {:?}",
            pod.metadata.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_the_dependents_of_a_deleted_owner() -> Result<()> {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.namespace("garbage-collection").await;
    let client = control_plane.client();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let deployments = Api::<Deployment>::namespaced(client, &namespace);

    let owner = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("owner".to_owned()),
            ..Default::default()
        },
        ..ConfigMap::default()
    };
    let owner = config_maps.create(&PostParams::default(), &owner).await?;
    let mut dependent = deployment("dependent", 1)?;
    dependent.metadata.owner_references = Some(vec![
        owner
            .controller_owner_ref(&())
            .context("the created ConfigMap has no uid")?,
    ]);
    let dependent = deployments.create(&PostParams::default(), &dependent).await?;
    let dependent_uid = dependent.metadata.uid.context("the created Deployment has no uid")?;

    config_maps.delete("owner", &DeleteParams::default()).await?;
    within(
        "the garbage collector to delete deployment dependent",
        await_condition(deployments, "dependent", conditions::is_deleted(&dependent_uid)),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn sluice_crds_apply_and_become_established() -> Result<()> {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let control_plane = ControlPlane::shared();

    let apply = control_plane
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&crds)
        .output()?;
    assert!(
        apply.status.success(),
        "kubectl apply --server-side -f {}: {}",
        crds.display(),
        String::from_utf8_lossy(&apply.stderr)
    );
    let wait = control_plane
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
        .arg(&crds)
        .output()?;
    assert!(
        wait.status.success(),
        "CRDs in {} not Established: {}",
        crds.display(),
        String::from_utf8_lossy(&wait.stderr)
    );
    Ok(())
}

/// The k8s.io/kubernetes version pinned in tests/controlplane/kubernetes/go.mod.
fn pinned_kubernetes_version() -> Result<String> {
    let go_mod = include_str!("../controlplane/kubernetes/go.mod");
    go_mod
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace().skip_while(|word| *word != "k8s.io/kubernetes");
            words.nth(1).filter(|version| version.starts_with('v'))
        })
        .map(str::to_owned)
        .context("tests/controlplane/kubernetes/go.mod does not require k8s.io/kubernetes")
}

/// A Deployment of `replicas` pods; the image is never pulled, kwok only
/// pretends to run it.
fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "registry.invalid/sluice/fake:1" }] },
            },
        },
    }))?)
}

fn is_available() -> impl Condition<Deployment> {
    |deployment: Option<&Deployment>| {
        deployment
            .and_then(|deployment| deployment.status.as_ref())
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|condition| condition.type_ == "Available" && condition.status == "True")
            })
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    match tokio::time::timeout(WAIT_TIMEOUT, future).await {
        Ok(output) => Ok(output),
        Err(_) => bail!("timed out after {WAIT_TIMEOUT:?} waiting for {what}"),
    }
}
