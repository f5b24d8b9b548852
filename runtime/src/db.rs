//! The database connection: pools per engine behind one type, so everything above it is
//! engine-agnostic except the SQL text, which [`crate::sql`] writes per dialect.
//!
//! Reads never get a connection that can write: [`Database`] holds a reader pool whose sessions
//! the engine itself keeps read-only (PostgreSQL `default_transaction_read_only`, MySQL
//! `SET SESSION TRANSACTION READ ONLY`, SQLite `PRAGMA query_only`), so a bug in the SQL builder
//! still cannot change data on a read path. Writes take a connection from the writer pool. Each
//! pool opens up to `pool.maxConnections`, lazily, so a read-only workload never opens a writer;
//! the reader pool opens one more, which health checks and schema loads use while every other
//! reader connection is parked (see [`Parking`]).

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sluice_crds::dataapi::{Engine, PoolSpec};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{AssertSqlSafe, Connection, Executor, MySql, Postgres, Row, Sqlite, Transaction, ValueRef};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::batch::{BatchCounters, Member, ReadBatches};
use crate::error::ApiError;
use crate::render;
use crate::rows::{Rows, RowsBuilder};
use crate::sql::{BindValue, Statement};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection URL does not parse.
    #[error("the {engine} connection URL is not valid: {source}")]
    InvalidUrl {
        /// The engine.
        engine: &'static str,
        /// The driver's reason.
        source: sqlx::Error,
    },
}

/// How long one request may wait on the database in all: a connection, then statements that
/// the engine cancels after `statementTimeoutMs`, plus a second for the round trips around them.
fn request_deadline(pool: &PoolSpec) -> Duration {
    Duration::from_millis(u64::from(pool.acquire_timeout_ms) + u64::from(pool.statement_timeout_ms) + 1_000)
}

/// The reader and writer pools of one database.
#[derive(Clone, Debug)]
pub struct Database {
    reader: Pool,
    writer: Pool,
    reads: Arc<Reads>,
    /// PostgreSQL's open read batches; the other engines read alone.
    batches: Option<Arc<ReadBatches>>,
    /// How long one request may wait on the database in all, see [`Database::within_deadline`].
    deadline: Duration,
}

/// The parked read connections of the reader pool, per engine.
#[derive(Debug)]
enum Reads {
    Postgres(Parking<Postgres>),
    Mysql(Parking<MySql>),
    Sqlite(Parking<Sqlite>),
}

/// How long a read connection may stay out of sqlx's pool: after that it goes back through the
/// pool's checks (a ping, the idle and lifetime limits) once, and may be taken out again.
const PARKING_LEASE: Duration = Duration::from_secs(60);

/// Read connections kept out of sqlx's pool between reads.
///
/// sqlx pings every connection that comes back to its pool, a round trip to the database in a
/// task of its own, and cannot be told not to: for a one-statement read that doubled the round
/// trips, and the database's CPU per request with them. A read that succeeded leaves its
/// connection idle and clean, so it is parked here and the next read takes it as it is. A
/// connection goes back to the pool after an error, when its read was cancelled (the future
/// dropped mid-statement), and at the first release after [`PARKING_LEASE`]. At most
/// `maxConnections` reads hold a connection at a time, so a read finding nothing parked always
/// finds room in the pool; the pool's one extra connection serves health checks and schema loads.
struct Parking<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    parked: Mutex<Vec<Parked<DB>>>,
    permits: Semaphore,
    acquire_timeout: Duration,
}

struct Parked<DB: sqlx::Database> {
    connection: PoolConnection<DB>,
    /// When the connection left the pool.
    taken: Instant,
}

/// A read connection in use, with the permit that let the read take it.
struct Lease<'a, DB: sqlx::Database> {
    connection: PoolConnection<DB>,
    taken: Instant,
    /// Taken from the parked ones, so it may have been closed by the server while it waited.
    was_parked: bool,
    parking: &'a Parking<DB>,
    _permit: SemaphorePermit<'a>,
}

impl<DB: sqlx::Database> std::fmt::Debug for Parking<DB> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Parking")
            .field("parked", &self.parked_count())
            .field("permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Parking<DB> {
    fn new(pool: sqlx::Pool<DB>, spec: &PoolSpec) -> Self {
        Self {
            pool,
            parked: Mutex::new(Vec::new()),
            permits: Semaphore::new(spec.max_connections as usize),
            acquire_timeout: Duration::from_millis(u64::from(spec.acquire_timeout_ms)),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Parked<DB>>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn parked_count(&self) -> usize {
        self.parked().len()
    }

    /// A connection for one read: the most recently parked one unless `fresh`, else one from
    /// the pool (which checks it first).
    async fn lease(&self, fresh: bool) -> Result<Lease<'_, DB>, ApiError> {
        let permit = match tokio::time::timeout(self.acquire_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(ApiError::from_database(sqlx::Error::PoolClosed)),
            Err(_) => return Err(ApiError::from_database(sqlx::Error::PoolTimedOut)),
        };
        if !fresh {
            // Connections whose lease is over go back to the pool as they are dropped here.
            loop {
                let next = self.parked().pop();
                let Some(parked) = next else { break };
                if parked.taken.elapsed() < PARKING_LEASE {
                    return Ok(Lease {
                        connection: parked.connection,
                        taken: parked.taken,
                        was_parked: true,
                        parking: self,
                        _permit: permit,
                    });
                }
            }
        }
        // Boxed: sqlx's acquire future holds the whole connect path (TLS, authentication) inline,
        // about 15 KB, which every read's future would otherwise carry and every layer above copy.
        let connection = Box::pin(self.pool.acquire()).await.map_err(ApiError::from_database)?;
        Ok(Lease {
            connection,
            taken: Instant::now(),
            was_parked: false,
            parking: self,
            _permit: permit,
        })
    }

    /// Hands every parked connection back to the pool, which checks each before reuse.
    fn unpark_all(&self) {
        let parked = std::mem::take(&mut *self.parked());
        drop(parked);
    }
}

impl<DB: sqlx::Database> Lease<'_, DB> {
    /// Parks the connection for the next read, or gives it back to the pool once its lease is over.
    fn park(self) {
        if self.taken.elapsed() < PARKING_LEASE {
            self.parking.parked().push(Parked {
                connection: self.connection,
                taken: self.taken,
            });
        }
    }
}

/// Whether `error` says the connection itself is gone (closed by the server or the network),
/// rather than that the statement failed: a read meeting it on a parked connection is retried once.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // PostgreSQL's admin_shutdown and crash_shutdown, sent just before it closes the socket.
        sqlx::Error::Database(error) => error.code().is_some_and(|code| matches!(&*code, "57P01" | "57P02")),
        _ => false,
    }
}

/// A connection pool to one of the supported engines.
#[derive(Clone, Debug)]
pub enum Pool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    Mysql(MySqlPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// An open transaction on any engine.
pub enum Tx {
    /// PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
    /// MySQL or MariaDB.
    Mysql(Transaction<'static, MySql>),
    /// SQLite.
    Sqlite(Transaction<'static, Sqlite>),
}

macro_rules! bind_all {
    ($query:expr, $binds:expr, $bind_one:expr) => {{
        let mut query = $query;
        for value in $binds {
            query = $bind_one(query, value);
        }
        query
    }};
}

fn bind_postgres<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    value: &'q BindValue,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    // Everything but bytes travels as text and is cast by the SQL to the column's own type, so
    // PostgreSQL parses it exactly (numerics keep every digit) and any column type works.
    match value {
        BindValue::Null => query.bind(None::<String>),
        BindValue::Bytes(bytes) => query.bind(bytes.clone()),
        other => query.bind(other.as_text()),
    }
}

fn bind_mysql<'q>(
    query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    value: &BindValue,
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    match value {
        BindValue::Null => query.bind(None::<String>),
        BindValue::Integer(number) => query.bind(*number),
        BindValue::Float(number) => query.bind(*number),
        BindValue::Boolean(flag) => query.bind(*flag),
        BindValue::Text(text) => query.bind(text.clone()),
        BindValue::Bytes(bytes) => query.bind(bytes.clone()),
    }
}

fn bind_sqlite<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    value: &BindValue,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    match value {
        BindValue::Null => query.bind(None::<String>),
        BindValue::Integer(number) => query.bind(*number),
        BindValue::Float(number) => query.bind(*number),
        BindValue::Boolean(flag) => query.bind(i64::from(*flag)),
        BindValue::Text(text) => query.bind(text.clone()),
        BindValue::Bytes(bytes) => query.bind(bytes.clone()),
    }
}

/// Each row's JSON text: the runtime renders it from the row's columns when the statement lists
/// its members, else the statement's first column holds it.
fn postgres_row_text(row: &PgRow, statement: &Statement) -> Result<Option<String>, sqlx::Error> {
    let Some(members) = &statement.members else {
        return first_text(row, statement);
    };
    render::row(members, member_values(row, members, 0)?)
        .map(Some)
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// The binary values of a row's `members`, in order from column `first`, `None` for NULL; an
/// error when the row has fewer columns than that.
fn member_values<'r>(
    row: &'r PgRow,
    members: &[render::Member],
    first: usize,
) -> Result<impl Iterator<Item = Option<&'r [u8]>>, sqlx::Error> {
    if row.len() < first + members.len() {
        return Err(sqlx::Error::ColumnIndexOutOfBounds {
            index: first + members.len() - 1,
            len: row.len(),
        });
    }
    // Every index is in bounds (checked above), and only NULL has no bytes: the values go to
    // the renderer as they are read, without a list per row.
    Ok((first..first + members.len()).map(|index| {
        row.try_get_raw(index)
            .ok()
            .filter(|value| !value.is_null())
            .and_then(|value| value.as_bytes().ok())
    }))
}

/// Appends the row's JSON text to `rows`, as [`postgres_row_text`] makes it, without a string of
/// its own.
fn postgres_row_into(rows: &mut RowsBuilder, row: &PgRow, statement: &Statement) -> Result<(), sqlx::Error> {
    let Some(members) = &statement.members else {
        return first_text_into(rows, row, statement);
    };
    push_members(rows, row, members, 0)
}

/// Renders the row's `members`, read from column `first` on, into `rows`.
fn push_members(
    rows: &mut RowsBuilder,
    row: &PgRow,
    members: &[render::Member],
    first: usize,
) -> Result<(), sqlx::Error> {
    let values = member_values(row, members, first)?;
    rows.push_rendered(|out| render::row_into(out, members, values))
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// Appends the row's first column, its JSON text on engines that render rows themselves, to `rows`.
fn first_text_into<R: Row>(rows: &mut RowsBuilder, row: &R, _: &Statement) -> Result<(), sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<&'r str>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if let Some(text) = row.try_get::<Option<&str>, _>(0)? {
        rows.push(text);
    }
    Ok(())
}

/// The row's first column, which holds its JSON text on engines that render rows themselves.
fn first_text<R: Row>(row: &R, _: &Statement) -> Result<Option<String>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get(0)
}

macro_rules! fetch_strings_on {
    ($executor:expr, $statement:expr, $bind:ident, $row_text:expr) => {{
        let query = bind_all!(
            sqlx::query(AssertSqlSafe($statement.text.clone())),
            &$statement.binds,
            $bind
        );
        let mut rows = query.fetch($executor);
        let mut values = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(ApiError::from_database)? {
            values.push($row_text(&row, $statement).map_err(ApiError::from_database)?);
        }
        Ok(values)
    }};
}

/// Runs the read `$text` with `$binds` on a parked connection, or on a fresh one from the pool
/// once when the parked one turns out to be closed: `$collect` starts what the rows are gathered
/// into, `$add` adds each.
macro_rules! fetch_parked {
    ($parking:expr, $text:expr, $binds:expr, $bind:expr, $statement:expr, $collect:expr, $add:expr) => {{
        let mut fresh = false;
        loop {
            let mut lease = $parking.lease(fresh).await?;
            let query = bind_all!(sqlx::query(AssertSqlSafe($text.clone())), $binds, $bind);
            let fetched: Result<_, sqlx::Error> = async {
                let mut rows = query.fetch(&mut *lease.connection);
                let mut values = $collect;
                while let Some(row) = rows.try_next().await? {
                    $add(&mut values, &row, $statement)?;
                }
                Ok(values)
            }
            .await;
            match fetched {
                Ok(values) => {
                    lease.park();
                    break Ok(values);
                }
                Err(error) if lease.was_parked && !fresh && connection_lost(&error) => {
                    tracing::info!(%error, "a parked read connection was closed; retrying on a fresh one");
                    // The others most likely went with it (a server restart): let the pool check them.
                    $parking.unpark_all();
                    fresh = true;
                }
                Err(error) => break Err(ApiError::from_database(error)),
            }
        }
    }};
}

/// Adds each row's text, as `$row_text` makes it, to a list.
macro_rules! push_text {
    ($row_text:expr) => {
        |values: &mut Vec<Option<String>>, row, statement| -> Result<(), sqlx::Error> {
            values.push($row_text(row, statement)?);
            Ok(())
        }
    };
}

/// Most rows a read's buffer makes room for before the first arrives, whatever its limit.
const ROWS_SIZED_AHEAD: usize = 256;
/// Bytes made room for per expected row: a row of a few short columns fits without growing.
const ROW_BYTES_AHEAD: usize = 128;

macro_rules! execute_on {
    ($executor:expr, $statement:expr, $bind:ident) => {{
        let query = bind_all!(
            sqlx::query(AssertSqlSafe($statement.text.clone())),
            &$statement.binds,
            $bind
        );
        Ok(query
            .execute($executor)
            .await
            .map_err(ApiError::from_database)?
            .rows_affected())
    }};
}

/// A buffer for the rows of a read that expects `expected` rows at most.
fn rows_for(expected: u64) -> RowsBuilder {
    let expected = usize::try_from(expected).unwrap_or(usize::MAX).min(ROWS_SIZED_AHEAD);
    RowsBuilder::with_capacity(expected, expected.saturating_mul(ROW_BYTES_AHEAD))
}

fn finish_rows(built: RowsBuilder) -> Result<Rows, ApiError> {
    built
        .finish()
        .map_err(|_| ApiError::from_database(sqlx::Error::Decode(Box::new(render::RenderError::NotUtf8))))
}

fn bind_text_array<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    array: &'q Vec<Option<String>>,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query.bind(array)
}

/// Appends a batched read's row to its member's rows: the row's first column is the member's
/// 1-based number, the rest are `statement`'s members.
fn batched_row_into(pages: &mut [RowsBuilder], row: &PgRow, statement: &Statement) -> Result<(), sqlx::Error> {
    let number: i64 = row.try_get(0)?;
    let page = usize::try_from(number)
        .ok()
        .and_then(|number| number.checked_sub(1))
        .and_then(|index| pages.get_mut(index))
        .ok_or_else(|| sqlx::Error::Protocol(format!("a batched read returned a row of member {number}")))?;
    push_members(page, row, statement.members.as_deref().unwrap_or_default(), 1)
}

impl Database {
    /// Opens the reader and writer pools. Connections are made lazily, so a database that is
    /// down at start only delays readiness instead of failing the process.
    pub fn connect(engine: Engine, url: &str, pool: &PoolSpec) -> Result<Self, ConnectError> {
        let reader = Pool::connect(engine, url, pool, Access::ReadOnly)?;
        let reads = match &reader {
            Pool::Postgres(reader) => Reads::Postgres(Parking::new(reader.clone(), pool)),
            Pool::Mysql(reader) => Reads::Mysql(Parking::new(reader.clone(), pool)),
            Pool::Sqlite(reader) => Reads::Sqlite(Parking::new(reader.clone(), pool)),
        };
        Ok(Self {
            reader,
            writer: Pool::connect(engine, url, pool, Access::ReadWrite)?,
            reads: Arc::new(reads),
            batches: (engine == Engine::Postgres)
                .then(|| Arc::new(ReadBatches::new(Duration::from_millis(u64::from(pool.read_batch_ms))))),
            deadline: request_deadline(pool),
        })
    }

    /// Runs one request's database work, giving up once the database has not answered within
    /// the request's deadline: the wait for a connection, one statement's timeout and a second
    /// of slack. The engine's own statement timeout cancels a slow statement; this bounds what
    /// it cannot, a database that stopped answering at all (frozen, or a network that drops
    /// packets). Dropping the work closes whatever connection it held rather than reusing it.
    pub async fn within_deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.deadline, work).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    deadline_ms = self.deadline.as_millis() as u64,
                    "the database did not answer within the request's deadline; the request was cancelled"
                );
                Err(ApiError::DatabaseTimeout {
                    deadline_ms: self.deadline.as_millis() as u64,
                })
            }
        }
    }

    /// The SQLite URL for a file path.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// The engine behind the pools.
    pub fn engine(&self) -> Engine {
        match self.reader {
            Pool::Postgres(_) => Engine::Postgres,
            Pool::Mysql(_) => Engine::Mysql,
            Pool::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// The read-only pool, for reads that are not SQL statements of ours (introspection).
    pub fn reader(&self) -> &Pool {
        &self.reader
    }

    /// The read-write pool, for writes that are not SQL statements of ours (named queries).
    pub fn writer(&self) -> &Pool {
        &self.writer
    }

    /// Answers when the database accepts a trivial query.
    pub async fn ping(&self) -> bool {
        let result = match &self.reader {
            Pool::Postgres(pool) => pool.execute("SELECT 1").await.map(|_| ()),
            Pool::Mysql(pool) => pool.execute("SELECT 1").await.map(|_| ()),
            Pool::Sqlite(pool) => pool.execute("SELECT 1").await.map(|_| ()),
        };
        result.is_ok()
    }

    /// Runs the read `statement` on a read-only connection and returns its first column, as
    /// text, for every row.
    pub async fn fetch_strings(&self, statement: &Statement) -> Result<Vec<Option<String>>, ApiError> {
        match &*self.reads {
            Reads::Postgres(parking) => {
                fetch_parked!(
                    parking,
                    statement.text,
                    &statement.binds,
                    bind_postgres,
                    statement,
                    Vec::new(),
                    push_text!(postgres_row_text)
                )
            }
            Reads::Mysql(parking) => fetch_parked!(
                parking,
                statement.text,
                &statement.binds,
                bind_mysql,
                statement,
                Vec::new(),
                push_text!(first_text)
            ),
            Reads::Sqlite(parking) => {
                fetch_parked!(
                    parking,
                    statement.text,
                    &statement.binds,
                    bind_sqlite,
                    statement,
                    Vec::new(),
                    push_text!(first_text)
                )
            }
        }
    }

    /// Runs the read `statement` on a read-only connection and gathers the JSON object text of
    /// each row (rows whose text is NULL are left out) into one buffer; `expected` rows at most
    /// are expected, which sizes it. On PostgreSQL, reads of the same text that arrive together
    /// share one statement ([`crate::batch`]).
    pub async fn fetch_rows(&self, statement: &Statement, expected: u64) -> Result<Rows, ApiError> {
        match &self.batches {
            // Bytes travel as bytea, not text, so they cannot go into a batch's text arrays; a
            // read without parameters has nothing that differs between members.
            Some(batches)
                if statement.members.is_some()
                    && !statement.binds.is_empty()
                    && !statement.binds.iter().any(|value| matches!(value, BindValue::Bytes(_))) =>
            {
                batches.read(self, statement, expected).await
            }
            _ => self.fetch_rows_alone(statement, &statement.binds, expected).await,
        }
    }

    /// [`Database::fetch_rows`] for one read, `statement`'s text with `binds`, on its own.
    pub(crate) async fn fetch_rows_alone(
        &self,
        statement: &Statement,
        binds: &[BindValue],
        expected: u64,
    ) -> Result<Rows, ApiError> {
        let built = match &*self.reads {
            Reads::Postgres(parking) => fetch_parked!(
                parking,
                statement.text,
                binds,
                bind_postgres,
                statement,
                rows_for(expected),
                postgres_row_into
            ),
            Reads::Mysql(parking) => fetch_parked!(
                parking,
                statement.text,
                binds,
                bind_mysql,
                statement,
                rows_for(expected),
                first_text_into
            ),
            Reads::Sqlite(parking) => fetch_parked!(
                parking,
                statement.text,
                binds,
                bind_sqlite,
                statement,
                rows_for(expected),
                first_text_into
            ),
        }?;
        finish_rows(built)
    }

    /// Runs `batched`, the PostgreSQL read `statement` rewritten by [`crate::sql::batched_select`],
    /// once for all `members`, and returns each member's rows in the members' order.
    pub(crate) async fn fetch_rows_batched(
        &self,
        statement: &Statement,
        batched: &str,
        members: &[Member],
    ) -> Result<Vec<Rows>, ApiError> {
        let Reads::Postgres(parking) = &*self.reads else {
            return Err(ApiError::Internal);
        };
        // One text array per parameter, holding every member's value of it.
        let arrays: Vec<Vec<Option<String>>> = (0..statement.binds.len())
            .map(|index| {
                members
                    .iter()
                    .map(|member| {
                        member
                            .binds
                            .get(index)
                            .and_then(BindValue::as_text)
                            .map(Cow::into_owned)
                    })
                    .collect()
            })
            .collect();
        let pages = fetch_parked!(
            parking,
            batched,
            &arrays,
            bind_text_array,
            statement,
            members
                .iter()
                .map(|member| rows_for(member.expected))
                .collect::<Vec<_>>(),
            batched_row_into
        )?;
        pages.into_iter().map(finish_rows).collect()
    }

    /// Runs a `SELECT COUNT(*)`-shaped statement on a read-only connection.
    pub async fn fetch_count(&self, statement: &Statement) -> Result<i64, ApiError> {
        parse_count(self.fetch_strings(statement).await?)
    }

    /// Runs the write `statement` on a read-write connection outside any transaction of ours, so
    /// the database commits it as it completes (autocommit), and returns its first column, as
    /// text, for every row. For a write that is one statement with nothing to check after it: a
    /// single statement is atomic on every engine, however many rows it writes.
    pub async fn write_strings(&self, statement: &Statement) -> Result<Vec<Option<String>>, ApiError> {
        match &self.writer {
            Pool::Postgres(pool) => fetch_strings_on!(pool, statement, bind_postgres, postgres_row_text),
            Pool::Mysql(pool) => fetch_strings_on!(pool, statement, bind_mysql, first_text),
            Pool::Sqlite(pool) => fetch_strings_on!(pool, statement, bind_sqlite, first_text),
        }
    }

    /// Runs the write `statement` as [`Database::write_strings`] does and returns the number of
    /// rows it changed.
    pub async fn write_execute(&self, statement: &Statement) -> Result<u64, ApiError> {
        match &self.writer {
            Pool::Postgres(pool) => execute_on!(pool, statement, bind_postgres),
            Pool::Mysql(pool) => execute_on!(pool, statement, bind_mysql),
            Pool::Sqlite(pool) => execute_on!(pool, statement, bind_sqlite),
        }
    }

    /// Starts a read-write transaction.
    pub async fn begin(&self) -> Result<Tx, ApiError> {
        Ok(match &self.writer {
            // Boxed for the reason `Parking::lease` boxes its acquire.
            Pool::Postgres(pool) => Tx::Postgres(Box::pin(pool.begin()).await.map_err(ApiError::from_database)?),
            Pool::Mysql(pool) => Tx::Mysql(Box::pin(pool.begin()).await.map_err(ApiError::from_database)?),
            // IMMEDIATE takes the write lock at BEGIN, waiting (up to the busy timeout) for another
            // writer to finish. A deferred transaction takes it at its first write, after its
            // reads: SQLite refuses that upgrade at once, without waiting, while another
            // connection (a second process on the file, or a rollback still in flight) holds it.
            Pool::Sqlite(pool) => Tx::Sqlite(
                Box::pin(pool.begin_with("BEGIN IMMEDIATE"))
                    .await
                    .map_err(ApiError::from_database)?,
            ),
        })
    }

    /// Runs a script of statements without parameters (seeding a sample database).
    pub async fn run_script(&self, script: &str) -> Result<(), sqlx::Error> {
        let script = AssertSqlSafe(script.to_owned());
        match &self.writer {
            Pool::Postgres(pool) => sqlx::raw_sql(script).execute(pool).await.map(|_| ()),
            Pool::Mysql(pool) => sqlx::raw_sql(script).execute(pool).await.map(|_| ()),
            Pool::Sqlite(pool) => sqlx::raw_sql(script).execute(pool).await.map(|_| ()),
        }
    }

    /// The counters of reads that shared a statement; `None` where reads are never batched.
    pub fn read_batch_counters(&self) -> Option<&BatchCounters> {
        self.batches.as_deref().map(ReadBatches::counters)
    }

    /// Connections open and idle, over both pools, and the most both may open.
    pub fn pool_usage(&self) -> PoolUsage {
        let mut usage = PoolUsage::default();
        for pool in [&self.reader, &self.writer] {
            let (size, idle, max) = match pool {
                Pool::Postgres(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
                Pool::Mysql(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
                Pool::Sqlite(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
            };
            usage.open += u64::from(size);
            usage.idle += idle as u64;
            usage.max += u64::from(max);
        }
        // Parked connections are idle too, though sqlx counts them as taken.
        usage.idle += match &*self.reads {
            Reads::Postgres(parking) => parking.parked_count(),
            Reads::Mysql(parking) => parking.parked_count(),
            Reads::Sqlite(parking) => parking.parked_count(),
        } as u64;
        usage
    }
}

/// Connection counts of a [`Database`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections open.
    pub open: u64,
    /// Open connections not in use.
    pub idle: u64,
    /// Most connections the pools may open.
    pub max: u64,
}

fn parse_count(values: Vec<Option<String>>) -> Result<i64, ApiError> {
    let first = values.into_iter().next().flatten().unwrap_or_default();
    first.parse().map_err(|_| {
        tracing::error!(value = %first, "count query returned a non-number");
        ApiError::Internal
    })
}

/// Whether a pool's sessions may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

/// How long a writer connection may have been idle in the pool and still be handed out unchecked.
const WRITER_UNCHECKED_IDLE: Duration = Duration::from_secs(1);

/// Pool sizes and timeouts, and for a writer pool when a connection is checked before a write.
///
/// sqlx pings every connection as it goes back to its pool, and by default again before handing
/// it out. Under load a writer connection waits in the pool for microseconds between the two, so
/// the second ping is a round trip on the next write's path that learns nothing new; a writer
/// connection that sat idle longer may have been closed by the server meanwhile, and a failed write
/// cannot simply be retried as a read is, so that one is still pinged first. Readers are left to
/// [`Parking`].
fn pool_options<DB: sqlx::Database>(
    access: Access,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
) -> PoolOptions<DB> {
    let options = PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .min_connections(min_connections)
        .acquire_timeout(acquire_timeout);
    if access == Access::ReadOnly {
        return options;
    }
    options
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= WRITER_UNCHECKED_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

impl Pool {
    fn connect(engine: Engine, url: &str, pool: &PoolSpec, access: Access) -> Result<Self, ConnectError> {
        let acquire = Duration::from_millis(u64::from(pool.acquire_timeout_ms));
        let statement_timeout_ms = pool.statement_timeout_ms;
        let read_only = access == Access::ReadOnly;
        // The writer opens connections only when a write needs one.
        let min_connections = if read_only { pool.min_connections } else { 0 };
        // Reads hold at most `max_connections` (see `Parking`); the reader's extra one is for
        // health checks and schema loads. SQLite lets one connection write at a time: a second
        // writer connection only waits inside the database for the first one's lock, sleeping in
        // SQLite's busy handler, where one connection queues writes in the pool instead.
        let max_connections = match access {
            Access::ReadOnly => pool.max_connections.saturating_add(1),
            Access::ReadWrite if engine == Engine::Sqlite => 1,
            Access::ReadWrite => pool.max_connections,
        };
        let invalid = |source| ConnectError::InvalidUrl {
            engine: engine.as_str(),
            source,
        };
        Ok(match engine {
            Engine::Postgres => {
                let options = PgConnectOptions::from_str(url).map_err(invalid)?.options([
                    ("statement_timeout", statement_timeout_ms.to_string()),
                    ("TimeZone", "UTC".to_owned()),
                    // Plan each statement once per connection. Under `auto`, a role's row-filter
                    // value, bound like every value, made PostgreSQL's generic plan look costlier
                    // than a custom one, so it planned the list query again on every execution.
                    ("plan_cache_mode", "force_generic_plan".to_owned()),
                    (
                        "default_transaction_read_only",
                        if read_only { "on" } else { "off" }.to_owned(),
                    ),
                ]);
                Pool::Postgres(
                    pool_options(access, max_connections, min_connections, acquire).connect_lazy_with(options),
                )
            }
            Engine::Mysql => {
                let options = MySqlConnectOptions::from_str(url)
                    .map_err(invalid)?
                    .timezone(Some("+00:00".to_owned()));
                Pool::Mysql(
                    pool_options::<MySql>(access, max_connections, min_connections, acquire)
                        .after_connect(move |connection, _| {
                            Box::pin(async move {
                                // MariaDB names it max_statement_time (seconds); MySQL max_execution_time (ms).
                                let mariadb = format!(
                                    "SET SESSION max_statement_time = {}",
                                    f64::from(statement_timeout_ms) / 1000.0
                                );
                                if connection.execute(AssertSqlSafe(mariadb)).await.is_err() {
                                    let mysql = format!("SET SESSION max_execution_time = {statement_timeout_ms}");
                                    connection.execute(AssertSqlSafe(mysql)).await?;
                                }
                                if read_only {
                                    connection.execute("SET SESSION TRANSACTION READ ONLY").await?;
                                }
                                Ok(())
                            })
                        })
                        .connect_lazy_with(options),
                )
            }
            Engine::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(invalid)?
                    .foreign_keys(true)
                    // SQLite cannot cancel a running statement; waiting on a lock is bounded instead.
                    .busy_timeout(Duration::from_millis(u64::from(statement_timeout_ms)))
                    // PostgREST's `like` is case-sensitive; SQLite's is not unless told.
                    .pragma("case_sensitive_like", "ON")
                    .pragma("query_only", if read_only { "ON" } else { "OFF" });
                Pool::Sqlite(pool_options(access, max_connections, min_connections, acquire).connect_lazy_with(options))
            }
        })
    }
}

impl Tx {
    /// Runs `statement` and returns its first column, as text, for every row.
    pub async fn fetch_strings(&mut self, statement: &Statement) -> Result<Vec<Option<String>>, ApiError> {
        match self {
            Tx::Postgres(tx) => fetch_strings_on!(&mut **tx, statement, bind_postgres, postgres_row_text),
            Tx::Mysql(tx) => fetch_strings_on!(&mut **tx, statement, bind_mysql, first_text),
            Tx::Sqlite(tx) => fetch_strings_on!(&mut **tx, statement, bind_sqlite, first_text),
        }
    }

    /// Runs a `SELECT COUNT(*)`-shaped statement.
    pub async fn fetch_count(&mut self, statement: &Statement) -> Result<i64, ApiError> {
        parse_count(self.fetch_strings(statement).await?)
    }

    /// Runs `statement` and returns the number of rows it changed.
    pub async fn execute(&mut self, statement: &Statement) -> Result<u64, ApiError> {
        match self {
            Tx::Postgres(tx) => execute_on!(&mut **tx, statement, bind_postgres),
            Tx::Mysql(tx) => execute_on!(&mut **tx, statement, bind_mysql),
            Tx::Sqlite(tx) => execute_on!(&mut **tx, statement, bind_sqlite),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), ApiError> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Mysql(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
        .map_err(ApiError::from_database)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::join_all;

    use super::*;
    use crate::batch::MOST_READS_PER_STATEMENT;

    fn read(text: &str) -> Statement {
        Statement {
            text: text.to_owned(),
            binds: Vec::new(),
            members: None,
        }
    }

    /// sqlx's acquire and begin futures carry the connect path inline (14.5 KB for PostgreSQL,
    /// 17.9 KB for MySQL); a read or a begin that awaited them directly was that large, and every
    /// layer between the listener and the statement copied it once per request.
    #[tokio::test]
    async fn a_statement_future_does_not_carry_the_connect_path() {
        let urls = [
            (Engine::Postgres, "postgres://sluice@127.0.0.1:1/sluice"),
            (Engine::Mysql, "mysql://sluice@127.0.0.1:1/sluice"),
            (Engine::Sqlite, "sqlite::memory:"),
        ];
        for (engine, url) in urls {
            let database = Database::connect(engine, url, &PoolSpec::default()).expect("a lazy pool");
            let statement = read("SELECT 1");
            let sizes = [
                std::mem::size_of_val(&database.fetch_strings(&statement)),
                std::mem::size_of_val(&database.write_strings(&statement)),
                std::mem::size_of_val(&database.write_execute(&statement)),
                std::mem::size_of_val(&database.begin()),
            ];
            assert!(
                sizes.iter().all(|&size| size <= 1024),
                "{engine:?}: futures of fetch_strings, write_strings, write_execute, begin are {sizes:?} bytes"
            );
        }
    }

    #[tokio::test]
    async fn reads_park_their_connection_and_take_it_again() {
        let spec = PoolSpec {
            max_connections: 2,
            ..PoolSpec::default()
        };
        let database = Database::connect(Engine::Sqlite, "sqlite::memory:", &spec).expect("sqlite opens");
        let first = database.fetch_strings(&read("SELECT 'one'")).await.expect("first read");
        assert_eq!(first, [Some("one".to_owned())]);
        let usage = database.pool_usage();
        assert_eq!(
            (usage.open, usage.idle),
            (1, 1),
            "the connection is parked, idle: {usage:?}"
        );
        database
            .fetch_strings(&read("SELECT 'two'"))
            .await
            .expect("second read");
        assert_eq!(
            database.pool_usage().open,
            1,
            "the second read reused the parked connection"
        );
    }

    /// A SQLite database file of its own, with one table `t (id, n)` holding row 1.
    async fn sqlite_file(name: &str, spec: &PoolSpec) -> (Database, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("sluice-{name}-{}.db", std::process::id()));
        for leftover in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{leftover}", path.display()));
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let database = Database::connect(Engine::Sqlite, &url, spec).expect("sqlite opens");
        database
            .run_script("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO t VALUES (1, 0);")
            .await
            .expect("schema");
        (database, path)
    }

    /// What a guarded update does: read the keys, then write, in one transaction.
    async fn read_then_write(database: &Database) -> Result<(), ApiError> {
        let mut tx = database.begin().await?;
        tx.fetch_strings(&read("SELECT CAST(id AS TEXT) FROM t WHERE id = 1"))
            .await?;
        tx.execute(&read("UPDATE t SET n = n + 1 WHERE id = 1")).await?;
        tx.commit().await
    }

    /// A transaction that read before writing used to fail at its write, without waiting, while
    /// another connection to the file held the write lock: SQLite refuses that upgrade at once.
    #[tokio::test]
    async fn a_sqlite_transaction_waits_for_another_writer_on_the_file() {
        let (database, path) = sqlite_file("other-writer", &PoolSpec::default()).await;
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("a second connection");
        other.execute("BEGIN IMMEDIATE").await.expect("the other writer's lock");
        other
            .execute("UPDATE t SET n = 100 WHERE id = 1")
            .await
            .expect("the other writer's update");
        let waiting = tokio::spawn(async move {
            let outcome = read_then_write(&database).await;
            (outcome, database)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the transaction waits for the lock");
        other.execute("COMMIT").await.expect("the other writer commits");
        let (outcome, database) = waiting.await.expect("no panic");
        outcome.expect("the transaction ran once the lock was free");
        let n = database
            .fetch_strings(&read("SELECT CAST(n AS TEXT) FROM t WHERE id = 1"))
            .await
            .expect("read");
        assert_eq!(n, [Some("101".to_owned())], "both writes applied, in turn");
        let _ = std::fs::remove_file(path);
    }

    /// Concurrent transactions of one runtime queue for the one writer connection; each sees the
    /// previous one's write.
    #[tokio::test]
    async fn concurrent_sqlite_transactions_take_turns_on_one_writer_connection() {
        let spec = PoolSpec {
            max_connections: 8,
            ..PoolSpec::default()
        };
        let (database, path) = sqlite_file("turns", &spec).await;
        let database = Arc::new(database);
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let database = Arc::clone(&database);
                tokio::spawn(async move { read_then_write(&database).await })
            })
            .collect();
        for writer in writers {
            writer.await.expect("no panic").expect("every transaction commits");
        }
        let n = database
            .fetch_strings(&read("SELECT CAST(n AS TEXT) FROM t WHERE id = 1"))
            .await
            .expect("read");
        assert_eq!(n, [Some("16".to_owned())]);
        let Pool::Sqlite(writer) = database.writer() else {
            unreachable!("a SQLite database")
        };
        assert_eq!(writer.size(), 1, "one writer connection");
        let _ = std::fs::remove_file(path);
    }

    /// A PostgreSQL database of one connection, so the next statement meets the closed one.
    fn one_connection(url: &str) -> Database {
        let spec = PoolSpec {
            max_connections: 1,
            ..PoolSpec::default()
        };
        Database::connect(Engine::Postgres, url, &spec).expect("valid URL")
    }

    /// Closes, from the server's side, the connection whose backend pid `pid` holds.
    fn terminate(pid: &[Option<String>]) -> Statement {
        read(&format!(
            "SELECT pg_terminate_backend({})::text",
            pid[0].as_deref().expect("a pid")
        ))
    }

    /// Needs the test PostgreSQL (`source scripts/services.sh`); skipped without it.
    #[tokio::test]
    async fn a_read_on_a_parked_connection_the_server_closed_is_retried_on_a_fresh_one() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
            eprintln!("SLUICE_TEST_POSTGRES_URL is not set; skipped");
            return;
        };
        let database = one_connection(&url);
        let backend = read("SELECT pg_backend_pid()::text");
        let parked = database.fetch_strings(&backend).await.expect("first read");
        let terminated = terminate(&parked);
        assert_eq!(
            database
                .begin()
                .await
                .expect("writer")
                .fetch_strings(&terminated)
                .await
                .expect("terminate"),
            [Some("true".to_owned())]
        );
        let again = database.fetch_strings(&backend).await.expect("the read is retried");
        assert_ne!(again, parked, "the retry ran on another connection");
    }

    /// Needs the test PostgreSQL (`source scripts/services.sh`); skipped without it.
    #[tokio::test]
    async fn values_the_runtime_renders_match_what_to_json_writes() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
            eprintln!("SLUICE_TEST_POSTGRES_URL is not set; skipped");
            return;
        };
        let database = one_connection(&url);
        let cases: &[(&str, render::Encoding, &[&str])] = &[
            ("int2", render::Encoding::Integer, &["-32768", "0", "32767"]),
            ("int4", render::Encoding::Integer, &["-2147483648", "42"]),
            (
                "int8",
                render::Encoding::Integer,
                &["-9223372036854775808", "9223372036854775807"],
            ),
            ("bool", render::Encoding::Boolean, &["true", "false"]),
            (
                "numeric",
                render::Encoding::Decimal,
                &[
                    "0",
                    "-0.00",
                    "123.4500",
                    "-12.5",
                    "1e-20",
                    "100000000000000000000.5",
                    "9999.9999",
                    "10000",
                    "0.0001",
                    "-0.1",
                    "12345678.9",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                ],
            ),
            (
                "numeric(12,2)",
                render::Encoding::Decimal,
                &["0", "1.5", "-1234567890.99"],
            ),
            (
                "text",
                render::Encoding::Text,
                &[
                    "",
                    "plain",
                    r#"a"b\\c/d"#,
                    r"tab\tnew\nline\rret\bback\fform",
                    r"\u0001\u001f\u007f é 日本 😀",
                ],
            ),
            ("varchar(10)", render::Encoding::Text, &["short"]),
            ("char(5)", render::Encoding::Text, &["ab"]),
            ("name", render::Encoding::Text, &["pg_class"]),
            (
                "timestamptz",
                render::Encoding::TimestampTz,
                &[
                    "2024-01-02 03:04:05.12+00",
                    "2024-02-29 23:59:59.999999+00",
                    "2000-01-01 00:00:00+00",
                    "1999-12-31 23:59:59.5+00",
                    "1900-03-01 12:00:00+00",
                    "0044-03-15 12:00:01.5+00 BC",
                    "0001-01-01 00:00:00+00 BC",
                    "12345-06-07 08:09:10+00",
                    "infinity",
                    "-infinity",
                ],
            ),
            (
                "timestamp",
                render::Encoding::Timestamp,
                &[
                    "2024-01-02 03:04:05.000001",
                    "1970-01-01 00:00:00",
                    "0100-02-28 01:02:03 BC",
                    "infinity",
                ],
            ),
            (
                "date",
                render::Encoding::Date,
                &[
                    "2024-02-29",
                    "2000-03-01",
                    "1600-02-29",
                    "0001-01-01",
                    "0001-12-31 BC",
                    "4713-01-01 BC",
                    "5874897-12-31",
                    "-infinity",
                ],
            ),
            (
                "uuid",
                render::Encoding::Uuid,
                &[
                    "00000000-0000-0000-0000-000000000000",
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                ],
            ),
        ];
        for (sql_type, encoding, literals) in cases {
            for literal in *literals {
                let value = format!("(SELECT CAST(E'{literal}' AS {sql_type}) AS v) AS t");
                let expected = database
                    .fetch_strings(&read(&format!("SELECT to_json(v)::text FROM {value}")))
                    .await
                    .expect("to_json");
                let rendered = Statement {
                    members: Some(vec![render::Member::new("v", *encoding)]),
                    ..read(&format!("SELECT v FROM {value}"))
                };
                let rendered = database.fetch_strings(&rendered).await.expect("rendered here");
                let expected = format!("{{\"v\":{}}}", expected[0].as_deref().expect("not null"));
                assert_eq!(rendered, [Some(expected)], "{sql_type} {literal}");
            }
        }
        let null = Statement {
            members: Some(vec![render::Member::new("v", render::Encoding::Decimal)]),
            ..read("SELECT NULL::numeric")
        };
        assert_eq!(
            database.fetch_strings(&null).await.expect("null"),
            [Some("{\"v\":null}".to_owned())]
        );
    }

    /// Needs the test PostgreSQL (`source scripts/services.sh`); skipped without it.
    #[tokio::test]
    async fn a_writer_connection_idle_long_enough_is_checked_before_the_next_write() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
            eprintln!("SLUICE_TEST_POSTGRES_URL is not set; skipped");
            return;
        };
        let database = one_connection(&url);
        let backend = read("SELECT pg_backend_pid()::text");
        let writer = database.write_strings(&backend).await.expect("first write");
        let terminated = terminate(&writer);
        assert_eq!(
            database.fetch_strings(&terminated).await.expect("terminate"),
            [Some("true".to_owned())]
        );
        tokio::time::sleep(WRITER_UNCHECKED_IDLE + Duration::from_millis(100)).await;
        let again = database
            .write_strings(&backend)
            .await
            .expect("the closed connection is found out before the write");
        assert_ne!(again, writer, "the write ran on another connection");
    }

    /// A read of `VALUES` rows from `$1` (an `int4`) down, at most two, and only named ones
    /// unless `$2`: a shape whose members differ in their rows, their order and their limit.
    fn values_read(from: &str, unnamed_too: bool) -> Statement {
        Statement {
            text: "SELECT \"v\".\"id\", \"v\".\"name\" \
                   FROM (VALUES (1, 'one'), (2, 'two'), (3, NULL), (4, 'four')) AS \"v\"(\"id\", \"name\") \
                   WHERE \"v\".\"id\" <= CAST($1 AS \"pg_catalog\".\"int4\") \
                   AND (\"v\".\"name\" IS NOT NULL OR CAST($2 AS \"pg_catalog\".\"bool\")) \
                   ORDER BY \"v\".\"id\" DESC LIMIT 2"
                .to_owned(),
            binds: vec![BindValue::Text(from.to_owned()), BindValue::Boolean(unnamed_too)],
            members: Some(vec![
                render::Member::new("id", render::Encoding::Integer),
                render::Member::new("name", render::Encoding::Text),
            ]),
        }
    }

    /// A PostgreSQL database of `max_connections` read connections whose batches take at most
    /// `read_batch_ms`, with its batch counters; `None`, and the test skipped, without one.
    fn batching_postgres(max_connections: u32, read_batch_ms: u32) -> Option<(Database, BatchCounters)> {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
            eprintln!("SLUICE_TEST_POSTGRES_URL is not set; skipped");
            return None;
        };
        let spec = PoolSpec {
            max_connections,
            read_batch_ms,
            ..PoolSpec::default()
        };
        let database = Database::connect(Engine::Postgres, &url, &spec).expect("valid URL");
        let counters = database
            .read_batch_counters()
            .expect("PostgreSQL batches reads")
            .clone();
        Some((database, counters))
    }

    fn outcome(result: Result<Rows, ApiError>) -> String {
        match result {
            Ok(rows) => rows.into_json_array(),
            Err(error) => format!("error: {error}"),
        }
    }

    #[tokio::test]
    async fn reads_that_arrive_together_share_a_statement_and_each_gets_what_it_would_alone() {
        let Some((database, counters)) = batching_postgres(1, 1000) else {
            return;
        };
        let mut reads: Vec<Statement> = ["0", "1", "2", "3", "4", "9"]
            .into_iter()
            .flat_map(|from| [values_read(from, false), values_read(from, true)])
            .collect();
        let mut alone = Vec::new();
        for read in &reads {
            alone.push(outcome(database.fetch_rows_alone(read, &read.binds, 2).await));
        }
        assert_eq!(alone[7], r#"[{"id":3,"name":null},{"id":2,"name":"two"}]"#);
        assert_eq!(alone[6], r#"[{"id":2,"name":"two"},{"id":1,"name":"one"}]"#);
        assert_eq!(alone[0], "[]");
        // The first read of a shape runs alone and times it; from then on reads share.
        assert_eq!(outcome(database.fetch_rows(&reads[7], 2).await), alone[7]);

        let together = join_all(reads.iter().map(|read| database.fetch_rows(read, 2))).await;
        let together: Vec<String> = together.into_iter().map(outcome).collect();
        assert_eq!(together, alone);
        assert_eq!(
            (counters.statements.get(), counters.reads.get()),
            (1, reads.len() as u64)
        );

        // A value PostgreSQL refuses fails the shared statement: every read then runs alone, and
        // only the one that sent it gets the error.
        reads.push(values_read("99999999999", false));
        alone.push(outcome(
            database.fetch_rows_alone(&reads[12], &reads[12].binds, 2).await,
        ));
        assert!(alone[12].starts_with("error: "), "{}", alone[12]);
        let together = join_all(reads.iter().map(|read| database.fetch_rows(read, 2))).await;
        let together: Vec<String> = together.into_iter().map(outcome).collect();
        assert_eq!(together, alone);
        assert_eq!(counters.statements.get(), 1, "the failed statement is not counted");
    }

    #[tokio::test]
    async fn a_full_batch_leaves_later_reads_to_go_alone() {
        let Some((database, counters)) = batching_postgres(1, 1000) else {
            return;
        };
        let reads: Vec<Statement> = (0..MOST_READS_PER_STATEMENT + 8)
            .map(|index| values_read(&(index % 5).to_string(), index % 2 == 0))
            .collect();
        // The first read opens the connection; the next one, on it, times the shape.
        for _ in 0..2 {
            database.fetch_rows(&reads[0], 2).await.expect("a read of the shape");
        }
        let together = join_all(reads.iter().map(|read| database.fetch_rows(read, 2))).await;
        for (read, page) in reads.iter().zip(together) {
            let alone = database.fetch_rows_alone(read, &read.binds, 2).await;
            assert_eq!(outcome(page), outcome(alone));
        }
        assert_eq!(
            (counters.statements.get(), counters.reads.get()),
            (1, MOST_READS_PER_STATEMENT as u64)
        );
    }

    #[tokio::test]
    async fn reads_slower_than_the_budget_run_alone() {
        let Some((database, counters)) = batching_postgres(4, 1) else {
            return;
        };
        let mut slow = values_read("2", true);
        slow.text = slow
            .text
            .replace("WHERE", "WHERE CAST(pg_sleep(0.005) AS text) = '' AND");
        let first = database
            .fetch_rows(&slow, 2)
            .await
            .expect("a first read times the shape");
        let together = join_all((0..8).map(|_| database.fetch_rows(&slow, 2))).await;
        for page in together {
            assert_eq!(outcome(page), first.clone().into_json_array());
        }
        assert_eq!(counters.statements.get(), 0, "5 ms reads do not fit a 1 ms budget");
    }
}
