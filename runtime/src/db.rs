//! The database connection: pools per engine behind one type, so everything above it is
//! engine-agnostic except the SQL text, which [`crate::sql`] writes per dialect.
//!
//! Reads never get a connection that can write: [`Database`] holds a reader pool whose sessions
//! the engine itself keeps read-only (PostgreSQL `default_transaction_read_only`, MySQL
//! `SET SESSION TRANSACTION READ ONLY`, SQLite `PRAGMA query_only`), so a bug in the SQL builder
//! still cannot change data on a read path. Writes take a connection from the writer pool. Each
//! pool opens up to `pool.maxConnections`, lazily, so a read-only workload never opens a writer.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sluice_crds::dataapi::{Engine, PoolSpec};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Executor, MySql, Postgres, Sqlite, Transaction};

use crate::error::ApiError;
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

/// The reader and writer pools of one database.
#[derive(Clone, Debug)]
pub struct Database {
    reader: Pool,
    writer: Pool,
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
    ($query:expr, $statement:expr, $bind_one:expr) => {{
        let mut query = $query;
        for value in &$statement.binds {
            query = $bind_one(query, value);
        }
        query
    }};
}

fn bind_postgres<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    value: &BindValue,
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

macro_rules! fetch_strings_on {
    ($executor:expr, $statement:expr, $bind:ident) => {{
        let query = bind_all!(sqlx::query(AssertSqlSafe($statement.text.clone())), $statement, $bind);
        let mut rows = query.fetch($executor);
        let mut values = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(ApiError::from_database)? {
            values.push(sqlx::Row::try_get::<Option<String>, _>(&row, 0).map_err(ApiError::from_database)?);
        }
        Ok(values)
    }};
}

macro_rules! execute_on {
    ($executor:expr, $statement:expr, $bind:ident) => {{
        let query = bind_all!(sqlx::query(AssertSqlSafe($statement.text.clone())), $statement, $bind);
        Ok(query
            .execute($executor)
            .await
            .map_err(ApiError::from_database)?
            .rows_affected())
    }};
}

impl Database {
    /// Opens the reader and writer pools. Connections are made lazily, so a database that is
    /// down at start only delays readiness instead of failing the process.
    pub fn connect(engine: Engine, url: &str, pool: &PoolSpec) -> Result<Self, ConnectError> {
        Ok(Self {
            reader: Pool::connect(engine, url, pool, Access::ReadOnly)?,
            writer: Pool::connect(engine, url, pool, Access::ReadWrite)?,
        })
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
        match &self.reader {
            Pool::Postgres(pool) => fetch_strings_on!(pool, statement, bind_postgres),
            Pool::Mysql(pool) => fetch_strings_on!(pool, statement, bind_mysql),
            Pool::Sqlite(pool) => fetch_strings_on!(pool, statement, bind_sqlite),
        }
    }

    /// Runs a `SELECT COUNT(*)`-shaped statement on a read-only connection.
    pub async fn fetch_count(&self, statement: &Statement) -> Result<i64, ApiError> {
        parse_count(self.fetch_strings(statement).await?)
    }

    /// Starts a read-write transaction.
    pub async fn begin(&self) -> Result<Tx, ApiError> {
        Ok(match &self.writer {
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await.map_err(ApiError::from_database)?),
            Pool::Mysql(pool) => Tx::Mysql(pool.begin().await.map_err(ApiError::from_database)?),
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin().await.map_err(ApiError::from_database)?),
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

impl Pool {
    fn connect(engine: Engine, url: &str, pool: &PoolSpec, access: Access) -> Result<Self, ConnectError> {
        let acquire = Duration::from_millis(u64::from(pool.acquire_timeout_ms));
        let statement_timeout_ms = pool.statement_timeout_ms;
        let read_only = access == Access::ReadOnly;
        // The writer opens connections only when a write needs one.
        let min_connections = if read_only { pool.min_connections } else { 0 };
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
                    PgPoolOptions::new()
                        // sqlx already pings every connection when it returns to the pool; a
                        // second ping before each use doubled the round trips of a read.
                        .test_before_acquire(false)
                        .max_connections(pool.max_connections)
                        .min_connections(min_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(options),
                )
            }
            Engine::Mysql => {
                let options = MySqlConnectOptions::from_str(url)
                    .map_err(invalid)?
                    .timezone(Some("+00:00".to_owned()));
                Pool::Mysql(
                    MySqlPoolOptions::new()
                        .max_connections(pool.max_connections)
                        .min_connections(min_connections)
                        .acquire_timeout(acquire)
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
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(pool.max_connections)
                        .min_connections(min_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(options),
                )
            }
        })
    }
}

impl Tx {
    /// Runs `statement` and returns its first column, as text, for every row.
    pub async fn fetch_strings(&mut self, statement: &Statement) -> Result<Vec<Option<String>>, ApiError> {
        match self {
            Tx::Postgres(tx) => fetch_strings_on!(&mut **tx, statement, bind_postgres),
            Tx::Mysql(tx) => fetch_strings_on!(&mut **tx, statement, bind_mysql),
            Tx::Sqlite(tx) => fetch_strings_on!(&mut **tx, statement, bind_sqlite),
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
