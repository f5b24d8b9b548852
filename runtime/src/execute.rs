//! Runs a [`Plan`]: builds its SQL, executes it and returns the rows as JSON texts (rendered by
//! the database, or by [`crate::render`] for PostgreSQL reads). A write that is one statement
//! with nothing to check after it commits on its own; a write of several statements, or one
//! checked against a row filter, runs in one transaction.

use sluice_crds::dataapi::Engine;

use crate::authz::WriteGuard;
use crate::db::{Database, Tx};
use crate::error::ApiError;
use crate::plan::{Action, Comparison, Field, Filter, InsertPlan, Order, Plan, ReadPlan, UpdatePlan};
use crate::rows::Rows;
use crate::schema::Column;
use crate::schema::{Schema, Table};
use crate::sql;
use crate::sql::BindValue;
use crate::value;

/// What running a plan produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One JSON object text per row (read rows, or written rows when asked to return them).
    pub rows: Rows,
    /// Rows matching the filters regardless of paging, when counted.
    pub total: Option<i64>,
    /// Rows written.
    pub affected: u64,
    /// The role's `maxRows` left out rows that matched (reads only).
    pub capped: bool,
}

impl Outcome {
    /// A write that returned `rows`, one per row written.
    fn written(rows: Rows) -> Self {
        Self {
            affected: rows.len() as u64,
            rows,
            total: None,
            capped: false,
        }
    }

    /// A write of `affected` rows that returned none.
    fn affected(affected: u64) -> Self {
        Self {
            rows: Rows::default(),
            total: None,
            capped: false,
            affected,
        }
    }
}

/// Runs `plan` against `database`; `count` also counts every matching row of a read. Reads run
/// on read-only connections. A write that `guard` (the role's row filter, when it has one)
/// checks runs in one transaction, which commits only when every written row meets the filter.
pub async fn execute(
    database: &Database,
    schema: &Schema,
    plan: &Plan,
    count: bool,
    guard: Option<&WriteGuard>,
) -> Result<Outcome, ApiError> {
    let engine = database.engine();
    let table = crate::plan::table(schema, &plan.table)?;
    let returning = plan.returning.as_deref();
    match &plan.action {
        Action::Read(read) => {
            let rows = database
                .fetch_rows(&sql::select(engine, table, read), read.limit)
                .await?;
            let total = if count {
                Some(database.fetch_count(&sql::count(engine, table, &read.filters)).await?)
            } else {
                None
            };
            Ok(Outcome {
                rows,
                total,
                affected: 0,
                capped: false,
            })
        }
        Action::Insert(insert) => match guard {
            Some(guard) => guarded_insert(database, engine, table, insert, returning, guard).await,
            // One statement writes every row of the body or none of them, and nothing is checked
            // after it: it commits on its own, without BEGIN and COMMIT round trips.
            None => {
                autocommitted(
                    database,
                    &sql::insert(engine, table, insert, returning),
                    returning.is_some(),
                )
                .await
            }
        },
        Action::Update(update) if guard.is_some() || (engine == Engine::Mysql && returning.is_some()) => {
            let mut tx = database.begin().await?;
            let outcome = update_by_keys(&mut tx, engine, table, update, returning, guard).await?;
            tx.commit().await?;
            Ok(outcome)
        }
        // One statement, nothing checked after it: atomic on its own, like an unguarded insert.
        Action::Update(update) => {
            autocommitted(
                database,
                &sql::update(engine, table, update, returning),
                returning.is_some(),
            )
            .await
        }
        Action::Delete(filters) => {
            autocommitted(
                database,
                &sql::delete(engine, table, filters, returning),
                returning.is_some(),
            )
            .await
        }
    }
}

/// Runs a write that is one statement with nothing to check after it, committed as it completes.
async fn autocommitted(database: &Database, statement: &sql::Statement, returning: bool) -> Result<Outcome, ApiError> {
    Ok(if returning {
        Outcome::written(database.write_strings(statement).await?.into_iter().flatten().collect())
    } else {
        Outcome::affected(database.write_execute(statement).await?)
    })
}

fn outside(guard: &WriteGuard, table: &Table, reason: &'static str) -> ApiError {
    ApiError::OutsideRowFilter {
        role: guard.role.clone(),
        table: table.name.clone(),
        reason,
    }
}

/// Refuses the write unless every row `written` selects meets the guard's scope.
async fn check_inside(
    tx: &mut Tx,
    engine: Engine,
    table: &Table,
    written: &Filter,
    guard: &WriteGuard,
    reason: &'static str,
) -> Result<(), ApiError> {
    if tx
        .fetch_count(&sql::count_outside(engine, table, written, &guard.scope))
        .await?
        > 0
    {
        return Err(outside(guard, table, reason));
    }
    Ok(())
}

/// An insert under a row filter, in one transaction: an upsert may only meet existing rows inside
/// the filter, and the insert itself says of each row it wrote whether it meets the filter, so a
/// row outside it rolls the whole insert back. Three round trips (BEGIN, INSERT, COMMIT), four
/// for an upsert.
async fn guarded_insert(
    database: &Database,
    engine: Engine,
    table: &Table,
    insert: &InsertPlan,
    returning: Option<&[Field]>,
    guard: &WriteGuard,
) -> Result<Outcome, ApiError> {
    let mut tx = database.begin().await?;
    if let Some(upsert) = &insert.upsert
        && let Some(existing) = conflicting_rows(insert, &upsert.conflict_columns)
    {
        check_inside(
            &mut tx,
            engine,
            table,
            &existing,
            guard,
            "the upsert matches an existing row outside the role's row filter",
        )
        .await?;
    }
    let written = tx
        .fetch_strings(&sql::insert_checked(engine, table, insert, returning, &guard.scope))
        .await?;
    let affected = written.len() as u64;
    // `insert_checked` answers NULL for a row outside the filter; dropping `tx` rolls back.
    let Some(rows) = written.into_iter().collect::<Option<Rows>>() else {
        return Err(outside(
            guard,
            table,
            "an inserted row would not meet the role's row filter",
        ));
    };
    tx.commit().await?;
    Ok(Outcome {
        rows: if returning.is_some() { rows } else { Rows::default() },
        total: None,
        capped: false,
        affected,
    })
}

const NO_KEY: &str = "the table has no primary key, so rows written under a row filter cannot be checked";

/// The existing rows an upsert's rows could collide with on `conflict_columns`.
fn conflicting_rows(insert: &InsertPlan, conflict_columns: &[String]) -> Option<Filter> {
    let positions: Option<Vec<usize>> = conflict_columns
        .iter()
        .map(|name| insert.columns.iter().position(|column| column.name == *name))
        .collect();
    let positions = positions?;
    let members: Vec<Filter> = insert
        .rows
        .iter()
        .map(|row| Filter::Group {
            any: false,
            negated: false,
            members: positions
                .iter()
                .map(|&index| Filter::Compare {
                    column: insert.columns[index].clone(),
                    negated: false,
                    operator: Comparison::Eq,
                    values: vec![row[index].clone()],
                })
                .collect(),
        })
        .collect();
    Some(Filter::Group {
        any: true,
        negated: false,
        members,
    })
}

/// Selects the rows with the given primary keys (JSON objects of text values), where
/// `assignments` replaces a key column an update changed.
fn keys_filter(table: &Table, keys: &[String], assignments: &[(Column, BindValue)]) -> Result<Filter, ApiError> {
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        let key: serde_json::Map<String, serde_json::Value> = serde_json::from_str(key).map_err(|error| {
            tracing::error!(%error, "the database returned a key that is not a JSON object");
            ApiError::Internal
        })?;
        let mut members = Vec::with_capacity(table.primary_key.len());
        for name in &table.primary_key {
            let Some(column) = table.column(name) else { continue };
            let bound = match assignments.iter().find(|(c, _)| c.name == *name) {
                Some((_, new_value)) => new_value.clone(),
                None => {
                    let text = match key.get(name) {
                        Some(serde_json::Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    value::from_text(column, &text)?
                }
            };
            members.push(Filter::Compare {
                column: column.clone(),
                negated: false,
                operator: Comparison::Eq,
                values: vec![bound],
            });
        }
        rows.push(Filter::Group {
            any: false,
            negated: false,
            members,
        });
    }
    Ok(Filter::Group {
        any: true,
        negated: false,
        members: rows,
    })
}

/// Checks the `count` rows `written` selects against the guard, when there is one, then reads
/// them back when the client asked for them.
async fn check_and_read_back(
    tx: &mut Tx,
    engine: Engine,
    table: &Table,
    written: Filter,
    count: usize,
    check: Option<(&WriteGuard, &'static str)>,
    returning: Option<&[Field]>,
) -> Result<Rows, ApiError> {
    if let Some((guard, reason)) = check {
        check_inside(tx, engine, table, &written, guard, reason).await?;
    }
    match returning {
        Some(fields) => read_back(tx, engine, table, fields, written, count).await,
        None => Ok(Rows::default()),
    }
}

/// Reads written rows back in primary-key order.
async fn read_back(
    tx: &mut Tx,
    engine: Engine,
    table: &Table,
    fields: &[Field],
    rows: Filter,
    count: usize,
) -> Result<Rows, ApiError> {
    let order = table
        .primary_key
        .iter()
        .map(|c| Order {
            column: c.clone(),
            descending: false,
            nulls_first: false,
        })
        .collect();
    let read = ReadPlan {
        fields: fields.to_vec(),
        filters: vec![rows],
        order,
        limit: count as u64,
        offset: 0,
    };
    Ok(tx
        .fetch_strings(&sql::select(engine, table, &read))
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// An update that finds its rows again afterwards by primary key: to return them on MySQL,
/// which has no `UPDATE … RETURNING`, and to check them against a row filter. The rows are
/// locked, their keys remembered, updated, then checked and read back, in one transaction.
async fn update_by_keys(
    tx: &mut Tx,
    engine: Engine,
    table: &Table,
    update: &UpdatePlan,
    returning: Option<&[Field]>,
    guard: Option<&WriteGuard>,
) -> Result<Outcome, ApiError> {
    if table.primary_key.is_empty() {
        if let Some(guard) = guard {
            return Err(outside(guard, table, NO_KEY));
        }
        let affected = tx.execute(&sql::update(engine, table, update, None)).await?;
        let read = ReadPlan {
            fields: returning.unwrap_or_default().to_vec(),
            filters: update.filters.clone(),
            order: Vec::new(),
            limit: affected,
            offset: 0,
        };
        let rows = tx.fetch_strings(&sql::select(engine, table, &read)).await?;
        return Ok(Outcome {
            rows: rows.into_iter().flatten().collect(),
            total: None,
            capped: false,
            affected,
        });
    }
    let keys: Vec<String> = tx
        .fetch_strings(&sql::keys_for_update(engine, table, &update.filters))
        .await?
        .into_iter()
        .flatten()
        .collect();
    let affected = tx.execute(&sql::update(engine, table, update, None)).await?;
    let written = keys_filter(table, &keys, &update.assignments)?;
    let check = guard.map(|guard| (guard, "the update would move a row outside the role's row filter"));
    let rows = check_and_read_back(tx, engine, table, written, keys.len(), check, returning).await?;
    Ok(Outcome {
        rows,
        total: None,
        capped: false,
        affected,
    })
}
