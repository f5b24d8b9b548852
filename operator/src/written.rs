//! The status the operator last wrote to each DataApi, until its own watch shows that write.
//!
//! A reconcile reads its DataApi from the operator's cache, which learns of a status write only
//! when the write's watch event arrives: on a busy API server, seconds later. A reconcile woken
//! in between (by the Deployment's next status update) compared what it decided with the status
//! from before the write. When nothing else had changed it wrote the same status again, and it
//! moved the transition times of the conditions the write had just flipped. So while the cache
//! still holds a version the operator's last write replaced, reconciles start from the status
//! that write left on the server instead.
//!
//! resourceVersions are opaque: they are only compared for equality, with versions the cache
//! held or the API server returned.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use sluice_crds::{DataApi, DataApiStatus};

/// One DataApi's last status write.
#[derive(Debug)]
struct Written {
    /// The status the write left on the server.
    status: DataApiStatus,
    /// The versions the write replaced: the one its reconcile read, and those of earlier writes
    /// made while the cache still held that one.
    replaced: Vec<String>,
    /// The version the API server returned for the write.
    version: Option<String>,
}

/// The last status write to every DataApi whose cache has not shown it yet.
#[derive(Debug, Default)]
pub struct WrittenStatuses {
    entries: Mutex<HashMap<ObjectRef<DataApi>, Written>>,
}

impl WrittenStatuses {
    /// The status `cached` has on the server as far as the operator knows: the one it last
    /// wrote, while the cache holds a version that write replaced; otherwise the cached one.
    pub fn current(&self, cached: &DataApi) -> DataApiStatus {
        let key = ObjectRef::from(cached);
        let mut entries = self.lock();
        if let Some(written) = entries.get(&key) {
            if written
                .replaced
                .iter()
                .any(|version| Some(version) == cached.metadata.resource_version.as_ref())
            {
                return written.status.clone();
            }
            // The cache has moved past the write (its echo or a later change): it is current.
            entries.remove(&key);
        }
        cached.status.clone().unwrap_or_default()
    }

    /// Records that a reconcile of `cached` wrote `status`, and the API server answered with
    /// the version `written_version`.
    pub fn record(&self, cached: &DataApi, status: DataApiStatus, written_version: Option<String>) {
        let Some(read_version) = cached.resource_version() else {
            return;
        };
        let key = ObjectRef::from(cached);
        let mut entries = self.lock();
        let mut replaced = match entries.remove(&key) {
            Some(earlier) if earlier.replaced.contains(&read_version) => {
                let mut replaced = earlier.replaced;
                replaced.extend(earlier.version);
                replaced
            }
            _ => vec![read_version],
        };
        replaced.dedup();
        entries.insert(
            key,
            Written {
                status,
                replaced,
                version: written_version,
            },
        );
    }

    /// Forgets DataApis for which `exists` is false.
    pub fn retain(&self, exists: impl Fn(&ObjectRef<DataApi>) -> bool) {
        self.lock().retain(|key, _| exists(key));
    }

    /// How many writes the cache has not shown yet, as far as the record knows.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether every write is in the cache, as far as the record knows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<DataApi>, Written>> {
        self.entries
            .lock()
            .expect("the record of status writes is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn data_api(version: &str, ready_replicas: i32) -> DataApi {
        let mut api: DataApi = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "DataApi",
            "metadata": { "name": "sales", "namespace": "team-a" },
            "spec": { "database": { "engine": "sqlite", "path": "/data/sales.db" } },
        }))
        .expect("a valid DataApi");
        api.metadata = ObjectMeta {
            resource_version: Some(version.to_owned()),
            ..api.metadata
        };
        api.status = Some(status(ready_replicas));
        api
    }

    fn status(ready_replicas: i32) -> DataApiStatus {
        DataApiStatus {
            ready_replicas: Some(ready_replicas),
            ..DataApiStatus::default()
        }
    }

    #[test]
    fn a_cache_behind_the_last_write_gives_that_write() {
        let written = WrittenStatuses::default();
        written.record(&data_api("10", 0), status(1), Some("11".into()));

        assert_eq!(written.current(&data_api("10", 0)), status(1));
    }

    #[test]
    fn a_cache_that_caught_up_or_moved_on_is_current_and_the_write_forgotten() {
        let written = WrittenStatuses::default();
        written.record(&data_api("10", 0), status(1), Some("11".into()));

        assert_eq!(written.current(&data_api("11", 1)), status(1));
        assert!(written.is_empty());

        written.record(&data_api("11", 1), status(2), Some("12".into()));
        // Someone else's change after the write: the cache is the truth again.
        assert_eq!(written.current(&data_api("13", 5)), status(5));
        assert!(written.is_empty());
    }

    #[test]
    fn writes_chained_behind_a_lagging_cache_give_the_last() {
        let written = WrittenStatuses::default();
        written.record(&data_api("10", 0), status(1), Some("11".into()));
        let read = data_api("10", 0);
        let second = written.current(&read);
        written.record(&read, status(2), Some("12".into()));

        assert_eq!(second, status(1));
        assert_eq!(written.current(&data_api("10", 0)), status(2));
        // The echo of the first write arrives before that of the second.
        assert_eq!(written.current(&data_api("11", 1)), status(2));
        assert_eq!(written.current(&data_api("12", 2)), status(2));
        assert!(written.is_empty());
    }

    #[test]
    fn deleted_data_apis_are_forgotten() {
        let written = WrittenStatuses::default();
        written.record(&data_api("10", 0), status(1), Some("11".into()));

        written.retain(|_| false);

        assert!(written.is_empty());
        assert_eq!(written.current(&data_api("10", 0)), status(0));
    }
}
