//! REST handlers. Each one authenticates the caller, reads the request, builds a checked
//! [`Plan`] against the caller's view of the schema ([`crate::authz::Access::view`]), runs it through
//! [`pipeline::run`] and shapes the response; nothing here writes SQL or decides access.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use sluice_crds::RuntimeConfig;
use sluice_crds::apirole::Verb;
use sluice_crds::limits::LimitsSpec;

use crate::app::AppState;
use crate::audit::redact_body;
use crate::error::ApiError;
use crate::execute::Outcome;
use crate::gate::Call;
use crate::pipeline;
use crate::plan::{self, Action, Field, Paging, Plan, Upsert};
use crate::query::{ReadQuery, parse_query};
use crate::schema::{Schema, Table};

/// Media type asking for one object instead of an array (PostgREST's `.single()`).
const SINGLE_OBJECT: &str = "application/vnd.pgrst.object+json";

/// The `Prefer` header's preferences that change behaviour.
#[derive(Debug, Default)]
struct Preferences {
    representation: bool,
    count_exact: bool,
    merge_duplicates: bool,
    ignore_duplicates: bool,
}

impl Preferences {
    fn from_headers(headers: &HeaderMap) -> Self {
        let mut preferences = Self::default();
        for value in headers.get_all("prefer") {
            for token in value.to_str().unwrap_or_default().split(',').map(str::trim) {
                match token {
                    "return=representation" => preferences.representation = true,
                    "count=exact" => preferences.count_exact = true,
                    "resolution=merge-duplicates" => preferences.merge_duplicates = true,
                    "resolution=ignore-duplicates" => preferences.ignore_duplicates = true,
                    _ => {}
                }
            }
        }
        preferences
    }
}

/// Decoded query-string pairs. Decoding cannot fail: invalid UTF-8 after percent-decoding
/// becomes U+FFFD, as it did through axum's `Query`, which decodes with the same crate.
fn query_pairs(uri: &Uri, limits: &LimitsSpec) -> Result<ReadQuery, ApiError> {
    let query = uri.query().unwrap_or_default();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    parse_query(&pairs, limits)
}

/// Applies `Range: 0-9` (items) to the query's limit and offset.
fn apply_range(headers: &HeaderMap, query: &mut ReadQuery) -> Result<(), ApiError> {
    let Some(range) = headers.get(header::RANGE) else {
        return Ok(());
    };
    let text = range.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("items=").unwrap_or(text);
    let invalid = || {
        ApiError::bad_query(
            format!("Range \"{text}\" is not a row range"),
            "write Range: 0-24 with Range-Unit: items",
        )
    };
    let (first, last) = text.split_once('-').ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    query.offset = Some(first);
    if !last.trim().is_empty() {
        let last: u64 = last.trim().parse().map_err(|_| invalid())?;
        if last < first {
            return Err(invalid());
        }
        query.limit = Some(query.limit.unwrap_or(u64::MAX).min(last - first + 1));
    }
    Ok(())
}

fn paging(config: &RuntimeConfig) -> Paging {
    Paging {
        default_page_size: u64::from(config.rest.default_page_size),
        max_page_size: u64::from(config.rest.max_page_size),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn content_range(offset: u64, returned: usize, total: Option<i64>) -> String {
    let total = total.map_or_else(|| "*".to_owned(), |t| t.to_string());
    if returned == 0 {
        format!("*/{total}")
    } else {
        format!("{offset}-{}/{total}", offset + returned as u64 - 1)
    }
}

fn wants_single(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(SINGLE_OBJECT))
}

/// One object from exactly one row, as `Accept: application/vnd.pgrst.object+json` asks.
fn single_object(outcome: Outcome) -> Result<Response, ApiError> {
    match outcome.rows.len() {
        1 => Ok(json_response(
            StatusCode::OK,
            outcome.rows.into_first().unwrap_or_default(),
        )),
        matched => Err(ApiError::bad_query(
            format!("one row was asked for (Accept: {SINGLE_OBJECT}), {matched} matched"),
            "filter on a unique column, or accept an array",
        )),
    }
}

/// `GET /{table}`
pub async fn read_rows(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path(table_name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let mut query = query_pairs(&uri, &call.live.config.limits)?;
    apply_range(&headers, &mut query)?;
    let read = plan::read(&view, table, &query, paging(&call.live.config))?;
    let offset = read.offset;
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Read(read),
        returning: None,
    };
    let preferences = Preferences::from_headers(&headers);
    let outcome = pipeline::run(
        &state,
        &schema,
        &access,
        plan,
        preferences.count_exact,
        &call.live.config.limits,
    )
    .await?;
    if wants_single(&headers) {
        return single_object(outcome);
    }
    let range = content_range(offset, outcome.rows.len(), outcome.total);
    let mut response = json_response(StatusCode::OK, outcome.rows.into_json_array());
    if let Ok(value) = HeaderValue::from_str(&range) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

/// `GET /{table}/{key}`
pub async fn read_row(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path((table_name, key)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    let mut read = plan::read(&view, table, &query, paging(&call.live.config))?;
    read.filters.extend(plan::primary_key_filters(table, &key)?);
    read.limit = 1;
    read.offset = 0;
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Read(read),
        returning: None,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    match outcome.rows.into_first() {
        Some(row) => Ok(json_response(StatusCode::OK, row)),
        None => Err(ApiError::RowNotFound {
            table: table.name.clone(),
            key,
        }),
    }
}

/// Whether the body is declared JSON (`application/json`, with or without parameters, or a
/// `+json` type). Anything else is refused before it is read: a browser on another site may send
/// `text/plain` or form bodies without asking first (no CORS preflight), JSON only after a
/// preflight, which this API never grants.
fn declared_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let essence = content_type
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType {
        content_type: content_type.unwrap_or("missing").chars().take(100).collect(),
    })
}

async fn read_body(call: &Call, headers: &HeaderMap, body: Body) -> Result<plan::BodyRows, ApiError> {
    declared_json(headers)?;
    let limit = call.live.config.rest.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?;
    plan::body_rows(&bytes)
}

/// Notes the request body for the audit line when the DataApi records bodies, with every value
/// the role may not write, or sees only masked, redacted.
fn note_body(call: &Call, writable: &Table, rows: &plan::BodyRows) {
    if !call.live.audit.includes_bodies() {
        return;
    }
    let Ok(mut body) = serde_json::to_value(rows) else {
        return;
    };
    let access = call.access();
    redact_body(&mut body, &|key| {
        writable.column(key).is_some() && access.mask(&writable.name, key).is_none()
    });
    pipeline::note(|facts| facts.body = Some(body));
}

/// Fields to return from a write, when the client asked for them.
fn returning(
    schema: &Schema,
    table: &Table,
    query: &ReadQuery,
    preferences: &Preferences,
) -> Result<Option<Vec<Field>>, ApiError> {
    if !preferences.representation {
        return Ok(None);
    }
    let fields = plan::fields(schema, table, &query.select)?;
    if fields.iter().any(|field| matches!(field, Field::Embed { .. })) {
        return Err(ApiError::bad_query(
            "embedded tables are not returned from writes",
            "read the written rows back with a GET to embed related rows",
        ));
    }
    Ok(Some(fields))
}

fn write_response(status: StatusCode, outcome: Outcome, returned: bool, single: bool) -> Result<Response, ApiError> {
    if !returned {
        return Ok(if status == StatusCode::CREATED {
            status.into_response()
        } else {
            StatusCode::NO_CONTENT.into_response()
        });
    }
    if single {
        return single_object(outcome).map(|response| {
            let (mut parts, body) = response.into_parts();
            parts.status = status;
            Response::from_parts(parts, body)
        });
    }
    Ok(json_response(status, outcome.rows.into_json_array()))
}

/// `POST /{table}`: insert one object or an array; upsert with `Prefer: resolution=…`.
pub async fn create_rows(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path(table_name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let preferences = Preferences::from_headers(&headers);
    let verbs: &[Verb] = if preferences.merge_duplicates {
        &[Verb::Create, Verb::Update]
    } else {
        &[Verb::Create]
    };
    let writable = access.writable(table, verbs)?;
    plan::check_writable(table, call.live.config.database.read_only)?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    let rows = read_body(&call, &headers, body).await?;
    note_body(&call, &writable, &rows);
    let mut insert = plan::insert(&writable, &rows, &query.columns)?;
    for name in &query.on_conflict {
        if table.column(name).is_none() {
            return Err(ApiError::UnknownColumn {
                table: table.name.clone(),
                column: name.clone(),
            });
        }
    }
    if preferences.merge_duplicates || preferences.ignore_duplicates {
        let conflict_columns = if query.on_conflict.is_empty() {
            table.primary_key.clone()
        } else {
            query.on_conflict.clone()
        };
        if conflict_columns.is_empty() {
            return Err(ApiError::bad_query(
                format!("\"{}\" has no primary key to detect duplicates", table.name),
                "name the unique columns with on_conflict=col1,col2",
            ));
        }
        insert.upsert = Some(Upsert {
            conflict_columns,
            merge: preferences.merge_duplicates,
        });
    }
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Insert(insert),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    write_response(StatusCode::CREATED, outcome, returned, wants_single(&headers))
}

/// `PATCH /{table}?filters`: updates every matching row; a filter is required.
pub async fn update_rows(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path(table_name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let writable = access.writable(table, &[Verb::Update])?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    if query.filters.is_empty() {
        return Err(ApiError::FilterRequired {
            verb: "PATCH",
            table: table.name.clone(),
        });
    }
    plan::check_writable(table, call.live.config.database.read_only)?;
    let filters = plan::filters(table, &query.filters)?;
    let preferences = Preferences::from_headers(&headers);
    let rows = read_body(&call, &headers, body).await?;
    note_body(&call, &writable, &rows);
    let update = plan::UpdatePlan {
        assignments: plan::assignments(&writable, &rows)?,
        filters,
    };
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Update(update),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    write_response(StatusCode::OK, outcome, returned, wants_single(&headers))
}

/// `DELETE /{table}?filters`: deletes every matching row; a filter is required.
pub async fn delete_rows(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path(table_name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    access.require(&table.name, &[Verb::Delete])?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    if query.filters.is_empty() {
        return Err(ApiError::FilterRequired {
            verb: "DELETE",
            table: table.name.clone(),
        });
    }
    plan::check_writable(table, call.live.config.database.read_only)?;
    let filters = plan::filters(table, &query.filters)?;
    let preferences = Preferences::from_headers(&headers);
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Delete(filters),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    write_response(StatusCode::OK, outcome, returned, wants_single(&headers))
}

fn row_response(outcome: Outcome, returned: bool, table: &Table, key: String) -> Result<Response, ApiError> {
    if outcome.affected == 0 {
        return Err(ApiError::RowNotFound {
            table: table.name.clone(),
            key,
        });
    }
    match outcome.rows.into_first() {
        Some(row) if returned => Ok(json_response(StatusCode::OK, row)),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `PATCH /{table}/{key}`
pub async fn update_row(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path((table_name, key)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let writable = access.writable(table, &[Verb::Update])?;
    plan::check_writable(table, call.live.config.database.read_only)?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    let filters = plan::primary_key_filters(table, &key)?;
    let preferences = Preferences::from_headers(&headers);
    let rows = read_body(&call, &headers, body).await?;
    note_body(&call, &writable, &rows);
    let update = plan::UpdatePlan {
        assignments: plan::assignments(&writable, &rows)?,
        filters,
    };
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Update(update),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    row_response(outcome, returned, table, key)
}

/// `PUT /{table}/{key}`: creates or replaces the row with that key.
pub async fn replace_row(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path((table_name, key)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    let writable = access.writable(table, &[Verb::Create, Verb::Update])?;
    plan::check_writable(table, call.live.config.database.read_only)?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    // Checks the key's shape and types before the body is read.
    plan::primary_key_filters(table, &key)?;
    let preferences = Preferences::from_headers(&headers);
    let mut rows = read_body(&call, &headers, body).await?;
    note_body(&call, &writable, &rows);
    let [row] = rows.as_mut_slice() else {
        return Err(ApiError::InvalidBody("PUT takes one JSON object".into()));
    };
    let parts: Vec<&str> = if table.primary_key.len() == 1 {
        vec![key.as_str()]
    } else {
        key.split(',').collect()
    };
    for (name, text) in table.primary_key.iter().zip(parts) {
        let from_path = serde_json::value::to_raw_value(text).map_err(|_| ApiError::Internal)?;
        match row.get(name) {
            Some(given) if given.get().trim_matches('"') != text => {
                return Err(ApiError::InvalidBody(format!(
                    "\"{name}\" in the body differs from the key in the path"
                )));
            }
            Some(_) => {}
            None => {
                row.insert(name.clone(), from_path);
            }
        }
    }
    let mut insert = plan::insert(&writable, &rows, &[])?;
    insert.upsert = Some(Upsert {
        conflict_columns: table.primary_key.clone(),
        merge: true,
    });
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Insert(insert),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    match outcome.rows.into_first() {
        Some(row) if returned => Ok(json_response(StatusCode::OK, row)),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `DELETE /{table}/{key}`
pub async fn delete_row(
    State(state): State<Arc<AppState>>,
    call: Call,
    Path((table_name, key)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let schema = state.schema()?;
    let access = call.access();
    let view = access.shared_view(&schema);
    let table = plan::table(&view, &table_name)?;
    access.require(&table.name, &[Verb::Delete])?;
    plan::check_writable(table, call.live.config.database.read_only)?;
    let query = query_pairs(&uri, &call.live.config.limits)?;
    let filters = plan::primary_key_filters(table, &key)?;
    let preferences = Preferences::from_headers(&headers);
    let returning = returning(&view, table, &query, &preferences)?;
    let returned = returning.is_some();
    let plan = Plan {
        table: table.name.clone(),
        action: Action::Delete(filters),
        returning,
    };
    let outcome = pipeline::run(&state, &schema, &access, plan, false, &call.live.config.limits).await?;
    row_response(outcome, returned, table, key)
}

#[cfg(test)]
mod tests {
    use sluice_crds::apirole::FilterOperator;

    use super::*;
    use crate::query::{Condition, Operand};

    #[test]
    fn query_pairs_are_percent_and_plus_decoded() {
        let uri: Uri = "/api/v1/customers?name=eq.J%C3%B6rg+M&limit=5".parse().expect("a URI");

        let query = query_pairs(&uri, &Default::default()).expect("a valid query");

        assert_eq!(
            query.filters,
            [Condition::Predicate {
                column: "name".into(),
                negated: false,
                operator: FilterOperator::Eq,
                operand: Operand::Scalar("Jörg M".into()),
            }]
        );
        assert_eq!(query.limit, Some(5));
    }
}
