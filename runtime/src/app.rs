//! The application: shared state, the router, per-request context, and health endpoints.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sluice_crds::RuntimeConfig;
use tracing::Instrument;

use crate::auth::Caller;
use crate::authz::Policy;
use crate::db::Database;
use crate::error::ApiError;
use crate::introspect::introspect;
use crate::schema::Schema;
use crate::{docs, mcp, openapi, rest};

/// Response header carrying the request id that also appears in every log line of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// State shared by every request.
pub struct AppState {
    /// The resolved configuration.
    pub config: RuntimeConfig,
    /// The config's roles, compiled.
    pub policy: Policy,
    /// The database.
    pub database: Database,
    schema: RwLock<Option<Arc<Schema>>>,
}

impl AppState {
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
        let schema = introspect(&self.database, &self.config.database).await?;
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
/// `/healthz` at once and reports ready once the schema is loaded.
pub fn build_app(config: RuntimeConfig, database: Database) -> App {
    let state = Arc::new(AppState {
        policy: Policy::compile(&config.roles),
        config,
        database,
        schema: RwLock::new(None),
    });
    tokio::spawn(keep_schema_loaded(state.clone()));
    let router = router(state.clone());
    App { state, router }
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
    if let Some(seconds) = state.config.database.schema_refresh_seconds {
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

/// All routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let base = base_path(&state.config);
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if state.config.rest.enabled {
        router = router
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
    if state.config.mcp.enabled {
        router = router.merge(mcp::router(state.clone()));
    }
    router
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

/// Gives every request an id (response header and log span) and logs its outcome.
async fn request_context(request: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        tracing::info_span!("request", id = %request_id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
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

/// The OpenAPI document as the caller's role sees the API.
async fn openapi_document(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let document = openapi::document(&state.config, &schema, &state.policy.access(&caller));
    Ok(axum::Json(document).into_response())
}

/// The docs page as the caller's role sees the API.
async fn docs_page(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Html<String>, ApiError> {
    let schema = state.schema()?;
    let document = openapi::document(&state.config, &schema, &state.policy.access(&caller));
    Ok(Html(docs::render(&document)))
}
