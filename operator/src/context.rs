//! State shared by every reconcile: the client, settings, the ApiRole cache, the event
//! recorder, metrics and per-object failure counts for backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use sluice_crds::{ApiRole, DataApi};

use crate::metrics::Metrics;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// Operator settings from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the runtime pods when a DataApi names none.
    pub runtime_image: String,
    /// How often an unchanged object is reconciled again, as a safety net behind the watches.
    pub resync: Duration,
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
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Reconcile counts, failures and durations.
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for controllers sharing `roles` and `data_apis`, recording into `metrics`.
    pub fn new(
        client: Client,
        settings: Settings,
        roles: Store<ApiRole>,
        data_apis: Store<DataApi>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Self {
            client,
            settings,
            roles,
            data_apis,
            recorder,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// Records a failed reconcile of `key` and returns how long to wait before the next try:
    /// exponential from 1 s, capped at 5 minutes, so one broken object never floods the API.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failure counts are never poisoned");
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        backoff_delay(*count)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .expect("failure counts are never poisoned")
            .remove(key);
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
