//! The MCP endpoint: the caller's role's view of the DataApi as tools and resources for AI
//! agents, over Streamable HTTP (rmcp).
//!
//! Both protocol revisions are served from one path: 2026-07-28 clients (`server/discover`,
//! version and capabilities in each request's `_meta`, no session) get JSON responses, and
//! 2025-11-25 clients (`initialize`, `Mcp-Session-Id`) get sessions with SSE responses. rmcp
//! checks the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers against the body.
//!
//! Every HTTP request passes the same [`crate::gate`] as REST (authentication, rate limit, the
//! config generation it runs under), then is admitted here before rmcp sees it: its `Origin` is
//! checked and the caller's role must have MCP enabled. The [`Call`] then travels inside the
//! request (rmcp hands the HTTP parts to each handler), so the tool list, schemas and rows are
//! always those of the credentials on that request. Tool calls build the same checked
//! [`crate::plan::Plan`]s as REST and run them through [`crate::pipeline::run`], so
//! authorisation, row filters, masks and caps apply to agents exactly as to REST clients. Each
//! tool call writes its own audit line (transport `mcp`, tool, arguments when bodies are
//! recorded, session, client); refusals before rmcp are audited by the gate.

mod call;
mod named;
mod one_write;
mod resources;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, ErrorData, Implementation, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::json;

use crate::app::{AppState, RequestId};
use crate::error::{ApiError, ErrorCode};
use crate::gate::Call;
use sluice_crds::RuntimeConfig;

/// How long a client may keep using a tool or resource list before asking again (`ttlMs`).
/// Lists follow the caller's role and the live schema, so they are cached briefly and privately.
const LIST_TTL: Duration = Duration::from_secs(60);

/// Where OAuth protected-resource metadata (RFC 9728) for the endpoint at `mcp_path` is served.
fn metadata_path(mcp_path: &str) -> String {
    format!("/.well-known/oauth-protected-resource{mcp_path}")
}

/// The MCP endpoint at `config.mcp.path`, to merge behind the gate.
pub fn endpoint<S: Clone + Send + Sync + 'static>(state: Arc<AppState>, config: &RuntimeConfig) -> Router<S> {
    Router::new().route_service(&config.mcp.path, service(state, config))
}

/// The endpoint's protected-resource metadata when JWT is configured, public like any discovery
/// document.
pub fn metadata_route<S: Clone + Send + Sync + 'static>(state: Arc<AppState>, config: &RuntimeConfig) -> Router<S> {
    let mut router = Router::new();
    if config.auth.jwt.is_some() {
        router = router.route(
            &metadata_path(&config.mcp.path),
            get(protected_resource).with_state(state),
        );
    }
    router
}

/// The public URL of `path` on this server, as the client reached it (through a proxy, by its
/// forwarded headers).
fn public_url(headers: &HeaderMap, path: &str) -> String {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let scheme = header("x-forwarded-proto").unwrap_or("http");
    let host = header("x-forwarded-host")
        .or_else(|| header(header::HOST.as_str()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}{path}")
}

/// RFC 9728 metadata: which authorization server issues tokens for this endpoint.
async fn protected_resource(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = state.live();
    let config = &live.config;
    let issuers: Vec<&str> = config.auth.jwt.iter().map(|jwt| jwt.issuer.as_str()).collect();
    axum::Json(json!({
        "resource": public_url(&headers, &config.mcp.path),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Sluice DataApi {}", config.data_api),
    }))
    .into_response()
}

/// Points a 401's bearer challenge at the protected-resource metadata, so OAuth-capable agents
/// can find the authorization server.
pub fn with_resource_metadata(mut response: Response, headers: &HeaderMap, mcp_path: &str) -> Response {
    let metadata = public_url(headers, &metadata_path(mcp_path));
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parameter = format!("resource_metadata=\"{metadata}\"");
    // The Bearer challenge comes last; its parameters, when it has some, are comma-separated.
    let challenge = match challenge.strip_suffix("Bearer") {
        Some(_) => format!("{challenge} {parameter}"),
        None if challenge.contains("Bearer ") => format!("{challenge}, {parameter}"),
        None if challenge.is_empty() => format!("Bearer {parameter}"),
        None => format!("{challenge}, Bearer {parameter}"),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The rmcp service behind the admission checks.
fn service(state: Arc<AppState>, config: &RuntimeConfig) -> Router {
    let max_body = usize::try_from(config.rest.max_body_bytes).unwrap_or(usize::MAX);
    let config = StreamableHttpServerConfig::default()
        // The runtime is reached under whatever host name its Service or Ingress has; browsers
        // are kept out by the Origin check in `admit`, and every request needs credentials.
        .disable_allowed_hosts()
        .with_json_response(true)
        .with_max_request_body_bytes(max_body);
    let server_state = state.clone();
    let service: StreamableHttpService<DataApiServer, LocalSessionManager> = StreamableHttpService::new(
        move || {
            Ok(DataApiServer {
                state: server_state.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .fallback_service(service)
        .layer(middleware::from_fn(admit))
}

/// Checks `Origin` and requires MCP access for the caller's role (the gate authenticated it).
async fn admit(request: Request, next: Next) -> Response {
    let Some(call) = request.extensions().get::<Call>().cloned() else {
        tracing::error!("an MCP request reached the endpoint without passing the gate");
        return ApiError::Internal.into_response();
    };
    if let Some(origin) = disallowed_origin(&call.live.config.mcp.allowed_origins, request.headers()) {
        tracing::info!(%origin, "MCP request from a browser origin that is not allowed");
        return refusal(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("requests from origin {origin} are not allowed"),
            "add the origin to spec.mcp.allowedOrigins of the DataApi",
        );
    }
    if !call
        .live
        .config
        .roles
        .get(&call.caller.role)
        .is_some_and(|role| role.mcp_enabled)
    {
        tracing::info!(role = %call.caller.role, "MCP refused: the role does not enable MCP");
        return refusal(
            StatusCode::FORBIDDEN,
            "mcp_disabled",
            format!("role \"{}\" may not use the MCP endpoint", call.caller.role),
            "ask the operator of this API to set spec.mcp.enabled on the ApiRole, or use the REST API",
        );
    }
    let posted = request.method() == axum::http::Method::POST;
    let mut response = next.run(request).await;
    if posted && one_write::is_event_stream(response.headers()) {
        response = one_write::coalesce(response, one_write::QUICK_ANSWER).await;
    }
    // Answered by rmcp: tool calls write their own audit lines.
    response.extensions_mut().insert(AuditedByEndpoint);
    response
}

/// Marks a response whose call the MCP layer audits itself, so the gate does not audit it again.
#[derive(Clone, Copy, Debug)]
pub struct AuditedByEndpoint;

/// The request's `Origin` when it is present and not allowed. Requests without one (agents,
/// CLIs) pass; `null` passes only when listed, as browsers send it from opaque origins.
fn disallowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let normalized = origin.trim().trim_end_matches('/');
    let listed = allowed
        .iter()
        .any(|entry| entry.trim().trim_end_matches('/').eq_ignore_ascii_case(normalized));
    (!listed).then_some(origin)
}

fn refusal(status: StatusCode, code: &'static str, message: String, hint: &str) -> Response {
    let body = json!({ "code": code, "message": message, "details": null, "hint": hint });
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(ErrorCode(code));
    response
}

/// What one MCP request knows about its caller: who, under which config, and the session.
struct CallContext {
    call: Call,
    request_id: String,
    session: Option<String>,
    client: Option<Implementation>,
}

impl CallContext {
    fn of(context: &RequestContext<RoleServer>) -> Result<Self, ErrorData> {
        let parts = context.extensions.get::<Parts>();
        let call = parts
            .and_then(|parts| parts.extensions.get::<Call>())
            .cloned()
            .ok_or_else(|| {
                tracing::error!("an MCP request reached its handler without an authenticated caller");
                ErrorData::internal_error("the request was not authenticated", None)
            })?;
        let request_id = parts
            .and_then(|parts| parts.extensions.get::<RequestId>())
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let session = parts
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let client = context
            .meta
            .client_info()
            .or_else(|| context.peer.peer_info().map(|info| info.client_info.clone()));
        Ok(Self {
            call,
            request_id,
            session,
            client,
        })
    }
}

/// The rmcp handler: stateless itself, it reads the config and schema at call time.
#[derive(Clone)]
pub struct DataApiServer {
    state: Arc<AppState>,
}

fn unavailable(error: &ApiError) -> ErrorData {
    ErrorData::internal_error(format!("{error}; retry shortly"), None)
}

impl ServerHandler for DataApiServer {
    fn get_info(&self) -> ServerConfig {
        let live = self.state.live();
        let config = &live.config;
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new(format!("sluice-{}", config.data_api.name), env!("CARGO_PKG_VERSION"))
                .with_title(format!("Sluice DataApi {}", config.data_api))
                .with_description("Governed access to one database's tables: no SQL, only what your role may see"),
        )
        .with_instructions(tools::instructions(config))
    }

    /// Tells a 2025-11-25 session when a config reload may have changed its tool list; clients
    /// of 2026-07-28 have no session and re-list after the list's `ttlMs`.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut reloads = self.state.reloads();
        let peer = context.peer;
        tokio::spawn(async move {
            while reloads.changed().await.is_ok() && !peer.is_transport_closed() {
                if let Err(error) = peer.notify_tool_list_changed().await {
                    tracing::debug!(%error, "an MCP session went away before hearing of a reload");
                    break;
                }
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let call = CallContext::of(&context)?;
        let schema = self.state.schema().map_err(|error| unavailable(&error))?;
        let access = call.call.access();
        let catalogue = tools::catalogue(&call.call.live.config, &access.shared_view(&schema), &access);
        Ok(ListToolsResult::with_all_items(catalogue)
            .with_ttl_ms(LIST_TTL.as_millis() as u64)
            .with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = CallContext::of(&context)?;
        // Boxed: rmcp moves the handler's future through several tasks and wrappers per request,
        // and a tool call's state (plan, pipeline, statement) is kilobytes.
        let result = Box::pin(call::call(
            &self.state,
            &call,
            &request.name,
            request.arguments.unwrap_or_default(),
        ))
        .await?;
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let call = CallContext::of(&context)?;
        let schema = self.state.schema().map_err(|error| unavailable(&error))?;
        let access = call.call.access();
        Ok(
            ListResourcesResult::with_all_items(resources::list(&access.shared_view(&schema)))
                .with_ttl_ms(LIST_TTL.as_millis() as u64)
                .with_cache_scope(CacheScope::Private),
        )
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let call = CallContext::of(&context)?;
        let schema = self.state.schema().map_err(|error| unavailable(&error))?;
        let access = call.call.access();
        let result = resources::read(
            &call.call.live.config,
            &access.shared_view(&schema),
            &access,
            &request.uri,
        )?;
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).expect("header value"));
        headers
    }

    #[test]
    fn a_401_points_bearer_clients_at_the_metadata() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let mut refused = StatusCode::UNAUTHORIZED.into_response();
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("ApiKey header=\"X-API-Key\", Bearer"),
        );
        let pointed = with_resource_metadata(refused, &headers, "/mcp");
        assert_eq!(
            pointed.headers()[header::WWW_AUTHENTICATE],
            "ApiKey header=\"X-API-Key\", Bearer resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mcp\""
        );
    }

    #[test]
    fn only_listed_origins_and_requests_without_one_pass() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert_eq!(disallowed_origin(&allowed, &HeaderMap::new()), None);
        assert_eq!(
            disallowed_origin(&allowed, &with_origin("https://APP.example.com/")),
            None
        );
        assert_eq!(
            disallowed_origin(&allowed, &with_origin("https://evil.example")).as_deref(),
            Some("https://evil.example")
        );
        assert!(disallowed_origin(&[], &with_origin("null")).is_some());
    }
}
