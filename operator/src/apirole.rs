//! The ApiRole controller: generates missing API keys, revokes keys removed from the spec,
//! and reports which DataApis the role is bound to.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use sluice_crds::apirole::generated_key_secret_name;
use sluice_crds::{ApiRole, ApiRoleStatus};
use tracing::{info, instrument, warn};

use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Doing, Error};
use crate::keys::{KEY_DATA_KEY, key_secret};
use crate::metrics::ControllerKind;
use crate::secrets::Found;
use crate::status::{self, Decided, reason};

/// Label on generated key Secrets naming their role, used to find keys to revoke.
pub const ROLE_LABEL: &str = "sluice.dev/api-role";
/// Label on generated key Secrets naming their key.
pub const KEY_LABEL: &str = "sluice.dev/api-key";

/// Reconciles one ApiRole.
#[instrument(skip_all, fields(apirole = %role.name_any(), namespace = role.namespace().unwrap_or_default()))]
pub async fn reconcile(role: Arc<ApiRole>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(ControllerKind::ApiRole);
    let namespace = role.namespace().unwrap_or_default();
    let role_name = role.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    let mut generated = Vec::new();
    let mut usable_keys = 0;
    let mut key_problems = Vec::new();
    for key in &role.spec.api_keys {
        match &key.secret_ref {
            None => {
                let name = generated_key_secret_name(&role_name, &key.name);
                ensure_generated_key(&secrets, &role, &ctx, &namespace, &key.name, &name).await?;
                generated.push(name);
                usable_keys += 1;
            }
            Some(reference) => {
                let found = ctx
                    .secrets
                    .lookup(&namespace, &reference.name, &reference.key)
                    .await
                    .doing(|| format!("reading Secret {namespace}/{}", reference.name))?;
                match found {
                    Found::Value(_) => usable_keys += 1,
                    Found::NoKey => key_problems.push(format!(
                        "key \"{}\": secret \"{}\" has no key \"{}\"",
                        key.name, reference.name, reference.key
                    )),
                    Found::NoSecret => {
                        key_problems.push(format!("key \"{}\": secret \"{}\" not found", key.name, reference.name))
                    }
                }
            }
        }
    }
    // Keys leave a role only through a spec change: a role still at its first generation has
    // none to revoke, and looking would mean going through every Secret for each new role.
    if role.meta().generation != Some(1) && !ctx.revoked_at_current_generation(&role) {
        revoke_removed_keys(&secrets, &role, &ctx).await?;
        ctx.revoked(&role);
    }

    let (bound, missing): (Vec<String>, Vec<String>) = role
        .spec
        .data_apis
        .iter()
        .cloned()
        .partition(|name| ctx.data_apis.get(&ObjectRef::new(name).within(&namespace)).is_some());
    let ready = if !missing.is_empty() {
        Decided::falsy(
            status::READY,
            reason::DATA_API_NOT_FOUND,
            format!(
                "spec.dataApis names {} not found in namespace {namespace}; create {} or remove {} from spec.dataApis",
                quoted(&missing),
                if missing.len() == 1 { "it" } else { "them" },
                if missing.len() == 1 { "it" } else { "them" },
            ),
        )
    } else if !key_problems.is_empty() {
        Decided::falsy(
            status::READY,
            reason::SECRET_NOT_FOUND,
            format!("spec.apiKeys: {}", key_problems.join("; ")),
        )
    } else {
        Decided::truthy(status::READY, reason::BOUND, format!("bound to {}", quoted(&bound)))
    };

    let previous = role.status.clone().unwrap_or_default();
    let next = ApiRoleStatus {
        observed_generation: role.meta().generation,
        conditions: status::merge(
            &previous.conditions,
            vec![ready],
            role.meta().generation,
            Timestamp::now(),
        ),
        bound_data_apis: bound,
        keys: Some(usable_keys),
        key_secrets: generated,
    };
    if next != previous {
        let patch = serde_json::json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "ApiRole", "status": next });
        Api::<ApiRole>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &role_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .doing(|| "writing the ApiRole's status".into())?;
    }
    // The DataApi cache and the watch that wakes a role when a DataApi appears are separate
    // streams: a role woken by a new DataApi may not find it yet, so it looks again soon (backing
    // off, for a DataApi that really is missing) rather than at the next resync.
    if !missing.is_empty() {
        return Ok(Action::requeue(ctx.backoff(&failure_key(&role))));
    }
    ctx.succeeded(&failure_key(&role));
    Ok(Action::requeue(ctx.settings.resync))
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// Creates the key's Secret when it does not exist. Never overwrites: a key is regenerated
/// only when its Secret is deleted (the documented rotation).
async fn ensure_generated_key(
    secrets: &Api<Secret>,
    role: &ApiRole,
    ctx: &Context,
    namespace: &str,
    key_name: &str,
    secret_name: &str,
) -> Result<(), Error> {
    let present = ctx
        .secrets
        .lookup(namespace, secret_name, KEY_DATA_KEY)
        .await
        .doing(|| format!("reading Secret {namespace}/{secret_name}"))?;
    if matches!(present, Found::Value(_)) {
        return Ok(());
    }
    let created = secrets
        .create(
            &PostParams::default(),
            &key_secret(role, key_name, &sluice_crds::generate_api_key()),
        )
        .await;
    match created {
        Ok(created) => {
            // The DataApis bound to this role hash the key next: from memory, not a read back.
            ctx.secrets.remember(&created);
            info!(secret = secret_name, "generated an API key");
            let event = Event {
                type_: EventType::Normal,
                reason: "KeyGenerated".into(),
                note: Some(format!(
                    "generated API key \"{key_name}\" into Secret \"{secret_name}\""
                )),
                action: "GenerateKey".into(),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &role.object_ref(&())).await {
                warn!(%error, "could not publish an event");
            }
            Ok(())
        }
        // Another reconcile (or a user) created it first; it is kept as it is.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("creating Secret {secret_name}"),
            source,
        }),
    }
}

/// Deletes generated key Secrets whose key no longer appears in the spec, revoking the key.
/// The role's key Secrets are found in the watched Secrets' metadata: no list request.
async fn revoke_removed_keys(secrets: &Api<Secret>, role: &ApiRole, ctx: &Context) -> Result<(), Error> {
    let namespace = role.meta().namespace.as_deref().unwrap_or_default();
    let role_name = role.name_any();
    let wanted: BTreeSet<&str> = role
        .spec
        .api_keys
        .iter()
        .filter(|k| k.secret_ref.is_none())
        .map(|k| k.name.as_str())
        .collect();
    let uid = role.meta().uid.as_ref();
    let removed = ctx.secrets.all_metadata().into_iter().filter(|secret| {
        let label = |name: &str| secret.labels().get(name).map(String::as_str);
        crate::in_namespace(secret.as_ref(), namespace)
            && label(ROLE_LABEL) == Some(role_name.as_str())
            && secret.owner_references().iter().any(|owner| Some(&owner.uid) == uid)
            && !wanted.contains(label(KEY_LABEL).unwrap_or_default())
    });
    for secret in removed {
        let name = secret.name_any();
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(secret = %name, "revoked an API key removed from the spec"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("deleting Secret {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Logs the failure and retries `role` with exponential backoff.
pub fn error_policy(role: Arc<ApiRole>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(ControllerKind::ApiRole, error);
    let delay = ctx.backoff(&failure_key(&role));
    warn!(apirole = %role.name_any(), %error, kind = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn failure_key(role: &ApiRole) -> String {
    format!("ApiRole/{}/{}", role.namespace().unwrap_or_default(), role.name_any())
}
