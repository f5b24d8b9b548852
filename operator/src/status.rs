//! Status conditions, following the Kubernetes API conventions: CamelCase reasons, messages
//! that say what to fix, `observedGeneration`, and `lastTransitionTime` that moves only when
//! a condition's status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The configuration resolves: Secrets exist, roles are valid.
pub const CONFIG_VALID: &str = "ConfigValid";
/// The runtime Deployment has its desired replicas available.
pub const AVAILABLE: &str = "Available";
/// A rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// The summary: the API serves with the current configuration.
pub const READY: &str = "Ready";

/// Reasons, named once so tests, docs and alerts can rely on them.
pub mod reason {
    /// The configuration resolved.
    pub const RESOLVED: &str = "Resolved";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks the named key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The spec is invalid in a way the schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The DataApi's name cannot name its children.
    pub const INVALID_NAME: &str = "InvalidName";
    /// An API key of a bound role is not available yet.
    pub const KEY_PENDING: &str = "KeyPending";
    /// Every desired replica is available.
    pub const REPLICAS_AVAILABLE: &str = "ReplicasAvailable";
    /// Fewer replicas are available than desired.
    pub const REPLICAS_UNAVAILABLE: &str = "ReplicasUnavailable";
    /// The DataApi asks for zero replicas.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// New pods are rolling out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The rollout finished.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// The config is invalid, so nothing new rolls out; the pods run the last valid one.
    pub const ROLLOUT_HELD: &str = "RolloutHeld";
    /// The rollout made no progress within the Deployment's deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// No Deployment exists because the configuration is invalid.
    pub const NOT_DEPLOYED: &str = "NotDeployed";
    /// The API serves with the current configuration.
    pub const SERVING: &str = "Serving";
    /// Every DataApi the role names exists and every key resolves.
    pub const BOUND: &str = "Bound";
    /// A DataApi the role names does not exist.
    pub const DATA_API_NOT_FOUND: &str = "DataApiNotFound";
}

/// A condition as the reconciler decides it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// Condition type.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is going on and what to do.
    pub message: String,
}

impl Decided {
    /// A condition with status True.
    pub fn truthy(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition with status False.
    pub fn falsy(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// Merges `decided` into `previous`: a condition whose status did not change keeps its
/// `lastTransitionTime`, so repeated reconciles write identical status.
pub fn merge(previous: &[Condition], decided: Vec<Decided>, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.to_owned(),
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Replica counts and rollout state read from a Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Replicas asked for.
    pub desired: i32,
    /// Replicas passing readiness for the Deployment's minReadySeconds.
    pub available: i32,
    /// Replicas ready now.
    pub ready: i32,
    /// Replicas running the newest pod template.
    pub updated: i32,
    /// All replicas, old and new.
    pub total: i32,
    /// The Deployment controller has seen the newest Deployment spec.
    pub observed: bool,
    /// The Deployment controller gave up waiting for progress.
    pub deadline_exceeded: bool,
}

impl Rollout {
    /// Reads the rollout state of `deployment`.
    pub fn of(deployment: &Deployment) -> Self {
        let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        Self {
            desired,
            available: status.available_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
            observed: status.observed_generation >= deployment.metadata.generation,
            deadline_exceeded: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")),
        }
    }

    /// Every replica asked for runs the newest template and is available: the rollout is done.
    pub fn complete(&self) -> bool {
        self.observed && self.updated >= self.desired && self.total == self.updated && self.available >= self.desired
    }
}

/// `Available`, `Progressing` and `Ready` for a DataApi whose config is valid.
pub fn workload_conditions(rollout: &Rollout, deployment_name: &str) -> Vec<Decided> {
    let available = availability(rollout, deployment_name);
    let progressing = progress(
        rollout,
        deployment_name,
        (reason::ROLLOUT_COMPLETE, "the newest configuration is rolled out"),
    );
    let ready = if available.status && !rollout.deadline_exceeded && rollout.observed {
        Decided::truthy(READY, reason::SERVING, "the API serves with the current configuration")
    } else {
        Decided::falsy(READY, available.reason, available.message.clone())
    };
    vec![
        Decided::truthy(CONFIG_VALID, reason::RESOLVED, "configuration resolved"),
        available,
        progressing,
        ready,
    ]
}

/// Conditions for a DataApi whose config does not resolve. Nothing new is applied until it
/// does, so a DataApi deployed before keeps its pods, serving the last valid configuration:
/// `Available` and `Progressing` then tell the truth about those pods (`deployed` is the live
/// Deployment's rollout and name), while `Ready` is False for the current spec.
pub fn invalid_config_conditions(
    reason: &'static str,
    message: String,
    deployed: Option<(&Rollout, &str)>,
) -> Vec<Decided> {
    let Some((rollout, deployment_name)) = deployed else {
        return vec![
            Decided::falsy(CONFIG_VALID, reason, message.clone()),
            Decided::falsy(
                AVAILABLE,
                reason::NOT_DEPLOYED,
                "no runtime is deployed while the configuration is invalid",
            ),
            Decided::falsy(
                PROGRESSING,
                reason::NOT_DEPLOYED,
                "no runtime is deployed while the configuration is invalid",
            ),
            Decided::falsy(READY, reason, message),
        ];
    };
    let available = availability(rollout, deployment_name);
    let progressing = progress(
        rollout,
        deployment_name,
        (
            reason::ROLLOUT_HELD,
            "the pods run the last valid configuration; changes roll out once ConfigValid is True again",
        ),
    );
    let ready_message = if available.status {
        format!("{message}; the pods keep serving the last valid configuration")
    } else {
        message.clone()
    };
    vec![
        Decided::falsy(CONFIG_VALID, reason, message),
        available,
        progressing,
        Decided::falsy(READY, reason, ready_message),
    ]
}

/// `Available` from the replicas the Deployment reports.
fn availability(rollout: &Rollout, deployment_name: &str) -> Decided {
    if rollout.desired == 0 {
        Decided::truthy(
            AVAILABLE,
            reason::SCALED_TO_ZERO,
            "spec.runtime.replicas is 0; no pods serve this API",
        )
    } else if rollout.available >= rollout.desired {
        Decided::truthy(
            AVAILABLE,
            reason::REPLICAS_AVAILABLE,
            format!("{}/{} replicas available", rollout.available, rollout.desired),
        )
    } else {
        Decided::falsy(
            AVAILABLE,
            reason::REPLICAS_UNAVAILABLE,
            format!(
                "{}/{} replicas available; check the pods of Deployment {deployment_name} (kubectl describe deployment {deployment_name})",
                rollout.available, rollout.desired
            ),
        )
    }
}

/// `Progressing` from the Deployment's rollout: stuck, done (False with the reason and message
/// of `done`), or under way.
fn progress(rollout: &Rollout, deployment_name: &str, done: (&'static str, &'static str)) -> Decided {
    if rollout.deadline_exceeded {
        Decided::falsy(
            PROGRESSING,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            format!(
                "Deployment {deployment_name} made no progress; its pods are failing to start or become ready (kubectl describe deployment {deployment_name})"
            ),
        )
    } else if rollout.complete() {
        Decided::falsy(PROGRESSING, done.0, done.1)
    } else {
        Decided::truthy(
            PROGRESSING,
            reason::ROLLING_OUT,
            format!(
                "{}/{} replicas updated, {} available",
                rollout.updated, rollout.desired, rollout.available
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(&[], vec![Decided::falsy(READY, "A", "a")], Some(1), at(100));
        let same = merge(&first, vec![Decided::falsy(READY, "B", "b")], Some(2), at(200));
        let flipped = merge(&same, vec![Decided::truthy(READY, "C", "c")], Some(2), at(300));

        assert_eq!(first[0].last_transition_time, Time(at(100)));
        assert_eq!(same[0].last_transition_time, Time(at(100)));
        assert_eq!((same[0].reason.as_str(), same[0].observed_generation), ("B", Some(2)));
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
        assert_eq!(flipped[0].status, "True");
    }

    fn deployment(desired: i32, status: DeploymentStatus, generation: i64) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            }),
            status: Some(status),
            ..Default::default()
        };
        d.metadata.generation = Some(generation);
        d
    }

    fn find<'a>(conditions: &'a [Decided], type_: &str) -> &'a Decided {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_finished_rollout_is_ready() {
        let status = DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        };
        let conditions = workload_conditions(&Rollout::of(&deployment(2, status, 3)), "sluice-sales");

        assert!(find(&conditions, READY).status);
        assert!(find(&conditions, AVAILABLE).status);
        assert_eq!(find(&conditions, PROGRESSING).reason, reason::ROLLOUT_COMPLETE);
        assert!(!find(&conditions, PROGRESSING).status);
    }

    #[test]
    fn a_rollout_under_way_is_progressing_and_not_ready_until_available() {
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(0),
            ..Default::default()
        };
        let conditions = workload_conditions(&Rollout::of(&deployment(2, status, 1)), "sluice-sales");

        assert!(find(&conditions, PROGRESSING).status);
        assert_eq!(find(&conditions, AVAILABLE).reason, reason::REPLICAS_UNAVAILABLE);
        assert!(
            find(&conditions, AVAILABLE)
                .message
                .starts_with("0/2 replicas available")
        );
        assert!(!find(&conditions, READY).status);
    }

    #[test]
    fn an_unobserved_spec_is_not_ready_yet() {
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        };
        let conditions = workload_conditions(&Rollout::of(&deployment(1, status, 2)), "sluice-sales");

        assert!(!find(&conditions, READY).status);
        assert!(find(&conditions, PROGRESSING).status);
    }

    #[test]
    fn a_stuck_rollout_is_not_ready() {
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            conditions: Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let conditions = workload_conditions(&Rollout::of(&deployment(1, status, 1)), "sluice-sales");

        assert_eq!(
            find(&conditions, PROGRESSING).reason,
            reason::PROGRESS_DEADLINE_EXCEEDED
        );
        assert!(!find(&conditions, READY).status);
    }

    #[test]
    fn invalid_config_says_why_in_ready_too() {
        let conditions = invalid_config_conditions(reason::SECRET_NOT_FOUND, "secret \"x\" not found".into(), None);

        assert_eq!(find(&conditions, CONFIG_VALID).reason, reason::SECRET_NOT_FOUND);
        assert_eq!(find(&conditions, READY).message, "secret \"x\" not found");
        assert_eq!(find(&conditions, AVAILABLE).reason, reason::NOT_DEPLOYED);
        assert!(conditions.iter().all(|c| !c.status));
    }

    fn rolled_out(replicas: i32, updated: i32, available: i32) -> Rollout {
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            available_replicas: Some(available),
            ..Default::default()
        };
        Rollout::of(&deployment(2, status, 1))
    }

    #[test]
    fn invalid_config_over_serving_pods_keeps_them_available_but_not_ready() {
        let rollout = rolled_out(2, 2, 2);
        let conditions = invalid_config_conditions(
            reason::SECRET_NOT_FOUND,
            "secret \"x\" not found".into(),
            Some((&rollout, "sluice-sales")),
        );

        assert!(!find(&conditions, CONFIG_VALID).status);
        assert!(find(&conditions, AVAILABLE).status);
        assert_eq!(find(&conditions, AVAILABLE).message, "2/2 replicas available");
        assert_eq!(find(&conditions, PROGRESSING).reason, reason::ROLLOUT_HELD);
        assert!(!find(&conditions, PROGRESSING).status);
        let ready = find(&conditions, READY);
        assert_eq!((ready.status, ready.reason), (false, reason::SECRET_NOT_FOUND));
        assert_eq!(
            ready.message,
            "secret \"x\" not found; the pods keep serving the last valid configuration"
        );
    }

    #[test]
    fn invalid_config_during_a_rollout_reports_the_rollout_and_unavailable_pods() {
        let rollout = rolled_out(2, 1, 0);
        let conditions =
            invalid_config_conditions(reason::INVALID_SPEC, "bad".into(), Some((&rollout, "sluice-sales")));

        assert_eq!(find(&conditions, AVAILABLE).reason, reason::REPLICAS_UNAVAILABLE);
        assert_eq!(find(&conditions, PROGRESSING).reason, reason::ROLLING_OUT);
        assert!(find(&conditions, PROGRESSING).status);
        assert_eq!(find(&conditions, READY).message, "bad");
    }
}
