//! Building blocks of the end-to-end user-story test: the workspace's binaries run as processes
//! the way their pods would run them (identity, environment, mounted Secrets), with the test
//! playing the kubelet, since there is no container runtime here.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use kube::Api;
use serde_yaml::Value as Yaml;
use sluice_crds::dataapi::Engine;
use sluice_runtime::db::Database;

use crate::controlplane::{ControlPlane, die_with_parent};

/// How many trailing lines of a process's log go into a failure message.
const LOG_TAIL_LINES: usize = 40;
/// How often the simulated kubelet compares a mounted Secret with the API server's copy.
const KUBELET_SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Workspace binaries, each given as `(package, binary)`, built by one `cargo build` (one wait for
/// the build directory's lock, which other builds may hold) and linked into `dir`; returns their
/// paths there. Cargo builds only a test crate's own binaries before its tests, and these belong
/// to other packages.
///
/// The links keep the files this build produced: a later build in the same target directory
/// (another checkout sharing it, say) replaces `<target>/<profile>/<binary>` with a new file
/// rather than rewriting it in place.
pub fn workspace_binaries<const N: usize>(binaries: [(&str, &str); N], dir: &Path) -> [PathBuf; N] {
    // The test runs as <target>/<profile>/deps/<test>-<hash>.
    let test_exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = test_exe.parent().and_then(Path::parent).expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--quiet", "--target-dir"]).arg(target_dir);
    for (package, binary) in binaries {
        build.args(["-p", package, "--bin", binary]);
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build of {binaries:?} failed: {status}");
    binaries.map(|(_, binary)| {
        let built = profile_dir.join(binary);
        let kept = dir.join(binary);
        let _ = std::fs::remove_file(&kept);
        std::fs::hard_link(&built, &kept)
            .or_else(|_| std::fs::copy(&built, &kept).map(|_| ()))
            .unwrap_or_else(|e| panic!("cannot keep {} as {}: {e}", built.display(), kept.display()));
        kept
    })
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A process standing in for a pod's container: it starts with an empty environment plus what
/// it is given (a container inherits nothing from the node), logs to a file, dies with the test
/// thread that started it, and is killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and exactly the environment `env`.
    pub fn start(name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> Process {
        let log = std::env::temp_dir().join(format!("sluice-e2e-{}-{name}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create a process log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Process {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The process id, to show that the same process kept running.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for a child process")
    }

    /// Panics, with the end of its log, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status})\n{}", self.name, self.log_tail());
        }
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, headed by its name.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        )
    }

    /// Polls `GET path` at `address` until it answers 200, failing with the log when the
    /// process exits or `timeout` passes.
    pub async fn wait_http_ok(&mut self, address: SocketAddr, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if get_status(address, path).await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: GET {path} did not answer 200 within {timeout:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The status code of `GET path`, or `None` when nothing answers.
async fn get_status(address: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Runs `kubectl args` against the control plane and returns its standard output; panics with
/// its error output when it fails.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_with_input(args, None)
}

/// `kubectl apply --server-side` of `yaml` (one or more documents).
pub fn kubectl_apply(yaml: &str) -> String {
    kubectl_with_input(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=sluice-e2e",
            "-f",
            "-",
        ],
        Some(yaml),
    )
}

fn kubectl_with_input(args: &[&str], input: Option<&str>) -> String {
    let mut child = ControlPlane::shared()
        .kubectl()
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("kubectl's stdin")
            .write_all(input.as_bytes())
            .expect("write to kubectl");
    }
    let output = child.wait_with_output().expect("wait for kubectl");
    assert!(
        output.status.success(),
        "kubectl {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `user` may `verb` the `resource` (`plural.group[/subresource]`), in `namespace` or
/// across the cluster, according to `kubectl auth can-i --as`.
pub fn can_i(user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let mut kubectl = ControlPlane::shared().kubectl();
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    kubectl.args(["auth", "can-i", verb, resource, "--as", user]);
    if !subresource.is_empty() {
        kubectl.arg(format!("--subresource={subresource}"));
    }
    match namespace {
        Some(namespace) => kubectl.args(["-n", namespace]),
        None => kubectl.arg("--all-namespaces"),
    };
    let output = kubectl.output().expect("kubectl runs");
    // can-i exits 1 for "no"; anything else on stdout means it could not tell.
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource} --as {user}: unexpected answer {other:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Writes, at `path`, a copy of the control plane's kubeconfig that keeps the admin certificate as
/// the credential but impersonates `user` (`as:`), so every request is authorised as `user` —
/// for a ServiceAccount, exactly what its pod's token would be allowed.
pub fn write_impersonating_kubeconfig(path: &Path, user: &str) {
    let admin = std::fs::read_to_string(ControlPlane::shared().kubeconfig_path()).expect("read the kubeconfig");
    let mut kubeconfig: Yaml = serde_yaml::from_str(&admin).expect("the kubeconfig is YAML");
    let users = kubeconfig["users"].as_sequence_mut().expect("the kubeconfig has users");
    for entry in users {
        entry["user"]["as"] = Yaml::from(user);
    }
    std::fs::write(
        path,
        serde_yaml::to_string(&kubeconfig).expect("serialise the kubeconfig"),
    )
    .expect("write the impersonating kubeconfig");
}

/// The environment a container gets: literal values, `secretKeyRef`s read from `secrets` (the
/// pod's namespace), and `fieldRef`s from `pod_fields` (e.g. `metadata.name`). Any other source
/// fails the test: it would have to be simulated first.
pub async fn container_env(
    container: &Container,
    secrets: &Api<Secret>,
    pod_fields: &BTreeMap<&str, String>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, None) => String::new(),
            (None, Some(source)) => {
                if let Some(selector) = &source.secret_key_ref {
                    let secret = secrets
                        .get(&selector.name)
                        .await
                        .unwrap_or_else(|e| panic!("env {}: Secret {}: {e}", var.name, selector.name));
                    secret_data(&secret, &selector.key).unwrap_or_else(|| {
                        panic!("env {}: Secret {} has no key {}", var.name, selector.name, selector.key)
                    })
                } else if let Some(field) = &source.field_ref {
                    pod_fields
                        .get(field.field_path.as_str())
                        .unwrap_or_else(|| {
                            panic!("env {}: no simulated value for fieldRef {}", var.name, field.field_path)
                        })
                        .clone()
                } else {
                    panic!("env {}: the test does not simulate {source:?}", var.name)
                }
            }
        };
        env.push((var.name.clone(), value));
    }
    env
}

/// The value of `key` in a Secret read from the API server (`data`, base64-decoded by the client).
pub fn secret_data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
}

/// A Secret volume mounted into a container, and where the simulated kubelet puts its files.
#[derive(Debug, Clone)]
pub struct SecretMount {
    /// The path in the container.
    pub mount_path: String,
    /// The Secret's name.
    pub secret_name: String,
    /// Which Secret key goes to which file name (`items`, or every key when the volume has none).
    pub items: Option<Vec<(String, String)>>,
    /// The local directory standing in for `mount_path`.
    pub dir: PathBuf,
}

/// The container's Secret-volume mounts, each given a fresh directory under `root`. Other volume
/// types are left out: the caller decides whether it needs them.
pub fn secret_mounts(pod: &PodSpec, container: &Container, root: &Path) -> Vec<SecretMount> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .unwrap_or_else(|| panic!("volume mount {} names no volume of the pod", mount.name));
        let Some(secret) = &volume.secret else {
            continue;
        };
        assert!(
            mount.sub_path.is_none(),
            "volume mount {}: a subPath mount is never refreshed by the kubelet",
            mount.name
        );
        let dir = root.join(&mount.name);
        std::fs::create_dir_all(&dir).expect("create a mount directory");
        mounts.push(SecretMount {
            mount_path: mount.mount_path.clone(),
            secret_name: secret.secret_name.clone().expect("a Secret volume names its Secret"),
            items: secret
                .items
                .as_ref()
                .map(|items| items.iter().map(|item| (item.key.clone(), item.path.clone())).collect()),
            dir,
        });
    }
    mounts
}

/// `args` with every path under a mount's `mount_path` moved to its local directory.
pub fn relocate_paths(args: &[String], mounts: &[SecretMount]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            mounts
                .iter()
                .find_map(|mount| {
                    let rest = arg.strip_prefix(&mount.mount_path)?;
                    rest.starts_with('/').then(|| format!("{}{rest}", mount.dir.display()))
                })
                .unwrap_or_else(|| arg.clone())
        })
        .collect()
}

/// The kubelet's part for Secret volumes: the files are written before the container starts and
/// rewritten (atomically, by rename) whenever the Secret changes. Stops when dropped.
pub struct Kubelet {
    sync: tokio::task::JoinHandle<()>,
    updates: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Kubelet {
    /// Writes every mount's files now, then keeps them in step with the API server.
    pub async fn mount(secrets: Api<Secret>, mounts: Vec<SecretMount>) -> Kubelet {
        let mut written = BTreeMap::new();
        for mount in &mounts {
            let secret = secrets
                .get(&mount.secret_name)
                .await
                .unwrap_or_else(|e| panic!("mounting Secret {}: {e}", mount.secret_name));
            written.insert(mount.secret_name.clone(), write_secret_files(mount, &secret));
        }
        let updates = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = updates.clone();
        let sync = tokio::spawn(async move {
            loop {
                tokio::time::sleep(KUBELET_SYNC_INTERVAL).await;
                for mount in &mounts {
                    // A Secret that is gone keeps its last files, as the kubelet does.
                    let Ok(secret) = secrets.get(&mount.secret_name).await else {
                        continue;
                    };
                    let current = secret.data.clone().unwrap_or_default();
                    if written.get(&mount.secret_name) != Some(&current) {
                        written.insert(mount.secret_name.clone(), write_secret_files(mount, &secret));
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        });
        Kubelet { sync, updates }
    }

    /// How many times a mounted Secret has been rewritten since it was first mounted.
    pub fn updates(&self) -> usize {
        self.updates.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

fn write_secret_files(mount: &SecretMount, secret: &Secret) -> BTreeMap<String, k8s_openapi::ByteString> {
    let data = secret.data.clone().unwrap_or_default();
    let files: Vec<(String, String)> = match &mount.items {
        Some(items) => items.clone(),
        None => data.keys().map(|key| (key.clone(), key.clone())).collect(),
    };
    for (key, file) in files {
        let bytes = data
            .get(&key)
            .unwrap_or_else(|| panic!("Secret {} has no key {key} to mount", mount.secret_name));
        let target = mount.dir.join(&file);
        let staging = mount.dir.join(format!(".{file}.tmp"));
        std::fs::write(&staging, &bytes.0).expect("write a mounted Secret file");
        std::fs::rename(&staging, &target).expect("swap in a mounted Secret file");
    }
    data
}

/// A PostgreSQL schema loaded with test data, dropped (with everything in it) when dropped.
pub struct PostgresSchema {
    url: String,
    /// The schema's name.
    pub name: String,
}

impl PostgresSchema {
    /// Creates the schema `name` on the server at `url` and runs `sql` in it.
    pub async fn create(url: &str, name: &str, sql: &str) -> PostgresSchema {
        let database =
            Database::connect(Engine::Postgres, url, &Default::default()).expect("the PostgreSQL URL parses");
        database
            .run_script(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; SET search_path TO {name}; {sql}"
            ))
            .await
            .unwrap_or_else(|e| panic!("creating schema {name} on the test PostgreSQL: {e}"));
        PostgresSchema {
            url: url.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop may run inside the test's Tokio runtime, which must not be blocked on.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let database = Database::connect(Engine::Postgres, &url, &Default::default())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                database
                    .run_script(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test schema {}: {dropped:?}", self.name);
        }
    }
}

/// A scratch directory (kubeconfigs, mounted Secret files), removed with everything in it when
/// dropped.
pub struct WorkDir {
    /// Its path.
    pub path: PathBuf,
}

impl WorkDir {
    /// A fresh directory named after `name` and this process.
    pub fn create(name: &str) -> WorkDir {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        WorkDir { path }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
