//! The application: shared state, the router, per-request context, and health endpoints.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use sluice_crds::RuntimeConfig;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::authz::Policy;
use crate::db::Database;
use crate::error::ApiError;
use crate::gate::{self, Call};
use crate::introspect::introspect;
use crate::jwt::{JwtSetupError, JwtVerifier};
use crate::metrics::{Metrics, PoolStats};
use crate::ratelimit::RateLimiter;
use crate::schema::Schema;
use crate::{docs, mcp, openapi, rest};

/// Response header carrying the request id that also appears in every log line of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One generation of the configuration, with everything compiled from it. Requests take the
/// current generation once and use it throughout, so a reload never mixes two generations in
/// one request, and requests in flight finish on the one they started with.
pub struct Live {
    /// The resolved configuration.
    pub config: RuntimeConfig,
    /// The config's roles, compiled.
    pub policy: Policy,
    /// The audit log as this config wants it (on or off, with or without bodies).
    pub audit: AuditLog,
    /// Verifies bearer tokens, when the config sets `auth.jwt`.
    pub jwt: Option<Arc<JwtVerifier>>,
}

impl Live {
    /// Compiles `config`. The token verifier (and its cached key set) carries over from
    /// `previous` when the JWT settings did not change.
    fn compile(config: RuntimeConfig, audit: &AuditLog, previous: Option<&Live>) -> Result<Self, JwtSetupError> {
        let jwt = match (&config.auth.jwt, previous) {
            (Some(settings), Some(previous)) if previous.config.auth.jwt.as_ref() == Some(settings) => {
                previous.jwt.clone()
            }
            (Some(settings), _) => Some(Arc::new(JwtVerifier::new(settings)?)),
            (None, _) => None,
        };
        Ok(Self {
            policy: Policy::compile(&config.roles),
            audit: audit.configured(&config.audit),
            jwt,
            config,
        })
    }
}

/// State shared by every request.
pub struct AppState {
    live: RwLock<Arc<Live>>,
    /// The database.
    pub database: Database,
    /// Request, rate-limit, authentication and reload counters.
    pub metrics: Metrics,
    /// Token buckets per caller.
    pub limiter: RateLimiter,
    audit: AuditLog,
    schema: RwLock<Option<Arc<Schema>>>,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl AppState {
    /// Changes each time a new config is applied, for whoever must tell clients (MCP sessions
    /// are sent `notifications/tools/list_changed`).
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The current configuration generation.
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `config` current for every request that starts from now on. What only a restart
    /// can change (the database connection, the REST base path, whether REST or MCP is served
    /// and where) keeps its old value, with a warning naming it; the operator rolls the pods
    /// for those changes. A change of exposed schemas or tables reloads the schema. A config
    /// whose JWT settings cannot be used is refused and the current one stays.
    pub async fn apply(&self, mut config: RuntimeConfig) -> Result<(), JwtSetupError> {
        let previous = self.live();
        let old = &previous.config;
        let needs_restart: Vec<&str> = [
            (
                "database connection",
                old.database.engine != config.database.engine
                    || old.database.url_env != config.database.url_env
                    || old.database.path != config.database.path
                    || old.database.pool != config.database.pool,
            ),
            (
                "rest.basePath or rest.enabled",
                old.rest.base_path != config.rest.base_path || old.rest.enabled != config.rest.enabled,
            ),
            (
                "mcp.path or mcp.enabled",
                old.mcp.path != config.mcp.path || old.mcp.enabled != config.mcp.enabled,
            ),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(unchanged = ?needs_restart, "the new config changes settings that apply only at restart; they keep their old values until the pod restarts");
            config.database.engine = old.database.engine;
            config.database.url_env.clone_from(&old.database.url_env);
            config.database.path.clone_from(&old.database.path);
            config.database.pool = old.database.pool.clone();
            config.rest.base_path.clone_from(&old.rest.base_path);
            config.rest.enabled = old.rest.enabled;
            config.mcp.path.clone_from(&old.mcp.path);
            config.mcp.enabled = old.mcp.enabled;
        }
        let exposure_changed = old.database.schemas != config.database.schemas
            || old.database.include != config.database.include
            || old.database.exclude != config.database.exclude;
        let live = match Live::compile(config, &self.audit, Some(&previous)) {
            Ok(live) => Arc::new(live),
            Err(error) => {
                self.metrics.record_reload(false);
                return Err(error);
            }
        };
        match self.live.write() {
            Ok(mut current) => *current = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
        self.metrics.record_reload(true);
        self.reloads.send_modify(|generation| *generation += 1);
        tracing::info!("configuration reloaded");
        if exposure_changed && let Err(error) = self.reload_schema().await {
            tracing::warn!(%error, "schema reload after the config change failed; keeping the previous schema");
        }
        Ok(())
    }

    /// The loaded schema, or 503 while it is not.
    pub fn schema(&self) -> Result<Arc<Schema>, ApiError> {
        self.schema
            .read()
            .map_err(|_| ApiError::Internal)?
            .clone()
            .ok_or(ApiError::Unavailable)
    }

    fn schema_loaded(&self) -> bool {
        self.schema.read().map(|schema| schema.is_some()).unwrap_or(false)
    }

    /// Reads the schema from the database and makes it current.
    pub async fn reload_schema(&self) -> Result<(), crate::introspect::IntrospectError> {
        let schema = introspect(&self.database, &self.live().config.database).await?;
        tracing::info!(tables = schema.tables.len(), "schema loaded");
        if let Ok(mut current) = self.schema.write() {
            *current = Some(Arc::new(schema));
        }
        Ok(())
    }
}

/// The shared state and the router serving it.
pub struct App {
    /// Shared state.
    pub state: Arc<AppState>,
    /// Every route.
    pub router: Router,
}

/// Builds the application and starts loading the schema in the background: the process serves
/// `/healthz` at once and reports ready once the schema is loaded. Audit lines go to `audit`.
/// Fails when the config's JWT settings cannot be used (a missing or short secret).
pub fn build_app(config: RuntimeConfig, database: Database, audit: AuditLog) -> Result<App, JwtSetupError> {
    let live = Live::compile(config, &audit, None)?;
    let metrics = match database.read_batch_counters() {
        Some(counters) => Metrics::default().with_read_batches(counters),
        None => Metrics::default(),
    };
    let state = Arc::new(AppState {
        live: RwLock::new(Arc::new(live)),
        database,
        metrics,
        limiter: RateLimiter::new(),
        audit,
        schema: RwLock::new(None),
        reloads: tokio::sync::watch::Sender::new(0),
    });
    tokio::spawn(keep_schema_loaded(state.clone()));
    let router = router(state.clone());
    Ok(App { state, router })
}

/// Loads the schema once it can, retrying while the database is away, then refreshes it on
/// the configured interval.
async fn keep_schema_loaded(state: Arc<AppState>) {
    let mut delay = Duration::from_millis(250);
    while let Err(error) = state.reload_schema().await {
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "schema not loaded yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    if let Some(seconds) = state.live().config.database.schema_refresh_seconds {
        let mut interval = tokio::time::interval(Duration::from_secs(u64::from(seconds)));
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Err(error) = state.reload_schema().await {
                tracing::warn!(%error, "schema refresh failed; keeping the previous schema");
            }
        }
    }
}

/// The REST base path without a trailing slash (`""` for `/`).
pub fn base_path(config: &RuntimeConfig) -> String {
    config.rest.base_path.trim_end_matches('/').to_owned()
}

/// All routes over `state`. Everything but health and metrics passes the [`gate`]:
/// authentication, rate limiting, audit and request metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let live = state.live();
    let base = base_path(&live.config);
    let mut governed = Router::new().route("/_admin/refresh", post(admin_refresh));
    if live.config.rest.enabled {
        governed = governed
            .route(&format!("{base}/openapi.json"), get(openapi_document))
            .route(&format!("{base}/docs"), get(docs_page))
            .route(
                &format!("{base}/{{table}}"),
                get(rest::read_rows)
                    .post(rest::create_rows)
                    .patch(rest::update_rows)
                    .delete(rest::delete_rows),
            )
            .route(
                &format!("{base}/{{table}}/{{key}}"),
                get(rest::read_row)
                    .patch(rest::update_row)
                    .put(rest::replace_row)
                    .delete(rest::delete_row),
            );
    }
    let mut open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if live.config.mcp.enabled {
        governed = governed.merge(mcp::endpoint(state.clone(), &live.config));
        open = open.merge(mcp::metadata_route(state.clone(), &live.config));
    }
    let governed = governed.route_layer(middleware::from_fn_with_state(state.clone(), gate::gate));
    open.merge(governed)
        .fallback(|uri: Uri| async move {
            ApiError::NoSuchEndpoint {
                path: uri.path().to_owned(),
            }
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// The id of a request, in its extensions for the audit line.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Gives every request an id (response header and log span) and logs its outcome.
async fn request_context(request: Request, next: Next) -> Response {
    let mut id_buffer = uuid::Uuid::encode_buffer();
    let request_id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id_buffer);
    let header = HeaderValue::from_str(request_id);
    let span =
        tracing::info_span!("request", id = %request_id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut request = request;
    request.extensions_mut().insert(RequestId(request_id.to_owned()));
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        );
    });
    if let Ok(value) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let database_up = tokio::time::timeout(Duration::from_secs(2), state.database.ping())
        .await
        .unwrap_or(false);
    let schema_loaded = state.schema_loaded();
    let body = axum::Json(serde_json::json!({ "database": database_up, "schema": schema_loaded }));
    let status = if database_up && schema_loaded {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Prometheus metrics of this process.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let usage = state.database.pool_usage();
    let clamp = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
    let body = state.metrics.render(PoolStats {
        in_use: clamp(usage.open.saturating_sub(usage.idle)),
        idle: clamp(usage.idle),
        max: clamp(usage.max),
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// `POST /_admin/refresh`: reads the schema again now, for roles marked `admin`.
async fn admin_refresh(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    if !call
        .live
        .config
        .roles
        .get(&call.caller.role)
        .is_some_and(|role| role.admin)
    {
        return Err(ApiError::NotAdmin {
            role: call.caller.role.clone(),
        });
    }
    state.reload_schema().await.map_err(|error| {
        tracing::warn!(%error, "schema refresh requested by an admin failed");
        ApiError::Unavailable
    })?;
    let tables = state.schema()?.tables.len();
    Ok(axum::Json(serde_json::json!({ "refreshed": true, "tables": tables })).into_response())
}

/// The OpenAPI document as the caller's role sees the API.
async fn openapi_document(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let document = openapi::document(&call.live.config, &schema, &call.access());
    Ok(axum::Json(document).into_response())
}

/// The docs page as the caller's role sees the API.
async fn docs_page(State(state): State<Arc<AppState>>, call: Call) -> Result<Html<String>, ApiError> {
    let schema = state.schema()?;
    let document = openapi::document(&call.live.config, &schema, &call.access());
    Ok(Html(docs::render(&document)))
}
