//! The Sluice operator: controllers that turn DataApi and ApiRole objects into running,
//! governed API pods, with honest status.
//!
//! - [`dataapi`]: dereference → resolve → apply children → status.
//! - [`apirole`]: generate and revoke API keys, report bindings.
//! - [`resources`]: the children as pure values; [`status`]: condition logic; [`keys`]: key material.
//! - [`leader`]: leader election on a Lease; [`metrics`]: Prometheus metrics and health endpoints.

pub mod apirole;
pub mod context;
pub mod dataapi;
pub mod error;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod status;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sluice_crds::apirole::generated_key_secret_name;
use sluice_crds::{ApiRole, DataApi};
use tracing::info;

pub use context::{Context, Settings};
pub use metrics::Metrics;

/// Label every child the operator applies carries; the child watches select on it.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=sluice-operator";

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// DataApis that must reconcile when the Secret `secret` changes: its owner, those naming it
/// for their database or JWT secret, and those bound to a role whose key lives in it.
fn data_apis_for_secret(
    secret: &PartialObjectMeta<Secret>,
    data_apis: &Store<DataApi>,
    roles: &Store<ApiRole>,
) -> Vec<ObjectRef<DataApi>> {
    let name = secret.name_any();
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let mut affected: Vec<ObjectRef<DataApi>> = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|owner| owner.kind == "DataApi")
        .map(|owner| ObjectRef::new(&owner.name).within(&namespace))
        .collect();
    for api in data_apis
        .state()
        .iter()
        .filter(|api| api.namespace().as_deref() == Some(namespace.as_str()))
    {
        let names_secret = api
            .spec
            .database
            .connection_secret_ref
            .as_ref()
            .is_some_and(|r| r.name == name)
            || api
                .spec
                .auth
                .jwt
                .as_ref()
                .and_then(|j| j.hmac_secret_ref.as_ref())
                .is_some_and(|r| r.name == name);
        if names_secret {
            affected.push(ObjectRef::from(api.as_ref()));
        }
    }
    for role in roles
        .state()
        .iter()
        .filter(|role| role.namespace().as_deref() == Some(namespace.as_str()))
    {
        if role_uses_secret(role, &name) {
            affected.extend(
                role.spec
                    .data_apis
                    .iter()
                    .map(|api| ObjectRef::new(api).within(&namespace)),
            );
        }
    }
    affected
}

fn role_uses_secret(role: &ApiRole, secret: &str) -> bool {
    role.spec.api_keys.iter().any(|key| match &key.secret_ref {
        Some(reference) => reference.name == secret,
        None => generated_key_secret_name(&role.name_any(), &key.name) == secret,
    })
}

/// Runs both controllers for `namespace` (or every namespace) until a shutdown signal, with
/// metrics that nobody serves: for tests and embedders.
pub async fn run(client: Client, settings: Settings, namespace: Option<String>) {
    run_with_metrics(client, settings, namespace, Arc::default()).await;
}

/// Runs both controllers for `namespace` (or every namespace) until a shutdown signal,
/// recording reconciles into `metrics`.
pub async fn run_with_metrics(client: Client, settings: Settings, namespace: Option<String>, metrics: Arc<Metrics>) {
    let namespace = namespace.as_deref();
    let config = watcher::Config::default().any_semantic();
    let children = watcher::Config::default().labels(MANAGED_BY).any_semantic();

    // The DataApi reconciler reads roles from this cache rather than listing them each time.
    let (role_cache, role_writer) = reflector::store::<ApiRole>();
    let role_reflector = watcher(scoped::<ApiRole>(&client, namespace), config.clone())
        .default_backoff()
        .reflect(role_writer)
        .for_each(|_| future::ready(()));
    let data_api_controller = Controller::new(scoped::<DataApi>(&client, namespace), config.clone());
    let data_api_cache = data_api_controller.store();
    let role_controller = Controller::new(scoped::<ApiRole>(&client, namespace), config.clone());
    let bound_role_cache = role_controller.store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        role_cache.clone(),
        data_api_cache.clone(),
        metrics,
    ));

    let (apis_for_secrets, roles_for_secrets) = (data_api_cache.clone(), role_cache.clone());
    let cache_ready = role_cache.clone();
    let data_apis = data_api_controller
        .owns(scoped::<Deployment>(&client, namespace), children.clone())
        .owns(scoped::<Service>(&client, namespace), children.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, namespace), children.clone())
        .watches(
            scoped::<ApiRole>(&client, namespace),
            config.clone(),
            |role: ApiRole| {
                let namespace = role.namespace().unwrap_or_default();
                role.spec
                    .data_apis
                    .iter()
                    .map(|api| ObjectRef::new(api).within(&namespace))
                    .collect::<Vec<_>>()
            },
        )
        // Metadata only: the operator never keeps Secret values in memory.
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, namespace),
            config.clone(),
            move |secret| data_apis_for_secret(&secret, &apis_for_secrets, &roles_for_secrets),
        )
        .shutdown_on_signal()
        .run(dataapi::reconcile, dataapi::error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let roles_for_keys = bound_role_cache.clone();
    let roles = role_controller
        .watches(
            scoped::<DataApi>(&client, namespace),
            config.clone(),
            move |api: DataApi| {
                let namespace = api.namespace().unwrap_or_default();
                let name = api.name_any();
                bound_role_cache
                    .state()
                    .iter()
                    .filter(|role| {
                        role.namespace().as_deref() == Some(namespace.as_str()) && role.spec.data_apis.contains(&name)
                    })
                    .map(|role| ObjectRef::from(role.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, namespace),
            config.clone(),
            move |secret| {
                let name = secret.name_any();
                let namespace = secret.namespace().unwrap_or_default();
                roles_for_keys
                    .state()
                    .iter()
                    .filter(|role| {
                        role.namespace().as_deref() == Some(namespace.as_str()) && role_uses_secret(role, &name)
                    })
                    .map(|role| ObjectRef::from(role.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(apirole::reconcile, apirole::error_policy, ctx)
        .for_each(|_| future::ready(()));

    info!(namespace = namespace.unwrap_or("<all>"), "controllers started");
    let controllers = async move {
        // Reconciling a DataApi before the role cache has its first list would drop its roles.
        if cache_ready.wait_until_ready().await.is_ok() {
            future::join(data_apis, roles).await;
        }
    };
    futures::pin_mut!(controllers, role_reflector);
    future::select(controllers, role_reflector).await;
    info!("controllers stopped");
}
