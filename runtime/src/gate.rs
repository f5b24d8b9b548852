//! The gate every governed request passes, whatever it asks for: take the current config
//! generation, authenticate, rate limit, run the handler, then count it and write its audit line.
//!
//! Handlers receive the outcome as a [`Call`] (the caller and the generation it was
//! authenticated under), so they never authenticate again and never see a half-applied reload.
//! What the handler learned (table, verb, query shape, rows) reaches the audit line through
//! [`pipeline::observed`]. Requests the MCP endpoint answers are audited there, one line per
//! tool call; the gate audits MCP requests it refuses itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sluice_crds::config::ResolvedRateLimit;

use crate::app::{AppState, Live, RequestId};
use crate::audit::{AuditRecord, Transport};
use crate::auth::{ANONYMOUS_CALLER, Caller, authenticate};
use crate::authz::Access;
use crate::error::{ApiError, ErrorCode};
use crate::mcp::AuditedByEndpoint;
use crate::metrics::{AuthFailure, RequestOutcome};
use crate::pipeline::{self, CallFacts};
use crate::ratelimit::RateDecision;
use crate::server::BodyReadDeadline;

/// An authenticated, rate-limited call: who calls, under which config generation.
#[derive(Clone)]
pub struct Call {
    /// The config generation the call runs under, start to finish.
    pub live: Arc<Live>,
    /// Who calls.
    pub caller: Caller,
}

impl Call {
    /// What the caller's role may do.
    pub fn access(&self) -> Access<'_> {
        self.live.policy.access(&self.caller)
    }
}

impl FromRequestParts<Arc<AppState>> for Call {
    type Rejection = ApiError;

    /// Takes the call the gate left for this request's handler, the only one that extracts it.
    async fn from_request_parts(parts: &mut Parts, _state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        parts.extensions.remove::<Call>().ok_or_else(|| {
            tracing::error!("a governed handler ran without passing the gate");
            ApiError::Internal
        })
    }
}

/// Authenticates and rate limits the request, runs it, then records metrics and the audit line.
pub async fn gate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let live = state.live();
    let mcp = live.config.mcp.enabled && request.uri().path() == live.config.mcp.path;
    let transport = if mcp { Transport::Mcp } else { Transport::Rest };
    let mut record = AuditRecord::new(
        Utc::now(),
        request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default(),
        transport,
        request.method().as_str().to_owned(),
    );
    record.path = Some(request.uri().path().to_owned());
    let failures = FailedAuthentications::of(&request, &live);
    if let Some(wait) = failures.as_ref().and_then(|failures| failures.exhausted(&state)) {
        let response = ApiError::TooManyFailedAuthentications {
            retry_after_seconds: wait.as_secs().max(1),
        }
        .into_response();
        finish(&state, &live, record, CallFacts::default(), &response, started);
        return response;
    }
    let caller = match authenticate(
        &live.config.auth,
        &live.config.api_keys,
        live.jwt.as_deref(),
        request.headers(),
    )
    .await
    {
        Ok(caller) => caller,
        Err(error) => {
            state
                .metrics
                .record_auth_failure(auth_failure(request.headers(), &live));
            if let Some(failures) = &failures {
                failures.count(&state);
            }
            let mut response = error.into_response();
            if mcp && live.config.auth.jwt.is_some() {
                response = crate::mcp::with_resource_metadata(response, request.headers(), &live.config.mcp.path);
            }
            finish(&state, &live, record, CallFacts::default(), &response, started);
            return response;
        }
    };
    record.caller = Some(caller.id.clone());
    record.role = Some(caller.role.clone());
    let decision = live
        .config
        .roles
        .get(&caller.role)
        .and_then(|role| role.rate_limit)
        .map(|limit| state.limiter.check(&bucket(&caller, &request), &limit));
    if let Some(decision) = decision.as_ref().filter(|decision| !decision.allowed) {
        state.metrics.record_rate_limited(&caller.role);
        let mut response = ApiError::RateLimited {
            role: caller.role.clone(),
            retry_after_seconds: decision.retry_after.map_or(1, |wait| wait.as_secs().max(1)),
        }
        .into_response();
        merge_headers(&mut response, decision);
        finish(&state, &live, record, CallFacts::default(), &response, started);
        return response;
    }
    request.extensions_mut().insert(Call {
        live: live.clone(),
        caller,
    });
    let body_deadline = request.extensions().get::<BodyReadDeadline>().cloned();
    let (mut response, facts) = pipeline::observed(next.run(request)).await;
    // The handler answered its failed body read as best it knew (rmcp with a 500); the client
    // is told what happened.
    if let Some(deadline) = body_deadline.filter(BodyReadDeadline::expired) {
        response = ApiError::RequestTimeout {
            limit_seconds: deadline.timeout().as_secs(),
        }
        .into_response();
    }
    if let Some(decision) = &decision {
        merge_headers(&mut response, decision);
    }
    finish(&state, &live, record, facts, &response, started);
    response
}

/// The failed authentications of one client address, for a request that carries credentials
/// (`spec.limits.failedAuthPerMinute`): requests without any are the anonymous role's, limited
/// as that role is.
struct FailedAuthentications {
    bucket: String,
    limit: ResolvedRateLimit,
}

impl FailedAuthentications {
    fn of(request: &Request, live: &Live) -> Option<Self> {
        let headers = request.headers();
        let credentials = headers.contains_key(live.config.auth.api_key_header.as_str())
            || headers.contains_key(header::AUTHORIZATION);
        let ConnectInfo(address) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
        let per_minute = live.config.limits.failed_auth_per_minute;
        credentials.then(|| Self {
            bucket: format!("failed-authentication@{}", address.ip()),
            limit: ResolvedRateLimit {
                requests_per_minute: per_minute,
                burst: per_minute,
            },
        })
    }

    /// How long until the address may try again, when it has used up its failures.
    fn exhausted(&self, state: &AppState) -> Option<std::time::Duration> {
        state.limiter.empty_for(&self.bucket, &self.limit)
    }

    fn count(&self, state: &AppState) {
        state.limiter.check(&self.bucket, &self.limit);
    }
}

/// The rate-limit bucket: the caller's id, and for anonymous callers also their address, so
/// one anonymous client cannot use up everyone's allowance.
fn bucket(caller: &Caller, request: &Request) -> String {
    if caller.id != ANONYMOUS_CALLER {
        return caller.id.clone();
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => format!("{ANONYMOUS_CALLER}@{}", address.ip()),
        None => ANONYMOUS_CALLER.to_owned(),
    }
}

fn merge_headers(response: &mut Response, decision: &RateDecision) {
    response.headers_mut().extend(decision.headers());
}

/// Which kind of credentials failed, for the metric's bounded `reason` label.
fn auth_failure(headers: &HeaderMap, live: &Live) -> AuthFailure {
    if headers.contains_key(live.config.auth.api_key_header.as_str()) {
        return AuthFailure::InvalidKey;
    }
    match headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()) {
        Some(value) if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") => AuthFailure::InvalidToken,
        Some(_) => AuthFailure::UnsupportedScheme,
        None => AuthFailure::Missing,
    }
}

/// Counts the request and queues its audit line, unless the MCP endpoint does that per call.
fn finish(
    state: &AppState,
    live: &Live,
    mut record: AuditRecord,
    facts: CallFacts,
    response: &Response,
    started: Instant,
) {
    if response.extensions().get::<AuditedByEndpoint>().is_some() {
        return;
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.record_request(&RequestOutcome {
        transport: record.transport,
        table: facts.table.as_deref(),
        verb: facts.verb,
        status,
        rows: facts.rows,
        duration: elapsed,
    });
    record.status = status;
    record.duration_ms = elapsed.as_secs_f64() * 1000.0;
    record.error = response.extensions().get::<ErrorCode>().map(|code| code.0);
    facts.into_record(&mut record);
    live.audit.record(record);
}
