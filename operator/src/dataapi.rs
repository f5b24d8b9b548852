//! The DataApi controller: dereference Secrets and roles → resolve the config → apply the
//! children with server-side apply → write status only when it changed.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_crds::apirole::generated_key_secret_name;
use sluice_crds::common::SecretKeyRef;
use sluice_crds::{ApiRole, DataApi, DataApiStatus, KeyHashes, RuntimeConfig, resolve};
use tracing::{info, instrument, warn};

use crate::applied;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Doing, Error};
use crate::keys::KEY_DATA_KEY;
use crate::metrics::ControllerKind;
use crate::resources::{self, ChildNames, PodInputs, RESTART_HASH_ANNOTATION};
use crate::secrets::{Found, ValueDigests};
use crate::status::{self, Decided, Rollout, reason};

/// How long a DataApi may wait for the ApiRole controller to generate a bound role's API key
/// before the wait is reported (`ConfigValid=False`, reason `KeyPending`). Generating a key takes
/// the role controller one reconcile; reporting every such wait would flip a Ready DataApi to
/// not Ready whenever a role gains a key, and cost every new DataApi a status write.
const KEY_PENDING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a DataApi cannot be deployed as it stands; becomes `ConfigValid=False`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Everything needed to apply a valid DataApi.
struct Plan {
    config: RuntimeConfig,
    inputs: PodInputs,
    roles: Vec<String>,
}

/// Reconciles one DataApi.
#[instrument(skip_all, fields(dataapi = %api.name_any(), namespace = api.namespace().unwrap_or_default()))]
pub async fn reconcile(api: Arc<DataApi>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(ControllerKind::DataApi);
    ctx.forget_deleted_data_apis();
    let namespace = api.namespace().unwrap_or_default();
    let planned = plan(&api, &ctx, &namespace).await?;
    match &planned {
        Err(invalid) if invalid.reason == reason::KEY_PENDING => {
            let waited = ctx.key_pending_for(&api);
            if waited < KEY_PENDING_GRACE {
                // The ApiRole controller is generating the key, and its Secret's creation wakes
                // this DataApi. Nothing is wrong yet: the children and the status stay as they
                // are (a Ready DataApi stays Ready while a role gains a key).
                ctx.succeeded(&failure_key(&api));
                return Ok(Action::requeue(KEY_PENDING_GRACE - waited));
            }
        }
        _ => ctx.key_not_pending(&api),
    }
    let previous = ctx.written.current(&api);
    let mut next = DataApiStatus {
        config_secret: previous.config_secret.clone(),
        ..DataApiStatus::default()
    };

    let decided = match &planned {
        Ok(plan) => {
            let rollout = apply_children(&api, &ctx, &namespace, plan).await?;
            let names = ChildNames::for_data_api(&api.name_any());
            let urls = resources::urls(&api);
            next.url = Some(urls.base);
            next.rest_url = urls.rest;
            next.mcp_url = urls.mcp;
            next.openapi_url = urls.openapi;
            next.replicas = Some(rollout.desired);
            next.ready_replicas = Some(rollout.ready);
            next.bound_roles = plan.roles.clone();
            next.config_secret = Some(names.config_secret);
            status::workload_conditions(&rollout, &names.workload)
        }
        Err(invalid) => {
            let names = ChildNames::for_data_api(&api.name_any());
            let deployed = ctx.deployments.get(&child(&namespace, &names.workload));
            let rollout = deployed.as_deref().map(Rollout::of);
            if let Some(rollout) = &rollout {
                // The children are left as they are, so the pods keep serving the last valid
                // config at the addresses already reported.
                next.url = previous.url.clone();
                next.rest_url = previous.rest_url.clone();
                next.mcp_url = previous.mcp_url.clone();
                next.openapi_url = previous.openapi_url.clone();
                next.bound_roles = previous.bound_roles.clone();
                next.replicas = Some(rollout.desired);
                next.ready_replicas = Some(rollout.ready);
            }
            let deployed = rollout.as_ref().map(|rollout| (rollout, names.workload.as_str()));
            status::invalid_config_conditions(invalid.reason, invalid.message.clone(), deployed)
        }
    };
    announce_config_change(&api, &ctx, &previous, &decided).await;
    next.observed_generation = api.meta().generation;
    next.conditions = status::merge(&previous.conditions, decided, api.meta().generation, Timestamp::now());
    if next != previous {
        let patch = serde_json::json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "DataApi", "status": next });
        let written = Api::<DataApi>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &api.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .doing(|| "writing the DataApi's status".into())?;
        ctx.written.record(&api, next, written.metadata.resource_version);
    }
    ctx.succeeded(&failure_key(&api));
    Ok(Action::requeue(ctx.settings.resync))
}

/// Emits a Warning when the config turns invalid (or changes why), and a Normal event when it
/// turns valid again: on transitions only, never on a no-op reconcile.
async fn announce_config_change(api: &DataApi, ctx: &Context, previous: &DataApiStatus, decided: &[Decided]) {
    let Some(now) = decided.iter().find(|c| c.type_ == status::CONFIG_VALID) else {
        return;
    };
    let before = previous.conditions.iter().find(|c| c.type_ == status::CONFIG_VALID);
    let unchanged = before
        .is_some_and(|c| (c.status == "True") == now.status && c.reason == now.reason && c.message == now.message);
    // Waiting for the ApiRole controller to generate a key is part of every new DataApi's
    // start-up, not a problem to warn about; it resolves by itself.
    let pending_key = |reason: &str| reason == reason::KEY_PENDING;
    let never_announced_invalid = before.is_none_or(|c| c.status == "False" && pending_key(&c.reason));
    if unchanged || pending_key(now.reason) || (now.status && never_announced_invalid) {
        return;
    }
    let event = Event {
        type_: if now.status {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: now.reason.to_owned(),
        note: Some(truncate(&now.message, 1000)),
        action: "Resolve".into(),
        secondary: None,
    };
    publish(ctx, api, event).await;
}

async fn publish(ctx: &Context, api: &DataApi, event: Event) {
    if let Err(error) = ctx.recorder.publish(&event, &api.object_ref(&())).await {
        warn!(%error, reason = %event.reason, "could not publish an event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.char_indices()
        .take_while(|(i, _)| *i < max)
        .map(|(_, c)| c)
        .collect()
}

/// Dereferences Secrets and roles and resolves the config. `Ok(Err(_))` is a spec the user must
/// fix; `Err(_)` is an API failure worth retrying.
async fn plan(api: &DataApi, ctx: &Context, namespace: &str) -> Result<Result<Plan, Invalid>, Error> {
    let name = api.name_any();
    if let Err(message) = resources::check_name(&name) {
        return Ok(Err(Invalid::new(reason::INVALID_NAME, message)));
    }
    let database_url_digest = match &api.spec.database.connection_secret_ref {
        Some(reference) => {
            match secret_digests(ctx, namespace, reference, "spec.database.connectionSecretRef").await? {
                Ok(value) => Some(value.exact),
                Err(invalid) => return Ok(Err(invalid)),
            }
        }
        None => None,
    };
    let jwt_secret_digest = match api.spec.auth.jwt.as_ref().and_then(|jwt| jwt.hmac_secret_ref.as_ref()) {
        Some(reference) => match secret_digests(ctx, namespace, reference, "spec.auth.jwt.hmacSecretRef").await? {
            Ok(value) => Some(value.exact),
            Err(invalid) => return Ok(Err(invalid)),
        },
        None => None,
    };
    let extra_volumes = match resources::pod_volumes(api) {
        Ok(volumes) => volumes,
        Err(message) => return Ok(Err(Invalid::new(reason::INVALID_SPEC, message))),
    };

    // Checked against the cached role too: the references may be one event ahead of the cache.
    let roles: Vec<ApiRole> = ctx
        .references
        .roles_binding(namespace, &name)
        .iter()
        .filter_map(|role| ctx.roles.get(role))
        .filter(|role| role.spec.data_apis.contains(&name))
        .map(|role| (*role).clone())
        .collect();
    let hashes = match key_hashes(ctx, namespace, &roles).await? {
        Ok(hashes) => hashes,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let config = match resolve(api, &roles, &hashes) {
        Ok(config) => config,
        Err(error) => return Ok(Err(Invalid::new(reason::INVALID_SPEC, error.to_string()))),
    };
    let mut role_names: Vec<String> = roles.iter().map(ResourceExt::name_any).collect();
    role_names.sort();
    Ok(Ok(Plan {
        config,
        inputs: PodInputs {
            image: api
                .spec
                .runtime
                .image
                .clone()
                .unwrap_or_else(|| ctx.settings.runtime_image.clone()),
            database_url_digest,
            jwt_secret_digest,
            extra_volumes,
        },
        roles: role_names,
    }))
}

/// The digests of the value `reference` names; a missing Secret or key is the user's to fix.
async fn secret_digests(
    ctx: &Context,
    namespace: &str,
    reference: &SecretKeyRef,
    field: &str,
) -> Result<Result<ValueDigests, Invalid>, Error> {
    let found = ctx
        .secrets
        .lookup(namespace, &reference.name, &reference.key)
        .await
        .doing(|| format!("reading Secret {namespace}/{}", reference.name))?;
    Ok(match found {
        Found::Value(digests) => Ok(digests),
        Found::NoSecret => Err(Invalid::new(
            reason::SECRET_NOT_FOUND,
            format!(
                "{field}: secret \"{}\" not found in namespace {namespace}; create it with key \"{}\"",
                reference.name, reference.key
            ),
        )),
        Found::NoKey => Err(Invalid::new(
            reason::SECRET_KEY_MISSING,
            format!(
                "{field}: secret \"{}\" has no key \"{}\" in namespace {namespace}",
                reference.name, reference.key
            ),
        )),
    })
}

/// Hashes every API key of `roles`: user-provided ones from their Secret, generated ones from
/// the Secret the ApiRole controller creates.
async fn key_hashes(ctx: &Context, namespace: &str, roles: &[ApiRole]) -> Result<Result<KeyHashes, Invalid>, Error> {
    let mut hashes = KeyHashes::new();
    for role in roles {
        let role_name = role.name_any();
        for key in &role.spec.api_keys {
            let digests = match &key.secret_ref {
                Some(reference) => {
                    let field = format!("ApiRole {role_name}: spec.apiKeys \"{}\".secretRef", key.name);
                    match secret_digests(ctx, namespace, reference, &field).await? {
                        Ok(digests) => digests,
                        Err(invalid) => return Ok(Err(invalid)),
                    }
                }
                None => {
                    let secret_name = generated_key_secret_name(&role_name, &key.name);
                    let generated = ctx
                        .secrets
                        .lookup(namespace, &secret_name, KEY_DATA_KEY)
                        .await
                        .doing(|| format!("reading Secret {namespace}/{secret_name}"))?;
                    match generated {
                        Found::Value(digests) => digests,
                        Found::NoSecret | Found::NoKey => {
                            return Ok(Err(Invalid::new(
                                reason::KEY_PENDING,
                                format!(
                                    "waiting for the operator to generate Secret \"{secret_name}\" for key \"{}\" of ApiRole {role_name}",
                                    key.name
                                ),
                            )));
                        }
                    }
                }
            };
            hashes.insert_hash(&role_name, &key.name, digests.trimmed);
        }
    }
    Ok(Ok(hashes))
}

/// Applies the config Secret, Deployment, Service and PodDisruptionBudget, each unless it is
/// already as last applied (see [`crate::applied`]); returns the Deployment's rollout state as
/// the API server reports it. The children do not depend on one another (pods wait for their
/// config Secret to appear), so they are applied at once: a reconcile takes one round trip to
/// the API server for them, not four.
async fn apply_children(api: &DataApi, ctx: &Context, namespace: &str, plan: &Plan) -> Result<Rollout, Error> {
    let names = ChildNames::for_data_api(&api.name_any());
    let owner = ObjectRef::from(api);
    let client = &ctx.client;

    let config_secret = async {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let live = ctx.secrets.metadata(namespace, &names.config_secret);
        let config = resources::config_secret(api, &plan.config);
        let live = live.as_ref().map(|secret| &secret.metadata);
        apply_unless_current(ctx, &owner, &secrets, &names.config_secret, &config, live).await
    };

    let deployment = async {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let existing = ctx.deployments.get(&child(namespace, &names.workload));
        let existing = existing.as_deref();
        let desired = resources::deployment(api, &plan.inputs);
        let live = existing.as_ref().map(|deployment| &deployment.metadata);
        Ok(
            match apply_unless_current(ctx, &owner, &deployments, &names.workload, &desired, live).await? {
                Some(applied) => {
                    announce_rollout(api, ctx, existing, &desired).await;
                    Rollout::of(&applied)
                }
                None => Rollout::of(existing.expect("an apply is skipped only for an existing Deployment")),
            },
        )
    };

    let service = async {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let live = ctx.services.get(&child(namespace, &names.workload));
        let live = live.as_ref().map(|service| &service.metadata);
        apply_unless_current(ctx, &owner, &services, &names.workload, &resources::service(api), live).await
    };

    let budget = async {
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
        let live = ctx.budgets.get(&child(namespace, &names.workload));
        match (resources::disruption_budget(api), live) {
            (Some(budget), live) => {
                let live = live.as_ref().map(|budget| &budget.metadata);
                apply_unless_current(ctx, &owner, &budgets, &names.workload, &budget, live).await?;
            }
            (None, Some(_)) => {
                let deleted = budgets.delete(&names.workload, &DeleteParams::default()).await;
                match deleted {
                    Ok(_) => info!("deleted the PodDisruptionBudget: one replica cannot tolerate a disruption budget"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(source) => {
                        return Err(Error::Kube {
                            action: format!("deleting PodDisruptionBudget {namespace}/{}", names.workload),
                            source,
                        });
                    }
                }
            }
            (None, None) => {}
        }
        Ok(())
    };

    let (_, rollout, _, ()) = futures::try_join!(config_secret, deployment, service, budget)?;
    Ok(rollout)
}

/// The child `name` of `namespace`, as its store names it.
fn child<K>(namespace: &str, name: &str) -> ObjectRef<K>
where
    K: kube::runtime::reflector::Lookup,
    K::DynamicType: Default,
{
    ObjectRef::new(name).within(namespace)
}

/// Applies `desired` unless it is what was last applied to the child and the child `live` has
/// not changed since; returns the applied object, or `None` when the apply was skipped.
async fn apply_unless_current<K>(
    ctx: &Context,
    owner: &ObjectRef<DataApi>,
    api: &Api<K>,
    name: &str,
    desired: &K,
    live: Option<&ObjectMeta>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let fingerprint = applied::fingerprint(desired);
    if live.is_some_and(|live| {
        ctx.applied
            .is_current(owner, <K as k8s_openapi::Resource>::KIND, fingerprint, live)
    }) {
        return Ok(None);
    }
    let result = apply(api, name, desired).await?;
    ctx.applied
        .record(owner, <K as k8s_openapi::Resource>::KIND, fingerprint, result.meta());
    Ok(Some(result))
}

async fn announce_rollout(api: &DataApi, ctx: &Context, existing: Option<&Deployment>, desired: &Deployment) {
    let restart_hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTART_HASH_ANNOTATION).cloned())
    };
    let event = match existing {
        None => Event {
            type_: EventType::Normal,
            reason: "Created".into(),
            note: Some(format!(
                "created the runtime Deployment, Service and config Secret for {}",
                api.name_any()
            )),
            action: "Apply".into(),
            secondary: None,
        },
        Some(existing) if restart_hash(existing) != restart_hash(desired) => Event {
            type_: EventType::Normal,
            reason: "RollingOut".into(),
            note: Some("the image, database connection or pool settings changed; rolling the runtime pods".into()),
            action: "Apply".into(),
            secondary: None,
        },
        Some(_) => return,
    };
    publish(ctx, api, event).await;
}

/// Server-side apply with the operator's field manager. Applying an unchanged object is a no-op
/// on the API server: no new resourceVersion, nothing for GitOps tools to see.
async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .doing(|| format!("applying {} {name}", K::kind(&())))
}

/// Logs the failure and retries `api` with exponential backoff.
pub fn error_policy(api: Arc<DataApi>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(ControllerKind::DataApi, error);
    let delay = ctx.backoff(&failure_key(&api));
    warn!(dataapi = %api.name_any(), %error, kind = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn failure_key(api: &DataApi) -> String {
    format!("DataApi/{}/{}", api.namespace().unwrap_or_default(), api.name_any())
}
