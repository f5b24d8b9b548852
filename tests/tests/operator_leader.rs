//! Leader election, health and metrics of the real `sluice-operator` binary: each test starts
//! operator processes against the control plane, scoped to its own namespace, and kills them
//! the way Kubernetes would.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use sluice_crds::DataApi;
use sluice_tests::controlplane::{ControlPlane, die_with_parent};
use sluice_tests::crds::install_crds;
use sluice_tests::e2e::{free_port, workspace_binaries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Kept short so that a takeover after a crash is quick to test.
const LEASE_SECONDS: u64 = 6;
const RENEW_SECONDS: u64 = 2;
/// Slack for a busy machine (the tests share 2 cores with compilers) on top of the protocol's
/// own bound.
const MARGIN: Duration = Duration::from_secs(15);
/// The operator's default Lease name.
const LEASE_NAME: &str = "sluice-operator";
const RECONCILES: &str = "sluice_operator_reconciles_total{controller=\"DataApi\"}";

/// The operator binary, built on first use: Cargo builds only a test crate's own binaries
/// before its tests, and this one belongs to `sluice-operator`.
fn operator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-operator-leader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a directory for the operator binary");
        let [binary] = workspace_binaries([("sluice-operator", "sluice-operator")], &dir);
        binary
    })
}

/// One `sluice-operator` process, watching and electing in one namespace. Killed when dropped.
struct Operator {
    /// The `POD_NAME` it runs as; its Lease identity is this plus a random suffix.
    pod_name: String,
    metrics: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Operator {
    fn start(pod_name: &str, namespace: &str) -> Operator {
        let cp = ControlPlane::shared();
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = std::env::temp_dir().join(format!("sluice-{namespace}-{pod_name}.log"));
        let log_file = std::fs::File::create(&log).expect("create the operator's log file");
        let mut command = std::process::Command::new(operator_binary());
        command
            .args(["--namespace", namespace, "--lease-namespace", namespace])
            .arg(format!("--lease-duration-seconds={LEASE_SECONDS}"))
            .arg(format!("--lease-renew-seconds={RENEW_SECONDS}"))
            .arg(format!("--metrics-address={metrics}"))
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAME", pod_name)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice-operator");
        Operator {
            pod_name: pod_name.to_owned(),
            metrics,
            log,
            child,
        }
    }

    fn holds(&self, holder: Option<&str>) -> bool {
        holder.is_some_and(|holder| holder.starts_with(&format!("{}-", self.pod_name)))
    }

    /// The status code and body of `GET path` on its health and metrics server.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.metrics).await.ok()?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            let code = head.split_whitespace().nth(1)?.parse().ok()?;
            Some((code, body.to_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    /// The value of the sample `series` on `/metrics`, if it answers and has that series.
    async fn metric(&self, series: &str) -> Option<f64> {
        let (200, text) = self.get("/metrics").await? else {
            return None;
        };
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("the operator is still running") as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "signal {signal} to {}",
            self.pod_name
        );
    }

    async fn exited_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the operator"),
            Err(_) => panic!("{} did not exit within {limit:?}\n{}", self.pod_name, self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.pod_name,
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// Polls `check` until it yields a value, failing after `limit` with `what` and `context()`.
async fn within<T, F, Fut>(limit: Duration, what: &str, context: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|holder| !holder.is_empty())
}

/// Applies a DataApi whose DSN Secret is missing: any reconcile gives it a status.
async fn apply_data_api(client: &Client, namespace: &str, name: &str) {
    let data_api: DataApi = serde_yaml::from_str(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: {name} }}\n\
         spec: {{ database: {{ engine: postgres, connectionSecretRef: {{ name: {name}-db, key: url }} }} }}"
    ))
    .unwrap();
    Api::<DataApi>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&data_api))
        .await
        .unwrap_or_else(|e| panic!("applying DataApi {name}: {e}"));
}

async fn reconciled(client: &Client, namespace: &str, name: &str) -> Option<()> {
    let api = Api::<DataApi>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .ok()?;
    let observed = api.status.as_ref()?.observed_generation;
    (observed.is_some() && observed == api.metadata.generation).then_some(())
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_after_a_crash_or_a_graceful_stop() {
    install_crds();
    let cp = ControlPlane::shared();
    let namespace = cp.namespace("leader").await;
    let client = cp.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let mut replicas = [
        Operator::start("replica-a", &namespace),
        Operator::start("replica-b", &namespace),
    ];
    let logs = |replicas: &[Operator]| replicas.iter().map(Operator::log_tail).collect::<Vec<_>>().join("\n");

    let holder = within(
        MARGIN,
        "one replica to take the Lease",
        || logs(&replicas),
        || async { lease_holder(&leases).await },
    )
    .await;
    let leader_index = replicas
        .iter()
        .position(|replica| replica.holds(Some(&holder)))
        .unwrap_or_else(|| panic!("the Lease is held by {holder}, neither replica"));
    let standby_index = 1 - leader_index;
    for replica in &replicas {
        within(
            MARGIN,
            &format!("{} to be ready", replica.pod_name),
            || logs(&replicas),
            || async { (replica.get("/readyz").await?.0 == 200).then_some(()) },
        )
        .await;
    }

    apply_data_api(&client, &namespace, "first").await;
    within(
        MARGIN,
        "the leader to reconcile DataApi first",
        || logs(&replicas),
        || reconciled(&client, &namespace, "first"),
    )
    .await;
    let (leader, standby) = (&replicas[leader_index], &replicas[standby_index]);
    let leader_reconciles = leader.metric(RECONCILES).await;
    assert!(
        leader_reconciles >= Some(1.0),
        "the leader's reconcile counter is {leader_reconciles:?}\n{}",
        leader.log_tail()
    );
    assert_eq!(leader.metric("sluice_operator_leader").await, Some(1.0));
    assert_eq!(standby.metric(RECONCILES).await, Some(0.0), "the standby reconciled");
    assert_eq!(standby.metric("sluice_operator_leader").await, Some(0.0));
    assert_eq!(
        lease_holder(&leases).await,
        Some(holder),
        "the Lease changed hands while both replicas ran"
    );

    // A crash: no release, so the standby must wait for the Lease to expire.
    replicas[leader_index].signal(libc::SIGKILL);
    replicas[leader_index].exited_within(MARGIN).await;
    let takeover = Duration::from_secs(LEASE_SECONDS + RENEW_SECONDS) + MARGIN;
    let standby = &replicas[standby_index];
    within(
        takeover,
        "the standby to take the Lease",
        || standby.log_tail(),
        || async {
            let holder = lease_holder(&leases).await;
            standby.holds(holder.as_deref()).then_some(())
        },
    )
    .await;
    apply_data_api(&client, &namespace, "second").await;
    within(
        MARGIN,
        "the new leader to reconcile DataApi second",
        || standby.log_tail(),
        || reconciled(&client, &namespace, "second"),
    )
    .await;
    let new_leader_reconciles = standby.metric(RECONCILES).await;
    assert!(
        new_leader_reconciles >= Some(1.0),
        "the new leader's reconcile counter is {new_leader_reconciles:?}"
    );
    assert_eq!(standby.metric("sluice_operator_leader").await, Some(1.0));

    // A graceful stop: the leader releases the Lease on its way out, so a standby need not wait
    // for it to expire.
    let successor = Operator::start("replica-c", &namespace);
    within(
        MARGIN,
        "replica-c to stand by",
        || successor.log_tail(),
        || stands_by(&successor),
    )
    .await;
    let new_leader = &mut replicas[standby_index];
    new_leader.signal(libc::SIGTERM);
    let status = new_leader.exited_within(MARGIN).await;
    assert!(status.success(), "{status}\n{}", new_leader.log_tail());
    let holder = lease_holder(&leases).await;
    assert!(
        holder.is_none() || successor.holds(holder.as_deref()),
        "the Lease is still held by {holder:?} after a graceful shutdown\n{}",
        new_leader.log_tail()
    );
    within(
        Duration::from_secs(RENEW_SECONDS) + MARGIN,
        "replica-c to take the released Lease",
        || successor.log_tail(),
        || async { successor.holds(lease_holder(&leases).await.as_deref()).then_some(()) },
    )
    .await;
}

/// Whether `operator` is a ready standby: ready, and not leading.
async fn stands_by(operator: &Operator) -> Option<()> {
    let ready = operator.get("/readyz").await?.0 == 200;
    let leading = operator.metric("sluice_operator_leader").await? == 1.0;
    (ready && !leading).then_some(())
}

#[tokio::test]
async fn health_and_metrics_endpoints_answer_and_a_standby_stops_cleanly() {
    install_crds();
    let cp = ControlPlane::shared();
    let namespace = cp.namespace("metrics").await;
    let client = cp.client();
    let mut operator = Operator::start("solo", &namespace);

    let (code, body) = within(
        MARGIN,
        "/healthz to answer",
        || operator.log_tail(),
        || operator.get("/healthz"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    within(
        MARGIN,
        "/readyz to turn ready",
        || operator.log_tail(),
        || async { (operator.get("/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    apply_data_api(&client, &namespace, "counted").await;
    within(
        MARGIN,
        "the operator to reconcile DataApi counted",
        || operator.log_tail(),
        || reconciled(&client, &namespace, "counted"),
    )
    .await;

    let (code, metrics) = operator.get("/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200);
    for series in [
        RECONCILES,
        "sluice_operator_reconcile_duration_seconds_count{controller=\"DataApi\"}",
        "sluice_operator_leader",
    ] {
        let value = operator.metric(series).await;
        assert!(value >= Some(1.0), "{series} is {value:?}:\n{metrics}");
    }

    let mut standby = Operator::start("understudy", &namespace);
    within(
        MARGIN,
        "a second operator to stand by",
        || standby.log_tail(),
        || stands_by(&standby),
    )
    .await;
    standby.signal(libc::SIGTERM);
    let status = standby.exited_within(MARGIN).await;
    assert!(status.success(), "{status}\n{}", standby.log_tail());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let holder = lease_holder(&leases).await;
    assert!(
        operator.holds(holder.as_deref()),
        "a standby's shutdown moved the Lease to {holder:?}"
    );

    operator.signal(libc::SIGTERM);
    let status = operator.exited_within(MARGIN).await;
    assert!(status.success(), "{status}\n{}", operator.log_tail());
}
