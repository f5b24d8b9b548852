//! The Sluice operator: controllers that turn DataApi and ApiRole objects into running,
//! governed API pods, with honest status.
//!
//! - [`dataapi`]: dereference → resolve → apply children → status.
//! - [`apirole`]: generate and revoke API keys, report bindings.
//! - [`resources`]: the children as pure values; [`status`]: condition logic; [`keys`]: key material.
//! - [`applied`]: what was last applied to each child, so unchanged children get no write.
//! - [`references`]: who names whom among DataApis, roles and Secrets, for the watch events.
//! - [`leader`]: leader election on a Lease; [`metrics`]: Prometheus metrics and health endpoints.

pub mod apirole;
pub mod applied;
pub mod context;
pub mod dataapi;
pub mod error;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod references;
pub mod resources;
pub mod secrets;
pub mod status;
pub mod written;

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, controller, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use sluice_crds::{ApiRole, DataApi};
use tracing::{info, warn};

pub use context::{Caches, Context, Settings};
pub use metrics::Metrics;
use references::References;

/// How long a controller waits after an object's last trigger before reconciling it: a new
/// DataApi sees a burst of events (its own status, its keys, its Deployment's rollout) that one
/// reconcile can answer.
const RECONCILE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Label every child the operator applies carries; the child watches select on it.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=sluice-operator";

/// Whether `object` lives in `namespace`. The search for a role's revoked keys filters every
/// watched Secret with it, so it compares in place rather than copying the namespace out.
pub(crate) fn in_namespace<K: Resource>(object: &K, namespace: &str) -> bool {
    object.meta().namespace.as_deref() == Some(namespace)
}

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
    references: &References,
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
    affected.extend(references.data_apis_reading(&namespace, &name));
    for role in references
        .roles_keeping_keys_in(&namespace, &name)
        .iter()
        .filter_map(|role| roles.get(role))
    {
        affected.extend(
            role.spec
                .data_apis
                .iter()
                .map(|api| ObjectRef::new(api).within(&namespace)),
        );
    }
    affected
}

/// Runs both controllers for `namespace` (or every namespace) until a shutdown signal, with
/// metrics that nobody serves: for tests and embedders.
pub async fn run(client: Client, settings: Settings, namespace: Option<String>) {
    run_with_metrics(client, settings, namespace, Arc::default()).await;
}

/// Runs both controllers for `namespace` (or every namespace) until a shutdown signal,
/// recording reconciles into `metrics`.
///
/// Each controller is woken by its objects' spec changes (new objects, a moved generation), not
/// by their status: a reconcile that writes status would otherwise wake itself, and with it every
/// role of a DataApi, for nothing. A DataApi wakes on its children's changes (a Deployment's
/// rollout), on its roles' changes, and on the Secrets it reads; a role wakes on its DataApis
/// appearing or going, and on its key Secrets.
///
/// Reconciles read what they need from watches (Secrets' metadata, the children) rather than
/// asking the API server: at a thousand DataApis the API server, not the operator, is what
/// limits how fast they all become ready. The controllers start once those watches have listed.
pub async fn run_with_metrics(client: Client, settings: Settings, namespace: Option<String>, metrics: Arc<Metrics>) {
    let namespace = namespace.as_deref();
    let controller_config = controller::Config::default()
        .concurrency(settings.concurrency)
        .debounce(RECONCILE_DEBOUNCE);
    let config = watcher::Config::default().any_semantic();
    let children = watcher::Config::default().labels(MANAGED_BY).any_semantic();

    // The DataApi reconciler reads roles from this cache rather than listing them each time.
    // The references are updated from each event just before the store, so a lookup never
    // misses an object the store already has.
    let references = Arc::new(References::default());
    let (role_cache, role_writer) = reflector::store::<ApiRole>();
    let role_references = references.clone();
    let role_specs = watcher(scoped::<ApiRole>(&client, namespace), config.clone())
        .default_backoff()
        .inspect_ok(move |event| role_references.role_event(event))
        .reflect(role_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let role_controller = Controller::for_stream(role_specs, role_cache.clone()).with_config(controller_config.clone());
    let (data_api_cache, data_api_writer) = reflector::store::<DataApi>();
    let data_api_references = references.clone();
    let data_api_specs = watcher(scoped::<DataApi>(&client, namespace), config.clone())
        .default_backoff()
        .inspect_ok(move |event| data_api_references.data_api_event(event))
        .reflect(data_api_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let data_api_controller =
        Controller::for_stream(data_api_specs, data_api_cache.clone()).with_config(controller_config);

    // Metadata only, annotations dropped too (a client-side `kubectl apply` copies the values
    // into one): the operator never keeps Secret values in memory.
    let secrets = Shared::<PartialObjectMeta<Secret>>::new();
    let (secrets_for_data_apis, secrets_for_roles) = (secrets.subscribe(), secrets.subscribe());
    let secret_metadata = secrets.store.clone();
    let secret_watch = secrets.reflect(
        watcher(scoped::<PartialObjectMeta<Secret>>(&client, namespace), config.clone()).modify(strip_metadata),
    );
    let deployments = Shared::<Deployment>::new();
    let deployment_changes = deployments.subscribe();
    let deployment_cache = deployments.store.clone();
    let deployment_watch = deployments
        .reflect(watcher(scoped::<Deployment>(&client, namespace), children.clone()).modify(keep_rollout_state));
    let services = Shared::<PartialObjectMeta<Service>>::new();
    let service_changes = services.subscribe();
    let service_cache = services.store.clone();
    let service_watch = services.reflect(
        watcher(
            scoped::<PartialObjectMeta<Service>>(&client, namespace),
            children.clone(),
        )
        .modify(strip_metadata),
    );
    let budgets = Shared::<PartialObjectMeta<PodDisruptionBudget>>::new();
    let budget_changes = budgets.subscribe();
    let budget_cache = budgets.store.clone();
    let budget_watch = budgets.reflect(
        watcher(
            scoped::<PartialObjectMeta<PodDisruptionBudget>>(&client, namespace),
            children,
        )
        .modify(strip_metadata),
    );
    let watches_listed = {
        let (secrets, deployments) = (secret_metadata.clone(), deployment_cache.clone());
        let (services, budgets) = (service_cache.clone(), budget_cache.clone());
        async move {
            future::try_join4(
                secrets.wait_until_ready(),
                deployments.wait_until_ready(),
                services.wait_until_ready(),
                budgets.wait_until_ready(),
            )
            .await
            .is_ok()
        }
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        Caches {
            roles: role_cache.clone(),
            data_apis: data_api_cache.clone(),
            secrets: secret_metadata,
            deployments: deployment_cache,
            services: service_cache,
            budgets: budget_cache,
            references: references.clone(),
        },
        metrics,
    ));

    let (references_for_secrets, roles_for_secrets) = (references.clone(), role_cache.clone());
    let data_apis = data_api_controller
        .owns_shared_stream(deployment_changes)
        .owns_shared_stream(service_changes)
        .owns_shared_stream(budget_changes)
        // Every change, status included: this watch and the role cache are separate streams, so
        // a DataApi woken by a new role may not find it in the cache yet; the role's first status
        // write wakes it again.
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
        .watches_shared_stream(secrets_for_data_apis, move |secret| {
            data_apis_for_secret(&secret, &references_for_secrets, &roles_for_secrets)
        })
        .shutdown_on_signal()
        .run(dataapi::reconcile, dataapi::error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let (references_for_apis, references_for_keys) = (references.clone(), references);
    let data_api_changes = watcher(scoped::<DataApi>(&client, namespace), config.clone()).default_backoff();
    let roles = role_controller
        .watches_stream(created_or_deleted(data_api_changes), move |api: DataApi| {
            references_for_apis.roles_binding(&api.namespace().unwrap_or_default(), &api.name_any())
        })
        .watches_shared_stream(secrets_for_roles, move |secret| {
            references_for_keys.roles_keeping_keys_in(&secret.namespace().unwrap_or_default(), &secret.name_any())
        })
        .shutdown_on_signal()
        .run(apirole::reconcile, apirole::error_policy, ctx)
        .for_each(|_| future::ready(()));

    // Reconciling a DataApi before the role cache has its first list would drop its roles; the
    // role controller fills that cache, so it runs from the start.
    let data_apis = async move {
        if role_cache.wait_until_ready().await.is_ok() {
            data_apis.await;
        }
    };
    let controllers = async move {
        if watches_listed.await {
            info!(namespace = namespace.unwrap_or("<all>"), "controllers started");
            future::join(data_apis, roles).await;
        }
    };
    let watches = future::join4(secret_watch, deployment_watch, service_watch, budget_watch);
    // The shared watches run until the controllers stop (on a shutdown signal).
    future::select(std::pin::pin!(controllers), std::pin::pin!(watches)).await;
    info!("controllers stopped");
}

/// Keeps what a reconcile reads of a Deployment: its identity, replicas, the pod template's
/// annotations (the restart hash) and its status. The pod spec, most of a Deployment's size, is
/// dropped: a thousand of them are held at once.
fn keep_rollout_state(deployment: &mut Deployment) {
    strip_metadata(deployment);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template.spec = None;
    }
}

/// Keeps the identity, labels and owners of a Secret or child, the fields a reconcile reads.
fn strip_metadata<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().clear();
}

/// How many watch events a shared watch holds for a controller that has not taken them yet
/// before it waits: a burst (a relist of every Secret) then paces the watch, not memory.
const SHARED_WATCH_BUFFER: usize = 1024;

/// A watch whose store the reconciles read and whose events wake one or more controllers.
struct Shared<K: reflector::Lookup + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    store: Store<K>,
    writer: reflector::store::Writer<K>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn new() -> Self {
        let (store, writer) = reflector::store_shared(SHARED_WATCH_BUFFER);
        Self { store, writer }
    }

    /// The objects the watch changes, for one controller's triggers.
    fn subscribe(&self) -> reflector::ReflectHandle<K> {
        self.writer.subscribe().expect("a shared store can be subscribed to")
    }

    /// Runs `events` into the store and the subscribers until dropped, retrying with backoff.
    fn reflect(
        self,
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    ) -> impl std::future::Future<Output = ()> + Send {
        let kind = K::kind(&()).into_owned();
        events
            .default_backoff()
            .reflect_shared(self.writer)
            .for_each(move |event| {
                if let Err(error) = event {
                    warn!(%error, kind, "watch failed; retrying");
                }
                future::ready(())
            })
    }
}

/// The objects of a watch when they appear and when they are deleted, without the updates in
/// between: what a role's binding depends on. Objects deleted while the watch was disconnected
/// go unnoticed until the next resync.
fn created_or_deleted<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource<DynamicType = ()>,
{
    let mut seen: HashSet<ObjectRef<K>> = HashSet::new();
    events.filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                seen.insert(ObjectRef::from(&object)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(&ObjectRef::from(&object));
                Some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        };
        future::ready(changed)
    })
}
