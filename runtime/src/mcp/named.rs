//! Named queries as tools: the DataApi author's reviewed SQL, one tool each, with typed
//! parameters bound as values (never spliced into the SQL). A query runs in a read-only
//! transaction unless it is marked `write`; a role needs `read` (or, for a write query, `create`,
//! `update` or `delete`) on the table rule `_query/<name>`.

use std::sync::Arc;

use base64::Engine as _;
use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{Map, Value, json};
use sluice_crds::RuntimeConfig;
use sluice_crds::apirole::Verb;
use sluice_crds::dataapi::{Engine, NamedQuery, ParameterType, QueryParameter};
use sqlx::{AssertSqlSafe, Column, Row, TypeInfo, ValueRef};

use crate::authz::Access;
use crate::db::{Database, Pool};
use crate::error::ApiError;
use crate::rows::Rows;

use super::tools::{BUILT_IN, as_object, object};

/// The table name rules use to grant a named query.
fn rule_table(query: &NamedQuery) -> String {
    format!("_query/{}", query.name)
}

fn allowed(config: &RuntimeConfig, access: &Access<'_>, query: &NamedQuery) -> bool {
    let table = rule_table(query);
    if BUILT_IN.contains(&query.name.as_str()) {
        return false;
    }
    if query.write {
        !config.database.read_only
            && [Verb::Create, Verb::Update, Verb::Delete]
                .into_iter()
                .any(|verb| access.may(&table, verb))
    } else {
        access.may(&table, Verb::Read)
    }
}

/// The named query `name`, when the role may run it.
pub fn find<'c>(config: &'c RuntimeConfig, access: &Access<'_>, name: &str) -> Option<&'c NamedQuery> {
    config
        .queries
        .iter()
        .find(|query| query.name == name && allowed(config, access, query))
}

/// One tool per named query the role may run.
pub fn tools(config: &RuntimeConfig, access: &Access<'_>) -> Vec<Tool> {
    config
        .queries
        .iter()
        .filter(|query| allowed(config, access, query))
        .map(|query| {
            let properties: Map<String, Value> = query
                .parameters
                .iter()
                .map(|parameter| (parameter.name.clone(), parameter_schema(parameter)))
                .collect();
            let required: Vec<&str> = query
                .parameters
                .iter()
                .filter(|parameter| parameter.default.is_none())
                .map(|parameter| parameter.name.as_str())
                .collect();
            let description = query
                .description
                .clone()
                .unwrap_or_else(|| format!("The named query {}.", query.name));
            let (output, annotations) = if query.write {
                (
                    object(json!({ "affected": { "type": "integer" } }), &["affected"]),
                    ToolAnnotations::new()
                        .read_only(false)
                        .destructive(true)
                        .idempotent(false)
                        .open_world(false),
                )
            } else {
                (
                    object(
                        json!({
                            "rows": { "type": "array", "items": { "type": "object" } },
                            "returned": { "type": "integer" },
                            "truncated": { "type": "boolean" },
                            "hint": { "type": "string" }
                        }),
                        &["rows", "returned", "truncated"],
                    ),
                    ToolAnnotations::new()
                        .read_only(true)
                        .destructive(false)
                        .idempotent(true)
                        .open_world(false),
                )
            };
            Tool::new(
                query.name.clone(),
                description,
                as_object(object(Value::Object(properties), &required)),
            )
            .with_raw_output_schema(Arc::new(as_object(output)))
            .with_annotations(annotations)
        })
        .collect()
}

fn parameter_schema(parameter: &QueryParameter) -> Value {
    let mut schema = json!({ "type": match parameter.param_type {
        ParameterType::String => "string",
        ParameterType::Integer => "integer",
        ParameterType::Number => "number",
        ParameterType::Boolean => "boolean",
    }});
    if let Some(description) = &parameter.description {
        schema["description"] = json!(description);
    }
    if let Some(default) = &parameter.default {
        schema["default"] = default.clone();
    }
    if let Some(minimum) = parameter.minimum {
        schema["minimum"] = json!(minimum);
    }
    if let Some(maximum) = parameter.maximum {
        schema["maximum"] = json!(maximum);
    }
    schema
}

/// A checked parameter value.
#[derive(Clone, Debug, PartialEq)]
enum Param {
    Integer(i64),
    Number(f64),
    Text(String),
    Boolean(bool),
}

fn wrong(parameter: &QueryParameter, value: &Value, expected: &'static str) -> ApiError {
    ApiError::WrongType {
        column: parameter.name.clone(),
        expected,
        got: value.to_string().chars().take(40).collect(),
    }
}

/// Checks the arguments against the parameters, filling defaults.
fn bind_arguments(query: &NamedQuery, arguments: &Map<String, Value>) -> Result<Vec<(String, Param)>, ApiError> {
    if let Some(unknown) = arguments
        .keys()
        .find(|name| !query.parameters.iter().any(|parameter| &parameter.name == *name))
    {
        return Err(ApiError::bad_query(
            format!("{} has no parameter \"{unknown}\"", query.name),
            "tools/list gives the parameters of every named query",
        ));
    }
    query
        .parameters
        .iter()
        .map(|parameter| {
            let value = arguments
                .get(&parameter.name)
                .or(parameter.default.as_ref())
                .ok_or_else(|| {
                    ApiError::bad_query(
                        format!("{} needs the parameter \"{}\"", query.name, parameter.name),
                        "give every parameter without a default",
                    )
                })?;
            let param = match parameter.param_type {
                ParameterType::Integer => {
                    Param::Integer(value.as_i64().ok_or_else(|| wrong(parameter, value, "an integer"))?)
                }
                ParameterType::Number => {
                    Param::Number(value.as_f64().ok_or_else(|| wrong(parameter, value, "a number"))?)
                }
                ParameterType::String => Param::Text(
                    value
                        .as_str()
                        .ok_or_else(|| wrong(parameter, value, "a string"))?
                        .to_owned(),
                ),
                ParameterType::Boolean => Param::Boolean(
                    value
                        .as_bool()
                        .ok_or_else(|| wrong(parameter, value, "true or false"))?,
                ),
            };
            let number = match param {
                Param::Integer(number) => Some(number as f64),
                Param::Number(number) => Some(number),
                _ => None,
            };
            if let Some(number) = number {
                let below = parameter.minimum.is_some_and(|minimum| number < minimum);
                let above = parameter.maximum.is_some_and(|maximum| number > maximum);
                if below || above {
                    return Err(ApiError::bad_query(
                        format!("\"{}\" is {number}, outside its range", parameter.name),
                        format!(
                            "give a value from {} to {}",
                            parameter.minimum.map_or("any".to_owned(), |m| m.to_string()),
                            parameter.maximum.map_or("any".to_owned(), |m| m.to_string())
                        ),
                    ));
                }
            }
            Ok((parameter.name.clone(), param))
        })
        .collect()
}

/// The SQL with each `:name` replaced by the engine's placeholder, and the values in binding
/// order. Quoted text, quoted identifiers, comments and PostgreSQL `::` casts are left alone.
fn translate(sql: &str, params: &[(String, Param)], postgres: bool) -> Result<(String, Vec<Param>), String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut binds = Vec::new();
    let mut numbered: Vec<&str> = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let closing = match byte {
            b'\'' => Some("'"),
            b'"' => Some("\""),
            b'`' => Some("`"),
            b'-' if bytes.get(index + 1) == Some(&b'-') => Some("\n"),
            b'/' if bytes.get(index + 1) == Some(&b'*') => Some("*/"),
            _ => None,
        };
        if let Some(closing) = closing {
            let start = index;
            let after_open = if matches!(byte, b'-' | b'/') {
                index + 2
            } else {
                index + 1
            };
            let end = sql[after_open..]
                .find(closing)
                .map_or(sql.len(), |offset| after_open + offset + closing.len());
            out.push_str(&sql[start..end]);
            index = end;
            continue;
        }
        if byte == b':' && bytes.get(index + 1) == Some(&b':') {
            out.push_str("::");
            index += 2;
            continue;
        }
        if byte == b':'
            && bytes
                .get(index + 1)
                .is_some_and(|next| next.is_ascii_alphabetic() || *next == b'_')
        {
            let start = index + 1;
            let end = sql[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(sql.len(), |offset| start + offset);
            let name = &sql[start..end];
            let (_, value) = params
                .iter()
                .find(|(parameter, _)| parameter == name)
                .ok_or_else(|| format!("the SQL uses :{name}, which is not a declared parameter"))?;
            if postgres {
                let number = match numbered.iter().position(|known| *known == name) {
                    Some(position) => position + 1,
                    None => {
                        numbered.push(name);
                        binds.push(value.clone());
                        numbered.len()
                    }
                };
                let cast = match value {
                    Param::Integer(_) => "bigint",
                    Param::Number(_) => "double precision",
                    Param::Text(_) => "text",
                    Param::Boolean(_) => "boolean",
                };
                out.push_str(&format!("CAST(${number} AS {cast})"));
            } else {
                out.push('?');
                binds.push(value.clone());
            }
            index = end;
            continue;
        }
        let character = sql[index..].chars().next().unwrap_or_default();
        out.push(character);
        index += character.len_utf8();
    }
    Ok((out.trim().trim_end_matches(';').to_owned(), binds))
}

macro_rules! bind_params {
    ($query:expr, $binds:expr, text_only: $text_only:expr) => {{
        let mut query = $query;
        for param in $binds {
            query = match param {
                Param::Integer(number) if !$text_only => query.bind(*number),
                Param::Number(number) if !$text_only => query.bind(*number),
                Param::Boolean(flag) if !$text_only => query.bind(*flag),
                Param::Integer(number) => query.bind(number.to_string()),
                Param::Number(number) => query.bind(number.to_string()),
                Param::Boolean(flag) => query.bind(flag.to_string()),
                Param::Text(text) => query.bind(text.clone()),
            };
        }
        query
    }};
}

/// Runs `query` with `arguments`: the rows (at most `max_rows`, plus one to tell truncation)
/// as JSON object texts, or for a write the number of rows changed.
pub async fn run(
    database: &Database,
    query: &NamedQuery,
    arguments: &Map<String, Value>,
    max_rows: usize,
) -> Result<NamedOutcome, ApiError> {
    let params = bind_arguments(query, arguments)?;
    let postgres = database.engine() == Engine::Postgres;
    let (sql, binds) = translate(&query.sql, &params, postgres).map_err(|problem| {
        tracing::error!(query = %query.name, %problem, "a named query cannot run");
        ApiError::Internal
    })?;
    if query.write {
        return write(database, &sql, &binds).await.map(NamedOutcome::Affected);
    }
    let fetch = max_rows + 1;
    // The reader pool's sessions are read-only already; the explicit read-only transactions
    // say so in the SQL log too.
    let rows: Rows = match database.reader() {
        Pool::Postgres(pool) => {
            let wrapped = format!("SELECT row_to_json(q)::text FROM ({sql}) AS q LIMIT {fetch}");
            let mut tx = Box::pin(pool.begin_with("BEGIN READ ONLY"))
                .await
                .map_err(ApiError::from_database)?;
            let query = bind_params!(sqlx::query(AssertSqlSafe(wrapped)), &binds, text_only: true);
            let rows = query.fetch_all(&mut *tx).await.map_err(ApiError::from_database)?;
            rows.iter()
                .map(|row| row.try_get::<&str, _>(0).map_err(ApiError::from_database))
                .collect::<Result<Rows, _>>()?
        }
        Pool::Mysql(pool) => {
            let wrapped = format!("SELECT * FROM ({sql}) AS q LIMIT {fetch}");
            let mut tx = Box::pin(pool.begin_with("START TRANSACTION READ ONLY"))
                .await
                .map_err(ApiError::from_database)?;
            let query = bind_params!(sqlx::query(AssertSqlSafe(wrapped)), &binds, text_only: false);
            let rows = query.fetch_all(&mut *tx).await.map_err(ApiError::from_database)?;
            rows.iter().map(mysql_row).collect()
        }
        Pool::Sqlite(pool) => {
            // SQLite has no read-only transaction; the reader pool's connections are query_only.
            let wrapped = format!("SELECT * FROM ({sql}) AS q LIMIT {fetch}");
            let query = bind_params!(sqlx::query(AssertSqlSafe(wrapped)), &binds, text_only: false);
            query
                .fetch_all(pool)
                .await
                .map_err(ApiError::from_database)?
                .iter()
                .map(sqlite_row)
                .collect()
        }
    };
    Ok(NamedOutcome::Rows(rows))
}

/// What a named query produced.
pub enum NamedOutcome {
    /// A read's rows as JSON object texts.
    Rows(Rows),
    /// A write's changed rows.
    Affected(u64),
}

/// Runs one bound statement on `pool` in its own transaction and returns the rows it changed.
macro_rules! write_on {
    ($pool:expr, $statement:expr, $binds:expr, text_only: $text_only:expr) => {{
        let mut tx = Box::pin($pool.begin()).await.map_err(ApiError::from_database)?;
        let done = bind_params!(sqlx::query($statement), $binds, text_only: $text_only)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from_database)?;
        tx.commit().await.map_err(ApiError::from_database)?;
        done.rows_affected()
    }};
}

async fn write(database: &Database, sql: &str, binds: &[Param]) -> Result<u64, ApiError> {
    let statement = AssertSqlSafe(sql.to_owned());
    let affected = match database.writer() {
        Pool::Postgres(pool) => write_on!(pool, statement, binds, text_only: true),
        Pool::Mysql(pool) => write_on!(pool, statement, binds, text_only: false),
        Pool::Sqlite(pool) => write_on!(pool, statement, binds, text_only: false),
    };
    Ok(affected)
}

/// A row as one JSON object text, each value rendered from its engine type.
fn object_text(pairs: Vec<(String, String)>) -> String {
    let members: Vec<String> = pairs
        .into_iter()
        .map(|(name, value)| format!("{}:{value}", Value::String(name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> String {
    let pairs = row
        .columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let value = match row.try_get_raw(index) {
                Ok(raw) if raw.is_null() => "null".to_owned(),
                Ok(raw) => match raw.type_info().name() {
                    "INTEGER" => row.try_get_unchecked::<i64, _>(index).map(|v| v.to_string()),
                    "REAL" => row.try_get_unchecked::<f64, _>(index).map(|v| json!(v).to_string()),
                    "BLOB" => row
                        .try_get_unchecked::<Vec<u8>, _>(index)
                        .map(hex::encode)
                        .map(|v| json!(v).to_string()),
                    _ => row
                        .try_get_unchecked::<String, _>(index)
                        .map(|v| Value::String(v).to_string()),
                }
                .unwrap_or_else(|_| "null".to_owned()),
                Err(_) => "null".to_owned(),
            };
            (column.name().to_owned(), value)
        })
        .collect();
    object_text(pairs)
}

fn mysql_row(row: &sqlx::mysql::MySqlRow) -> String {
    let pairs = row
        .columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let type_name = column.type_info().name().to_owned();
            let text = |value: Result<String, sqlx::Error>| value.map(|v| Value::String(v).to_string());
            let value = match row.try_get_raw(index) {
                Ok(raw) if raw.is_null() => Ok("null".to_owned()),
                _ if type_name == "BOOLEAN" => row.try_get::<bool, _>(index).map(|v| v.to_string()),
                _ if type_name.contains("INT") && type_name.contains("UNSIGNED") => {
                    row.try_get::<u64, _>(index).map(|v| v.to_string())
                }
                _ if type_name.contains("INT") => row.try_get::<i64, _>(index).map(|v| v.to_string()),
                _ if matches!(type_name.as_str(), "FLOAT" | "DOUBLE") => {
                    row.try_get::<f64, _>(index).map(|v| json!(v).to_string())
                }
                // Decimals travel as text in MySQL's protocol: kept digit for digit.
                _ if type_name == "DECIMAL" => row.try_get_unchecked::<String, _>(index),
                _ if type_name == "DATE" => text(row.try_get::<chrono::NaiveDate, _>(index).map(|v| v.to_string())),
                _ if type_name == "DATETIME" => text(
                    row.try_get::<chrono::NaiveDateTime, _>(index)
                        .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
                ),
                _ if type_name == "TIMESTAMP" => text(
                    row.try_get::<chrono::DateTime<chrono::Utc>, _>(index)
                        .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string()),
                ),
                _ if type_name == "JSON" => row.try_get::<Value, _>(index).map(|v| v.to_string()),
                _ if type_name.contains("BLOB") || type_name.contains("BINARY") => text(
                    row.try_get::<Vec<u8>, _>(index)
                        .map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
                ),
                _ => text(row.try_get_unchecked::<String, _>(index)),
            };
            let value = value.unwrap_or_else(|error| {
                tracing::warn!(column = column.name(), r#type = %type_name, %error, "a named query's value could not be rendered");
                "null".to_owned()
            });
            (column.name().to_owned(), value)
        })
        .collect();
    object_text(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, Param)> {
        vec![
            ("limit".into(), Param::Integer(5)),
            ("name".into(), Param::Text("x".into())),
        ]
    }

    #[test]
    fn parameters_become_placeholders_outside_quotes_comments_and_casts() {
        let sql = "SELECT id::text, ':limit' AS c, \"a:name\" FROM t -- :nope\nWHERE name = :name OR nick = :name /* :x */ LIMIT :limit;";
        let (postgres, binds) = translate(sql, &params(), true).expect("translates");
        assert_eq!(
            postgres,
            "SELECT id::text, ':limit' AS c, \"a:name\" FROM t -- :nope\nWHERE name = CAST($1 AS text) OR nick = CAST($1 AS text) /* :x */ LIMIT CAST($2 AS bigint)"
        );
        assert_eq!(binds, [Param::Text("x".into()), Param::Integer(5)]);
        let (other, binds) = translate(sql, &params(), false).expect("translates");
        assert!(
            other.ends_with("WHERE name = ? OR nick = ? /* :x */ LIMIT ?"),
            "{other}"
        );
        assert_eq!(binds.len(), 3);
        assert!(translate("SELECT :secret", &params(), false).is_err());
    }
}
