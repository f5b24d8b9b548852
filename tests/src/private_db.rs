//! A throwaway PostgreSQL or MariaDB server for one test, which the test may stop and start
//! again (same data directory, same port) to take the database away from a runtime for real,
//! without touching the shared servers of `scripts/services.sh` that other tests use.
//!
//! The server runs from a fresh directory under the system temp dir, on a free loopback port,
//! with user `sluice` / password `sluice`. As root it runs as the `postgres` or `mysql` account
//! (the servers refuse root), like `scripts/services.sh`. Dropping it stops the server and
//! removes its directory, also when the test panics; directories (and servers) that killed
//! test processes left behind are removed by the next one. Every wait is bounded, and a server
//! that fails to start or stop panics with the tail of its log.
//!
//! The methods block the calling thread (about a second to create a server); call them from
//! the test itself, not from a task the test awaits.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sluice_crds::dataapi::Engine;

const PREFIX: &str = "sluice-private-db-";
const USER: &str = "sluice";
const PASSWORD: &str = "sluice";
/// Bound on creating the data directory, and on a server starting or stopping.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TAIL_LINES: usize = 20;

/// A database server of its own for one test. See the module documentation.
pub struct PrivateDb {
    engine: Engine,
    dir: PathBuf,
    port: u16,
    running: bool,
    /// The running `mariadbd` (PostgreSQL's `pg_ctl` detaches its server).
    mariadbd: Option<Child>,
}

impl PrivateDb {
    /// Creates and starts a private server for `engine` (PostgreSQL or MariaDB).
    pub fn new(engine: Engine) -> PrivateDb {
        assert!(engine != Engine::Sqlite, "SQLite has no server to stop");
        static REAP: Once = Once::new();
        REAP.call_once(reap_leftovers);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // From here on, a panic drops `server`, which removes the directory.
        let mut server = PrivateDb {
            engine,
            dir,
            port: free_port(),
            running: false,
            mariadbd: None,
        };
        server.give_to_account(&server.dir);
        // The server appends to the log as its account, and so do the tools run here.
        let log = server.log();
        File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        server.give_to_account(&log);
        match engine {
            Engine::Postgres => server.init_postgres(),
            _ => server.init_mariadb(),
        }
        server
    }

    /// The URL the runtime and fixtures connect with (user `sluice`, over TCP).
    pub fn url(&self) -> String {
        match self.engine {
            Engine::Postgres => format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres", self.port),
            _ => format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/sluice", self.port),
        }
    }

    /// Starts the server again on the same data and port; returns once it accepts connections.
    pub fn start(&mut self) {
        assert!(
            !self.running,
            "{:?}: the private server is already running",
            self.engine
        );
        match self.engine {
            Engine::Postgres => self.start_postgres(),
            _ => self.start_mariadb(),
        }
        self.running = true;
    }

    /// Stops the server (a fast shutdown that drops its clients); returns once it has exited.
    pub fn stop(&mut self) {
        assert!(self.running, "{:?}: the private server is not running", self.engine);
        if let Err(error) = self.try_stop() {
            panic!("{:?}: {error}\n{}", self.engine, self.log_tail());
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn account(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "postgres",
            _ => "mysql",
        }
    }

    /// As root, makes `path` belong to the server's account.
    fn give_to_account(&self, path: &Path) {
        if !is_root() {
            return;
        }
        let chown = Command::new("chown")
            .arg(format!("{}:", self.account()))
            .arg(path)
            .status();
        if !chown.is_ok_and(|status| status.success()) {
            panic!(
                "cannot give {} to the account {} (it comes with the server's package)",
                path.display(),
                self.account()
            );
        }
    }

    /// `program` run as the server's account.
    fn as_account(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        as_account(self.account(), program)
    }

    /// Runs `command` to completion within [`STEP_TIMEOUT`], output to the server log.
    fn run(&self, what: &str, mut command: Command) {
        let result = File::options()
            .append(true)
            .open(self.log())
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|e| format!("cannot open the log: {e}"))
            .and_then(|(out, err)| run_bounded(command.stdin(Stdio::null()).stdout(out).stderr(err)));
        if let Err(error) = result {
            panic!("{:?}: {what}: {error}\n{}", self.engine, self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        match fs::read_to_string(&log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!("last lines of {}:\n{tail}", log.display())
            }
            Err(error) => format!("(cannot read {}: {error})", log.display()),
        }
    }

    fn init_postgres(&mut self) {
        let bin = postgres_bin();
        let password_file = self.dir.join("password");
        fs::write(&password_file, PASSWORD).expect("write the initdb password file");
        self.give_to_account(&password_file);
        let mut initdb = self.as_account(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(self.data())
            .args(["-U", USER, "--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            .arg(format!("--pwfile={}", password_file.display()));
        self.run("initdb", initdb);
        let _ = fs::remove_file(password_file);
        self.start();
    }

    fn start_postgres(&mut self) {
        let data = self.data();
        let mut pg_ctl = self.as_account(postgres_bin().join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", &STEP_TIMEOUT.as_secs().to_string(), "-o"])
            .arg(format!(
                "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                self.port,
                data.display()
            ))
            .arg("start");
        self.run("pg_ctl start", pg_ctl);
    }

    fn init_mariadb(&mut self) {
        let data = self.data();
        fs::create_dir_all(&data).unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
        self.give_to_account(&data);
        let mut install = Command::new("mariadb-install-db");
        install
            .args([
                "--no-defaults",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ])
            .arg(format!("--user={}", server_user(self.account())))
            .arg(format!("--datadir={}", data.display()));
        self.run("mariadb-install-db", install);
        self.start();
        let setup = format!(
            "CREATE DATABASE sluice; CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;"
        );
        let client = self.mariadb_client(&setup);
        self.run("creating the sluice user", client);
    }

    /// The `mariadb` client running `sql` as the administrator, over the socket.
    fn mariadb_client(&self, sql: &str) -> Command {
        let mut client = Command::new("mariadb");
        client
            .args(["--no-defaults", "--connect-timeout=2"])
            .arg(format!("--socket={}", self.data().join("mysqld.sock").display()))
            .arg(format!(
                "--user={}",
                if is_root() { "root".into() } else { current_user() }
            ))
            .args(["-e", sql]);
        client
    }

    fn start_mariadb(&mut self) {
        let data = self.data();
        let log = self.log();
        let mariadbd = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or("mariadbd");
        let child = Command::new(mariadbd)
            .arg("--no-defaults")
            .arg(format!("--user={}", server_user(self.account())))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", data.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", data.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(["--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=32M"])
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {mariadbd}: {e} (package mariadb-server)"));
        self.mariadbd = Some(child);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if run_bounded(
                self.mariadb_client("SELECT 1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .is_ok()
            {
                return;
            }
            let exited = self.mariadbd.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.mariadbd = None;
                panic!("MariaDB exited during start ({status})\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                let _ = self.kill_mariadbd();
                panic!("MariaDB did not start within {STEP_TIMEOUT:?}\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_stop(&mut self) -> Result<(), String> {
        self.running = false;
        match self.engine {
            Engine::Postgres => {
                let mut pg_ctl = self.as_account(postgres_bin().join("pg_ctl"));
                pg_ctl
                    .arg("-D")
                    .arg(self.data())
                    .args(["-m", "fast", "-w", "-t", &STEP_TIMEOUT.as_secs().to_string(), "stop"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                run_bounded(&mut pg_ctl).map_err(|e| format!("pg_ctl stop: {e}"))
            }
            _ => {
                let Some(child) = self.mariadbd.as_mut() else {
                    return Ok(());
                };
                signal(child, libc::SIGTERM);
                if wait_exit(child, STEP_TIMEOUT) {
                    self.mariadbd = None;
                    Ok(())
                } else {
                    self.kill_mariadbd()?;
                    Err(format!("MariaDB did not stop within {STEP_TIMEOUT:?}; killed it"))
                }
            }
        }
    }

    fn kill_mariadbd(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.mariadbd.take() {
            let _ = child.kill();
            child.wait().map_err(|e| format!("waiting for MariaDB: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if self.running
            && let Err(error) = self.try_stop()
        {
            eprintln!("{:?}: stopping the private server: {error}", self.engine);
        }
        // Also after a panic half-way through a start.
        let _ = self.kill_mariadbd();
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {error}", self.dir.display());
        }
    }
}

/// Stops the servers, and removes the directories, of private servers whose test process
/// was killed before its `Drop` ran (their names carry that process's id).
fn reap_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next());
        let owner_is_gone = owner.is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if !owner_is_gone {
            continue;
        }
        let data = entry.path().join("data");
        if data.join("postmaster.pid").exists() {
            let mut pg_ctl = as_account("postgres", postgres_bin().join("pg_ctl"));
            pg_ctl
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = run_bounded(&mut pg_ctl);
        }
        let mariadbd_pid = fs::read_to_string(data.join("mysqld.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<libc::pid_t>().ok());
        if let Some(pid) = mariadbd_pid {
            // Only if that pid is still a mariadbd running on this directory.
            let command_line = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&command_line).contains(&*data.to_string_lossy()) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// Runs `command` and waits for it within [`STEP_TIMEOUT`], killing it after that.
fn run_bounded(command: &mut Command) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !wait_exit(&mut child, STEP_TIMEOUT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{program} did not finish within {STEP_TIMEOUT:?}"));
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{program} failed ({status})")),
        Err(error) => Err(format!("waiting for {program}: {error}")),
    }
}

/// Waits up to `timeout` for `child` to exit; false if it is still running.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The newest PostgreSQL's programs under /usr/lib/postgresql.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL is not installed under /usr/lib/postgresql (run scripts/services.sh)")
}

/// `program` run as `account` when we are root (the servers refuse root), else as ourselves.
fn as_account(account: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", account, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The account `mariadbd` runs as: `account` as root, else whoever we are.
fn server_user(account: &str) -> String {
    if is_root() { account.to_owned() } else { current_user() }
}

fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "nobody".to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free port on 127.0.0.1")
}
