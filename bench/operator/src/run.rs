//! One measured run on a fresh control plane: a `sluice-operator` process under its own
//! ServiceAccount, the objects applied, readiness polled, then a no-op resync observed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use serde_yaml::Value as Yaml;
use sluice_crds::DataApi;
use sluice_tests::controlplane::ControlPlane;
use sluice_tests::crds::install_crds;
use sluice_tests::e2e::{Process, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::{self, Writes};
use crate::cpu::{ControlPlaneCpu, cpu_seconds};
use crate::objects;

/// The operator's ServiceAccount; its writes are the ones counted.
const OPERATOR_ACCOUNT: &str = "sluice-operator";
/// The field manager of the benchmark's own applies.
pub const BENCH_MANAGER: &str = "sluice-bench";
/// How often the count of Ready DataApis is printed while waiting: the curve shows where time goes.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Added to the resync period when observing it, for the last reconciles' requests to finish.
const RESYNC_MARGIN: Duration = Duration::from_secs(10);

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The release `sluice-operator` binary.
    pub operator: PathBuf,
    /// How many DataApis to apply (each with two ApiRoles).
    pub data_apis: usize,
    /// The operator's `--resync-seconds`, and the length of the no-op resync observed.
    pub resync: Duration,
    /// Applies in flight at once.
    pub apply_concurrency: usize,
    /// How long to wait for every DataApi to become Ready.
    pub timeout: Duration,
    /// More arguments for the operator.
    pub operator_args: Vec<String>,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    /// Seconds from the first apply until every DataApi reported Ready, if they all did.
    pub ready_seconds: Option<f64>,
    /// DataApis Ready at the end of the wait.
    pub ready: usize,
    /// Seconds the benchmark's applies took (part of `ready_seconds`).
    pub apply_seconds: f64,
    /// The operator's peak resident set (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    /// Its resident set (VmRSS) after the resync, in MiB.
    pub final_rss_mib: f64,
    /// Its writes from start-up until every DataApi was Ready.
    pub converge_writes: Writes,
    /// Its writes over one resync period after that.
    pub resync_writes: Writes,
    /// Its reconciles over that period (DataApi and ApiRole): shows the resync happened.
    pub resync_reconciles: u64,
    /// Its reconciles from the first apply until every DataApi was Ready.
    pub converge_reconciles: Reconciles,
    /// Its CPU time (user + system) until every DataApi was Ready, in seconds.
    pub converge_cpu_seconds: f64,
    /// The control plane's CPU time from the first apply until every DataApi was Ready.
    pub converge_control_plane_cpu: ControlPlaneCpu,
}

/// Runs the benchmark once on this process's control plane.
pub async fn run(settings: &Settings, log_dir: &Path) -> Result<Figures> {
    let control_plane = ControlPlane::shared();
    install_crds();
    let namespace = control_plane.namespace("bench").await;
    let client = control_plane.client();

    let kubeconfig = log_dir.join(format!("operator-kubeconfig-{}.yaml", std::process::id()));
    let username = operator_identity(&client, control_plane, &namespace, &kubeconfig).await?;
    let audit_log = control_plane.audit_log_path();

    let metrics_address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut operator_args = vec![
        "--leader-election=false".to_owned(),
        format!("--namespace={namespace}"),
        format!("--resync-seconds={}", settings.resync.as_secs()),
        format!("--metrics-address={metrics_address}"),
    ];
    operator_args.extend(settings.operator_args.iter().cloned());
    let mut operator = Process::start(
        "sluice-operator",
        &settings.operator,
        &operator_args,
        &[("KUBECONFIG".to_owned(), kubeconfig.display().to_string())],
    );
    operator
        .wait_http_ok(metrics_address, "/readyz", Duration::from_secs(60))
        .await;

    let started = Instant::now();
    let from = audit::position(&audit_log)?;
    let cpu_before = cpu_seconds(operator.id())?;
    let control_plane_before = ControlPlaneCpu::sample(control_plane)?;
    let reconciles_at_start = reconciles_by_controller(metrics_address).await?;
    apply_objects(&client, &namespace, settings).await?;
    let apply_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-operator: applied {} DataApis and {} ApiRoles in {apply_seconds:.1}s",
        settings.data_apis,
        settings.data_apis * 2
    );

    let apis: Api<DataApi> = Api::namespaced(client.clone(), &namespace);
    let (ready, ready_seconds) = wait_until_ready(&apis, settings, started, &mut operator).await?;
    let converged = audit::position(&audit_log)?;
    let converge_cpu_seconds = cpu_seconds(operator.id())? - cpu_before;
    let converge_control_plane_cpu = ControlPlaneCpu::sample(control_plane)? - control_plane_before;
    let converge_reconciles = reconciles_by_controller(metrics_address).await? - reconciles_at_start;
    let converge_writes = audit::writes_between(&audit_log, &username, from, converged)?;
    match ready_seconds {
        Some(seconds) => eprintln!("bench-operator: {ready} DataApis Ready after {seconds:.1}s"),
        None => eprintln!(
            "bench-operator: only {ready} of {} DataApis Ready after {:?}",
            settings.data_apis, settings.timeout
        ),
    }

    let reconciles_before = reconciles(metrics_address).await?;
    let observed = settings.resync + RESYNC_MARGIN;
    eprintln!("bench-operator: observing one resync period ({observed:?})");
    tokio::time::sleep(observed).await;
    operator.assert_running();
    let resync_reconciles = reconciles(metrics_address).await? - reconciles_before;
    let resync_writes = audit::writes_between(&audit_log, &username, converged, audit::position(&audit_log)?)?;
    let (peak_rss_mib, final_rss_mib) = memory_mib(operator.id())?;
    drop(operator);
    let _ = std::fs::remove_file(&kubeconfig);

    Ok(Figures {
        ready_seconds,
        ready,
        apply_seconds,
        peak_rss_mib,
        final_rss_mib,
        converge_writes,
        resync_writes,
        resync_reconciles,
        converge_reconciles,
        converge_cpu_seconds,
        converge_control_plane_cpu,
    })
}

/// Creates the operator's ServiceAccount (bound to `cluster-admin`: what is measured is the
/// operator's work, not its permissions) and writes a kubeconfig with a token for it. Returns
/// the user name the API server knows it by.
async fn operator_identity(
    client: &Client,
    control_plane: &ControlPlane,
    namespace: &str,
    kubeconfig: &Path,
) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": OPERATOR_ACCOUNT } }))?;
    accounts
        .create(&PostParams::default(), &account)
        .await
        .context("cannot create the operator's ServiceAccount")?;
    let username = format!("system:serviceaccount:{namespace}:{OPERATOR_ACCOUNT}");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": format!("sluice-bench-operator-{namespace}") },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": namespace }],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .context("cannot bind the operator's ServiceAccount")?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request)
        .await
        .context("cannot get a token for the operator's ServiceAccount")?
        .status
        .context("the TokenRequest has no status")?
        .token;

    let admin = std::fs::read_to_string(control_plane.kubeconfig_path())?;
    let mut config: Yaml = serde_yaml::from_str(&admin)?;
    for entry in config["users"]
        .as_sequence_mut()
        .context("the control plane's kubeconfig has no users")?
    {
        entry["user"] = serde_yaml::to_value(json!({ "token": token }))?;
    }
    std::fs::write(kubeconfig, serde_yaml::to_string(&config)?)
        .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
    Ok(username)
}

/// Applies the DSN Secret, then every DataApi after its two roles, by server-side apply with
/// `settings.apply_concurrency` requests in flight.
async fn apply_objects(client: &Client, namespace: &str, settings: &Settings) -> Result<()> {
    let params = PatchParams::apply(BENCH_MANAGER).force();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(objects::DSN_SECRET, &params, &Patch::Apply(&objects::dsn_secret()))
        .await
        .context("cannot apply the DSN Secret")?;
    let data_apis = dynamic(client, namespace, "DataApi", "dataapis");
    let roles = dynamic(client, namespace, "ApiRole", "apiroles");
    let applies = (0..settings.data_apis).flat_map(|index| {
        let [reader, writer] = objects::api_roles(index);
        [
            (&roles, reader),
            (&roles, writer),
            (&data_apis, objects::data_api(index)),
        ]
    });
    stream::iter(applies)
        .map(|(api, object)| {
            let params = &params;
            async move {
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                api.patch(&name, params, &Patch::Apply(&object))
                    .await
                    .with_context(|| format!("cannot apply {name}"))
            }
        })
        .buffer_unordered(settings.apply_concurrency)
        .try_for_each(|_| futures::future::ready(Ok(())))
        .await
}

pub fn dynamic(client: &Client, namespace: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("sluice.dev", "v1alpha1", kind), plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Watches the DataApis until all `settings.data_apis` are Ready, or until the timeout; returns
/// how many were Ready and, if all were, the seconds since `started`. A watch, not a list a
/// second: a list decodes every DataApi each time, which would take CPU from the control plane
/// being measured.
async fn wait_until_ready(
    apis: &Api<DataApi>,
    settings: &Settings,
    started: Instant,
    operator: &mut Process,
) -> Result<(usize, Option<f64>)> {
    watch_until_done(
        apis.clone(),
        settings.data_apis,
        is_ready,
        started + settings.timeout,
        |ready| {
            operator.assert_running();
            eprintln!(
                "bench-operator: {ready} of {} DataApis Ready after {:.0}s",
                settings.data_apis,
                started.elapsed().as_secs_f64()
            );
        },
    )
    .await
    .map(|(ready, all)| (ready, all.then(|| started.elapsed().as_secs_f64())))
}

/// Watches the objects of `api` until `wanted` of them are `done`, or until `deadline`, calling
/// `progress` with the count every [`PROGRESS_INTERVAL`]; returns the count and whether it
/// reached `wanted`.
pub async fn watch_until_done<K>(
    api: Api<K>,
    wanted: usize,
    done: impl Fn(&K) -> bool,
    deadline: Instant,
    mut progress: impl FnMut(usize),
) -> Result<(usize, bool)>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let kind = K::kind(&()).into_owned();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut changes = std::pin::pin!(changes);
    let mut finished = HashSet::new();
    // The first count comes one interval in: printed at once, it would say 0 before the
    // watch's first list had arrived.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        tokio::select! {
            change = changes.try_next() => {
                let object = change
                    .with_context(|| format!("the watch of the {kind}s failed"))?
                    .with_context(|| format!("the watch of the {kind}s ended"))?;
                let name = object.meta().name.clone().unwrap_or_default();
                if done(&object) {
                    finished.insert(name);
                } else {
                    finished.remove(&name);
                }
                if finished.len() >= wanted {
                    return Ok((finished.len(), true));
                }
            }
            _ = ticks.tick() => progress(finished.len()),
            () = tokio::time::sleep_until(deadline) => return Ok((finished.len(), false)),
        }
    }
}

/// Whether `api`'s Ready condition is True for its current generation.
fn is_ready(api: &DataApi) -> bool {
    api.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|condition| {
            condition.type_ == "Ready"
                && condition.status == "True"
                && condition.observed_generation == api.metadata.generation
        })
    })
}

/// The operator's reconciles so far, DataApi and ApiRole together, from its `/metrics`.
async fn reconciles(address: SocketAddr) -> Result<u64> {
    let by_controller = reconciles_by_controller(address).await?;
    Ok(by_controller.data_api + by_controller.api_role)
}

/// Reconciles of each controller, and the seconds they took together.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Reconciles {
    /// Of DataApis.
    pub data_api: u64,
    /// Of ApiRoles.
    pub api_role: u64,
    /// Seconds the DataApi reconciles took, summed.
    pub data_api_seconds: f64,
    /// Seconds the ApiRole reconciles took, summed.
    pub api_role_seconds: f64,
}

impl std::ops::Sub for Reconciles {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            data_api: self.data_api.saturating_sub(earlier.data_api),
            api_role: self.api_role.saturating_sub(earlier.api_role),
            data_api_seconds: self.data_api_seconds - earlier.data_api_seconds,
            api_role_seconds: self.api_role_seconds - earlier.api_role_seconds,
        }
    }
}

impl Reconciles {
    /// Mean milliseconds of a DataApi and of an ApiRole reconcile.
    pub fn mean_ms(&self) -> (f64, f64) {
        let mean = |seconds: f64, count: u64| 1000.0 * seconds / count.max(1) as f64;
        (
            mean(self.data_api_seconds, self.data_api),
            mean(self.api_role_seconds, self.api_role),
        )
    }
}

/// The operator's reconciles so far, by controller, from its `/metrics`.
async fn reconciles_by_controller(address: SocketAddr) -> Result<Reconciles> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the operator's metrics at {address}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let value = |metric: &str, controller: &str| {
        let prefix = format!("sluice_operator_{metric}{{controller=\"{controller}\"}} ");
        response
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Reconciles {
        data_api: value("reconciles_total", "DataApi") as u64,
        api_role: value("reconciles_total", "ApiRole") as u64,
        data_api_seconds: value("reconcile_duration_seconds_sum", "DataApi"),
        api_role_seconds: value("reconcile_duration_seconds_sum", "ApiRole"),
    })
}

/// `VmHWM` and `VmRSS` of process `pid`, in MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
