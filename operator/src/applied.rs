//! What the operator last applied to each child of a DataApi, so that reconciling an unchanged
//! DataApi sends no write. Server-side apply of an identical object changes nothing on the
//! server, but it is still a write request: one per child per DataApi on every resync and on
//! every event that wakes the reconciler.
//!
//! An apply is skipped only when the desired object is the one last applied and the live child
//! has not changed since: same uid (not recreated) and same generation, or, for kinds without a
//! generation, same resourceVersion. A generation moves only when the spec changes, so a status
//! update by another controller (a Deployment's rollout) does not cause an apply, while someone
//! else's edit of the spec does. The record lives in memory: a new process applies everything
//! once.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use sluice_crds::DataApi;

/// One child: its owner and kind (a DataApi has at most one child of each kind).
type ChildKey = (ObjectRef<DataApi>, &'static str);

/// The last apply of one child.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    desired: u64,
    uid: Option<String>,
    version: Option<String>,
}

/// The last apply of every child, shared by all reconciles.
#[derive(Debug, Default)]
pub struct AppliedChildren {
    entries: Mutex<HashMap<ChildKey, Applied>>,
}

/// A fingerprint of a desired object, to tell whether it changed since the last apply.
pub fn fingerprint<K: Serialize>(desired: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    // Serialising a value built by the operator cannot fail: every map key is a string.
    serde_json::to_vec(desired).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

/// What moves when someone else changes the object: the generation where the kind has one
/// (only spec changes move it), else the resourceVersion (every change moves it).
fn version(meta: &ObjectMeta) -> Option<String> {
    meta.generation
        .map(|generation| format!("generation {generation}"))
        .or_else(|| meta.resource_version.clone())
}

impl AppliedChildren {
    /// Whether `desired` was the last object applied to the child `kind` of `owner`, and the
    /// child `live` has not changed since.
    pub fn is_current(&self, owner: &ObjectRef<DataApi>, kind: &'static str, desired: u64, live: &ObjectMeta) -> bool {
        let entries = self
            .entries
            .lock()
            .expect("the applied-children record is never poisoned");
        entries.get(&(owner.clone(), kind)).is_some_and(|applied| {
            applied.desired == desired
                && applied.uid == live.uid
                && applied.version.is_some()
                && applied.version == version(live)
        })
    }

    /// Records that `desired` was applied to the child `kind` of `owner`, which the API server
    /// then returned as `applied`.
    pub fn record(&self, owner: &ObjectRef<DataApi>, kind: &'static str, desired: u64, applied: &ObjectMeta) {
        let entry = Applied {
            desired,
            uid: applied.uid.clone(),
            version: version(applied),
        };
        self.entries
            .lock()
            .expect("the applied-children record is never poisoned")
            .insert((owner.clone(), kind), entry);
    }

    /// Forgets the children of DataApis for which `exists` is false: they were deleted, and the
    /// garbage collector deletes their children.
    pub fn retain_owners(&self, exists: impl Fn(&ObjectRef<DataApi>) -> bool) {
        self.entries
            .lock()
            .expect("the applied-children record is never poisoned")
            .retain(|(owner, _), _| exists(owner));
    }

    /// How many children are recorded.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .expect("the applied-children record is never poisoned")
            .len()
    }

    /// Whether no child is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, generation: Option<i64>, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.to_owned()),
            generation,
            resource_version: Some(resource_version.to_owned()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_unchanged_child_with_the_same_desired_object_is_current() {
        let owner = ObjectRef::new("sales").within("team-a");
        let record = AppliedChildren::default();
        record.record(&owner, "Deployment", 7, &meta("u1", Some(3), "100"));

        // A status update moved the resourceVersion, not the generation.
        assert!(record.is_current(&owner, "Deployment", 7, &meta("u1", Some(3), "105")));
        assert!(
            !record.is_current(&owner, "Deployment", 8, &meta("u1", Some(3), "105")),
            "desired changed"
        );
        assert!(
            !record.is_current(&owner, "Deployment", 7, &meta("u1", Some(4), "106")),
            "spec edited"
        );
        assert!(
            !record.is_current(&owner, "Deployment", 7, &meta("u2", Some(3), "100")),
            "recreated"
        );
        assert!(
            !record.is_current(&owner, "Service", 7, &meta("u1", Some(3), "100")),
            "another child"
        );
    }

    #[test]
    fn kinds_without_a_generation_compare_resource_versions() {
        let owner = ObjectRef::new("sales").within("team-a");
        let record = AppliedChildren::default();
        record.record(&owner, "Secret", 1, &meta("u1", None, "100"));

        assert!(record.is_current(&owner, "Secret", 1, &meta("u1", None, "100")));
        assert!(!record.is_current(&owner, "Secret", 1, &meta("u1", None, "101")));
    }

    #[test]
    fn children_of_deleted_owners_are_forgotten() {
        let (kept, gone) = (ObjectRef::new("a").within("ns"), ObjectRef::new("b").within("ns"));
        let record = AppliedChildren::default();
        record.record(&kept, "Secret", 1, &meta("u1", None, "1"));
        record.record(&gone, "Secret", 1, &meta("u2", None, "1"));

        record.retain_owners(|owner| owner == &kept);

        assert_eq!(record.len(), 1);
        assert!(record.is_current(&kept, "Secret", 1, &meta("u1", None, "1")));
    }

    #[test]
    fn fingerprints_differ_when_the_object_does() {
        assert_eq!(
            fingerprint(&serde_json::json!({"a": 1})),
            fingerprint(&serde_json::json!({"a": 1}))
        );
        assert_ne!(
            fingerprint(&serde_json::json!({"a": 1})),
            fingerprint(&serde_json::json!({"a": 2}))
        );
    }
}
