//! One error type for every client-facing failure, rendered as `{code, message, details, hint}`.
//!
//! Driver messages and SQL never reach a response: [`ApiError::from_database`] logs them
//! (inside the request's span, so with its request id) and returns a generic, actionable error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a client should wait before retrying when the database is unavailable.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// Everything a request can fail with, each mapped to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path names no exposed table or view.
    #[error("table \"{table}\" does not exist or is not exposed")]
    UnknownTable {
        /// The name the client used.
        table: String,
    },
    /// A select, filter, order or body names a column the table does not have.
    #[error("column \"{column}\" does not exist in table \"{table}\"")]
    UnknownColumn {
        /// The table searched.
        table: String,
        /// The name the client used.
        column: String,
    },
    /// The query string or headers do not follow the grammar.
    #[error("{message}")]
    BadQuery {
        /// What is wrong.
        message: String,
        /// How to write it instead.
        hint: Option<String>,
    },
    /// A value does not fit its column's type.
    #[error("column \"{column}\" expects {expected}, got {got}")]
    WrongType {
        /// The column.
        column: String,
        /// The kind of value the column takes.
        expected: &'static str,
        /// What the client sent, abbreviated.
        got: String,
    },
    /// The request body is not the JSON the endpoint takes.
    #[error("the request body is not valid: {0}")]
    InvalidBody(String),
    /// A write whose body is not declared `Content-Type: application/json`.
    #[error("the request body must be JSON; Content-Type is {content_type}")]
    UnsupportedMediaType {
        /// The Content-Type sent, or "missing".
        content_type: String,
    },
    /// The request body is larger than `rest.maxBodyBytes`.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The request asks for more than one of `spec.limits` allows.
    #[error("{what}: more than spec.limits.{limit} ({value}) allows")]
    LimitExceeded {
        /// The limit's field under `spec.limits`, e.g. `maxLogicDepth`.
        limit: &'static str,
        /// Its value in force.
        value: u32,
        /// What the request asked for, e.g. "the filter nests logic groups 9 deep".
        what: String,
    },
    /// The request body did not arrive within `limits.bodyReadTimeoutSeconds` of its headers.
    #[error("the request body did not arrive within {limit_seconds} s")]
    RequestTimeout {
        /// The body read timeout, in seconds.
        limit_seconds: u64,
    },
    /// A PATCH or DELETE without any filter.
    #[error("{verb} on \"{table}\" without a filter would change every row")]
    FilterRequired {
        /// `PATCH` or `DELETE`.
        verb: &'static str,
        /// The table.
        table: String,
    },
    /// A write to a view the engine cannot update, or any write when the API is read-only.
    #[error("\"{table}\" is read-only: {reason}")]
    ReadOnly {
        /// The table or view.
        table: String,
        /// Why.
        reason: &'static str,
    },
    /// The request carries no credentials the API accepts.
    #[error("{reason}")]
    Unauthenticated {
        /// What was wrong with the credentials, or that there were none.
        reason: &'static str,
        /// The `WWW-Authenticate` challenge naming the accepted schemes.
        challenge: String,
    },
    /// The caller's role may see the table but not use this verb on it.
    #[error("role \"{role}\" may not {verb} on table \"{table}\"")]
    Forbidden {
        /// The caller's role.
        role: String,
        /// The verb no rule of the role grants on the table (`read`, `create`, `update`, `delete`).
        verb: &'static str,
        /// The table.
        table: String,
    },
    /// A filter, order or upsert key compares a column the role sees only masked.
    #[error(
        "role \"{role}\" sees column \"{column}\" of table \"{table}\" masked, so it cannot filter, order or match on it"
    )]
    MaskedColumn {
        /// The caller's role.
        role: String,
        /// The table.
        table: String,
        /// The masked column.
        column: String,
    },
    /// A write would leave, or touch, a row outside the role's row filter.
    #[error("role \"{role}\" may not write this row of table \"{table}\": {reason}")]
    OutsideRowFilter {
        /// The caller's role.
        role: String,
        /// The table.
        table: String,
        /// Which rule refused, without the row's values.
        reason: &'static str,
    },
    /// The caller used up its rate limit.
    #[error("role \"{role}\": rate limit reached; retry in {retry_after_seconds} s")]
    RateLimited {
        /// The caller's role, whose limit applies.
        role: String,
        /// Seconds until a request will be accepted.
        retry_after_seconds: u64,
    },
    /// The client address used up its failed authentications (`spec.limits.failedAuthPerMinute`).
    #[error("too many failed authentications from this address; retry in {retry_after_seconds} s")]
    TooManyFailedAuthentications {
        /// Seconds until credentials from this address are checked again.
        retry_after_seconds: u64,
    },
    /// An administrative endpoint called by a role without `admin: true`.
    #[error("role \"{role}\" may not call administrative endpoints")]
    NotAdmin {
        /// The caller's role.
        role: String,
    },
    /// No route matches the path.
    #[error("no endpoint at {path}")]
    NoSuchEndpoint {
        /// The path requested.
        path: String,
    },
    /// The endpoint exists but not with this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path requested.
        path: String,
    },
    /// The row addressed by primary key does not exist.
    #[error("no row in \"{table}\" has the primary key {key}")]
    RowNotFound {
        /// The table.
        table: String,
        /// The key as written in the path.
        key: String,
    },
    /// The write conflicts with a unique or foreign-key constraint.
    #[error("the write conflicts with a {constraint} constraint")]
    Conflict {
        /// `unique` or `foreign key`.
        constraint: &'static str,
    },
    /// The database refused a value (not null, check, out of range, malformed).
    #[error("the database refused a value: {0}")]
    InvalidValue(&'static str),
    /// The statement ran longer than `database.pool.statementTimeoutMs`.
    #[error("the query took longer than the statement timeout")]
    StatementTimeout,
    /// The database did not answer within the request's deadline (a connection, one statement
    /// timeout and a second), so the request was cancelled.
    #[error("the database did not answer within {deadline_ms} ms; the request was cancelled")]
    DatabaseTimeout {
        /// The deadline that passed.
        deadline_ms: u64,
    },
    /// Another transaction held a lock this statement needed past the wait the database allows,
    /// or the two deadlocked; nothing was written and the request may simply be sent again.
    #[error("the database is busy: another transaction held a lock this request needs")]
    Busy,
    /// The database cannot be reached, or the schema is not loaded yet.
    #[error("the database is unavailable")]
    Unavailable,
    /// A bearer token cannot be verified because the identity provider's signing keys cannot
    /// be fetched (the server's side, not the token's).
    #[error("the identity provider's signing keys cannot be fetched, so the token cannot be verified now")]
    IdentityProviderUnavailable,
    /// Anything else; details are in the log under the request id.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// A grammar error with a hint.
    pub fn bad_query(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::BadQuery {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// Classifies a driver error, logging what only operators should see.
    pub fn from_database(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %error, "database unavailable");
                Self::Unavailable
            }
            sqlx::Error::Database(db_error) => {
                let code = db_error.code().map(|c| c.into_owned()).unwrap_or_default();
                let mapped = match db_error.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => Self::Conflict { constraint: "unique" },
                    sqlx::error::ErrorKind::ForeignKeyViolation => Self::Conflict {
                        constraint: "foreign key",
                    },
                    sqlx::error::ErrorKind::NotNullViolation => Self::InvalidValue("a required column is null"),
                    sqlx::error::ErrorKind::CheckViolation => Self::InvalidValue("a check constraint failed"),
                    _ => classify_sqlstate(&code, db_error.message()),
                };
                tracing::info!(sqlstate = %code, error = %db_error.message(), "database refused the statement");
                mapped
            }
            _ => {
                tracing::error!(error = %error, "database call failed");
                Self::Internal
            }
        }
    }

    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownTable { .. } | Self::RowNotFound { .. } | Self::NoSuchEndpoint { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnknownColumn { .. }
            | Self::BadQuery { .. }
            | Self::WrongType { .. }
            | Self::InvalidBody(_)
            | Self::FilterRequired { .. }
            | Self::LimitExceeded { .. }
            | Self::InvalidValue(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. }
            | Self::MaskedColumn { .. }
            | Self::OutsideRowFilter { .. }
            | Self::NotAdmin { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TooManyFailedAuthentications { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ReadOnly { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::StatementTimeout | Self::DatabaseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Busy | Self::Unavailable | Self::IdentityProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTable { .. } => "unknown_table",
            Self::UnknownColumn { .. } => "unknown_column",
            Self::BadQuery { .. } => "bad_query",
            Self::WrongType { .. } => "wrong_type",
            Self::InvalidBody(_) => "invalid_body",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::FilterRequired { .. } => "filter_required",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::ReadOnly { .. } => "read_only",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::MaskedColumn { .. } => "masked_column",
            Self::RateLimited { .. } | Self::TooManyFailedAuthentications { .. } => "rate_limited",
            Self::NotAdmin { .. } => "not_admin",
            Self::OutsideRowFilter { .. } => "outside_row_filter",
            Self::RowNotFound { .. } => "not_found",
            Self::NoSuchEndpoint { .. } => "no_such_endpoint",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Conflict { .. } => "conflict",
            Self::InvalidValue(_) => "invalid_value",
            Self::StatementTimeout => "statement_timeout",
            Self::DatabaseTimeout { .. } => "database_timeout",
            Self::Busy => "database_busy",
            Self::Unavailable => "unavailable",
            Self::IdentityProviderUnavailable => "identity_provider_unavailable",
            Self::Internal => "internal",
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::UnknownTable { .. } | Self::NoSuchEndpoint { .. } => {
                Some("GET openapi.json under the REST base path lists every endpoint".into())
            }
            Self::MethodNotAllowed { .. } => Some("the OpenAPI document lists the methods of each path".into()),
            Self::UnknownColumn { table, .. } => Some(format!(
                "openapi.json under the REST base path lists the columns of \"{table}\""
            )),
            Self::BadQuery { hint, .. } => hint.clone(),
            Self::InvalidBody(_) => Some("send a JSON object, or an array of objects with the same keys".into()),
            Self::PayloadTooLarge { .. } => Some("send fewer rows per request".into()),
            Self::UnsupportedMediaType { .. } => {
                Some("send the body as JSON with Content-Type: application/json".into())
            }
            Self::LimitExceeded { limit, value, .. } => Some(format!(
                "spec.limits.{limit} is {value}: split the request into smaller ones, or ask the operator of this API to raise the limit"
            )),
            Self::RequestTimeout { limit_seconds } => Some(format!(
                "send the whole body right after the headers, within {limit_seconds} s; the operator of this API sets that limit as spec.limits.bodyReadTimeoutSeconds"
            )),
            Self::Unauthenticated { challenge, .. } => Some(format!(
                "authenticate as the WWW-Authenticate header says ({challenge}); ask the operator of this API for a key"
            )),
            Self::Forbidden { .. } => {
                Some("ask the operator of this API for a role whose rules grant this verb on this table".into())
            }
            Self::MaskedColumn { .. } => Some("filter and order on columns the role sees unmasked".into()),
            Self::RateLimited { .. } => {
                Some("wait as Retry-After says; the RateLimit headers of every response show what is left".into())
            }
            Self::TooManyFailedAuthentications { .. } => Some(
                "wait as Retry-After says, then send a valid key or token; spec.limits.failedAuthPerMinute bounds failed attempts per client address"
                    .into(),
            ),
            Self::NotAdmin { .. } => Some("call it with a key of a role that has admin: true".into()),
            Self::OutsideRowFilter { .. } => Some(
                "write only rows the role can read back: the role's row filter must hold before and after the write"
                    .into(),
            ),
            Self::FilterRequired { .. } => Some(
                "add a filter such as ?id=eq.1; to change every row, filter on a column that matches all of them"
                    .into(),
            ),
            Self::Conflict { constraint: "unique" } => {
                Some("use on_conflict= with Prefer: resolution=merge-duplicates to upsert".into())
            }
            Self::Conflict { .. } => {
                Some("the referenced row must exist, and rows still referenced cannot be deleted".into())
            }
            Self::StatementTimeout => Some("narrow the filter or lower the limit".into()),
            Self::Busy | Self::Unavailable | Self::IdentityProviderUnavailable | Self::DatabaseTimeout { .. } => {
                Some(format!("retry after {RETRY_AFTER_SECONDS} seconds"))
            }
            Self::Internal => Some("report the request id to the operator of this API".into()),
            _ => None,
        }
    }

    fn details(&self) -> Option<String> {
        match self {
            Self::ReadOnly { reason, .. } => Some((*reason).to_owned()),
            Self::Forbidden { verb, .. } => Some(format!("no rule of the role grants {verb} on this table")),
            _ => None,
        }
    }
}

fn classify_sqlstate(code: &str, message: &str) -> ApiError {
    // The server is going away or refusing connections: class 08 (connection exception, also
    // MySQL's 08S01 for a shutdown), 57P01-57P03 (PostgreSQL admin/crash shutdown, cannot connect
    // now) and 53300 (too many connections). The client should retry, not see an internal error.
    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300") {
        tracing::warn!(sqlstate = %code, "database unavailable");
        return ApiError::Unavailable;
    }
    // PostgreSQL and MySQL share SQLSTATE class 22 for data exceptions (bad value, out of range).
    if code.starts_with("22") || message.contains("datatype mismatch") {
        return ApiError::InvalidValue("a value does not fit its column");
    }
    // Lock waits that ran out and deadlocks: 40001 (serialization failure; MySQL's deadlock),
    // 40P01 (PostgreSQL deadlock), 55P03 (PostgreSQL lock_not_available), MySQL's 1205 (HY000, so
    // known by its message), and SQLite's extended result codes for SQLITE_BUSY (5, 261, 517,
    // 773) and SQLITE_LOCKED (6, 262), which no SQLSTATE can be.
    if matches!(
        code,
        "40001" | "40P01" | "55P03" | "5" | "261" | "517" | "773" | "6" | "262"
    ) || message.contains("Lock wait timeout exceeded")
    {
        return ApiError::Busy;
    }
    // 57014: PostgreSQL query_canceled; 1969/70100: MariaDB max_statement_time; 3024: MySQL max_execution_time.
    if code == "57014"
        || code == "70100"
        || message.contains("max_statement_time")
        || message.contains("maximum statement execution time")
    {
        return ApiError::StatementTimeout;
    }
    ApiError::Internal
}

/// The stable code of an error response, in its extensions for the audit line.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = match &self {
            Self::Unauthenticated { challenge, .. } => HeaderValue::from_str(challenge).ok(),
            _ => None,
        };
        let body = json!({
            "code": self.code(),
            "message": self.to_string(),
            "details": self.details(),
            "hint": self.hint(),
        });
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code()));
        if let Self::RateLimited {
            retry_after_seconds, ..
        }
        | Self::TooManyFailedAuthentications { retry_after_seconds } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, Self::DatabaseTimeout { .. }) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let Some(challenge) = challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come; the connection cannot be used for another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdowns_and_connection_failures_are_unavailable() {
        for code in ["57P01", "57P02", "57P03", "53300", "08006", "08S01", "08004"] {
            assert!(matches!(classify_sqlstate(code, ""), ApiError::Unavailable), "{code}");
        }
        assert!(matches!(classify_sqlstate("57014", ""), ApiError::StatementTimeout));
        for code in ["40001", "40P01", "55P03", "5", "517"] {
            assert!(matches!(classify_sqlstate(code, ""), ApiError::Busy), "{code}");
        }
        assert!(matches!(
            classify_sqlstate("HY000", "Lock wait timeout exceeded; try restarting transaction"),
            ApiError::Busy
        ));
        assert!(matches!(classify_sqlstate("22P02", ""), ApiError::InvalidValue(_)));
        assert!(matches!(classify_sqlstate("42P01", ""), ApiError::Internal));
    }
}
