//! Runs a [`Plan`]: builds its SQL, executes it (writes in one transaction) and returns the
//! rows as JSON texts rendered by the database.

use sluice_crds::dataapi::Engine;

use crate::db::{Database, Tx};
use crate::error::ApiError;
use crate::plan::{Action, Comparison, Field, Filter, Order, Plan, ReadPlan, UpdatePlan};
use crate::schema::{Schema, Table};
use crate::sql;
use crate::value;

/// What running a plan produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One JSON object text per row (read rows, or written rows when asked to return them).
    pub rows: Vec<String>,
    /// Rows matching the filters regardless of paging, when counted.
    pub total: Option<i64>,
    /// Rows written.
    pub affected: u64,
}

impl Outcome {
    /// The rows as one JSON array.
    pub fn json_array(&self) -> String {
        let mut body = String::with_capacity(self.rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (index, row) in self.rows.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            body.push_str(row);
        }
        body.push(']');
        body
    }
}

/// Runs `plan` against `database`; `count` also counts every matching row of a read.
pub async fn execute(database: &Database, schema: &Schema, plan: &Plan, count: bool) -> Result<Outcome, ApiError> {
    let engine = database.engine();
    let table = crate::plan::table(schema, &plan.table)?;
    let returning = plan.returning.as_deref();
    match &plan.action {
        Action::Read(read) => {
            let rows = database.fetch_strings(&sql::select(engine, table, read)).await?;
            let total = if count {
                Some(database.fetch_count(&sql::count(engine, table, &read.filters)).await?)
            } else {
                None
            };
            Ok(Outcome {
                rows: rows.into_iter().flatten().collect(),
                total,
                affected: 0,
            })
        }
        Action::Insert(insert) => {
            let mut tx = database.begin().await?;
            let outcome = write(
                &mut tx,
                &sql::insert(engine, table, insert, returning),
                returning.is_some(),
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        }
        Action::Update(update) if engine == Engine::Mysql && returning.is_some() => {
            let mut tx = database.begin().await?;
            let outcome = mysql_update_returning(&mut tx, table, update, returning.unwrap_or_default()).await?;
            tx.commit().await?;
            Ok(outcome)
        }
        Action::Update(update) => {
            let mut tx = database.begin().await?;
            let outcome = write(
                &mut tx,
                &sql::update(engine, table, update, returning),
                returning.is_some(),
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        }
        Action::Delete(filters) => {
            let mut tx = database.begin().await?;
            let outcome = write(
                &mut tx,
                &sql::delete(engine, table, filters, returning),
                returning.is_some(),
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        }
    }
}

async fn write(tx: &mut Tx, statement: &sql::Statement, returning: bool) -> Result<Outcome, ApiError> {
    if returning {
        let rows: Vec<String> = tx.fetch_strings(statement).await?.into_iter().flatten().collect();
        Ok(Outcome {
            affected: rows.len() as u64,
            rows,
            total: None,
        })
    } else {
        Ok(Outcome {
            affected: tx.execute(statement).await?,
            rows: Vec::new(),
            total: None,
        })
    }
}

/// MySQL has no `UPDATE … RETURNING`: lock and remember the keys, update, then read the rows
/// back by their (possibly updated) keys, all in one transaction.
async fn mysql_update_returning(
    tx: &mut Tx,
    table: &Table,
    update: &UpdatePlan,
    returning: &[Field],
) -> Result<Outcome, ApiError> {
    let engine = Engine::Mysql;
    if table.primary_key.is_empty() {
        let affected = tx.execute(&sql::update(engine, table, update, None)).await?;
        let read = ReadPlan {
            fields: returning.to_vec(),
            filters: update.filters.clone(),
            order: Vec::new(),
            limit: affected,
            offset: 0,
        };
        let rows = tx.fetch_strings(&sql::select(engine, table, &read)).await?;
        return Ok(Outcome {
            rows: rows.into_iter().flatten().collect(),
            total: None,
            affected,
        });
    }
    let keys = tx
        .fetch_strings(&sql::keys_for_update(engine, table, &update.filters))
        .await?;
    let affected = tx.execute(&sql::update(engine, table, update, None)).await?;
    let mut row_filters = Vec::with_capacity(keys.len());
    for key in keys.into_iter().flatten() {
        let key: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&key).map_err(|error| {
            tracing::error!(%error, "the database returned a key that is not a JSON object");
            ApiError::Internal
        })?;
        let mut members = Vec::with_capacity(table.primary_key.len());
        for name in &table.primary_key {
            let Some(column) = table.column(name) else { continue };
            let assigned = update
                .assignments
                .iter()
                .find(|(c, _)| c.name == *name)
                .map(|(_, v)| v.clone());
            let bound = match assigned {
                Some(new_value) => new_value,
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
        row_filters.push(Filter::Group {
            any: false,
            negated: false,
            members,
        });
    }
    if row_filters.is_empty() {
        return Ok(Outcome {
            rows: Vec::new(),
            total: None,
            affected,
        });
    }
    let order = table
        .primary_key
        .iter()
        .map(|c| Order {
            column: c.clone(),
            descending: false,
            nulls_first: false,
        })
        .collect();
    let limit = row_filters.len() as u64;
    let read = ReadPlan {
        fields: returning.to_vec(),
        filters: vec![Filter::Group {
            any: true,
            negated: false,
            members: row_filters,
        }],
        order,
        limit,
        offset: 0,
    };
    let rows = tx.fetch_strings(&sql::select(engine, table, &read)).await?;
    Ok(Outcome {
        rows: rows.into_iter().flatten().collect(),
        total: None,
        affected,
    })
}
