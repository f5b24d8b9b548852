//! The harness's floor for the Ready figure: the same DataApis and roles applied, and each
//! DataApi's children (config Secret, Deployment, Service, built by the operator's own
//! `resources` functions) applied straight after it by the benchmark, with no operator running;
//! timed until every Deployment's rollout is complete, which is what the operator's `Ready`
//! waits for. What the control plane needs for this much work is a time no operator can beat on
//! the same machine; the operator's figure less this one is what the operator adds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use sluice_crds::{ApiRole, DataApi, KeyHashes, resolve};
use sluice_operator::context::FIELD_MANAGER;
use sluice_operator::resources::{self, ChildNames, PodInputs};
use sluice_operator::status::Rollout;
use sluice_tests::controlplane::ControlPlane;
use sluice_tests::crds::install_crds;

use crate::cpu::ControlPlaneCpu;
use crate::objects;
use crate::run::{BENCH_MANAGER, dynamic, watch_until_done};

/// The figures of one floor run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorFigures {
    /// Seconds from the first apply until every Deployment's rollout was complete, if they all were.
    pub complete_seconds: Option<f64>,
    /// Deployments complete at the end of the wait.
    pub complete: usize,
    /// Seconds the applies took (part of `complete_seconds`).
    pub apply_seconds: f64,
    /// The control plane's CPU time from the first apply until every rollout was complete.
    pub control_plane_cpu: ControlPlaneCpu,
}

/// Measures the floor once on this process's control plane.
pub async fn run(data_apis: usize, apply_concurrency: usize, timeout: Duration) -> Result<FloorFigures> {
    let control_plane = ControlPlane::shared();
    install_crds();
    let namespace = control_plane.namespace("floor").await;
    let client = control_plane.client();

    let started = Instant::now();
    let cpu_before = ControlPlaneCpu::sample(control_plane)?;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(
            objects::DSN_SECRET,
            &PatchParams::apply(BENCH_MANAGER).force(),
            &Patch::Apply(&objects::dsn_secret()),
        )
        .await
        .context("cannot apply the DSN Secret")?;
    stream::iter(0..data_apis)
        .map(|index| apply_with_children(&client, &namespace, index))
        .buffer_unordered(apply_concurrency)
        .try_for_each(|()| futures::future::ready(Ok(())))
        .await?;
    let apply_seconds = started.elapsed().as_secs_f64();
    eprintln!("bench-operator floor: applied {data_apis} DataApis with their children in {apply_seconds:.1}s");

    let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
    let rolled_out = |deployment: &Deployment| Rollout::of(deployment).complete();
    let (complete, all) = watch_until_done(deployments, data_apis, rolled_out, started + timeout, |complete| {
        eprintln!(
            "bench-operator floor: {complete} of {data_apis} Deployments complete after {:.0}s",
            started.elapsed().as_secs_f64()
        );
    })
    .await?;
    Ok(FloorFigures {
        complete_seconds: all.then(|| started.elapsed().as_secs_f64()),
        complete,
        apply_seconds,
        control_plane_cpu: ControlPlaneCpu::sample(control_plane)? - cpu_before,
    })
}

/// Applies the `index`-th DataApi's roles and the DataApi as the benchmark does, then the
/// children the operator would apply for it, owned by it as the operator's are (the garbage
/// collector's work is part of the cluster's).
async fn apply_with_children(client: &Client, namespace: &str, index: usize) -> Result<()> {
    let bench = PatchParams::apply(BENCH_MANAGER).force();
    let roles_api = dynamic(client, namespace, "ApiRole", "apiroles");
    let mut roles = Vec::with_capacity(2);
    for role in objects::api_roles(index) {
        let name = role["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let applied = roles_api
            .patch(&name, &bench, &Patch::Apply(&role))
            .await
            .with_context(|| format!("cannot apply {name}"))?;
        roles.push(serde_json::from_value::<ApiRole>(serde_json::to_value(applied)?)?);
    }
    let name = objects::data_api_name(index);
    let applied = dynamic(client, namespace, "DataApi", "dataapis")
        .patch(&name, &bench, &Patch::Apply(&objects::data_api(index)))
        .await
        .with_context(|| format!("cannot apply {name}"))?;
    let api: DataApi = serde_json::from_value(serde_json::to_value(applied)?)?;

    let mut hashes = KeyHashes::new();
    for role in &roles {
        let role_name = role.metadata.name.as_deref().unwrap_or_default();
        for key in &role.spec.api_keys {
            // Any digest will do: nothing reads these keys, and the config's size is the same.
            let digest = format!("{:064x}", index);
            hashes.insert_hash(role_name, &key.name, digest);
        }
    }
    let config = resolve(&api, &roles, &hashes).with_context(|| format!("cannot resolve {name}'s config"))?;
    let inputs = PodInputs {
        image: format!("sluice-runtime:{}", env!("CARGO_PKG_VERSION")),
        database_url_digest: Some(format!("{:064x}", 0)),
        ..PodInputs::default()
    };
    let names = ChildNames::for_data_api(&name);
    apply_as_operator::<Secret>(
        client,
        namespace,
        &names.config_secret,
        &resources::config_secret(&api, &config),
    )
    .await?;
    apply_as_operator::<Deployment>(
        client,
        namespace,
        &names.workload,
        &resources::deployment(&api, &inputs),
    )
    .await?;
    apply_as_operator::<Service>(client, namespace, &names.workload, &resources::service(&api)).await?;
    Ok(())
}

/// Server-side applies `object` with the operator's field manager, as the operator would.
async fn apply_as_operator<K>(client: &Client, namespace: &str, name: &str, object: &K) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .with_context(|| format!("cannot apply {} {name}", K::kind(&())))?;
    Ok(())
}
