//! `sluice-runtime`: serves one DataApi's database as a documented REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sluice_runtime::audit::AuditLog;
use sluice_runtime::auth::Caller;
use sluice_runtime::config::{self, DatabaseLocation, Loaded};
use sluice_runtime::db::Database;
use sluice_runtime::server::ConnectionLimits;
use sluice_runtime::{app, build_app, reload, server};

// glibc's malloc was ~13% of the runtime's CPU under load (bench/README.md): every request
// allocates many small, short-lived strings and rows across threads, which mimalloc serves from
// thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves a database as a governed REST API.
#[derive(Parser, Debug)]
#[command(name = "sluice-runtime", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the REST API, OpenAPI document and docs page.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "manifests"]))]
struct ServeArgs {
    /// A rendered RuntimeConfig JSON file (as the operator mounts it). The database URL comes from
    /// the environment variable it names (SLUICE_DATABASE_URL); a relative SQLite path is resolved
    /// against the working directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A folder of *.yaml manifests: one DataApi and its ApiRoles, resolved locally. A random key
    /// is generated for each declared API key and printed once. A relative SQLite path is
    /// resolved against this folder.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Address to listen on (use 0.0.0.0:8080 in a pod).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// SQL that creates the SQLite database when its file does not exist yet. Default: seed.sql
    /// or shop.sql beside the manifests (the quickstart ships shop.sql).
    #[arg(long, value_name = "FILE")]
    seed_sql: Option<PathBuf>,
    /// Log format: `json` (one object per line, for log collectors, as the operator sets in
    /// pods) or `text`. RUST_LOG sets the level. Logs go to standard error; audit lines to
    /// standard output.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let Command::Serve(args) = Cli::parse().command;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == LogFormat::Json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice-runtime: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sluice-runtime: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let loaded = match (&args.config, &args.manifests) {
        (Some(file), _) => config::from_file(file),
        (None, Some(dir)) => config::from_manifests(dir),
        (None, None) => unreachable!("clap requires --config or --manifests"),
    }
    .map_err(|error| error.to_string())?;
    let database = open_database(&loaded, args.seed_sql.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let (audit, audit_writer) = AuditLog::start(std::io::stdout());
    let app = build_app(loaded.config.clone(), database, audit).map_err(|error| error.to_string())?;
    if let Some(file) = &args.config {
        tokio::spawn(reload::follow_config_file(app.state.clone(), file.clone()));
    }
    let examples = examples(&app, &loaded).await;
    print_banner(&loaded, address, &examples);
    let state = app.state.clone();
    let limits = move || ConnectionLimits::from(&state.live().config.limits);
    server::serve(listener, app.router, limits, server::shutdown_signal()).await;
    if let Err(error) = audit_writer.close().await {
        tracing::error!(%error, "the audit log could not be flushed at shutdown");
    }
    Ok(())
}

async fn open_database(loaded: &Loaded, seed_sql: Option<&std::path::Path>) -> Result<Database, String> {
    let engine = loaded.config.database.engine;
    let pool = &loaded.config.database.pool;
    match config::database_location(loaded).map_err(|error| error.to_string())? {
        DatabaseLocation::Url(url) => Database::connect(engine, &url, pool).map_err(|error| error.to_string()),
        DatabaseLocation::SqliteFile(path) if path.exists() => {
            Database::connect(engine, &Database::sqlite_url(&path), pool).map_err(|error| error.to_string())
        }
        DatabaseLocation::SqliteFile(path) => {
            let script_path = config::seed_script(seed_sql, &loaded.base_dir).ok_or_else(|| {
                format!(
                    "the SQLite database {} does not exist; create it, or pass --seed-sql FILE to create it from SQL",
                    path.display()
                )
            })?;
            let script = std::fs::read_to_string(&script_path)
                .map_err(|error| format!("cannot read {}: {error}", script_path.display()))?;
            let url = format!("{}?mode=rwc", Database::sqlite_url(&path));
            let database = Database::connect(engine, &url, pool).map_err(|error| error.to_string())?;
            if let Err(error) = database.run_script(&script).await {
                let _ = std::fs::remove_file(&path);
                return Err(format!(
                    "creating {} from {} failed: {error}",
                    path.display(),
                    script_path.display()
                ));
            }
            eprintln!("Created {} from {}", path.display(), script_path.display());
            Ok(database)
        }
    }
}

/// What the banner's example requests read: a table the anonymous role may read, and for the
/// first generated key, a table its role may read (preferably one the anonymous role cannot).
#[derive(Debug, Default)]
struct Examples {
    anonymous_table: Option<String>,
    keyed: Option<KeyedExample>,
}

#[derive(Debug)]
struct KeyedExample {
    role: String,
    key: String,
    table: String,
}

/// Waits (up to 5 s) for the schema, then picks the example tables through the roles' views.
async fn examples(app: &sluice_runtime::App, loaded: &Loaded) -> Examples {
    let state = &app.state;
    let mut schema = None;
    for _ in 0..50 {
        if let Ok(loaded_schema) = state.schema() {
            schema = Some(loaded_schema);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some(schema) = schema else {
        return Examples::default();
    };
    let live = state.live();
    let readable = |role: &str| -> Vec<String> {
        let caller = Caller {
            id: role.to_owned(),
            role: role.to_owned(),
            claims: Default::default(),
        };
        live.policy.access(&caller).view(&schema).tables.into_keys().collect()
    };
    let anonymous: Vec<String> = live
        .config
        .auth
        .anonymous_role
        .as_deref()
        .map(readable)
        .unwrap_or_default();
    let keyed = loaded.generated_keys.first().and_then(|(id, key)| {
        let role = id.split('/').next().unwrap_or_default().to_owned();
        let tables = readable(&role);
        let table = tables
            .iter()
            .find(|table| !anonymous.contains(table))
            .or_else(|| tables.first())?
            .clone();
        Some(KeyedExample {
            role,
            key: key.clone(),
            table,
        })
    });
    Examples {
        anonymous_table: anonymous.into_iter().next(),
        keyed,
    }
}

fn print_banner(loaded: &Loaded, address: SocketAddr, examples: &Examples) {
    let host = if address.ip().is_unspecified() {
        format!("127.0.0.1:{}", address.port())
    } else {
        address.to_string()
    };
    let config = &loaded.config;
    let base = app::base_path(config);
    let root = format!("http://{host}{base}");
    println!(
        "Sluice is serving DataApi {} ({})",
        config.data_api,
        config.database.engine.as_str()
    );
    println!("  REST     {root}/<table>");
    println!("  OpenAPI  {root}/openapi.json   (each role sees only what it may use)");
    println!("  Docs     {root}/docs");
    if config.mcp.enabled {
        println!(
            "  MCP      http://{host}{}   (for AI agents; see docs/mcp.md)",
            config.mcp.path
        );
    }
    println!("  Health   http://{host}/healthz, http://{host}/readyz");
    if !loaded.generated_keys.is_empty() {
        println!("API keys (shown only now; they change at every start):");
        for (id, key) in &loaded.generated_keys {
            println!("  {id}: {key}");
        }
    }
    println!("Try:");
    if let (Some(role), Some(table)) = (&config.auth.anonymous_role, &examples.anonymous_table) {
        println!("  curl '{root}/{table}?limit=3'   # no key: anonymous, as role {role}");
    }
    if let Some(example) = &examples.keyed {
        println!(
            "  curl -H '{}: {}' '{root}/{}?limit=3'   # as role {}",
            config.auth.api_key_header, example.key, example.table, example.role
        );
    }
    if examples.anonymous_table.is_none() && examples.keyed.is_none() {
        println!(
            "  curl '{root}/openapi.json'   (no example table: the schema is still loading, or no role may read a table; see the log)"
        );
    }
}
