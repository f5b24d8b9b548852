//! Tool execution: arguments become the same checked plans REST builds, run through
//! [`pipeline::run`]. Mistakes an agent can fix (arguments, names, types, permissions) come back
//! as tool results with `isError` and a hint; only an unknown tool is a JSON-RPC error.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;

use rmcp::model::{CallToolResult, ContentBlock, ErrorData, JsonObject};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sluice_crds::apirole::{FilterOperator, Verb};
use tracing::Instrument;

use sluice_crds::RuntimeConfig;

use crate::app::AppState;
use crate::audit::{AuditRecord, ClientInfo, REDACTED, Transport};
use crate::authz::Access;
use crate::error::ApiError;
use crate::metrics::RequestOutcome;
use crate::pipeline::{self, CallFacts};
use crate::plan::{self, Action, Filter, Paging, Plan, ReadPlan};
use crate::query::{Condition, IsValue, Nulls, Operand, OrderTerm, ReadQuery, SelectItem};
use crate::rows::Rows;
use crate::schema::{Schema, Table};

use super::CallContext;
use super::named::{self, NamedOutcome};
use super::tools::{
    self, COUNT_ROWS, DELETE_ROWS, DESCRIBE_TABLE, GET_ROW, INSERT_ROWS, LIST_TABLES, QUERY_ROWS, UPDATE_ROWS,
};

/// Most bytes of rows one tool result carries; rows past it are left for the next page, so an
/// agent's context is not flooded by wide rows.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// A failed tool call, as the agent reads it.
struct Failure {
    status: u16,
    code: &'static str,
    message: String,
    hint: Option<String>,
    details: Option<Value>,
}

impl Failure {
    fn arguments(tool: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            status: 400,
            code: "invalid_arguments",
            message: format!("the arguments of {tool} are not valid: {problem}"),
            hint: Some(format!("tools/list gives the input schema of {tool}")),
            details: None,
        }
    }

    /// The error as REST reports it, with hints rewritten where REST's name URLs or headers.
    async fn from_api(error: ApiError) -> Self {
        let code = error.code();
        let status = error.status().as_u16();
        let message = error.to_string();
        let hint = match &error {
            ApiError::UnknownTable { .. } => Some("call list_tables for the tables you may use".to_owned()),
            ApiError::UnknownColumn { table, .. } => Some(format!(
                "call describe_table with {{\"table\": \"{table}\"}} for the columns you may use"
            )),
            ApiError::FilterRequired { .. } => Some(
                "add at least one filter; to change every row, filter on a column that matches all of them".to_owned(),
            ),
            ApiError::Conflict { constraint: "unique" } => {
                Some("a row with that key exists: change it with update_rows instead".to_owned())
            }
            _ => None,
        };
        let rendered = rest_body(error).await;
        Self {
            status,
            code,
            message,
            hint: hint.or_else(|| rendered.get("hint").and_then(Value::as_str).map(str::to_owned)),
            details: rendered.get("details").filter(|details| !details.is_null()).cloned(),
        }
    }

    fn into_result(self) -> CallToolResult {
        let body = json!({ "code": self.code, "message": self.message, "details": self.details, "hint": self.hint });
        CallToolResult::error(vec![ContentBlock::text(body.to_string())])
    }
}

/// REST's JSON error body for `error`, read back from its response.
async fn rest_body(error: ApiError) -> Value {
    use axum::response::IntoResponse;
    let body = error.into_response().into_body();
    axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

impl From<ApiError> for Outcome {
    fn from(error: ApiError) -> Self {
        Outcome::Api(error)
    }
}

/// What a tool handler ends with before it is shaped into a result.
enum Outcome {
    Api(ApiError),
    Failure(Failure),
}

type ToolResult = Result<String, Outcome>;

/// Deepest nesting a result's structured content may have. A JSON column can nest deeper than
/// serde_json's default limit of 128 (which then failed every call reading that row); past this
/// bound the parsed document would cost a stack frame per level to build and drop, so such a
/// result carries its exact text only.
const MAX_STRUCTURED_DEPTH: usize = 1_024;

/// serde_json's nesting limit when parsing.
const SERDE_DEPTH_LIMIT: usize = 128;

/// A tool result's text parsed as its structured content, or `None` when it nests deeper than
/// [`MAX_STRUCTURED_DEPTH`]. Results within serde_json's limit, nearly all, are parsed once.
fn structured_content(text: &str) -> Result<Option<Value>, ErrorData> {
    let error = match serde_json::from_str(text) {
        Ok(value) => return Ok(Some(value)),
        Err(error) => error,
    };
    let depth = json_depth(text);
    if depth <= SERDE_DEPTH_LIMIT {
        tracing::error!(%error, "a tool result is not JSON");
        return Err(ErrorData::internal_error("the tool produced an invalid result", None));
    }
    if depth > MAX_STRUCTURED_DEPTH {
        tracing::info!(
            max_depth = MAX_STRUCTURED_DEPTH,
            "a tool result nests too deeply for structured content; it is sent as text only"
        );
        return Ok(None);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.disable_recursion_limit();
    let value = Value::deserialize(&mut deserializer).map_err(|error| {
        tracing::error!(%error, "a tool result is not JSON");
        ErrorData::internal_error("the tool produced an invalid result", None)
    })?;
    Ok(Some(value))
}

/// How deeply arrays and objects nest in the JSON `text`, counted without recursion.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Runs tool `name` for the caller. The result's text is the exact JSON the database rendered
/// (every digit kept); its structured content is the same document.
pub async fn call(
    state: &AppState,
    context: &CallContext,
    name: &str,
    arguments: JsonObject,
) -> Result<CallToolResult, ErrorData> {
    let caller = &context.call.caller;
    let config = &context.call.live.config;
    let schema = match state.schema() {
        Ok(schema) => schema,
        Err(error) => return Ok(Failure::from_api(error).await.into_result()),
    };
    let access = context.call.access();
    let view = access.shared_view(&schema);
    if !tools::offers(config, &view, &access, name) {
        return Err(ErrorData::invalid_params(
            format!("unknown tool \"{name}\"; tools/list names the tools your role may call"),
            Some(json!({ "tool": name })),
        ));
    }
    let tool = Tool {
        state,
        config,
        schema: &schema,
        access: &access,
        view: &view,
    };
    let client = context.client.as_ref();
    // One span per call: the pipeline's log lines and the outcome below carry the MCP context
    // (the same fields audit lines will take).
    let span = tracing::info_span!(
        "mcp_tool",
        transport = "mcp",
        tool = name,
        caller = %caller.id,
        role = %caller.role,
        session = context.session.as_deref().unwrap_or("-"),
        client = client.map_or("-", |client| client.name.as_str()),
        client_version = client.map_or("-", |client| client.version.as_str()),
        arguments = tracing::field::Empty,
    );
    // Arguments are request bodies: logged only where the DataApi logs bodies.
    if config.audit.include_bodies {
        span.record("arguments", tracing::field::display(Value::Object(arguments.clone())));
    }
    let started = Instant::now();
    let recorded_arguments = context
        .call
        .live
        .audit
        .includes_bodies()
        .then(|| redacted_arguments(&arguments, &schema, &view, &access));
    let (outcome, facts) = pipeline::observed(
        async {
            match name {
                LIST_TABLES => tool.list_tables(parse(name, arguments)),
                DESCRIBE_TABLE => tool.describe_table(parse(name, arguments)),
                QUERY_ROWS => tool.query_rows(parse(name, arguments)).await,
                GET_ROW => tool.get_row(parse(name, arguments)).await,
                COUNT_ROWS => tool.count_rows(parse(name, arguments)).await,
                INSERT_ROWS => tool.insert_rows(parse(name, arguments)).await,
                UPDATE_ROWS => tool.update_rows(parse(name, arguments)).await,
                DELETE_ROWS => tool.delete_rows(parse(name, arguments)).await,
                _ => tool.named_query(name, &arguments).await,
            }
        }
        .instrument(span.clone()),
    )
    .await;
    let audit = |status: u16, error: Option<&'static str>| {
        audit_call(
            state,
            context,
            name,
            facts.clone(),
            recorded_arguments.clone(),
            status,
            error,
            started,
        );
    };
    match outcome {
        Ok(text) => {
            span.in_scope(|| tracing::info!(error = false, "tool called"));
            audit(200, None);
            let structured = structured_content(&text)?;
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            result.structured_content = structured;
            Ok(result)
        }
        Err(outcome) => {
            let failure = match outcome {
                Outcome::Api(error) => Failure::from_api(error).await,
                Outcome::Failure(failure) => failure,
            };
            span.in_scope(|| tracing::info!(error = true, code = failure.code, "tool called"));
            audit(failure.status, Some(failure.code));
            Ok(failure.into_result())
        }
    }
}

/// Writes the call's audit line and counts it, as the gate does for REST requests.
#[allow(clippy::too_many_arguments)]
fn audit_call(
    state: &AppState,
    context: &CallContext,
    tool: &str,
    facts: CallFacts,
    arguments: Option<Value>,
    status: u16,
    error: Option<&'static str>,
    started: Instant,
) {
    let elapsed = started.elapsed();
    state.metrics.record_request(&RequestOutcome {
        transport: Transport::Mcp,
        table: facts.table.as_deref(),
        verb: facts.verb,
        status,
        rows: facts.rows,
        duration: elapsed,
    });
    let mut record = AuditRecord::new(
        Utc::now(),
        context.request_id.clone(),
        Transport::Mcp,
        "tools/call".into(),
    );
    record.caller = Some(context.call.caller.id.clone());
    record.role = Some(context.call.caller.role.clone());
    record.tool = Some(tool.to_owned());
    record.status = status;
    record.duration_ms = elapsed.as_secs_f64() * 1000.0;
    record.error = error;
    record.mcp_session.clone_from(&context.session);
    record.client = context.client.as_ref().map(|client| ClientInfo {
        name: client.name.clone(),
        version: client.version.clone(),
    });
    facts.into_record(&mut record);
    record.body = arguments;
    context.call.live.audit.record(record);
}

/// The tool's arguments for the audit line: inside them, every value under a column name of the
/// named table that the role may not see, or sees masked, is redacted, as REST bodies are.
fn redacted_arguments(arguments: &JsonObject, schema: &Schema, view: &Schema, access: &Access<'_>) -> Value {
    let mut value = Value::Object(arguments.clone());
    let Some(table) = arguments.get("table").and_then(Value::as_str) else {
        return value;
    };
    let Some(full) = schema.tables.get(table) else {
        return value;
    };
    let visible = view.tables.get(table);
    let keep = |key: &str| {
        full.column(key).is_none()
            || (visible.is_some_and(|visible| visible.column(key).is_some()) && access.mask(table, key).is_none())
    };
    redact_nested(&mut value, &keep);
    value
}

fn redact_nested(value: &mut Value, keep: &dyn Fn(&str) -> bool) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object.iter_mut() {
                if keep(key) {
                    redact_nested(inner, keep);
                } else {
                    *inner = Value::String(REDACTED.to_owned());
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| redact_nested(item, keep)),
        _ => {}
    }
}

fn parse<T: DeserializeOwned>(tool: &str, arguments: JsonObject) -> Result<T, Outcome> {
    serde_json::from_value(Value::Object(arguments)).map_err(|error| Outcome::Failure(Failure::arguments(tool, error)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableArguments {
    table: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QueryArguments {
    table: String,
    #[serde(default)]
    select: Vec<String>,
    #[serde(default)]
    filters: Vec<FilterArgument>,
    #[serde(default)]
    order: Vec<OrderArgument>,
    limit: Option<u64>,
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountArguments {
    table: String,
    #[serde(default)]
    filters: Vec<FilterArgument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetRowArguments {
    table: String,
    key: Map<String, Value>,
    #[serde(default)]
    select: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertArguments {
    table: String,
    rows: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateArguments {
    table: String,
    set: Map<String, Value>,
    filters: Vec<FilterArgument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteArguments {
    table: String,
    filters: Vec<FilterArgument>,
}

/// One structured filter: `{column, op, value, negate}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterArgument {
    column: String,
    op: FilterOperator,
    value: Value,
    #[serde(default)]
    negate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OrderArgument {
    column: String,
    #[serde(default)]
    descending: bool,
    nulls_first: Option<bool>,
}

/// A JSON scalar as the text a REST filter would carry.
fn scalar_text(column: &str, value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Null => Err(ApiError::bad_query(
            format!("the filter on \"{column}\" compares with null"),
            "use {\"op\": \"is\", \"value\": null} to match NULL",
        )),
        Value::Array(_) | Value::Object(_) => Err(ApiError::bad_query(
            format!("the filter on \"{column}\" takes one value, not {value}"),
            "only the in operator takes an array",
        )),
    }
}

/// Structured filters as the REST grammar's conditions, so [`plan::filters`] checks them.
fn conditions(filters: &[FilterArgument]) -> Result<Vec<Condition>, ApiError> {
    filters
        .iter()
        .map(|filter| {
            let operand = match (filter.op, &filter.value) {
                (FilterOperator::Is, Value::Null) => Operand::Is(IsValue::Null),
                (FilterOperator::Is, Value::Bool(true)) => Operand::Is(IsValue::True),
                (FilterOperator::Is, Value::Bool(false)) => Operand::Is(IsValue::False),
                (FilterOperator::Is, other) => {
                    return Err(ApiError::bad_query(
                        format!("the is filter on \"{}\" got {other}", filter.column),
                        "is takes null, true or false",
                    ));
                }
                (FilterOperator::In, Value::Array(items)) => Operand::List(
                    items
                        .iter()
                        .map(|item| scalar_text(&filter.column, item))
                        .collect::<Result<_, _>>()?,
                ),
                (FilterOperator::In, other) => {
                    return Err(ApiError::bad_query(
                        format!("the in filter on \"{}\" got {other}", filter.column),
                        "in takes an array of values, e.g. [1, 2, 3]",
                    ));
                }
                // As in REST, `*` is a wildcard too, since `%` needs escaping in URLs.
                (FilterOperator::Like | FilterOperator::Ilike, value) => {
                    Operand::Scalar(scalar_text(&filter.column, value)?.replace('*', "%"))
                }
                (_, value) => Operand::Scalar(scalar_text(&filter.column, value)?),
            };
            Ok(Condition::Predicate {
                column: filter.column.clone(),
                negated: filter.negate,
                operator: filter.op,
                operand,
            })
        })
        .collect()
}

fn select(columns: &[String]) -> Vec<SelectItem> {
    columns
        .iter()
        .map(|name| SelectItem::Column {
            alias: None,
            name: name.clone(),
        })
        .collect()
}

/// Rows as one JSON result: at most `limit` of them and [`MAX_RESULT_BYTES`], marked
/// `truncated` with a paging hint when some were left out, or when `more` says that rows past
/// these matched (`overflow` when the rows cannot be paged by offset). `leading` fields come first.
fn rows_result(
    rows: &Rows,
    limit: usize,
    more: bool,
    offset: Option<u64>,
    leading: &[(&str, u64)],
    overflow: &str,
) -> String {
    let mut text = String::from("{");
    for (name, value) in leading {
        text.push_str(&format!("\"{name}\":{value},"));
    }
    text.push_str("\"rows\":[");
    let mut bytes = 0;
    let mut returned = 0;
    for row in rows.iter().take(limit) {
        if bytes + row.len() > MAX_RESULT_BYTES {
            break;
        }
        if returned > 0 {
            text.push(',');
        }
        text.push_str(row);
        bytes += row.len() + 1;
        returned += 1;
    }
    let truncated = more || returned < rows.len();
    text.push_str(&format!("],\"returned\":{returned},\"truncated\":{truncated}"));
    if truncated {
        let by_bytes = returned < limit.min(rows.len());
        let hint = match offset {
            Some(offset) => {
                let next = offset + returned as u64;
                text.push_str(&format!(",\"nextOffset\":{next}"));
                if by_bytes {
                    format!(
                        "the result reached the {MAX_RESULT_BYTES}-byte cap: select fewer columns or lower limit, and call again with offset {next}"
                    )
                } else {
                    format!("more rows match: call again with offset {next}")
                }
            }
            None => overflow.to_owned(),
        };
        text.push_str(&format!(",\"hint\":{}", Value::String(hint)));
    }
    text.push('}');
    text
}

/// One call's view of the API.
struct Tool<'a> {
    state: &'a AppState,
    config: &'a RuntimeConfig,
    schema: &'a Schema,
    access: &'a Access<'a>,
    view: &'a Schema,
}

impl Tool<'_> {
    fn max_rows(&self) -> u64 {
        u64::from(self.config.mcp.max_rows)
    }

    fn paging(&self) -> Paging {
        Paging {
            default_page_size: u64::from(self.config.rest.default_page_size).min(self.max_rows()),
            max_page_size: self.max_rows(),
        }
    }

    fn table(&self, name: &str) -> Result<&Table, ApiError> {
        plan::table(self.view, name)
    }

    async fn run(&self, plan: Plan, count: bool) -> Result<crate::execute::Outcome, ApiError> {
        pipeline::run(self.state, self.schema, self.access, plan, count, &self.config.limits).await
    }

    fn list_tables(&self, arguments: Result<NoArguments, Outcome>) -> ToolResult {
        arguments?;
        let config = &self.config;
        let tables: Vec<Value> = self
            .view
            .tables
            .values()
            .map(|table| tools::summarize(config, table, self.access))
            .collect();
        Ok(json!({ "tables": tables }).to_string())
    }

    fn describe_table(&self, arguments: Result<TableArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        Ok(tools::describe(self.config, table, self.access).to_string())
    }

    async fn query_rows(&self, arguments: Result<QueryArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        let max_rows = self.max_rows();
        if let Some(limit) = arguments.limit
            && limit > max_rows
        {
            return Err(ApiError::bad_query(
                format!("limit {limit} is above the cap of {max_rows} rows per call"),
                format!("ask for at most {max_rows} rows and page with offset"),
            )
            .into());
        }
        let query = ReadQuery {
            select: select(&arguments.select),
            filters: conditions(&arguments.filters)?,
            order: arguments
                .order
                .iter()
                .map(|term| OrderTerm {
                    column: term.column.clone(),
                    descending: term.descending,
                    nulls: term
                        .nulls_first
                        .map(|first| if first { Nulls::First } else { Nulls::Last }),
                })
                .collect(),
            limit: arguments.limit,
            offset: Some(arguments.offset),
            ..ReadQuery::default()
        };
        let mut read = plan::read(self.view, table, &query, self.paging())?;
        let limit = read.limit;
        let offset = read.offset;
        // One row more than asked tells whether this page is the last.
        read.limit = limit + 1;
        let outcome = self.read(table, read, false).await?;
        Ok(rows_result(
            &outcome.rows,
            usize::try_from(limit).unwrap_or(usize::MAX),
            outcome.capped,
            Some(offset),
            &[],
            "",
        ))
    }

    async fn get_row(&self, arguments: Result<GetRowArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        if table.primary_key.is_empty() {
            return Err(ApiError::bad_query(
                format!(
                    "\"{}\" has no primary key you can see, so rows cannot be read by key",
                    table.name
                ),
                "use query_rows with filters",
            )
            .into());
        }
        let expected = format!("the key of \"{}\" is {}", table.name, table.primary_key.join(", "));
        if arguments.key.len() != table.primary_key.len()
            || !table
                .primary_key
                .iter()
                .all(|column| arguments.key.contains_key(column))
        {
            return Err(ApiError::bad_query(
                format!(
                    "the key names {}; {expected}",
                    arguments.key.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                "give each primary-key column and its value, e.g. {\"id\": 1}",
            )
            .into());
        }
        let mut filters = Vec::with_capacity(arguments.key.len());
        for (column, value) in &arguments.key {
            filters.push(Condition::Predicate {
                column: column.clone(),
                negated: false,
                operator: FilterOperator::Eq,
                operand: Operand::Scalar(scalar_text(column, value)?),
            });
        }
        let query = ReadQuery {
            select: select(&arguments.select),
            filters,
            limit: Some(1),
            ..ReadQuery::default()
        };
        let read = plan::read(self.view, table, &query, self.paging())?;
        let outcome = self.read(table, read, false).await?;
        match outcome.rows.first() {
            Some(row) => Ok(format!("{{\"row\":{row}}}")),
            None => Err(ApiError::RowNotFound {
                table: table.name.clone(),
                key: Value::Object(arguments.key).to_string(),
            }
            .into()),
        }
    }

    async fn count_rows(&self, arguments: Result<CountArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        let query = ReadQuery {
            filters: conditions(&arguments.filters)?,
            limit: Some(0),
            ..ReadQuery::default()
        };
        let read = plan::read(self.view, table, &query, self.paging())?;
        let outcome = self.read(table, read, true).await?;
        Ok(json!({ "count": outcome.total.unwrap_or_default() }).to_string())
    }

    /// Runs a read of `table`; `count` also counts every matching row.
    async fn read(&self, table: &Table, read: ReadPlan, count: bool) -> Result<crate::execute::Outcome, ApiError> {
        let plan = Plan {
            table: table.name.clone(),
            action: Action::Read(read),
            returning: None,
        };
        self.run(plan, count).await
    }

    /// The filters an update or delete by `tool` must have (an empty list would change every
    /// row), once the database takes writes to `table`.
    fn required_filters(
        &self,
        table: &Table,
        tool: &'static str,
        filters: &[FilterArgument],
    ) -> Result<Vec<Filter>, ApiError> {
        if filters.is_empty() {
            return Err(ApiError::FilterRequired {
                verb: tool,
                table: table.name.clone(),
            });
        }
        plan::check_writable(table, self.config.database.read_only)?;
        plan::filters(table, &conditions(filters)?)
    }

    /// Rows written, returned as the role reads them and capped like a read.
    async fn write(&self, table: &Table, action: Action, counted: &str) -> ToolResult {
        let plan = Plan {
            table: table.name.clone(),
            action,
            returning: Some(plan::fields(self.view, table, &[])?),
        };
        let outcome = self.run(plan, false).await?;
        let limit = usize::try_from(self.max_rows()).unwrap_or(usize::MAX);
        Ok(rows_result(
            &outcome.rows,
            limit,
            false,
            None,
            &[(counted, outcome.affected)],
            "more rows were written than one result carries; read them with query_rows",
        ))
    }

    async fn insert_rows(&self, arguments: Result<InsertArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        let writable = self.access.writable(table, &[Verb::Create])?;
        plan::check_writable(table, self.config.database.read_only)?;
        let mut rows = Vec::with_capacity(arguments.rows.len());
        for row in &arguments.rows {
            let mut raw = BTreeMap::new();
            for (column, value) in row {
                let value = serde_json::value::to_raw_value(value).map_err(|_| ApiError::Internal)?;
                raw.insert(column.clone(), value);
            }
            rows.push(raw);
        }
        let insert = plan::insert(&writable, &rows, &[])?;
        self.write(table, Action::Insert(insert), "inserted").await
    }

    async fn update_rows(&self, arguments: Result<UpdateArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        let writable = self.access.writable(table, &[Verb::Update])?;
        let filters = self.required_filters(table, UPDATE_ROWS, &arguments.filters)?;
        let mut set = BTreeMap::new();
        for (column, value) in &arguments.set {
            set.insert(
                column.clone(),
                serde_json::value::to_raw_value(value).map_err(|_| ApiError::Internal)?,
            );
        }
        let update = plan::UpdatePlan {
            assignments: plan::assignments(&writable, &vec![set])?,
            filters,
        };
        self.write(table, Action::Update(update), "updated").await
    }

    async fn named_query(&self, name: &str, arguments: &JsonObject) -> ToolResult {
        let config = &self.config;
        let query = named::find(config, self.access, name).ok_or(ApiError::Internal)?;
        let max_rows = usize::try_from(self.max_rows()).unwrap_or(usize::MAX);
        let database = &self.state.database;
        match database
            .within_deadline(named::run(database, query, arguments, max_rows))
            .await?
        {
            NamedOutcome::Affected(affected) => Ok(json!({ "affected": affected }).to_string()),
            NamedOutcome::Rows(rows) => Ok(rows_result(
                &rows,
                max_rows,
                false,
                None,
                &[],
                "the query matched more rows than one result carries; narrow it with its parameters",
            )),
        }
    }

    async fn delete_rows(&self, arguments: Result<DeleteArguments, Outcome>) -> ToolResult {
        let arguments = arguments?;
        let table = self.table(&arguments.table)?;
        self.access.require(&table.name, &[Verb::Delete])?;
        let filters = self.required_filters(table, DELETE_ROWS, &arguments.filters)?;
        self.write(table, Action::Delete(filters), "deleted").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_stop_at_the_limit_and_say_where_to_continue() {
        let rows: Rows = (0..3).map(|id| format!("{{\"id\":{id}}}")).collect();
        let page: Value = serde_json::from_str(&rows_result(&rows, 2, false, Some(10), &[], "")).expect("JSON");
        assert_eq!(
            page,
            json!({ "rows": [{ "id": 0 }, { "id": 1 }], "returned": 2, "truncated": true, "nextOffset": 12,
                    "hint": "more rows match: call again with offset 12" })
        );
        let last: Value =
            serde_json::from_str(&rows_result(&rows, 5, false, Some(0), &[("inserted", 3)], "")).expect("JSON");
        assert_eq!(last["truncated"], json!(false));
        assert_eq!(
            (last["inserted"].clone(), last["returned"].clone()),
            (json!(3), json!(3))
        );
    }

    #[test]
    fn results_stop_at_the_byte_cap() {
        let wide = format!("{{\"text\":\"{}\"}}", "x".repeat(MAX_RESULT_BYTES / 2));
        let rows: Rows = [wide.clone(), wide.clone(), wide].into_iter().collect();
        let page: Value = serde_json::from_str(&rows_result(&rows, 10, false, Some(0), &[], "")).expect("JSON");
        assert_eq!(page["returned"], json!(1));
        assert_eq!(page["nextOffset"], json!(1));
        assert!(
            page["hint"].as_str().is_some_and(|hint| hint.contains("byte cap")),
            "{page}"
        );
    }

    #[test]
    fn deeply_nested_results_keep_their_text_and_moderate_ones_their_structure() {
        let nested = |depth: usize| format!("{{\"rows\":[{{\"doc\":{}1{}}}]}}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(json_depth(r#"{"a":"[[[{{","b":[1,{"c":"\\\""}]}"#), 3);
        let moderate = structured_content(&nested(900)).expect("parses").expect("structured");
        assert!(moderate["rows"][0]["doc"].is_array());
        assert!(structured_content(&nested(100_000)).expect("parses").is_none());
    }

    #[test]
    fn structured_filters_become_rest_conditions() {
        let filters: Vec<FilterArgument> = serde_json::from_value(json!([
            { "column": "id", "op": "in", "value": [1, "2"] },
            { "column": "email", "op": "is", "value": null, "negate": true },
            { "column": "vip", "op": "eq", "value": true }
        ]))
        .expect("filters");
        let converted = conditions(&filters).expect("valid");
        assert_eq!(
            converted[0],
            Condition::Predicate {
                column: "id".into(),
                negated: false,
                operator: FilterOperator::In,
                operand: Operand::List(vec!["1".into(), "2".into()]),
            }
        );
        assert!(matches!(
            &converted[1],
            Condition::Predicate {
                negated: true,
                operand: Operand::Is(IsValue::Null),
                ..
            }
        ));
        assert!(matches!(&converted[2], Condition::Predicate { operand: Operand::Scalar(text), .. } if text == "true"));
        for bad in [
            json!([{ "column": "id", "op": "eq", "value": null }]),
            json!([{ "column": "id", "op": "in", "value": 1 }]),
            json!([{ "column": "id", "op": "is", "value": 3 }]),
        ] {
            let filters: Vec<FilterArgument> = serde_json::from_value(bad.clone()).expect("shape");
            assert!(matches!(conditions(&filters), Err(ApiError::BadQuery { .. })), "{bad}");
        }
    }
}
