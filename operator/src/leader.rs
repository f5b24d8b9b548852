//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only one reconciles at a time.
//!
//! The protocol is client-go's: the holder renews `renewTime` every renew interval; a standby
//! takes the Lease once its holder is empty or has not renewed for the Lease's duration. Every
//! write is a compare-and-swap: the Lease is created with a plain create (which fails if another
//! replica created it first) and changed by a merge patch carrying the `resourceVersion` it
//! was read at (which fails if another replica wrote in between), so two replicas can never
//! both believe they took it. Expiry is judged on this replica's own clock, from when it last
//! saw the Lease change, so clock skew between nodes cannot cut another holder's term short.
//! A holder that cannot renew for the Lease's duration minus one renew interval gives up before
//! any standby may take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::{Instant, sleep};
use tracing::{info, instrument, warn};

use crate::context::FIELD_MANAGER;
use crate::metrics::{Metrics, Role};

/// How long to wait before trying again after a failed or contested renewal, so that a
/// transient API error does not eat most of the renew deadline.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Which Lease to contend for, as whom, and how often.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease; every replica of one operator names the same.
    pub name: String,
    /// This replica's identity, unique among the replicas.
    pub identity: String,
    /// How long a holder's claim lasts after its last renewal.
    pub duration: Duration,
    /// How often the holder renews, and a standby checks whether the Lease is free.
    pub renew_interval: Duration,
}

/// Why a replica stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    /// Another replica holds the Lease now.
    #[error("replica {holder} took over the Lease")]
    TakenOver {
        /// The new holder's identity.
        holder: String,
    },
    /// Renewals failed for longer than the holder may go without one.
    #[error("could not renew the Lease for {elapsed:?}: {last_error}")]
    RenewalsFailed {
        /// Time since the last successful renewal.
        elapsed: Duration,
        /// The last renewal's failure.
        last_error: String,
    },
}

/// What one attempt to take or renew the Lease found.
enum Attempt {
    /// This replica holds the Lease, freshly renewed.
    Holding,
    /// Another replica holds a Lease that has not expired.
    HeldBy(String),
    /// Another writer changed the Lease between read and write; read it again.
    Contested,
}

/// The Lease as this replica last saw it, and when it saw it change.
struct Observation {
    resource_version: Option<String>,
    changed_at: Instant,
}

/// Contends for one Lease on behalf of this replica.
pub struct LeaderElector {
    leases: Api<Lease>,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    observed: Option<Observation>,
}

impl LeaderElector {
    /// An elector for `settings`, reporting standby and leader to `metrics`.
    pub fn new(client: Client, settings: LeaseSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            leases: Api::namespaced(client, &settings.namespace),
            settings,
            metrics,
            observed: None,
        }
    }

    /// Waits until this replica holds the Lease, standing by while another one does.
    #[instrument(skip_all, fields(lease = %self.settings.name, identity = %self.settings.identity))]
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => {
                    info!("acquired the Lease; leading");
                    self.metrics.set_role(Role::Leader);
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(%holder, "another replica leads; standing by");
                        last_holder = Some(holder);
                    }
                    self.metrics.set_role(Role::Standby);
                }
                Ok(Attempt::Contested) => {}
                Err(error) => warn!(%error, "could not read or take the Lease; retrying"),
            }
            sleep(self.settings.renew_interval).await;
        }
    }

    /// Renews the Lease for as long as this replica holds it; returns why it stopped holding it.
    #[instrument(skip_all, fields(lease = %self.settings.name, identity = %self.settings.identity))]
    pub async fn hold(&mut self) -> LeadershipLost {
        // Give up one renew interval before a standby could see the Lease expire.
        let renew_deadline = self.settings.duration.saturating_sub(self.settings.renew_interval);
        let mut renewed_at = Instant::now();
        let mut wait = self.settings.renew_interval;
        loop {
            sleep(wait).await;
            let failure = match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => {
                    renewed_at = Instant::now();
                    wait = self.settings.renew_interval;
                    continue;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    self.metrics.set_role(Role::Standby);
                    return LeadershipLost::TakenOver { holder };
                }
                Ok(Attempt::Contested) => "another writer changed the Lease".to_owned(),
                Err(error) => error.to_string(),
            };
            let elapsed = renewed_at.elapsed();
            if elapsed >= renew_deadline {
                self.metrics.set_role(Role::Starting);
                return LeadershipLost::RenewalsFailed {
                    elapsed,
                    last_error: failure,
                };
            }
            warn!(error = %failure, "could not renew the Lease; retrying");
            wait = RETRY_AFTER_FAILURE.min(self.settings.renew_interval);
        }
    }

    /// Gives the Lease up, if this replica holds it, so that a standby takes over at its next
    /// check instead of waiting for the Lease to expire.
    #[instrument(skip_all, fields(lease = %self.settings.name, identity = %self.settings.identity))]
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.metrics.set_role(Role::Starting);
        let Some(lease) = self.leases.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        if holder(&lease) != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": lease.resource_version() },
            "spec": { "holderIdentity": null, "acquireTime": null, "renewTime": null },
        });
        self.leases
            .patch(
                &self.settings.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await?;
        info!("released the Lease");
        Ok(())
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(lease) = self.leases.get_opt(&self.settings.name).await? else {
            return self.create(now).await;
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_me = holder(&lease) == Some(self.settings.identity.as_str());
        if let Some(other) = holder(&lease).filter(|_| !held_by_me)
            && !self.expired(&spec)
        {
            return Ok(Attempt::HeldBy(other.to_owned()));
        }
        let (acquire_time, transitions) = if held_by_me {
            (spec.acquire_time, spec.lease_transitions.unwrap_or(0))
        } else {
            (Some(now.clone()), spec.lease_transitions.unwrap_or(0) + 1)
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": lease.resource_version() },
            "spec": self.claim(now, acquire_time, transitions),
        });
        let written = self
            .leases
            .patch(
                &self.settings.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await;
        match written {
            Ok(lease) => {
                self.observe(&lease);
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Contested),
            Err(error) => Err(error),
        }
    }

    async fn create(&mut self, now: MicroTime) -> Result<Attempt, kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.claim(now.clone(), Some(now), 0)),
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.leases.create(&params, &lease).await {
            Ok(lease) => {
                self.observe(&lease);
                Ok(Attempt::Holding)
            }
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Contested),
            Err(error) => Err(error),
        }
    }

    fn claim(&self, now: MicroTime, acquire_time: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time,
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let resource_version = lease.resource_version();
        if self
            .observed
            .as_ref()
            .is_none_or(|seen| seen.resource_version != resource_version)
        {
            self.observed = Some(Observation {
                resource_version,
                changed_at: Instant::now(),
            });
        }
    }

    /// Whether the holder has let the Lease lapse: unchanged, as this replica saw it, for the
    /// duration the holder claimed.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let claimed = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).unsigned_abs().into());
        self.observed
            .as_ref()
            .is_some_and(|seen| seen.changed_at.elapsed() >= claimed)
    }
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty())
}

/// This replica's identity: the pod's name (env `POD_NAME`) or else the host name, plus a
/// random suffix so that a restarted process never mistakes its predecessor's claim for its own.
pub fn replica_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| hostname::get().ok().and_then(|name| name.into_string().ok()))
        .unwrap_or_else(|| "sluice-operator".to_owned());
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).expect("the operating system's random source is available");
    format!("{base}-{}", hex::encode(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_unique_per_process_start() {
        let (first, second) = (replica_identity(), replica_identity());

        assert_ne!(first, second);
        assert!(first.len() > 9, "{first}");
    }
}
