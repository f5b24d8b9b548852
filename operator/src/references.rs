//! Who names whom among the watched objects: the Secrets each DataApi reads, the Secrets holding
//! each role's keys, and the DataApis each role binds.
//!
//! A Secret's watch event wakes the DataApis and roles that name it, and a DataApi's reconcile
//! gathers the roles that bind it. Scanning every cached DataApi and role for these costs
//! O(objects) per event, O(objects²) while a thousand objects converge together; these lookups
//! cost a hash lookup. The DataApi and ApiRole watches keep them current, each event applied just
//! before the watch's store sees it (see `lib.rs`), so they are never behind the stores. Callers
//! that need the objects themselves read them from the stores and check them there.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use sluice_crds::apirole::generated_key_secret_name;
use sluice_crds::{ApiRole, DataApi};

/// Names objects of kind `K` refer to, and the objects referring to each name, per namespace.
struct Referrers<K: Resource<DynamicType = ()>> {
    by_name: HashMap<String, HashMap<String, HashSet<ObjectRef<K>>>>,
    names_of: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()>> Default for Referrers<K> {
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
            names_of: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Referrers<K> {
    /// Records that `referrer` refers to `names` in its namespace, and to nothing else.
    fn set(&mut self, referrer: ObjectRef<K>, names: Vec<String>) {
        self.remove(&referrer);
        if names.is_empty() {
            return;
        }
        let namespace = referrer.namespace.clone().unwrap_or_default();
        let in_namespace = self.by_name.entry(namespace).or_default();
        for name in &names {
            in_namespace.entry(name.clone()).or_default().insert(referrer.clone());
        }
        self.names_of.insert(referrer, names);
    }

    fn remove(&mut self, referrer: &ObjectRef<K>) {
        let Some(names) = self.names_of.remove(referrer) else {
            return;
        };
        let namespace = referrer.namespace.as_deref().unwrap_or_default();
        let Some(in_namespace) = self.by_name.get_mut(namespace) else {
            return;
        };
        for name in names {
            if let Some(referrers) = in_namespace.get_mut(&name) {
                referrers.remove(referrer);
                if referrers.is_empty() {
                    in_namespace.remove(&name);
                }
            }
        }
        if in_namespace.is_empty() {
            self.by_name.remove(namespace);
        }
    }

    fn referring_to(&self, namespace: &str, name: &str) -> Vec<ObjectRef<K>> {
        self.by_name
            .get(namespace)
            .and_then(|in_namespace| in_namespace.get(name))
            .map(|referrers| referrers.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One relation kept from a watch's events: what each object refers to, by `names`.
struct Relation<K: Resource<DynamicType = ()>> {
    live: Referrers<K>,
    /// Built while the watch lists again, and swapped in when the list is complete, as the
    /// watch's store does: an object deleted while the watch was away must not stay.
    relisting: Option<Referrers<K>>,
    names: fn(&K) -> Vec<String>,
}

impl<K: Resource<DynamicType = ()>> Relation<K> {
    fn new(names: fn(&K) -> Vec<String>) -> Self {
        Self {
            live: Referrers::default(),
            relisting: None,
            names,
        }
    }

    fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(Referrers::default()),
            watcher::Event::InitApply(object) => {
                let names = (self.names)(object);
                self.relisting
                    .get_or_insert_with(Referrers::default)
                    .set(ObjectRef::from(object), names);
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.live = listed;
                }
            }
            watcher::Event::Apply(object) => self.live.set(ObjectRef::from(object), (self.names)(object)),
            watcher::Event::Delete(object) => self.live.remove(&ObjectRef::from(object)),
        }
    }
}

/// The Secrets a DataApi reads: its database's and its JWT HMAC key's.
fn secrets_read(api: &DataApi) -> Vec<String> {
    let database = api.spec.database.connection_secret_ref.as_ref();
    let jwt = api.spec.auth.jwt.as_ref().and_then(|jwt| jwt.hmac_secret_ref.as_ref());
    database
        .into_iter()
        .chain(jwt)
        .map(|reference| reference.name.clone())
        .collect()
}

/// The Secrets holding a role's keys: those it names, and those the operator generates for it.
fn key_secrets(role: &ApiRole) -> Vec<String> {
    let role_name = role.name_any();
    role.spec
        .api_keys
        .iter()
        .map(|key| match &key.secret_ref {
            Some(reference) => reference.name.clone(),
            None => generated_key_secret_name(&role_name, &key.name),
        })
        .collect()
}

fn data_apis_bound(role: &ApiRole) -> Vec<String> {
    role.spec.data_apis.clone()
}

/// The references among DataApis, roles and Secrets, kept from the DataApi and ApiRole watches.
pub struct References {
    secrets_of_data_apis: Mutex<Relation<DataApi>>,
    key_secrets_of_roles: Mutex<Relation<ApiRole>>,
    data_apis_of_roles: Mutex<Relation<ApiRole>>,
}

impl Default for References {
    fn default() -> Self {
        Self {
            secrets_of_data_apis: Mutex::new(Relation::new(secrets_read)),
            key_secrets_of_roles: Mutex::new(Relation::new(key_secrets)),
            data_apis_of_roles: Mutex::new(Relation::new(data_apis_bound)),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is a few map operations that cannot leave a relation half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl References {
    /// Applies an event of the DataApi watch.
    pub fn data_api_event(&self, event: &watcher::Event<DataApi>) {
        lock(&self.secrets_of_data_apis).apply(event);
    }

    /// Applies an event of the ApiRole watch.
    pub fn role_event(&self, event: &watcher::Event<ApiRole>) {
        lock(&self.key_secrets_of_roles).apply(event);
        lock(&self.data_apis_of_roles).apply(event);
    }

    /// DataApis reading Secret `name` of `namespace` for their database or JWT key.
    pub fn data_apis_reading(&self, namespace: &str, name: &str) -> Vec<ObjectRef<DataApi>> {
        lock(&self.secrets_of_data_apis).live.referring_to(namespace, name)
    }

    /// Roles whose keys live in Secret `name` of `namespace`.
    pub fn roles_keeping_keys_in(&self, namespace: &str, name: &str) -> Vec<ObjectRef<ApiRole>> {
        lock(&self.key_secrets_of_roles).live.referring_to(namespace, name)
    }

    /// Roles binding DataApi `name` of `namespace`.
    pub fn roles_binding(&self, namespace: &str, name: &str) -> Vec<ObjectRef<ApiRole>> {
        lock(&self.data_apis_of_roles).live.referring_to(namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn role(name: &str, data_apis: &[&str], keys: serde_json::Value) -> ApiRole {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ApiRole",
            "metadata": { "name": name, "namespace": "team-a" },
            "spec": { "dataApis": data_apis, "apiKeys": keys },
        }))
        .expect("a valid ApiRole")
    }

    fn data_api(name: &str, secret: &str) -> DataApi {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "DataApi",
            "metadata": { "name": name, "namespace": "team-a" },
            "spec": { "database": { "engine": "postgres", "connectionSecretRef": { "name": secret, "key": "url" } } },
        }))
        .expect("a valid DataApi")
    }

    fn names<K: Resource<DynamicType = ()>>(mut references: Vec<ObjectRef<K>>) -> Vec<String> {
        references.sort_by(|a, b| a.name.cmp(&b.name));
        references.into_iter().map(|reference| reference.name).collect()
    }

    #[test]
    fn a_role_is_found_by_the_data_apis_it_binds_and_the_secrets_of_its_keys() {
        let references = References::default();
        let keys = json!([{ "name": "ci" }, { "name": "mine", "secretRef": { "name": "own", "key": "k" } }]);
        references.role_event(&watcher::Event::Apply(role("reader", &["orders", "shop"], keys)));

        assert_eq!(names(references.roles_binding("team-a", "orders")), ["reader"]);
        assert_eq!(names(references.roles_binding("team-a", "shop")), ["reader"]);
        assert_eq!(
            names(references.roles_keeping_keys_in("team-a", "reader-key-ci")),
            ["reader"]
        );
        assert_eq!(names(references.roles_keeping_keys_in("team-a", "own")), ["reader"]);
        assert!(references.roles_binding("team-b", "orders").is_empty());
        assert!(references.roles_keeping_keys_in("team-a", "reader-key-mine").is_empty());
    }

    #[test]
    fn a_changed_role_is_found_only_by_what_it_names_now() {
        let references = References::default();
        references.role_event(&watcher::Event::Apply(role(
            "reader",
            &["orders"],
            json!([{ "name": "a" }]),
        )));
        references.role_event(&watcher::Event::Apply(role("writer", &["orders"], json!([]))));
        references.role_event(&watcher::Event::Apply(role(
            "reader",
            &["shop"],
            json!([{ "name": "b" }]),
        )));

        assert_eq!(names(references.roles_binding("team-a", "orders")), ["writer"]);
        assert_eq!(names(references.roles_binding("team-a", "shop")), ["reader"]);
        assert!(references.roles_keeping_keys_in("team-a", "reader-key-a").is_empty());
        assert_eq!(
            names(references.roles_keeping_keys_in("team-a", "reader-key-b")),
            ["reader"]
        );

        references.role_event(&watcher::Event::Delete(role("writer", &["orders"], json!([]))));
        assert!(references.roles_binding("team-a", "orders").is_empty());
    }

    #[test]
    fn a_data_api_is_found_by_the_secrets_it_reads() {
        let references = References::default();
        references.data_api_event(&watcher::Event::Apply(data_api("orders", "db")));
        references.data_api_event(&watcher::Event::Apply(data_api("shop", "db")));

        assert_eq!(names(references.data_apis_reading("team-a", "db")), ["orders", "shop"]);

        references.data_api_event(&watcher::Event::Apply(data_api("shop", "other-db")));
        assert_eq!(names(references.data_apis_reading("team-a", "db")), ["orders"]);
        assert_eq!(names(references.data_apis_reading("team-a", "other-db")), ["shop"]);
    }

    #[test]
    fn a_relist_replaces_what_was_known_once_it_is_complete() {
        let references = References::default();
        references.role_event(&watcher::Event::Apply(role("gone", &["orders"], json!([]))));
        references.role_event(&watcher::Event::Init);
        references.role_event(&watcher::Event::InitApply(role("reader", &["orders"], json!([]))));

        // Until the list is complete, the last complete view answers.
        assert_eq!(names(references.roles_binding("team-a", "orders")), ["gone"]);

        references.role_event(&watcher::Event::InitDone);
        assert_eq!(names(references.roles_binding("team-a", "orders")), ["reader"]);
    }
}
