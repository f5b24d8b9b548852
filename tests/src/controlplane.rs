//! A real Kubernetes control plane for integration tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, with kwok playing the kubelet of
//! a fake node so that pods get scheduled and report Running/Ready without any
//! container runtime.
//!
//! The binaries are built from the Go modules pinned in `tests/controlplane/`
//! by `tests/controlplane/build.sh`, which [`ControlPlane::shared`] runs first
//! (a no-op once they are built).
//!
//! One control plane is started per test binary, on first use, and shared by
//! all its tests; each test isolates itself in its own namespace
//! ([`ControlPlane::namespace`]). Test binaries do not collide: every instance
//! listens on free loopback ports and keeps its state in its own temporary
//! directory. (A runner that starts one process per test, such as nextest,
//! starts one control plane per test: use `cargo test`.)
//!
//! The processes are started directly rather than through
//! `kwokctl create cluster --runtime binary` because kwokctl daemonises them:
//! they would outlive a test binary that crashes or is killed, and only a
//! separate `kwokctl delete cluster` would stop them. Started here, each one is
//! tied to the test binary with `PR_SET_PDEATHSIG`, so the kernel kills it
//! however the test binary ends, and a normal exit (including after failed
//! tests) also removes the state directory. kwokctl would not start it any
//! faster: start-up (about 5 s) is dominated by kube-apiserver becoming ready.
//!
//! Every component talks to the API server as the admin, so the API server
//! audits nothing they do. It audits only the writes of ServiceAccounts
//! ([`ControlPlane::audit_log_path`]): a benchmark that runs a process under a
//! ServiceAccount token can count that process's writes alone.

use std::{
    fs::{self, File},
    io,
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// The name of the fake node kwok keeps Ready; every pod is scheduled there.
pub const FAKE_NODE_NAME: &str = "kwok-node-0";

/// How long kube-apiserver may take to report `/readyz` ok. Generous because
/// the machine may be busy compiling: it typically takes under 10 s.
const API_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the fake node may take to become Ready and schedulable.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new namespace may take to get its `default` ServiceAccount.
const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many trailing log lines of a failed component go into the error.
const LOG_TAIL_LINES: usize = 40;

/// The ServiceAccount token issuer; the conventional in-cluster one.
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Service ClusterIPs are allocated from here (room for a benchmark's
/// thousands of Services); its first address goes into the serving
/// certificate, as for the in-cluster `kubernetes` Service.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// The API server's audit policy: one line per write (create, update, patch,
/// delete) made with a ServiceAccount's credentials, at the `Metadata` level;
/// nothing else. The tests authenticate as the admin (impersonating when they
/// act as a ServiceAccount), so for them it logs nothing.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"#;

/// Client rate limits of kube-controller-manager and kube-scheduler, as
/// kwokctl sets them: their defaults (20 and 50 requests per second) would
/// throttle a benchmark's thousand Deployments, and the tests never come near.
const COMPONENT_API_QPS: &str = "--kube-api-qps=5000";
const COMPONENT_API_BURST: &str = "--kube-api-burst=10000";

/// The binaries build.sh produces that the control plane runs.
const REQUIRED_BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
];

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// A running control plane. Get the shared one with [`ControlPlane::shared`].
pub struct ControlPlane {
    config: Config,
    kubeconfig_path: PathBuf,
    bin_dir: PathBuf,
    work_dir: PathBuf,
    components: Mutex<Vec<Component>>,
    namespaces_created: AtomicUsize,
}

/// One running process of the control plane.
struct Component {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
}

impl ControlPlane {
    /// The control plane of this test binary, started (and the binaries built,
    /// if missing) by the first caller, who blocks until it is ready; later
    /// callers get it at once.
    ///
    /// Panics with the reason, including the log of a failed component, when
    /// the control plane cannot be built or started; every later caller then
    /// panics with the same message instead of trying again.
    pub fn shared() -> &'static ControlPlane {
        let started = SHARED.get_or_init(|| {
            // Start on a thread that never ends: the kernel delivers
            // PR_SET_PDEATHSIG when the *thread* that spawned a child exits,
            // and libtest ends each test's thread when the test finishes.
            let (started_tx, started_rx) = mpsc::channel();
            let spawned = thread::Builder::new()
                .name("sluice-controlplane".to_owned())
                .spawn(move || {
                    let started = ControlPlane::start().map_err(|error| format!("{error:#}"));
                    // The receiver waits for this message; it cannot be gone.
                    let _ = started_tx.send(started);
                    loop {
                        thread::park();
                    }
                });
            match spawned {
                Ok(_) => started_rx
                    .recv()
                    .unwrap_or_else(|_| Err("the control plane start-up thread panicked".to_owned())),
                Err(error) => Err(format!("cannot spawn the control plane start-up thread: {error}")),
            }
        });
        match started {
            Ok(control_plane) => control_plane,
            Err(message) => panic!("the test control plane is not available: {message}"),
        }
    }

    /// A new client for the control plane, authenticated as a cluster admin.
    ///
    /// Must be called inside a Tokio runtime, and the client used only in that
    /// runtime (kube's client runs a task on the runtime that created it), so
    /// each test takes its own client rather than sharing one.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone())
            .expect("cannot build a kube client from the control plane's configuration")
    }

    /// The kubeconfig file of the control plane (cluster-admin credentials).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The API server's audit log: one JSON line (an `audit.k8s.io/v1` Event) per
    /// write made with a ServiceAccount's credentials. It grows while the
    /// control plane runs; a line is written before the API server answers
    /// the request it records.
    pub fn audit_log_path(&self) -> PathBuf {
        self.work_dir.join("logs/audit.log")
    }

    /// The name and process id of each running component (etcd, kube-apiserver, …), for
    /// benchmarks that account for the control plane's CPU.
    pub fn component_pids(&self) -> Vec<(&'static str, u32)> {
        self.lock_components()
            .iter()
            .map(|component| (component.name, component.child.id()))
            .collect()
    }

    /// A `kubectl` command (the same Kubernetes version as the server) already
    /// pointed at this control plane; add arguments and run it.
    pub fn kubectl(&self) -> Command {
        let mut kubectl = Command::new(self.bin_dir.join("kubectl"));
        kubectl.env("KUBECONFIG", &self.kubeconfig_path);
        kubectl
    }

    /// A `helm` command pointed at this control plane, with Helm's cache,
    /// configuration and data kept in the control plane's directory so that
    /// tests neither read nor change the user's Helm setup.
    pub fn helm(&self) -> Command {
        let helm_home = self.work_dir.join("helm");
        let mut helm = Command::new(self.bin_dir.join("helm"));
        helm.env("KUBECONFIG", &self.kubeconfig_path)
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"));
        helm
    }

    /// Creates a namespace named `<prefix>-<n>`, unique in this control plane,
    /// and waits until pods can be created in it (its `default`
    /// ServiceAccount exists). Panics if that fails or a component has died.
    pub async fn namespace(&self, prefix: &str) -> String {
        if let Err(error) = self.check_running() {
            panic!("the test control plane is broken: {error:#}");
        }
        let name = format!("{prefix}-{}", self.namespaces_created.fetch_add(1, Ordering::Relaxed));
        let client = self.client();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        if let Err(error) = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
        {
            panic!("cannot create test namespace {name}: {error}");
        }
        // Pod creation is refused until kube-controller-manager has created
        // the namespace's default ServiceAccount.
        let service_accounts = Api::<ServiceAccount>::namespaced(client, &name);
        let waited = self
            .poll_until(
                &format!("the default ServiceAccount of namespace {name}"),
                NAMESPACE_READY_TIMEOUT,
                async || Ok(service_accounts.get_opt("default").await?.is_some()),
            )
            .await;
        if let Err(error) = waited {
            panic!("test namespace {name} is not usable: {error:#}");
        }
        name
    }

    fn start() -> Result<ControlPlane> {
        let started = Instant::now();
        let bin_dir = build_binaries()?;
        let work_dir = create_work_dir()?;
        let [api_server_port, etcd_client_port, etcd_peer_port] = free_ports()?;
        let pki = Pki::generate(&work_dir.join("pki"))?;
        let kubeconfig_path = work_dir.join("kubeconfig.yaml");
        write_kubeconfig(&kubeconfig_path, api_server_port, &pki)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot create the Tokio runtime that starts the control plane")?;
        let config = runtime.block_on(async {
            let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
        })?;

        // From here on, dropping `control_plane` (on any error) kills what has
        // been started; the work directory stays, for its logs.
        let control_plane = ControlPlane {
            config,
            kubeconfig_path,
            bin_dir,
            work_dir,
            components: Mutex::new(Vec::new()),
            namespaces_created: AtomicUsize::new(0),
        };
        runtime
            .block_on(control_plane.boot(&pki, api_server_port, etcd_client_port, etcd_peer_port))
            .with_context(|| {
                format!(
                    "the control plane did not start; its logs are in {}",
                    control_plane.work_dir.join("logs").display()
                )
            })?;

        // Statics are never dropped: stop the processes and remove the work
        // directory when the test binary exits, which libtest does through
        // exit(3) whether or not tests failed.
        // SAFETY: `stop_shared_at_exit` is an `extern "C" fn()` that never unwinds.
        if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
            bail!("cannot register the control plane's exit handler");
        }
        eprintln!(
            "sluice test control plane ready in {:.1}s (kubeconfig: {})",
            started.elapsed().as_secs_f64(),
            control_plane.kubeconfig_path.display()
        );
        Ok(control_plane)
    }

    async fn boot(&self, pki: &Pki, api_server_port: u16, etcd_client_port: u16, etcd_peer_port: u16) -> Result<()> {
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        self.spawn(
            "etcd",
            &[
                format!("--data-dir={}", self.work_dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=default={etcd_peer_url}"),
                // The data is thrown away after the run: durability only costs time.
                "--unsafe-no-fsync=true".to_owned(),
                "--log-level=warn".to_owned(),
            ],
        )?;

        let ca = pki.path("ca.crt");
        let service_account_key = pki.path("service-account.key");
        let audit_policy = self.work_dir.join("audit-policy.yaml");
        fs::write(&audit_policy, AUDIT_POLICY).with_context(|| format!("cannot write {}", audit_policy.display()))?;
        // kube-apiserver retries etcd until it answers, so it starts right away.
        self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--secure-port={api_server_port}"),
                format!("--cert-dir={}", self.work_dir.join("apiserver").display()),
                format!("--tls-cert-file={}", pki.path("apiserver.crt").display()),
                format!("--tls-private-key-file={}", pki.path("apiserver.key").display()),
                format!("--client-ca-file={}", ca.display()),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                format!(
                    "--service-account-key-file={}",
                    pki.path("service-account.pub").display()
                ),
                format!("--service-account-signing-key-file={}", service_account_key.display()),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                "--authorization-mode=Node,RBAC".to_owned(),
                "--allow-privileged=true".to_owned(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", self.audit_log_path().display()),
            ],
        )?;

        let client = Client::try_from(self.config.clone())?;
        self.poll_until(
            "kube-apiserver to report /readyz ok",
            API_SERVER_READY_TIMEOUT,
            async || {
                let readyz = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client.request_text(readyz).await? == "ok")
            },
        )
        .await?;

        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig_path.display());
        // Port 0 turns off the components' own HTTPS endpoints: nothing here
        // reads them, and fixed default ports would collide between test binaries.
        self.spawn(
            "kube-controller-manager",
            &[
                kubeconfig.clone(),
                "--secure-port=0".to_owned(),
                "--leader-elect=false".to_owned(),
                // The default set includes the garbage collector and the
                // deployment, replicaset, namespace and serviceaccount controllers.
                "--controllers=*".to_owned(),
                COMPONENT_API_QPS.to_owned(),
                COMPONENT_API_BURST.to_owned(),
                format!("--root-ca-file={}", ca.display()),
                format!("--service-account-private-key-file={}", service_account_key.display()),
            ],
        )?;
        self.spawn(
            "kube-scheduler",
            &[
                kubeconfig.clone(),
                "--secure-port=0".to_owned(),
                "--leader-elect=false".to_owned(),
                COMPONENT_API_QPS.to_owned(),
                COMPONENT_API_BURST.to_owned(),
            ],
        )?;
        let stages = self
            .bin_dir
            .parent()
            .context("the bin directory has no parent")?
            .join("share/kwok/default-stages.yaml");
        if !stages.is_file() {
            bail!(
                "{} is missing; tests/controlplane/build.sh should have written it",
                stages.display()
            );
        }
        self.spawn(
            "kwok",
            &[
                kubeconfig,
                format!("--config={}", stages.display()),
                "--manage-all-nodes=false".to_owned(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".to_owned(),
                "--node-ip=127.0.0.1".to_owned(),
                // kwok renews the node's Lease, as a kubelet would, so the node
                // lifecycle controller keeps the node Ready.
                "--node-lease-duration-seconds=40".to_owned(),
            ],
        )?;

        let nodes = Api::<Node>::all(client);
        nodes
            .create(&PostParams::default(), &fake_node()?)
            .await
            .with_context(|| format!("cannot create the fake node {FAKE_NODE_NAME}"))?;
        // Ready comes from kwok; the not-ready taint, added when the node is
        // created, is removed by kube-controller-manager: both are needed
        // before anything can be scheduled.
        self.poll_until(
            &format!("node {FAKE_NODE_NAME} to be Ready and schedulable"),
            NODE_READY_TIMEOUT,
            async || Ok(is_ready_and_schedulable(&nodes.get(FAKE_NODE_NAME).await?)),
        )
        .await
    }

    /// Starts `name` from the bin directory with its output in `logs/<name>.log`.
    fn spawn(&self, name: &'static str, args: &[String]) -> Result<()> {
        let log_dir = self.work_dir.join("logs");
        fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(self.bin_dir.join(name));
        command
            .args(args)
            // kwok would otherwise also load the user's ~/.kwok/kwok.yaml.
            .env("KWOK_WORKDIR", self.work_dir.join("kwok"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches only the
            // test binary, whose death then kills the component (below).
            .process_group(0);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin_dir.join(name).display()))?;
        self.lock_components().push(Component { name, child, log_path });
        Ok(())
    }

    /// Polls `probe` until it returns true, failing early if a component has
    /// died and after `timeout` with the probe's last error.
    async fn poll_until(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let last_error = match probe().await {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(error) => Some(error),
            };
            if Instant::now() >= deadline {
                let cause = last_error.map_or_else(String::new, |error| format!(" (last error: {error:#})"));
                bail!("timed out after {timeout:?} waiting for {what}{cause}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails, with the end of its log, if any component has exited.
    fn check_running(&self) -> Result<()> {
        for component in self.lock_components().iter_mut() {
            if let Some(status) = component.child.try_wait()? {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    component.name,
                    component.log_path.display(),
                    log_tail(&component.log_path)
                );
            }
        }
        Ok(())
    }

    /// Kills every component, newest first, and reaps it. SIGKILL rather than
    /// a graceful stop: all their state is thrown away anyway.
    fn kill_components(&self) {
        for mut component in self.lock_components().drain(..).rev() {
            // The component leads its own process group (see `spawn`): kill
            // the group, so that nothing it may have started survives it.
            // One already reaped (see `check_running`) is skipped: its pid
            // may belong to someone else by now.
            let still_running = matches!(component.child.try_wait(), Ok(None));
            if let (true, Ok(pid)) = (still_running, libc::pid_t::try_from(component.child.id())) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = component.child.wait();
        }
    }

    fn lock_components(&self) -> MutexGuard<'_, Vec<Component>> {
        // A panic while holding the lock leaves the list itself intact.
        self.components.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ControlPlane {
    /// Only reached when start-up fails (the shared instance is a static):
    /// the processes go, the work directory stays for its logs.
    fn drop(&mut self) {
        self.kill_components();
    }
}

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(control_plane)) = SHARED.get() {
        control_plane.kill_components();
        let _ = fs::remove_dir_all(&control_plane.work_dir);
    }
}

/// Makes the process `command` starts die with this one (with the thread that
/// starts it, strictly: see `PR_SET_PDEATHSIG`), so a test binary that is
/// killed leaves no process behind.
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(move || kill_me_when_parent_dies(parent));
    }
}

/// Runs in the forked child before exec: asks the kernel to SIGKILL it when
/// the parent dies, and covers the parent having died before that request.
fn kill_me_when_parent_dies(parent: u32) -> io::Result<()> {
    // SAFETY: prctl, getppid and raise are async-signal-safe and take no pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::raise(libc::SIGKILL);
        }
    }
    Ok(())
}

/// Runs build.sh, which builds whatever is missing and prints the bin
/// directory as its last line; its progress goes straight to stderr.
fn build_binaries() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} with bash", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its error is printed above",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bin_dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .with_context(|| format!("{} printed no bin directory", script.display()))?
            .trim(),
    );
    for binary in REQUIRED_BINARIES {
        if !bin_dir.join(binary).is_file() {
            bail!(
                "{} is missing after running {}",
                bin_dir.join(binary).display(),
                script.display()
            );
        }
    }
    Ok(bin_dir)
}

/// A fresh directory for this test binary's control plane, after removing
/// those that killed test binaries left behind (their names carry the pid).
fn create_work_dir() -> Result<PathBuf> {
    const PREFIX: &str = "sluice-controlplane-";
    let temp_dir = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&temp_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|name| name.strip_prefix(PREFIX));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let work_dir = temp_dir.join(format!("{PREFIX}{}", std::process::id()));
    // A leftover of an earlier process with the same pid.
    let _ = fs::remove_dir_all(&work_dir);
    fs::create_dir_all(&work_dir).with_context(|| format!("cannot create {}", work_dir.display()))?;
    Ok(work_dir)
}

/// Distinct free loopback ports. All are held open until all are chosen so
/// that none is handed out twice.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("cannot find a free port on 127.0.0.1")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The control plane's certificates and keys, written as PEM files: a CA that
/// signs kube-apiserver's serving certificate and the admin's client
/// certificate (group system:masters), and the ServiceAccount token key pair.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pki = Pki { dir: dir.to_owned() };

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(DnType::CommonName, "sluice-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        pki.write("ca.crt", &ca_params.self_signed(&ca_key)?.pem())?;
        let ca = Issuer::new(ca_params, ca_key);

        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            KUBERNETES_SERVICE_IP.to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.write_signed("apiserver", &serving, &ca)?;

        let mut admin = CertificateParams::default();
        admin.distinguished_name.push(DnType::CommonName, "sluice-test-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        pki.write_signed("admin", &admin, &ca)?;

        let service_account_key = KeyPair::generate()?;
        pki.write("service-account.key", &service_account_key.serialize_pem())?;
        // kube-apiserver verifies tokens with public keys and does not read
        // them out of a PKCS#8 private key file.
        pki.write("service-account.pub", &service_account_key.public_key_pem())?;
        Ok(pki)
    }

    fn write_signed(&self, name: &str, params: &CertificateParams, ca: &Issuer<'_, KeyPair>) -> Result<()> {
        let key = KeyPair::generate()?;
        self.write(&format!("{name}.crt"), &params.signed_by(&key, ca)?.pem())?;
        self.write(&format!("{name}.key"), &key.serialize_pem())
    }

    fn write(&self, name: &str, pem: &str) -> Result<()> {
        let path = self.path(name);
        fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn write_kubeconfig(path: &Path, api_server_port: u16, pki: &Pki) -> Result<()> {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "sluice-test",
            "cluster": {
                "server": format!("https://127.0.0.1:{api_server_port}"),
                "certificate-authority": pki.path("ca.crt"),
            },
        }],
        "users": [{
            "name": "sluice-test-admin",
            "user": {
                "client-certificate": pki.path("admin.crt"),
                "client-key": pki.path("admin.key"),
            },
        }],
        "contexts": [{
            "name": "sluice-test",
            "context": { "cluster": "sluice-test", "user": "sluice-test-admin" },
        }],
        "current-context": "sluice-test",
    });
    fs::write(path, serde_yaml::to_string(&kubeconfig)?).with_context(|| format!("cannot write {}", path.display()))
}

/// The node kwok manages (it selects nodes by the `kwok.x-k8s.io/node`
/// annotation). It has no taint, so workloads need no toleration, and its
/// capacity is generous so that scheduling never fails for lack of room, even
/// for a benchmark's thousands of pods (50m CPU and 64Mi requested each).
fn fake_node() -> Result<Node> {
    let resources = json!({ "cpu": "1000", "memory": "4Ti", "pods": "5000" });
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE_NAME,
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": FAKE_NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "status": { "capacity": resources, "allocatable": resources },
    }))?)
}

fn is_ready_and_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        });
    let tainted = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| !taints.is_empty());
    ready && !tainted
}

fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(cannot read the log: {error})"),
    }
}
