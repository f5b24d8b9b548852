//! PostgreSQL reads of the same shape that arrive together share one statement.
//!
//! A statement costs the database a wake-up, a round trip and an executor start whatever it
//! reads; for a get by key that is most of the database's CPU per request, and it made the
//! database's share of a request twice what pgbench's is for the same SQL. Reads whose SQL text is the
//! same differ only in their parameters, so those that reach [`ReadBatches::read`] in the same
//! turn of the scheduler are sent as one statement ([`crate::sql::batched_select`]) that runs
//! each member's read with its own parameters and returns every member's rows, tagged with its
//! number.
//!
//! # When reads share
//! The first read of a shape opens a batch and spawns the task that sends it; that task yields
//! once, so every read already runnable on the workers joins before the batch closes. An idle
//! server therefore sends each read alone, at once, and a busy one sends as many together as
//! arrive while it is busy, with no timer. A read never waits for a statement already running:
//! once its batch closes, the next read of that shape opens a new one.
//!
//! A shared statement runs its members one after another in one database session, so it trades
//! the database's parallelism for round trips: worth it for reads of a few hundred
//! microseconds, not for reads of a second. Each shape remembers how long its last statement
//! took per read, and a batch takes only as many members as fit in `pool.readBatchMs` at that
//! pace; a shape not yet timed, or slower than the budget, runs each read alone.
//!
//! # Same answers
//! Each member gets exactly the rows and errors it would get alone: a batch that fails (one
//! member's value does not cast to its column's type, a statement timeout) is run again member
//! by member, so each gets its own error, and one bad request never fails another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::db::Database;
use crate::error::ApiError;
use crate::rows::Rows;
use crate::sql::{self, BindValue, Statement};

/// Most reads one statement serves, however fast they are.
pub const MOST_READS_PER_STATEMENT: usize = 32;

/// Shapes remembered at most; past this, those without an open batch are forgotten, so clients
/// sending ever new shapes cannot grow the map without bound.
const SHAPES_REMEMBERED: usize = 4096;

/// One read waiting in a batch.
#[derive(Debug)]
pub struct Member {
    /// Its parameters, in the statement's order.
    pub binds: Vec<BindValue>,
    /// Most rows it expects, which sizes its buffer.
    pub expected: u64,
    reply: oneshot::Sender<Result<Rows, ApiError>>,
}

/// How many statements served more than one read, and how many reads they served, for metrics.
#[derive(Clone, Debug, Default)]
pub struct BatchCounters {
    /// Statements that served more than one read.
    pub statements: Counter,
    /// Reads served by those statements.
    pub reads: Counter,
}

/// What is known of one SQL text.
#[derive(Debug, Default)]
struct Shape {
    /// How long its last statement took per read, waiting for a connection included.
    per_read: Option<Duration>,
    /// The batch collecting members; empty when none is open.
    open: Vec<Member>,
}

impl Shape {
    /// Most members a batch of this shape takes: as many as `budget` allows at its last pace.
    fn most_members(&self, budget: Duration) -> usize {
        match self.per_read {
            None => 1,
            Some(per_read) if per_read.is_zero() => MOST_READS_PER_STATEMENT,
            Some(per_read) => usize::try_from(budget.as_nanos() / per_read.as_nanos())
                .map_or(MOST_READS_PER_STATEMENT, |most| most.clamp(1, MOST_READS_PER_STATEMENT)),
        }
    }
}

/// What a read does once it has looked at its shape.
enum Turn {
    /// Runs alone, now, in its own task.
    Alone,
    /// Opened a batch: spawns the task that sends it, then waits for its rows.
    Opened,
    /// Joined an open batch: waits for its rows.
    Joined,
}

/// The read shapes of one database, by SQL text, and their open batches.
#[derive(Debug)]
pub struct ReadBatches {
    shapes: Mutex<HashMap<String, Shape>>,
    /// `pool.readBatchMs`.
    budget: Duration,
    counters: BatchCounters,
}

impl ReadBatches {
    /// Batches whose statements take at most `budget`; zero turns sharing off.
    pub fn new(budget: Duration) -> Self {
        Self {
            shapes: Mutex::default(),
            budget,
            counters: BatchCounters::default(),
        }
    }

    /// The counters this database's batches add to.
    pub fn counters(&self) -> &BatchCounters {
        &self.counters
    }

    fn shapes(&self) -> MutexGuard<'_, HashMap<String, Shape>> {
        self.shapes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the PostgreSQL read `statement` on `database`, alone or in a batch with the other
    /// reads of the same text that arrive with it; `expected` rows at most are expected.
    pub async fn read(
        self: &Arc<Self>,
        database: &Database,
        statement: &Statement,
        expected: u64,
    ) -> Result<Rows, ApiError> {
        if self.budget.is_zero() {
            return database.fetch_rows_alone(statement, &statement.binds, expected).await;
        }
        let (reply, answer) = oneshot::channel();
        let turn = {
            let mut shapes = self.shapes();
            match shapes.get_mut(&statement.text) {
                None => {
                    if shapes.len() >= SHAPES_REMEMBERED {
                        shapes.retain(|_, shape| !shape.open.is_empty());
                    }
                    shapes.insert(statement.text.clone(), Shape::default());
                    Turn::Alone
                }
                Some(shape) => {
                    let most = shape.most_members(self.budget);
                    let turn = match shape.open.len() {
                        _ if most < 2 => Turn::Alone,
                        0 => Turn::Opened,
                        open if open < most => Turn::Joined,
                        // The open batch is full: this read goes alone rather than wait for the next.
                        _ => Turn::Alone,
                    };
                    if !matches!(turn, Turn::Alone) {
                        shape.open.push(Member {
                            binds: statement.binds.clone(),
                            expected,
                            reply,
                        });
                    }
                    turn
                }
            }
        };
        match turn {
            Turn::Alone => return self.read_alone(database, statement, &statement.binds, expected).await,
            // A task of its own sends the batch, so a member whose request is dropped (its
            // client went away) cannot strand the others.
            Turn::Opened => {
                let batches = Arc::clone(self);
                let database = database.clone();
                let statement = statement.clone();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let members = batches
                        .shapes()
                        .get_mut(&statement.text)
                        .map(|shape| std::mem::take(&mut shape.open))
                        .unwrap_or_default();
                    batches.send(&database, &statement, members).await;
                });
            }
            Turn::Joined => {}
        }
        answer.await.unwrap_or(Err(ApiError::Unavailable))
    }

    /// Runs one read of `statement`'s text with `binds` on its own, and times the shape by it.
    async fn read_alone(
        &self,
        database: &Database,
        statement: &Statement,
        binds: &[BindValue],
        expected: u64,
    ) -> Result<Rows, ApiError> {
        let started = Instant::now();
        let rows = database.fetch_rows_alone(statement, binds, expected).await;
        if rows.is_ok() {
            self.timed(&statement.text, started.elapsed(), 1);
        }
        rows
    }

    /// Remembers that a statement of `text` served `reads` reads in `took`.
    fn timed(&self, text: &str, took: Duration, reads: usize) {
        if let Some(shape) = self.shapes().get_mut(text) {
            shape.per_read = Some(took / u32::try_from(reads).unwrap_or(u32::MAX));
        }
    }

    /// Runs the batch `members` of `statement`'s text and answers each.
    async fn send(&self, database: &Database, statement: &Statement, mut members: Vec<Member>) {
        if members.len() == 1
            && let Some(member) = members.pop()
        {
            let page = self
                .read_alone(database, statement, &member.binds, member.expected)
                .await;
            let _ = member.reply.send(page);
            return;
        }
        let started = Instant::now();
        if members.len() > 1
            && let Some(text) = sql::batched_select(&statement.text, statement.binds.len())
        {
            match database.fetch_rows_batched(statement, &text, &members).await {
                Ok(pages) => {
                    self.timed(&statement.text, started.elapsed(), members.len());
                    self.counters.statements.inc();
                    self.counters.reads.inc_by(members.len() as u64);
                    for (member, page) in members.into_iter().zip(pages) {
                        // A member whose request is gone no longer listens.
                        let _ = member.reply.send(Ok(page));
                    }
                    return;
                }
                // No connection (the pool timed out, the database is gone): alone, each read
                // would wait for one again.
                Err(ApiError::Unavailable) => {
                    for member in members {
                        let _ = member.reply.send(Err(ApiError::Unavailable));
                    }
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, reads = members.len(), "a batched read failed; running each read alone");
                }
            }
        }
        join_all(members.into_iter().map(|member| async move {
            let page = database
                .fetch_rows_alone(statement, &member.binds, member.expected)
                .await;
            let _ = member.reply.send(page);
        }))
        .await;
    }
}
