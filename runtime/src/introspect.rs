//! Reads tables, views, columns, primary and foreign keys from each engine's catalog, then keeps
//! the ones the DataApi's schemas and include/exclude globs expose.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use sluice_crds::config::DatabaseConfig;
use sqlx::Row;

use crate::db::{Database, Pool};
use crate::schema::{Column, ForeignKey, RelationKind, Schema, Table, ValueKind};

/// Why the schema could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    /// A glob in include/exclude does not parse.
    #[error("spec.database.{field}: \"{pattern}\" is not a valid glob: {source}")]
    InvalidGlob {
        /// `include` or `exclude`.
        field: &'static str,
        /// The pattern.
        pattern: String,
        /// Why.
        source: globset::Error,
    },
    /// The catalog query failed.
    #[error("reading the database schema failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// Which tables the DataApi exposes.
pub struct Exposure {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Exposure {
    /// Compiles the include and exclude globs.
    pub fn new(config: &DatabaseConfig) -> Result<Self, IntrospectError> {
        let build = |field: &'static str, patterns: &[String]| -> Result<GlobSet, IntrospectError> {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = Glob::new(pattern).map_err(|source| IntrospectError::InvalidGlob {
                    field,
                    pattern: pattern.clone(),
                    source,
                })?;
                builder.add(glob);
            }
            builder.build().map_err(|source| IntrospectError::InvalidGlob {
                field,
                pattern: patterns.join(","),
                source,
            })
        };
        let include = if config.include.is_empty() {
            None
        } else {
            Some(build("include", &config.include)?)
        };
        Ok(Self {
            include,
            exclude: build("exclude", &config.exclude)?,
        })
    }

    /// Whether `name` (in `schema`) is exposed; patterns match the bare or schema-qualified name.
    pub fn exposes(&self, schema: &str, name: &str) -> bool {
        let qualified = format!("{schema}.{name}");
        let included = self
            .include
            .as_ref()
            .is_none_or(|set| set.is_match(name) || set.is_match(&qualified));
        included && !(self.exclude.is_match(name) || self.exclude.is_match(&qualified))
    }
}

/// Reads the exposed schema.
pub async fn introspect(database: &Database, config: &DatabaseConfig) -> Result<Schema, IntrospectError> {
    let exposure = Exposure::new(config)?;
    let tables = match database.reader() {
        Pool::Postgres(pool) => postgres(pool, &config.schemas).await?,
        Pool::Mysql(pool) => mysql(pool, &config.schemas).await?,
        Pool::Sqlite(pool) => sqlite(pool).await?,
    };
    let mut schema = Schema::default();
    for table in tables {
        if !exposure.exposes(&table.db_schema, &table.name) {
            continue;
        }
        if schema.tables.contains_key(&table.name) {
            tracing::warn!(table = %table.name, schema = %table.db_schema, "a table of this name is already exposed from an earlier schema; skipping");
            continue;
        }
        schema.tables.insert(table.name.clone(), table);
    }
    // Relationships to hidden tables cannot be embedded.
    let names: Vec<String> = schema.tables.keys().cloned().collect();
    for table in schema.tables.values_mut() {
        table.foreign_keys.retain(|fk| names.contains(&fk.referenced_table));
    }
    Ok(schema)
}

fn new_table(schema: String, name: String, kind: RelationKind, updatable: bool) -> Table {
    Table {
        name,
        db_schema: schema,
        kind,
        updatable,
        columns: Vec::new(),
        primary_key: Vec::new(),
        foreign_keys: Vec::new(),
    }
}

fn postgres_kind(data_type: &str, udt_name: &str) -> ValueKind {
    match udt_name {
        "int2" | "int4" | "int8" => ValueKind::Integer,
        "numeric" => ValueKind::Decimal,
        "float4" | "float8" => ValueKind::Float,
        "bool" => ValueKind::Boolean,
        "date" => ValueKind::Date,
        "time" | "timetz" => ValueKind::Time,
        "timestamp" => ValueKind::Timestamp,
        "timestamptz" => ValueKind::TimestampTz,
        "uuid" => ValueKind::Uuid,
        "json" | "jsonb" => ValueKind::Json,
        "bytea" => ValueKind::Binary,
        _ if data_type == "ARRAY" => ValueKind::Array,
        _ => ValueKind::Text,
    }
}

fn quote_pg(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

async fn postgres(pool: &sqlx::PgPool, schemas: &[String]) -> Result<Vec<Table>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.table_schema::text, c.table_name::text, t.table_type::text, t.is_insertable_into::text,
                c.column_name::text, c.data_type::text, c.udt_schema::text, c.udt_name::text,
                c.is_nullable::text, c.column_default::text, c.is_generated::text, c.is_identity::text
         FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = ANY($1)
         ORDER BY c.table_schema, c.table_name, c.ordinal_position",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await?;
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    for row in rows {
        let schema: String = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let table_type: String = row.try_get(2)?;
        let insertable: String = row.try_get(3)?;
        let data_type: String = row.try_get(5)?;
        let udt_schema: String = row.try_get(6)?;
        let udt_name: String = row.try_get(7)?;
        let identity: String = row.try_get(11)?;
        let mut default: Option<String> = row.try_get(9)?;
        if identity == "YES" {
            default.get_or_insert_with(|| "identity".to_owned());
        }
        let kind = if table_type == "VIEW" {
            RelationKind::View
        } else {
            RelationKind::Table
        };
        let table = tables
            .entry((schema.clone(), name.clone()))
            .or_insert_with(|| new_table(schema, name, kind, insertable == "YES"));
        table.columns.push(Column {
            name: row.try_get(4)?,
            db_type: if data_type == "USER-DEFINED" {
                udt_name.clone()
            } else {
                data_type.clone()
            },
            cast_type: format!("{}.{}", quote_pg(&udt_schema), quote_pg(&udt_name)),
            kind: postgres_kind(&data_type, &udt_name),
            nullable: row.try_get::<String, _>(8)? == "YES",
            default,
            generated: row.try_get::<String, _>(10)? == "ALWAYS",
        });
    }
    let constraints = sqlx::query(
        "SELECT n.nspname::text, c.relname::text, con.conname::text, con.contype::text,
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, i)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.i),
                fn.nspname::text, fc.relname::text,
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(attnum, i)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.i)
         FROM pg_constraint con
         JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_class fc ON fc.oid = con.confrelid
         LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
         WHERE con.contype IN ('p', 'f') AND n.nspname = ANY($1)
         ORDER BY n.nspname, c.relname, con.conname",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await?;
    for row in constraints {
        let key = (row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
        let Some(table) = tables.get_mut(&key) else { continue };
        let columns: Vec<String> = row.try_get(4)?;
        if row.try_get::<String, _>(3)? == "p" {
            table.primary_key = columns;
        } else if let Some(referenced) = row.try_get::<Option<String>, _>(6)? {
            table.foreign_keys.push(ForeignKey {
                name: row.try_get(2)?,
                columns,
                referenced_table: referenced,
                referenced_columns: row.try_get(7)?,
            });
        }
    }
    Ok(tables.into_values().collect())
}

fn mysql_kind(data_type: &str, column_type: &str) -> ValueKind {
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => ValueKind::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => ValueKind::Integer,
        "decimal" => ValueKind::Decimal,
        "float" | "double" => ValueKind::Float,
        "bit" if column_type == "bit(1)" => ValueKind::Boolean,
        "date" => ValueKind::Date,
        "time" => ValueKind::Time,
        "datetime" => ValueKind::Timestamp,
        "timestamp" => ValueKind::TimestampTz,
        "json" => ValueKind::Json,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ValueKind::Binary,
        "uuid" => ValueKind::Uuid,
        _ => ValueKind::Text,
    }
}

async fn mysql(pool: &sqlx::MySqlPool, configured: &[String]) -> Result<Vec<Table>, sqlx::Error> {
    let schemas = if configured.is_empty() {
        let current: Option<String> = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
            .fetch_one(pool)
            .await?;
        current.into_iter().collect()
    } else {
        configured.to_vec()
    };
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    for schema in &schemas {
        let rows = sqlx::query(
            "SELECT CAST(c.TABLE_NAME AS CHAR), CAST(t.TABLE_TYPE AS CHAR), CAST(COALESCE(v.IS_UPDATABLE, 'YES') AS CHAR),
                    CAST(c.COLUMN_NAME AS CHAR), CAST(c.DATA_TYPE AS CHAR), CAST(c.COLUMN_TYPE AS CHAR),
                    CAST(c.IS_NULLABLE AS CHAR), CAST(c.COLUMN_DEFAULT AS CHAR), CAST(c.EXTRA AS CHAR)
             FROM information_schema.COLUMNS c
             JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
             LEFT JOIN information_schema.VIEWS v ON v.TABLE_SCHEMA = c.TABLE_SCHEMA AND v.TABLE_NAME = c.TABLE_NAME
             WHERE c.TABLE_SCHEMA = ?
             ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
        )
        .bind(schema)
        .fetch_all(pool)
        .await?;
        // MariaDB stores JSON as LONGTEXT guarded by CHECK (json_valid(`column`)).
        let checks: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(TABLE_NAME AS CHAR), CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ?",
        )
        .bind(schema)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        for row in rows {
            let name: String = row.try_get(0)?;
            let kind = if row.try_get::<String, _>(1)? == "VIEW" {
                RelationKind::View
            } else {
                RelationKind::Table
            };
            let updatable = row.try_get::<String, _>(2)? == "YES";
            let column_name: String = row.try_get(3)?;
            let data_type: String = row.try_get(4)?;
            let column_type: String = row.try_get(5)?;
            let extra: String = row.try_get::<Option<String>, _>(8)?.unwrap_or_default();
            let mut default: Option<String> = row.try_get::<Option<String>, _>(7)?.filter(|d| d != "NULL");
            if extra.contains("auto_increment") {
                default.get_or_insert_with(|| "auto_increment".to_owned());
            }
            let json_check = format!("json_valid(`{column_name}`)");
            let is_json = checks
                .iter()
                .any(|(table, clause)| *table == name && clause.contains(&json_check));
            let table = tables
                .entry((schema.clone(), name.clone()))
                .or_insert_with(|| new_table(schema.clone(), name, kind, updatable));
            table.columns.push(Column {
                name: column_name,
                kind: if is_json {
                    ValueKind::Json
                } else {
                    mysql_kind(&data_type, &column_type)
                },
                db_type: column_type,
                cast_type: String::new(),
                nullable: row.try_get::<String, _>(6)? == "YES",
                default,
                generated: extra.contains("GENERATED"),
            });
        }
        let keys = sqlx::query(
            "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR),
                    CAST(REFERENCED_TABLE_NAME AS CHAR), CAST(REFERENCED_COLUMN_NAME AS CHAR)
             FROM information_schema.KEY_COLUMN_USAGE
             WHERE TABLE_SCHEMA = ? AND (CONSTRAINT_NAME = 'PRIMARY' OR REFERENCED_TABLE_NAME IS NOT NULL)
             ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
        )
        .bind(schema)
        .fetch_all(pool)
        .await?;
        for row in keys {
            let key = (schema.clone(), row.try_get::<String, _>(0)?);
            let Some(table) = tables.get_mut(&key) else { continue };
            let constraint: String = row.try_get(1)?;
            let column: String = row.try_get(2)?;
            match row.try_get::<Option<String>, _>(3)? {
                None => table.primary_key.push(column),
                Some(referenced_table) => {
                    let referenced_column: String = row.try_get::<Option<String>, _>(4)?.unwrap_or_default();
                    match table.foreign_keys.iter_mut().find(|fk| fk.name == constraint) {
                        Some(fk) => {
                            fk.columns.push(column);
                            fk.referenced_columns.push(referenced_column);
                        }
                        None => table.foreign_keys.push(ForeignKey {
                            name: constraint,
                            columns: vec![column],
                            referenced_table,
                            referenced_columns: vec![referenced_column],
                        }),
                    }
                }
            }
        }
    }
    Ok(tables.into_values().collect())
}

fn sqlite_kind(declared: &str) -> ValueKind {
    let declared = declared.to_ascii_uppercase();
    if declared.contains("BOOL") {
        ValueKind::Boolean
    } else if declared.contains("INT") {
        ValueKind::Integer
    } else if declared.contains("DEC") || declared.contains("NUMERIC") {
        ValueKind::Decimal
    } else if declared.contains("REAL") || declared.contains("FLOA") || declared.contains("DOUB") {
        ValueKind::Float
    } else if declared.contains("TIMESTAMP") || declared.contains("DATETIME") {
        ValueKind::Timestamp
    } else if declared.contains("DATE") {
        ValueKind::Date
    } else if declared.contains("TIME") {
        ValueKind::Time
    } else if declared.contains("UUID") {
        ValueKind::Uuid
    } else if declared.contains("JSON") {
        ValueKind::Json
    } else if declared.contains("BLOB") {
        ValueKind::Binary
    } else {
        ValueKind::Text
    }
}

async fn sqlite(pool: &sqlx::SqlitePool) -> Result<Vec<Table>, sqlx::Error> {
    let objects: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut tables = Vec::new();
    for (name, object_type) in objects {
        // Views are read-only: SQLite updates them only through INSTEAD OF triggers.
        let kind = if object_type == "view" {
            RelationKind::View
        } else {
            RelationKind::Table
        };
        let mut table = new_table("main".to_owned(), name.clone(), kind, kind == RelationKind::Table);
        let columns = sqlx::query(
            r#"SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid"#,
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        let mut key: Vec<(i64, String)> = Vec::new();
        for row in columns {
            let column_name: String = row.try_get(0)?;
            let declared: String = row.try_get(1)?;
            let key_position: i64 = row.try_get(4)?;
            let hidden: i64 = row.try_get(5)?;
            if hidden == 1 {
                continue;
            }
            let mut default: Option<String> = row.try_get(3)?;
            // An INTEGER PRIMARY KEY is the rowid: SQLite assigns it.
            if key_position == 1 && declared.eq_ignore_ascii_case("INTEGER") {
                default.get_or_insert_with(|| "rowid".to_owned());
            }
            if key_position > 0 {
                key.push((key_position, column_name.clone()));
            }
            table.columns.push(Column {
                name: column_name,
                kind: sqlite_kind(&declared),
                db_type: if declared.is_empty() {
                    "ANY".to_owned()
                } else {
                    declared
                },
                cast_type: String::new(),
                nullable: row.try_get::<i64, _>(2)? == 0 && key_position == 0,
                default,
                generated: hidden == 2 || hidden == 3,
            });
        }
        key.sort();
        table.primary_key = key.into_iter().map(|(_, column)| column).collect();
        let fks = sqlx::query(r#"SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq"#)
            .bind(&name)
            .fetch_all(pool)
            .await?;
        for row in fks {
            let id: i64 = row.try_get(0)?;
            let constraint = format!("{name}_fk{id}");
            let referenced_table: String = row.try_get(1)?;
            let column: String = row.try_get(2)?;
            let referenced: Option<String> = row.try_get(3)?;
            let referenced = referenced.unwrap_or_default();
            match table.foreign_keys.iter_mut().find(|fk| fk.name == constraint) {
                Some(fk) => {
                    fk.columns.push(column);
                    fk.referenced_columns.push(referenced);
                }
                None => table.foreign_keys.push(ForeignKey {
                    name: constraint,
                    columns: vec![column],
                    referenced_table,
                    referenced_columns: vec![referenced],
                }),
            }
        }
        tables.push(table);
    }
    // A foreign key written without columns references the primary key.
    let keys: BTreeMap<String, Vec<String>> = tables.iter().map(|t| (t.name.clone(), t.primary_key.clone())).collect();
    for table in &mut tables {
        for fk in &mut table.foreign_keys {
            if fk.referenced_columns.iter().any(String::is_empty)
                && let Some(primary_key) = keys.get(&fk.referenced_table)
            {
                fk.referenced_columns = primary_key.clone();
            }
        }
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(include: &[&str], exclude: &[&str]) -> DatabaseConfig {
        DatabaseConfig {
            engine: sluice_crds::dataapi::Engine::Sqlite,
            url_env: None,
            path: None,
            schemas: vec!["main".into()],
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            read_only: false,
            pool: Default::default(),
            schema_refresh_seconds: None,
        }
    }

    #[test]
    fn include_and_exclude_globs_pick_tables() {
        let exposure = Exposure::new(&config(&["orders*", "customers"], &["*_audit"])).expect("globs compile");
        assert!(exposure.exposes("public", "orders"));
        assert!(!exposure.exposes("public", "order_items"));
        assert!(exposure.exposes("public", "customers"));
        assert!(!exposure.exposes("public", "orders_audit"));
        let everything = Exposure::new(&config(&[], &["public.secret"])).expect("globs compile");
        assert!(everything.exposes("public", "anything"));
        assert!(!everything.exposes("public", "secret"));
    }

    #[test]
    fn an_invalid_glob_names_the_field() {
        let error = Exposure::new(&config(&["[oops"], &[])).err().expect("invalid glob");
        assert!(error.to_string().contains("spec.database.include"));
    }
}
