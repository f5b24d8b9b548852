//! State shared by every reconcile: the client, settings, the watched objects (roles, DataApis,
//! Secrets' metadata, the DataApis' children), the event recorder, metrics and per-object failure
//! counts for backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, GetParams, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use sluice_crds::{ApiRole, DataApi};

use crate::applied::AppliedChildren;
use crate::metrics::Metrics;
use crate::references::References;
use crate::secrets::SecretDigests;
use crate::written::WrittenStatuses;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// Operator settings from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the runtime pods when a DataApi names none.
    pub runtime_image: String,
    /// How often an unchanged object is reconciled again, as a safety net behind the watches.
    pub resync: Duration,
    /// Reconciles in flight at once, per controller: each makes several API requests, and an
    /// unbounded number of them (thousands of objects at start-up) would have the API server
    /// throttle the operator and the operator hold a connection per request.
    pub concurrency: u16,
}

/// The objects the controllers read, as their watches last saw them: a reconcile reads these
/// rather than asking the API server.
pub struct Caches {
    /// ApiRoles.
    pub roles: Store<ApiRole>,
    /// DataApis.
    pub data_apis: Store<DataApi>,
    /// Secrets' metadata (no values, no annotations).
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// The DataApis' Deployments, for their rollout state.
    pub deployments: Store<Deployment>,
    /// The DataApis' Services' metadata.
    pub services: Store<PartialObjectMeta<Service>>,
    /// The DataApis' PodDisruptionBudgets' metadata.
    pub budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// Who names whom among the DataApis, roles and Secrets, kept by the same watches.
    pub references: Arc<References>,
}

/// Shared by every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Cached ApiRoles, kept current by a watch.
    pub roles: Store<ApiRole>,
    /// Cached DataApis, kept current by a watch.
    pub data_apis: Store<DataApi>,
    /// Who names whom among the cached DataApis, roles and Secrets.
    pub references: Arc<References>,
    /// Digests of the Secrets' values, read once per Secret version.
    pub secrets: SecretDigests,
    /// The DataApis' Deployments, kept current by a watch.
    pub deployments: Store<Deployment>,
    /// The DataApis' Services' metadata, kept current by a watch.
    pub services: Store<PartialObjectMeta<Service>>,
    /// The DataApis' PodDisruptionBudgets' metadata, kept current by a watch.
    pub budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Reconcile counts, failures and durations.
    pub metrics: Arc<Metrics>,
    /// What was last applied to each DataApi's children.
    pub applied: AppliedChildren,
    /// The last status written to each DataApi, until the cache shows it.
    pub written: WrittenStatuses,
    failures: Mutex<HashMap<String, u32>>,
    /// The generation of each ApiRole whose removed keys were last revoked: keys leave a role
    /// only through a spec change, so its key Secrets are looked for once per generation, not
    /// on every reconcile.
    revoked_at: Mutex<HashMap<ObjectRef<ApiRole>, i64>>,
    /// When each DataApi was first seen waiting for a generated API key, while it still is.
    key_pending_since: Mutex<HashMap<ObjectRef<DataApi>, Instant>>,
}

impl Context {
    /// A context for controllers reading `caches`, recording into `metrics`.
    pub fn new(client: Client, settings: Settings, caches: Caches, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Self {
            secrets: SecretDigests::new(client.clone(), caches.secrets),
            client,
            settings,
            roles: caches.roles,
            data_apis: caches.data_apis,
            references: caches.references,
            deployments: caches.deployments,
            services: caches.services,
            budgets: caches.budgets,
            recorder,
            metrics,
            applied: AppliedChildren::default(),
            written: WrittenStatuses::default(),
            failures: Mutex::default(),
            revoked_at: Mutex::default(),
            key_pending_since: Mutex::default(),
        }
    }

    /// How long `api` has been waiting for a generated API key, counting from the first reconcile
    /// that found it waiting; forgets deleted DataApis once the record outgrows those that exist.
    pub fn key_pending_for(&self, api: &DataApi) -> Duration {
        let mut since = self
            .key_pending_since
            .lock()
            .expect("the pending-key record is never poisoned");
        let waited = since.entry(ObjectRef::from(api)).or_insert_with(Instant::now).elapsed();
        if since.len() > self.data_apis.len() + 1 {
            since.retain(|api, _| self.data_apis.get(api).is_some());
        }
        waited
    }

    /// Records that `api` is no longer waiting for a generated API key.
    pub fn key_not_pending(&self, api: &DataApi) {
        self.key_pending_since
            .lock()
            .expect("the pending-key record is never poisoned")
            .remove(&ObjectRef::from(api));
    }

    /// Records a failed reconcile of `key` and returns how long to wait before the next try:
    /// exponential from 1 s, capped at 5 minutes, so one broken object never floods the API.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failure counts are never poisoned");
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        backoff_delay(*count)
    }

    /// Drops the records of applied children and written statuses of deleted DataApis, once
    /// they hold more entries than the DataApis that exist could have (config Secret,
    /// Deployment, Service, budget; one status).
    pub fn forget_deleted_data_apis(&self) {
        const CHILDREN_PER_DATA_API: usize = 4;
        if self.applied.len() > CHILDREN_PER_DATA_API * self.data_apis.len() {
            self.applied.retain_owners(|owner| self.data_apis.get(owner).is_some());
        }
        if self.written.len() > self.data_apis.len() {
            self.written.retain(|api| self.data_apis.get(api).is_some());
        }
    }

    /// Whether the keys removed from `role` at its current generation were already revoked.
    pub fn revoked_at_current_generation(&self, role: &ApiRole) -> bool {
        let revoked = self.revoked_at.lock().expect("the revocation record is never poisoned");
        role.meta().generation.is_some() && revoked.get(&ObjectRef::from(role)) == role.meta().generation.as_ref()
    }

    /// Records that the keys removed from `role` at its current generation are revoked, and
    /// forgets deleted roles once the record outgrows the roles that exist.
    pub fn revoked(&self, role: &ApiRole) {
        let mut revoked = self.revoked_at.lock().expect("the revocation record is never poisoned");
        if let Some(generation) = role.meta().generation {
            revoked.insert(ObjectRef::from(role), generation);
        }
        if revoked.len() > self.roles.len() + 1 {
            revoked.retain(|role, _| self.roles.get(role).is_some());
        }
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .expect("failure counts are never poisoned")
            .remove(key);
    }
}

/// Reads the object `name` from the API server's watch cache (`resourceVersion=0`) rather than
/// from etcd: a reconcile may see it slightly late, and is triggered again by the watch when the
/// change arrives, while the read costs the API server no etcd round trip.
pub async fn get_cached<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, &GetParams::any()).await {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(error),
    }
}

/// The wait after the `failures`-th consecutive failure: 1 s, 2 s, 4 s, … capped at 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_at_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();

        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
