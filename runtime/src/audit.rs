//! The audit log: one JSON line per call, REST and MCP alike, written off the request path.
//!
//! Requests hand an [`AuditRecord`] to [`AuditLog::record`], which only queues it; a writer
//! thread serialises the records and writes them through a buffer. An idle writer is woken by
//! the first record; a busy one collects what arrived every [`WRITE_INTERVAL`], so a line waits
//! at most that long while a burst costs one write per batch and no wake-up per request.
//!
//! # Never lost, never blocking
//! The queue is unbounded. A bounded queue would have to either drop lines when full or make
//! requests wait for the log, and [`AuditLog::record`] cannot wait: it is called from
//! synchronous code after the response is built. Writing a line to stdout takes about a
//! microsecond, far less than any request that produced it, so the queue only grows while the
//! output itself is stalled (a blocked log collector); that memory is the price of keeping every
//! line. A record sent after [`AuditWriter::close`] is logged through `tracing` instead of lost.
//!
//! # What a line holds
//! The caller's id, never its key or token. Bodies only when the DataApi enables
//! `audit.includeBodies`, and then only after the caller redacted what the role may not see
//! ([`redact_body`]). The [`fingerprint`] names the query's shape without its values.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_crds::dataapi::AuditSpec;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crate::plan::{Action, Field, Filter, Plan, Verb};
use crate::schema::Relationship;

/// What replaces a redacted body value.
pub const REDACTED: &str = "[redacted]";

/// Size of the writer's buffer: many lines per write during a burst.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// While records keep arriving, the writer collects them this often: the most a line waits.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);

/// Where a call came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The REST API.
    Rest,
    /// The MCP endpoint.
    Mcp,
}

impl Transport {
    /// The name in audit lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Mcp => "mcp",
        }
    }
}

/// The name of a verb in audit lines and metric labels.
pub fn verb_name(verb: Verb) -> &'static str {
    match verb {
        Verb::Read => "read",
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::Delete => "delete",
    }
}

/// The MCP client, as it introduced itself in `initialize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// One audit line. Optional fields are left out of the line when `None`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the request arrived; written RFC 3339 in UTC with milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: DateTime<Utc>,
    /// The request id, as in the `x-request-id` response header.
    pub request_id: String,
    /// The caller's id (`<role>/<key name>`, `jwt:<subject>`, `anonymous`); `None` when
    /// authentication failed. Never a key or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The caller's role; `None` when authentication failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Where the call came in.
    pub transport: Transport,
    /// The HTTP method, or the MCP method (`tools/call`, `tools/list`, …).
    pub method: String,
    /// The MCP tool called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The request path, without the query string (it holds filter values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The table, when the request resolved to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The verb, when the request resolved to a table operation.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "verb")]
    pub verb: Option<Verb>,
    /// The query's shape, see [`fingerprint`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The HTTP status of the response.
    pub status: u16,
    /// Rows returned, or changed by a write.
    pub rows: u64,
    /// Time from arrival to the response, in milliseconds.
    pub duration_ms: f64,
    /// The stable error code of a refused or failed call (`ApiError::code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// The request body or tool arguments, redacted; kept only when the DataApi enables bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The MCP session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_session: Option<String>,
    /// The MCP client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

impl AuditRecord {
    /// A record of a call that arrived at `time`, with every optional field empty, status 0 and
    /// no rows: fill in what the call resolved to and its outcome.
    pub fn new(time: DateTime<Utc>, request_id: String, transport: Transport, method: String) -> Self {
        Self {
            time,
            request_id,
            caller: None,
            role: None,
            transport,
            method,
            tool: None,
            path: None,
            table: None,
            verb: None,
            fingerprint: None,
            status: 0,
            rows: 0,
            duration_ms: 0.0,
            error: None,
            body: None,
            mcp_session: None,
            client: None,
        }
    }
}

fn rfc3339_millis<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn verb<S: Serializer>(verb: &Option<Verb>, serializer: S) -> Result<S::Ok, S::Error> {
    match verb {
        Some(verb) => serializer.serialize_str(verb_name(*verb)),
        None => serializer.serialize_none(),
    }
}

/// A stable short hash of what a plan does, without its values: table, verb, selected fields
/// (embeds recursively, with their relationship), filter columns, operators and groups, order
/// columns and directions, written columns and upsert rule, returned fields.
///
/// Requests that differ only in values (filter operands, `in` list lengths, inserted rows, page
/// size and offset) share a fingerprint, so the audit log can be grouped by query shape. Filters
/// that all must hold are compared as a set: `a=eq.1&b=eq.2` and `b=eq.2&a=eq.1` match. Output
/// key renames are ignored; `is.null` and `is.true` differ, as their SQL does.
///
/// The first 16 hex digits (64 bits) of a SHA-256 over a canonical description.
pub fn fingerprint(plan: &Plan) -> String {
    // Every request's audit line carries one: sized for a typical shape so it is built in one
    // allocation, without a string per filter where there is nothing to sort.
    let mut shape = String::with_capacity(256);
    write!(shape, "{:?} {}", plan.table, verb_name(plan.verb())).expect("writing to a String");
    match &plan.action {
        Action::Read(read) => {
            shape.push_str(" select");
            describe_fields(&mut shape, &read.fields);
            shape.push_str(" where");
            describe_filters(&mut shape, &read.filters, false);
            shape.push_str(" order(");
            for order in &read.order {
                let direction = if order.descending { "desc" } else { "asc" };
                let nulls = if order.nulls_first { "first" } else { "last" };
                write!(shape, "{:?} {direction} nulls{nulls},", order.column).expect("writing to a String");
            }
            shape.push(')');
        }
        Action::Insert(insert) => {
            shape.push_str(" columns(");
            for column in &insert.columns {
                write!(shape, "{:?},", column.name).expect("writing to a String");
            }
            shape.push(')');
            if let Some(upsert) = &insert.upsert {
                let rule = if upsert.merge { "merge" } else { "ignore" };
                write!(shape, " on conflict {:?} {rule}", upsert.conflict_columns).expect("writing to a String");
            }
        }
        Action::Update(update) => {
            let mut columns: Vec<&str> = update
                .assignments
                .iter()
                .map(|(column, _)| column.name.as_str())
                .collect();
            columns.sort_unstable();
            write!(shape, " set {columns:?} where").expect("writing to a String");
            describe_filters(&mut shape, &update.filters, false);
        }
        Action::Delete(filters) => {
            shape.push_str(" where");
            describe_filters(&mut shape, filters, false);
        }
    }
    if let Some(returning) = &plan.returning {
        shape.push_str(" returning");
        describe_fields(&mut shape, returning);
    }
    let digest = Sha256::digest(shape.as_bytes());
    let first_64_bits = u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"));
    format!("{first_64_bits:016x}")
}

fn describe_fields(shape: &mut String, fields: &[Field]) {
    shape.push('(');
    for field in fields {
        match field {
            Field::Column { column, .. } => write!(shape, "{:?},", column.name).expect("writing to a String"),
            Field::Embed {
                table,
                relationship,
                fields,
                ..
            } => {
                let (kind, outer, inner) = match relationship {
                    Relationship::ToOne { outer, inner } => ("one", outer, inner),
                    Relationship::ToMany { outer, inner } => ("many", outer, inner),
                };
                write!(shape, "{:?} {kind} {outer:?}={inner:?}", table.name).expect("writing to a String");
                describe_fields(shape, fields);
                shape.push(',');
            }
        }
    }
    shape.push(')');
}

/// Describes `filters`, all of which hold (`any` false) or one of which holds, in a canonical
/// order: both are commutative.
fn describe_filters(shape: &mut String, filters: &[Filter], any: bool) {
    shape.push_str(if any { "or(" } else { "and(" });
    if let [only] = filters {
        describe_filter(shape, only);
        shape.push(',');
    } else {
        let mut members: Vec<String> = filters
            .iter()
            .map(|filter| {
                let mut member = String::new();
                describe_filter(&mut member, filter);
                member
            })
            .collect();
        members.sort_unstable();
        for member in members {
            shape.push_str(&member);
            shape.push(',');
        }
    }
    shape.push(')');
}

/// Appends the description of one filter to `shape`.
fn describe_filter(shape: &mut String, filter: &Filter) {
    let not = |negated: bool| if negated { "not." } else { "" };
    match filter {
        Filter::Compare {
            column,
            negated,
            operator,
            ..
        } => write!(shape, "{:?} {}{operator:?}", column.name, not(*negated)),
        Filter::Is { column, negated, value } => write!(shape, "{:?} {}is.{value:?}", column.name, not(*negated)),
        Filter::Group { any, negated, members } => {
            shape.push_str(not(*negated));
            describe_filters(shape, members, *any);
            Ok(())
        }
    }
    .expect("writing to a String");
}

/// Replaces by [`REDACTED`] the value of every key that `keep` refuses, in an object or in each
/// object of an array (a write body, tool arguments). Only top-level keys are judged: they are
/// the columns; other values are left as they are.
pub fn redact_body(value: &mut Value, keep: &dyn Fn(&str) -> bool) {
    match value {
        Value::Object(object) => redact_object(object, keep),
        Value::Array(items) => {
            for item in items {
                if let Value::Object(object) = item {
                    redact_object(object, keep);
                }
            }
        }
        _ => {}
    }
}

fn redact_object(object: &mut Map<String, Value>, keep: &dyn Fn(&str) -> bool) {
    for (key, value) in object.iter_mut() {
        if !keep(key) {
            *value = Value::String(REDACTED.to_owned());
        }
    }
}

/// Why the audit writer stopped short.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Writing to the output failed; lines in those writes are lost.
    #[error("{failures} writes of audit lines failed, the first with: {first}")]
    Write {
        /// Failed writes and flushes.
        failures: u64,
        /// The first failure.
        #[source]
        first: std::io::Error,
    },
    /// The writer thread panicked; lines queued after that are lost.
    #[error("the audit writer thread panicked")]
    WriterPanicked,
}

/// Records waiting for the writer thread, shared by every handle.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    records: Vec<AuditRecord>,
    /// The writer found nothing to write and parked until a record arrives.
    writer_idle: bool,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves only a vector push or swap half-done: the
        // records stay consistent, so keep logging rather than losing every later line.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle that records audit lines; cheap to clone, one per config generation.
#[derive(Clone, Debug)]
pub struct AuditLog {
    sink: Option<Sink>,
    include_bodies: bool,
}

#[derive(Clone, Debug)]
struct Sink {
    queue: Arc<Queue>,
    writer: Thread,
}

/// The thread writing audit lines; [`AuditWriter::close`] it at shutdown.
pub struct AuditWriter {
    sink: Sink,
    thread: JoinHandle<Result<(), AuditError>>,
}

impl AuditLog {
    /// Starts the thread writing lines to `output` (the runtime's stdout). The handle records
    /// without bodies; see [`AuditLog::configured`].
    ///
    /// A plain thread rather than a task: stdout is blocking I/O, which Tokio would hand to its
    /// blocking pool on every write, waking a thread and then a worker per batch.
    pub fn start(output: impl Write + Send + 'static) -> (AuditLog, AuditWriter) {
        let queue = Arc::new(Queue::default());
        let thread = std::thread::Builder::new()
            .name("sluice-audit".to_owned())
            .spawn({
                let queue = queue.clone();
                move || write_lines(&queue, output)
            })
            .expect("the audit writer thread starts");
        let sink = Sink {
            queue,
            writer: thread.thread().clone(),
        };
        let log = AuditLog {
            sink: Some(sink.clone()),
            include_bodies: false,
        };
        (log, AuditWriter { sink, thread })
    }

    /// A handle that records nothing.
    pub fn disabled() -> AuditLog {
        AuditLog {
            sink: None,
            include_bodies: false,
        }
    }

    /// A handle to the same writer following a DataApi's `audit` settings: a no-op when
    /// `enabled` is false, keeping bodies only when `includeBodies` is set.
    pub fn configured(&self, spec: &AuditSpec) -> AuditLog {
        AuditLog {
            sink: self.sink.clone().filter(|_| spec.enabled),
            include_bodies: spec.include_bodies,
        }
    }

    /// Whether records are written at all; callers may skip building them when not.
    pub fn is_enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Whether records keep their bodies; callers may skip redacting bodies when not.
    pub fn includes_bodies(&self) -> bool {
        self.sink.is_some() && self.include_bodies
    }

    /// Queues `record` for writing; never blocks on the output. The body is dropped unless
    /// bodies are enabled.
    pub fn record(&self, mut record: AuditRecord) {
        let Some(sink) = &self.sink else {
            return;
        };
        if !self.include_bodies {
            record.body = None;
        }
        let mut state = sink.queue.lock();
        if state.closed {
            drop(state);
            let line = serde_json::to_string(&record).unwrap_or_else(|error| error.to_string());
            tracing::error!(audit = %line, "audit record after the audit log closed; logged here instead");
            return;
        }
        state.records.push(record);
        // Only the first record after a quiet spell wakes the writer; under load it is awake
        // and collects a batch every `WRITE_INTERVAL`, so requests pay no wake-up.
        let wake = std::mem::take(&mut state.writer_idle);
        drop(state);
        if wake {
            sink.writer.unpark();
        }
    }
}

impl AuditWriter {
    /// Writes every record queued before this call, flushes, and stops the thread. Records
    /// sent through remaining [`AuditLog`] handles afterwards go to the `tracing` log.
    pub async fn close(self) -> Result<(), AuditError> {
        self.sink.queue.lock().closed = true;
        self.sink.writer.unpark();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| AuditError::WriterPanicked)?
            .map_err(|_| AuditError::WriterPanicked)?
    }
}

fn write_lines(queue: &Queue, output: impl Write) -> Result<(), AuditError> {
    let mut output = BufWriter::with_capacity(WRITE_BUFFER_BYTES, output);
    let mut failures = Failures::default();
    let mut line = Vec::with_capacity(1024);
    let mut batch = Vec::new();
    loop {
        let (closed, idle) = {
            let mut state = queue.lock();
            std::mem::swap(&mut state.records, &mut batch);
            state.writer_idle = batch.is_empty() && !state.closed;
            (state.closed, state.writer_idle)
        };
        if !batch.is_empty() {
            for record in batch.drain(..) {
                if serialise(&record, &mut line) {
                    failures.note(output.write_all(&line));
                }
            }
            failures.note(output.flush());
        }
        if closed {
            return failures.into_result();
        }
        // Idle: sleep until `record` unparks (an unpark that came in between makes this return
        // at once). Busy: let a batch gather. A spurious wake-up costs a look at the queue.
        if idle {
            std::thread::park();
        } else {
            std::thread::park_timeout(WRITE_INTERVAL);
        }
    }
}

/// Replaces `line` by `record` as one JSON line; false, and logged, if it cannot be serialised.
fn serialise(record: &AuditRecord, line: &mut Vec<u8>) -> bool {
    line.clear();
    match serde_json::to_writer(&mut *line, record) {
        Ok(()) => {
            line.push(b'\n');
            true
        }
        Err(error) => {
            tracing::error!(%error, request_id = record.request_id, "cannot serialise an audit record");
            false
        }
    }
}

/// Write failures, reported once in the log as they start and in full at close.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<std::io::Error>,
}

impl Failures {
    fn note(&mut self, result: std::io::Result<()>) {
        if let Err(error) = result {
            if self.first.is_none() {
                tracing::error!(%error, "cannot write audit lines; lines are being lost");
                self.first = Some(error);
            }
            self.count += 1;
        }
    }

    fn into_result(self) -> Result<(), AuditError> {
        match self.first {
            None => Ok(()),
            Some(first) => Err(AuditError::Write {
                failures: self.count,
                first,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::plan::{Comparison, InsertPlan, Order, ReadPlan, UpdatePlan, Upsert};
    use crate::query::IsValue;
    use crate::schema::{Column, Table};
    use crate::sql::BindValue;

    /// An in-memory output the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl SharedBuffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const SECRET_KEY: &str = "sk_live_do_not_log";
    const SECRET_PASSWORD: &str = "hunter2-secret";

    fn record(request: usize) -> AuditRecord {
        let mut record = AuditRecord::new(Utc::now(), format!("req-{request}"), Transport::Rest, "POST".to_owned());
        record.caller = Some("admin/ci".to_owned());
        record.role = Some("admin".to_owned());
        record.path = Some("/api/v1/users".to_owned());
        record.table = Some("users".to_owned());
        record.verb = Some(Verb::Create);
        record.status = 201;
        record.rows = 1;
        record.duration_ms = 1.25;
        let mut body = json!([{ "name": "ada", "password": SECRET_PASSWORD, "apiKey": SECRET_KEY }]);
        redact_body(&mut body, &|key| key == "name");
        record.body = Some(body);
        record
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_record_from_concurrent_tasks_becomes_one_json_line() {
        let output = SharedBuffer::default();
        let (log, writer) = AuditLog::start(output.clone());
        let log = log.configured(&AuditSpec {
            enabled: true,
            include_bodies: true,
        });
        let tasks: Vec<_> = (0..50)
            .map(|task| {
                let log = log.clone();
                tokio::spawn(async move {
                    for index in 0..50 {
                        log.record(record(task * 50 + index));
                        if index % 10 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        writer.close().await.unwrap();

        let text = output.text();
        assert!(!text.contains(SECRET_KEY) && !text.contains(SECRET_PASSWORD));
        let mut ids: Vec<String> = text
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).unwrap();
                for field in [
                    "time",
                    "caller",
                    "role",
                    "transport",
                    "method",
                    "status",
                    "rows",
                    "durationMs",
                ] {
                    assert!(value.get(field).is_some(), "{field} missing from {line}");
                }
                assert_eq!(value["verb"], "create");
                assert_eq!(value["body"][0]["password"], REDACTED);
                assert!(value.get("tool").is_none(), "None fields are left out: {line}");
                value["requestId"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 2500);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2500, "each record exactly once");
    }

    #[tokio::test]
    async fn a_line_is_written_without_waiting_for_close() {
        let output = SharedBuffer::default();
        let (log, writer) = AuditLog::start(output.clone());
        log.record(record(1));
        for _ in 0..200 {
            if output.text().ends_with('\n') {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(output.text().lines().count(), 1, "written before close");
        writer.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_line_has_camel_case_fields_and_millisecond_utc_time() {
        let output = SharedBuffer::default();
        let (log, writer) = AuditLog::start(output.clone());
        let time = DateTime::parse_from_rfc3339("2026-11-26T04:05:06.789123+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let mut call = AuditRecord::new(time, "r1".into(), Transport::Mcp, "tools/call".into());
        call.caller = Some("jwt:alice".into());
        call.tool = Some("query_rows".into());
        call.status = 403;
        call.error = Some("forbidden");
        call.mcp_session = Some("s-1".into());
        call.client = Some(ClientInfo {
            name: "inspector".into(),
            version: "1.0".into(),
        });
        call.body = Some(json!({ "table": "users" }));
        log.record(call);
        writer.close().await.unwrap();

        let line: Value = serde_json::from_str(output.text().trim_end()).unwrap();
        assert_eq!(
            line,
            json!({
                "time": "2026-11-26T02:05:06.789Z",
                "requestId": "r1",
                "caller": "jwt:alice",
                "transport": "mcp",
                "method": "tools/call",
                "tool": "query_rows",
                "status": 403,
                "rows": 0,
                "durationMs": 0.0,
                "error": "forbidden",
                "mcpSession": "s-1",
                "client": { "name": "inspector", "version": "1.0" },
            }),
            "the body is dropped: bodies are not enabled"
        );
    }

    #[tokio::test]
    async fn records_after_close_stay_out_of_the_closed_output() {
        let output = SharedBuffer::default();
        let (log, writer) = AuditLog::start(output.clone());
        log.record(record(1));
        writer.close().await.unwrap();
        log.record(record(2));
        let text = output.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"req-1\""), "{text}");
    }

    #[tokio::test]
    async fn a_disabled_audit_writes_nothing() {
        let output = SharedBuffer::default();
        let (log, writer) = AuditLog::start(output.clone());
        let disabled = log.configured(&AuditSpec {
            enabled: false,
            include_bodies: true,
        });
        assert!(!disabled.is_enabled() && !disabled.includes_bodies());
        disabled.record(record(1));
        AuditLog::disabled().record(record(2));
        writer.close().await.unwrap();
        assert_eq!(output.text(), "");
    }

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            db_type: "text".into(),
            cast_type: String::new(),
            kind: crate::schema::ValueKind::Text,
            nullable: true,
            default: None,
            generated: false,
        }
    }

    fn compare(name: &str, operator: Comparison, values: Vec<BindValue>) -> Filter {
        Filter::Compare {
            column: column(name),
            negated: false,
            operator,
            values,
        }
    }

    fn read(filters: Vec<Filter>, fields: &[&str], limit: u64, offset: u64) -> Plan {
        Plan {
            table: "customers".into(),
            action: Action::Read(ReadPlan {
                fields: fields
                    .iter()
                    .map(|name| Field::Column {
                        key: (*name).into(),
                        column: column(name),
                    })
                    .collect(),
                filters,
                order: vec![Order {
                    column: "name".into(),
                    descending: false,
                    nulls_first: false,
                }],
                limit,
                offset,
            }),
            returning: None,
        }
    }

    fn text(value: &str) -> BindValue {
        BindValue::Text(value.into())
    }

    #[test]
    fn fingerprints_ignore_values_and_filter_order() {
        let first = read(
            vec![
                compare("country", Comparison::Eq, vec![text("FR")]),
                compare("id", Comparison::In, vec![text("1"), text("2")]),
            ],
            &["id", "name"],
            20,
            0,
        );
        let second = read(
            vec![
                compare("id", Comparison::In, vec![text("7"), text("8"), text("9")]),
                compare("country", Comparison::Eq, vec![text("DE")]),
            ],
            &["id", "name"],
            100,
            40,
        );
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert_eq!(fingerprint(&first).len(), 16);
        assert!(fingerprint(&first).chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn fingerprints_differ_by_shape() {
        let eq = |name: &str| compare(name, Comparison::Eq, vec![text("x")]);
        let base = fingerprint(&read(vec![eq("country")], &["id"], 20, 0));
        let others = [
            read(vec![eq("region")], &["id"], 20, 0),
            read(
                vec![compare("country", Comparison::Neq, vec![text("x")])],
                &["id"],
                20,
                0,
            ),
            read(vec![eq("country")], &["id", "name"], 20, 0),
            read(vec![], &["id"], 20, 0),
            read(
                vec![Filter::Group {
                    any: true,
                    negated: false,
                    members: vec![eq("country")],
                }],
                &["id"],
                20,
                0,
            ),
            read(
                vec![Filter::Is {
                    column: column("country"),
                    negated: true,
                    value: IsValue::Null,
                }],
                &["id"],
                20,
                0,
            ),
            Plan {
                table: "customers".into(),
                action: Action::Update(UpdatePlan {
                    assignments: vec![(column("id"), text("1"))],
                    filters: vec![eq("country")],
                }),
                returning: None,
            },
            Plan {
                table: "customers".into(),
                action: Action::Delete(vec![eq("country")]),
                returning: None,
            },
        ];
        let mut seen = vec![base];
        for plan in &others {
            let print = fingerprint(plan);
            assert!(!seen.contains(&print), "{plan:?} shares a fingerprint");
            seen.push(print);
        }
    }

    /// The fingerprints audit logs already hold: the way they are computed may change, the
    /// values may not, or log queries grouping by shape would split at an upgrade.
    #[test]
    fn fingerprints_keep_their_values() {
        let eq = |name: &str| compare(name, Comparison::Eq, vec![text("x")]);
        let mut nested = read(
            vec![
                eq("country"),
                Filter::Group {
                    any: true,
                    negated: true,
                    members: vec![
                        compare("id", Comparison::In, vec![text("1"), text("2")]),
                        Filter::Is {
                            column: column("note \"quoted\""),
                            negated: false,
                            value: IsValue::True,
                        },
                    ],
                },
                eq("city"),
            ],
            &["id", "name"],
            20,
            0,
        );
        if let Action::Read(read) = &mut nested.action {
            read.order.push(Order {
                column: "id".into(),
                descending: true,
                nulls_first: true,
            });
        }
        let update = Plan {
            table: "customers".into(),
            action: Action::Update(UpdatePlan {
                assignments: vec![(column("name"), text("1")), (column("city"), text("2"))],
                filters: vec![eq("id")],
            }),
            returning: Some(vec![Field::Column {
                key: "renamed".into(),
                column: column("id"),
            }]),
        };
        let delete = Plan {
            table: "customers".into(),
            action: Action::Delete(vec![]),
            returning: None,
        };
        let upsert = Plan {
            table: "customers".into(),
            action: Action::Insert(InsertPlan {
                columns: vec![column("id"), column("name")],
                rows: vec![vec![text("1"), text("a")]],
                upsert: Some(Upsert {
                    conflict_columns: vec!["id".into()],
                    merge: true,
                }),
            }),
            returning: None,
        };
        let mut embed = read(vec![], &["id"], 20, 0);
        if let Action::Read(read) = &mut embed.action {
            read.fields.push(orders_embed(Relationship::ToOne {
                outer: vec!["customer_id".into()],
                inner: vec!["id".into()],
            }));
        }
        let printed: Vec<String> = [
            read(vec![eq("id")], &["id"], 1, 0),
            nested,
            update,
            delete,
            upsert,
            embed,
        ]
        .iter()
        .map(fingerprint)
        .collect();
        assert_eq!(
            printed,
            [
                "56b7cd39335a74bf",
                "79b21c8894198383",
                "d6762e6fde6ba656",
                "13c6fe48edb2e92d",
                "29b0738bb2238fb3",
                "4005cb9c48dfaf64"
            ]
        );
    }

    /// `orders(id)` embedded through `relationship`.
    fn orders_embed(relationship: Relationship) -> Field {
        Field::Embed {
            key: "orders".into(),
            table: Box::new(Table {
                name: "orders".into(),
                db_schema: "public".into(),
                kind: crate::schema::RelationKind::Table,
                updatable: true,
                columns: vec![column("id")],
                primary_key: vec!["id".into()],
                foreign_keys: vec![],
            }),
            relationship,
            fields: vec![Field::Column {
                key: "id".into(),
                column: column("id"),
            }],
            filters: vec![],
        }
    }

    #[test]
    fn fingerprints_see_embeds() {
        let mut plain = read(vec![], &["id"], 20, 0);
        let with_orders = {
            let Action::Read(read) = &mut plain.action else {
                unreachable!("read() builds a read")
            };
            let mut embedded = read.clone();
            embedded.fields.push(orders_embed(Relationship::ToMany {
                outer: vec!["id".into()],
                inner: vec!["customer_id".into()],
            }));
            Plan {
                table: "customers".into(),
                action: Action::Read(embedded),
                returning: None,
            }
        };
        assert_ne!(fingerprint(&plain), fingerprint(&with_orders));
    }

    #[test]
    fn redaction_replaces_refused_keys_in_objects_and_arrays() {
        let keep = |key: &str| key != "ssn" && key != "salary";

        let mut object = json!({ "name": "ada", "ssn": "123-45-6789", "nested": { "ssn": "kept" } });
        redact_body(&mut object, &keep);
        assert_eq!(
            object,
            json!({ "name": "ada", "ssn": REDACTED, "nested": { "ssn": "kept" } })
        );

        let mut rows = json!([{ "name": "ada", "salary": 10 }, { "salary": null }, 42]);
        redact_body(&mut rows, &keep);
        assert_eq!(
            rows,
            json!([{ "name": "ada", "salary": REDACTED }, { "salary": REDACTED }, 42])
        );

        let mut scalar = json!("ssn");
        redact_body(&mut scalar, &keep);
        assert_eq!(scalar, json!("ssn"));
    }
}
