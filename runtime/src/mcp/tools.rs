//! The tool list a caller sees, with input and output JSON Schemas derived from its role's view
//! of the live schema: table and column names are enums, so an agent cannot even name what it
//! may not read.

use std::collections::BTreeSet;
use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};
use sluice_crds::RuntimeConfig;
use sluice_crds::apirole::Verb;

use crate::authz::{Access, verb_name};
use crate::schema::{Column, RelationKind, Schema, Table, ValueKind};

use super::named;

/// Built-in tool names; a named query cannot take one.
pub const LIST_TABLES: &str = "list_tables";
pub const DESCRIBE_TABLE: &str = "describe_table";
pub const QUERY_ROWS: &str = "query_rows";
pub const GET_ROW: &str = "get_row";
pub const COUNT_ROWS: &str = "count_rows";
pub const INSERT_ROWS: &str = "insert_rows";
pub const UPDATE_ROWS: &str = "update_rows";
pub const DELETE_ROWS: &str = "delete_rows";

/// Every built-in tool name, as the DataApi's resolution reserves them.
pub use sluice_crds::dataapi::BUILT_IN_TOOLS as BUILT_IN;

/// Filter operators an agent may use, as in REST (`col=op.value`).
const OPERATORS: [&str; 10] = ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"];

/// The server's instructions to agents.
pub fn instructions(config: &RuntimeConfig) -> String {
    format!(
        "This server is the Sluice DataApi {name}: governed access to a {engine} database. You see only the tables, \
         columns and rows your credentials' role may see, and you never write SQL. Start with list_tables, then \
         describe_table for columns and types. Read with query_rows (structured filters, select, order, limit, \
         offset), get_row (by primary key) and count_rows. One call returns at most {max_rows} rows; when a result \
         says \"truncated\": true, call again with offset set to its nextOffset. Write tools (insert_rows, \
         update_rows, delete_rows) appear only when your role may write; update and delete always need a filter. \
         Named queries, when the API defines them, are tools of their own with typed parameters.",
        name = config.data_api,
        engine = config.database.engine.as_str(),
        max_rows = config.mcp.max_rows,
    )
}

/// The tools `access` may use over `view`.
pub fn catalogue(config: &RuntimeConfig, view: &Schema, access: &Access<'_>) -> Vec<Tool> {
    let readable: Vec<&str> = view.tables.keys().map(String::as_str).collect();
    let columns = all_columns(view.tables.values());
    let max_rows = config.mcp.max_rows;
    let mut tools = vec![
        tool(
            LIST_TABLES,
            "List the tables and views you may read, with their columns and the verbs your role has on each.",
            object(json!({}), &[]),
            object(
                json!({ "tables": { "type": "array", "items": { "type": "object" } } }),
                &["tables"],
            ),
            read_only(),
        ),
        tool(
            DESCRIBE_TABLE,
            "Describe one table: its columns (name, type, nullability, default), primary key, foreign keys and \
             the verbs your role has on it. Call this before filtering or writing.",
            object(json!({ "table": table_enum(&readable) }), &["table"]),
            table_description_schema(),
            read_only(),
        ),
        tool(
            QUERY_ROWS,
            &format!(
                "Read rows of one table. Filters all must hold; select names the columns to return (default all); \
                 order sorts; limit (at most {max_rows}) and offset page. The result says truncated: true with a \
                 nextOffset when more rows match."
            ),
            object(
                json!({
                    "table": table_enum(&readable),
                    "select": {
                        "type": "array", "items": column_enum(&columns), "uniqueItems": true,
                        "description": "Columns to return; omit for all visible columns."
                    },
                    "filters": filters_schema(&columns, "Conditions that must all hold; omit for every row."),
                    "order": {
                        "type": "array",
                        "description": "Sort keys, most significant first; default is the primary key.",
                        "items": object(json!({
                            "column": column_enum(&columns),
                            "descending": { "type": "boolean", "default": false },
                            "nullsFirst": { "type": "boolean", "description": "Default: NULLs last ascending, first descending." }
                        }), &["column"])
                    },
                    "limit": { "type": "integer", "minimum": 0, "maximum": max_rows, "description": "Rows to return." },
                    "offset": { "type": "integer", "minimum": 0, "default": 0, "description": "Rows to skip." }
                }),
                &["table"],
            ),
            rows_schema(),
            read_only(),
        ),
        tool(
            COUNT_ROWS,
            "Count the rows of one table that match the filters.",
            object(
                json!({
                    "table": table_enum(&readable),
                    "filters": filters_schema(&columns, "Conditions that must all hold; omit to count every row.")
                }),
                &["table"],
            ),
            object(json!({ "count": { "type": "integer" } }), &["count"]),
            read_only(),
        ),
    ];
    let keyed: Vec<&str> = view
        .tables
        .values()
        .filter(|table| !table.primary_key.is_empty())
        .map(|table| table.name.as_str())
        .collect();
    if !keyed.is_empty() {
        tools.push(tool(
            GET_ROW,
            "Read one row by its primary key, e.g. {\"table\": \"orders\", \"key\": {\"id\": 7}}.",
            object(
                json!({
                    "table": table_enum(&keyed),
                    "key": key_schema(),
                    "select": { "type": "array", "items": column_enum(&columns), "uniqueItems": true }
                }),
                &["table", "key"],
            ),
            object(json!({ "row": { "type": "object" } }), &["row"]),
            read_only(),
        ));
    }
    let writable = |verb| writable_tables(config, view, access, verb);
    let creatable = writable(Verb::Create);
    if !creatable.is_empty() {
        tools.push(tool(
            INSERT_ROWS,
            "Insert rows into one table. Every row must have the same keys; the inserted rows are returned.",
            object(
                json!({
                    "table": table_enum(&creatable),
                    "rows": { "type": "array", "minItems": 1, "items": { "type": "object", "description": "Column name to value." } }
                }),
                &["table", "rows"],
            ),
            written_schema("inserted"),
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(false)
                .open_world(false),
        ));
    }
    let updatable = writable(Verb::Update);
    if !updatable.is_empty() {
        tools.push(tool(
            UPDATE_ROWS,
            "Change columns of the rows of one table that match the filters (at least one filter is required); \
             the changed rows are returned.",
            object(
                json!({
                    "table": table_enum(&updatable),
                    "set": { "type": "object", "minProperties": 1, "description": "Column name to new value." },
                    "filters": required(filters_schema(&columns, "Which rows to change; at least one."))
                }),
                &["table", "set", "filters"],
            ),
            written_schema("updated"),
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true)
                .open_world(false),
        ));
    }
    let deletable = writable(Verb::Delete);
    if !deletable.is_empty() {
        tools.push(tool(
            DELETE_ROWS,
            "Delete the rows of one table that match the filters (at least one filter is required); the deleted \
             rows are returned.",
            object(
                json!({
                    "table": table_enum(&deletable),
                    "filters": required(filters_schema(&columns, "Which rows to delete; at least one."))
                }),
                &["table", "filters"],
            ),
            written_schema("deleted"),
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true)
                .open_world(false),
        ));
    }
    tools.extend(named::tools(config, access));
    tools
}

/// Whether [`catalogue`] lists tool `name` for `access` over `view`, decided without building
/// the tools' schemas: every tool call asks, and the schemas cost more than the call itself.
pub fn offers(config: &RuntimeConfig, view: &Schema, access: &Access<'_>, name: &str) -> bool {
    let writable = |verb| !writable_tables(config, view, access, verb).is_empty();
    match name {
        LIST_TABLES | DESCRIBE_TABLE | QUERY_ROWS | COUNT_ROWS => true,
        GET_ROW => view.tables.values().any(|table| !table.primary_key.is_empty()),
        INSERT_ROWS => writable(Verb::Create),
        UPDATE_ROWS => writable(Verb::Update),
        DELETE_ROWS => writable(Verb::Delete),
        _ => named::find(config, access, name).is_some(),
    }
}

/// Tables on which the role has `verb` and the database takes writes.
pub fn writable_tables<'v>(config: &RuntimeConfig, view: &'v Schema, access: &Access<'_>, verb: Verb) -> Vec<&'v str> {
    if config.database.read_only {
        return Vec::new();
    }
    view.tables
        .values()
        .filter(|table| table.updatable && access.may(&table.name, verb))
        .map(|table| table.name.as_str())
        .collect()
}

/// The verbs the role has on `table`, as rules spell them.
pub fn verbs(config: &RuntimeConfig, table: &Table, access: &Access<'_>) -> Vec<&'static str> {
    [Verb::Read, Verb::Create, Verb::Update, Verb::Delete]
        .into_iter()
        .filter(|verb| access.may(&table.name, *verb))
        .filter(|verb| *verb == Verb::Read || (!config.database.read_only && table.updatable))
        .map(verb_name)
        .collect()
}

/// A table as `describe_table` and the table resources show it.
pub fn describe(config: &RuntimeConfig, table: &Table, access: &Access<'_>) -> Value {
    json!({
        "name": table.name,
        "kind": match table.kind { RelationKind::Table => "table", RelationKind::View => "view" },
        "columns": table.columns.iter().map(|column| json!({
            "name": column.name,
            "type": column.db_type,
            "jsonType": value_schema(column),
            "nullable": column.nullable,
            "default": column.default,
            "generated": column.generated,
        })).collect::<Vec<_>>(),
        "primaryKey": table.primary_key,
        "foreignKeys": table.foreign_keys.iter().map(|fk| json!({
            "columns": fk.columns,
            "references": { "table": fk.referenced_table, "columns": fk.referenced_columns },
        })).collect::<Vec<_>>(),
        "verbs": verbs(config, table, access),
    })
}

/// A summary line of a table for `list_tables`.
pub fn summarize(config: &RuntimeConfig, table: &Table, access: &Access<'_>) -> Value {
    json!({
        "name": table.name,
        "kind": match table.kind { RelationKind::Table => "table", RelationKind::View => "view" },
        "columns": table.columns.iter().map(|column| column.name.as_str()).collect::<Vec<_>>(),
        "primaryKey": table.primary_key,
        "verbs": verbs(config, table, access),
    })
}

fn tool(name: &'static str, description: &str, input: Value, output: Value, annotations: ToolAnnotations) -> Tool {
    Tool::new(name, description.to_owned(), as_object(input))
        .with_raw_output_schema(Arc::new(as_object(output)))
        .with_annotations(annotations)
}

/// A JSON object schema value as rmcp's map type.
pub fn as_object(schema: Value) -> JsonObject {
    match schema {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn read_only() -> ToolAnnotations {
    ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false)
}

/// An object schema with these properties that refuses any other.
pub fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn all_columns<'t>(tables: impl Iterator<Item = &'t Table>) -> Vec<&'t str> {
    let names: BTreeSet<&str> = tables
        .flat_map(|table| table.columns.iter().map(|column| column.name.as_str()))
        .collect();
    names.into_iter().collect()
}

fn table_enum(tables: &[&str]) -> Value {
    json!({ "type": "string", "enum": tables, "description": "A table or view name from list_tables." })
}

fn column_enum(columns: &[&str]) -> Value {
    json!({ "type": "string", "enum": columns, "description": "A column of the table (see describe_table)." })
}

fn filter_value_schema() -> Value {
    json!({
        "type": ["string", "number", "boolean", "null", "array"],
        "description": "The value to compare with: an array for in, null/true/false for is."
    })
}

fn filters_schema(columns: &[&str], description: &str) -> Value {
    json!({
        "type": "array",
        "description": description,
        "items": object(json!({
            "column": column_enum(columns),
            "op": {
                "type": "string", "enum": OPERATORS,
                "description": "eq, neq, gt, gte, lt, lte; like/ilike with * or % as wildcard; in takes an array; is takes null, true or false."
            },
            "value": filter_value_schema(),
            "negate": { "type": "boolean", "default": false, "description": "Negate the condition." }
        }), &["column", "op", "value"]),
    })
}

/// `schema` (an array schema) with at least one item.
fn required(mut schema: Value) -> Value {
    schema["minItems"] = json!(1);
    schema
}

fn key_schema() -> Value {
    json!({
        "type": "object",
        "minProperties": 1,
        "description": "Each primary-key column and its value.",
        "additionalProperties": { "type": ["string", "number", "boolean"] }
    })
}

fn rows_schema() -> Value {
    object(
        json!({
            "rows": { "type": "array", "items": { "type": "object" } },
            "returned": { "type": "integer" },
            "truncated": { "type": "boolean" },
            "nextOffset": { "type": "integer", "description": "Offset of the next page, when truncated." },
            "hint": { "type": "string" }
        }),
        &["rows", "returned", "truncated"],
    )
}

fn written_schema(count: &str) -> Value {
    let mut properties = json!({
        "rows": { "type": "array", "items": { "type": "object" } },
        "returned": { "type": "integer" },
        "truncated": { "type": "boolean" },
        "hint": { "type": "string" }
    });
    properties[count] = json!({ "type": "integer" });
    object(properties, &[count, "rows", "returned", "truncated"])
}

fn table_description_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "kind": { "type": "string", "enum": ["table", "view"] },
            "columns": { "type": "array", "items": { "type": "object" } },
            "primaryKey": { "type": "array", "items": { "type": "string" } },
            "foreignKeys": { "type": "array", "items": { "type": "object" } },
            "verbs": { "type": "array", "items": { "type": "string" } }
        },
        "required": ["name", "kind", "columns", "primaryKey", "foreignKeys", "verbs"]
    })
}

/// The JSON Schema of a column's values as rows carry them.
fn value_schema(column: &Column) -> Value {
    let mut schema = match column.kind {
        ValueKind::Integer => json!({ "type": "integer" }),
        ValueKind::Decimal | ValueKind::Float => json!({ "type": "number" }),
        ValueKind::Boolean => json!({ "type": "boolean" }),
        ValueKind::Text => json!({ "type": "string" }),
        ValueKind::Date => json!({ "type": "string", "format": "date" }),
        ValueKind::Time => json!({ "type": "string", "format": "time" }),
        ValueKind::Timestamp | ValueKind::TimestampTz => json!({ "type": "string", "format": "date-time" }),
        ValueKind::Uuid => json!({ "type": "string", "format": "uuid" }),
        ValueKind::Json => json!({}),
        ValueKind::Array => json!({ "type": "array" }),
        ValueKind::Binary => json!({ "type": "string", "contentEncoding": "base64" }),
    };
    if column.nullable
        && let Some(kind) = schema.get("type").cloned()
    {
        schema["type"] = json!([kind, "null"]);
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_tool_is_reserved_from_named_queries() {
        assert_eq!(
            BUILT_IN,
            [
                LIST_TABLES,
                DESCRIBE_TABLE,
                QUERY_ROWS,
                GET_ROW,
                COUNT_ROWS,
                INSERT_ROWS,
                UPDATE_ROWS,
                DELETE_ROWS
            ]
        );
    }
}
