//! The OpenAPI 3.1 document describing the API as one role sees it, built from the live schema:
//! only the tables it may read, the columns it may see, and the operations it may call.

use serde_json::{Value, json};
use sluice_crds::RuntimeConfig;
use sluice_crds::apirole::Verb;

use crate::authz::Access;
use crate::schema::{Column, RelationKind, Schema, Table, ValueKind};

fn value_schema(column: &Column) -> Value {
    let (kind, format) = match column.kind {
        ValueKind::Integer => ("integer", Some("int64")),
        ValueKind::Decimal => ("number", None),
        ValueKind::Float => ("number", Some("double")),
        ValueKind::Boolean => ("boolean", None),
        ValueKind::Date => ("string", Some("date")),
        ValueKind::Time => ("string", Some("time")),
        ValueKind::Timestamp | ValueKind::TimestampTz => ("string", Some("date-time")),
        ValueKind::Uuid => ("string", Some("uuid")),
        ValueKind::Binary => ("string", Some("byte")),
        ValueKind::Text => ("string", None),
        ValueKind::Json => {
            return json!({ "description": format!("JSON ({})", column.db_type) });
        }
        ValueKind::Array => ("array", None),
    };
    let mut schema = json!({ "type": if column.nullable { json!([kind, "null"]) } else { json!(kind) } });
    if let Some(format) = format {
        schema["format"] = json!(format);
    }
    let mut description = format!("Database type: {}.", column.db_type);
    if column.kind == ValueKind::Decimal {
        description.push_str(" Rendered as a JSON number with every stored digit; parse it with an arbitrary-precision reader when exactness matters.");
    }
    schema["description"] = json!(description);
    if column.generated {
        schema["readOnly"] = json!(true);
    }
    schema
}

fn row_schema(table: &Table) -> Value {
    let properties: serde_json::Map<String, Value> = table
        .columns
        .iter()
        .map(|c| (c.name.clone(), value_schema(c)))
        .collect();
    let required: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| !c.nullable && c.default.is_none() && !c.generated)
        .map(|c| c.name.as_str())
        .collect();
    let mut description = match table.kind {
        RelationKind::Table => format!("A row of table {}.", table.name),
        RelationKind::View => format!("A row of view {}.", table.name),
    };
    if !table.primary_key.is_empty() {
        description.push_str(&format!(" Primary key: {}.", table.primary_key.join(", ")));
    }
    json!({ "type": "object", "description": description, "properties": properties, "required": required })
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn rows_response(table: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": format!("#/components/schemas/{table}") } } } }
    })
}

fn filter_parameters(table: &Table) -> Vec<Value> {
    table
        .columns
        .iter()
        .map(|column| {
            json!({
                "name": column.name,
                "in": "query",
                "required": false,
                "description": format!("Filter on {}: operator.value, e.g. eq.1, in.(1,2), is.null, not.like.a*", column.name),
                "schema": { "type": "string" }
            })
        })
        .collect()
}

fn common_parameter(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// The writes a role may make on a table, each offered only when allowed.
#[derive(Clone, Copy, Debug)]
struct Writes {
    create: bool,
    update: bool,
    delete: bool,
}

fn table_paths(table: &Table, max_page_size: u32, writes: Writes) -> (Value, Option<Value>) {
    let name = &table.name;
    let tag = json!([name]);
    let mut read_parameters = vec![
        common_parameter("select"),
        common_parameter("order"),
        common_parameter("limit"),
        common_parameter("offset"),
        common_parameter("range"),
        common_parameter("prefer"),
    ];
    read_parameters.extend(filter_parameters(table));
    let mut filter_only = vec![common_parameter("prefer"), common_parameter("select")];
    filter_only.extend(filter_parameters(table));
    let body = |description: &str| {
        json!({
            "required": true,
            "description": description,
            "content": { "application/json": { "schema": { "oneOf": [
                { "$ref": format!("#/components/schemas/{name}") },
                { "type": "array", "items": { "$ref": format!("#/components/schemas/{name}") } }
            ] } } }
        })
    };
    let mut collection = json!({
        "get": {
            "tags": tag, "operationId": format!("list_{name}"),
            "summary": format!("Read rows of {name}"),
            "description": format!("At most {max_page_size} rows per request; larger limits are clamped. Content-Range tells which rows were returned, and the total with Prefer: count=exact."),
            "parameters": read_parameters,
            "responses": {
                "200": rows_response(name, "The rows"),
                "400": error_response("Invalid query"), "404": error_response("Unknown table"), "503": error_response("Database unavailable")
            }
        }
    });
    if writes.create {
        collection["post"] = json!({
            "tags": tag, "operationId": format!("create_{name}"), "summary": format!("Insert rows into {name}"),
            "parameters": [common_parameter("prefer"), common_parameter("select"), common_parameter("on_conflict"), common_parameter("columns")],
            "requestBody": body("One row or an array of rows with the same keys"),
            "responses": {
                "201": rows_response(name, "Created; the rows are returned with Prefer: return=representation"),
                "400": error_response("Invalid row"), "409": error_response("Conflicting row"), "413": error_response("Body too large")
            }
        });
    }
    if writes.update {
        collection["patch"] = json!({
            "tags": tag, "operationId": format!("update_{name}"), "summary": format!("Update the rows of {name} matching the filters (at least one filter is required)"),
            "parameters": filter_only,
            "requestBody": body("The columns to change"),
            "responses": { "200": rows_response(name, "Updated rows (Prefer: return=representation)"), "204": { "description": "Updated" }, "400": error_response("Invalid request or no filter") }
        });
    }
    if writes.delete {
        collection["delete"] = json!({
            "tags": tag, "operationId": format!("delete_{name}"), "summary": format!("Delete the rows of {name} matching the filters (at least one filter is required)"),
            "parameters": filter_only,
            "responses": { "200": rows_response(name, "Deleted rows (Prefer: return=representation)"), "204": { "description": "Deleted" }, "400": error_response("Invalid request or no filter") }
        });
    }
    if table.primary_key.is_empty() {
        return (collection, None);
    }
    let key_description = format!(
        "Primary key ({}), comma-separated when composite",
        table.primary_key.join(", ")
    );
    let key_parameter = json!({ "name": "key", "in": "path", "required": true, "description": key_description, "schema": { "type": "string" } });
    let row_ref = json!({ "$ref": format!("#/components/schemas/{name}") });
    let one_row = json!({ "description": "The row", "content": { "application/json": { "schema": row_ref } } });
    let mut item = json!({
        "get": {
            "tags": tag, "operationId": format!("get_{name}"), "summary": format!("Read one row of {name} by primary key"),
            "parameters": [key_parameter, common_parameter("select")],
            "responses": { "200": one_row, "404": error_response("No such row") }
        }
    });
    let single_body = json!({ "required": true, "content": { "application/json": { "schema": row_ref } } });
    if writes.update {
        item["patch"] = json!({
            "tags": tag, "operationId": format!("update_{name}_by_key"), "summary": format!("Update one row of {name}"),
            "parameters": [key_parameter, common_parameter("prefer"), common_parameter("select")], "requestBody": single_body,
            "responses": { "200": one_row, "204": { "description": "Updated" }, "404": error_response("No such row") }
        });
    }
    if writes.create && writes.update {
        item["put"] = json!({
            "tags": tag, "operationId": format!("replace_{name}_by_key"), "summary": format!("Create or replace one row of {name}"),
            "parameters": [key_parameter, common_parameter("prefer"), common_parameter("select")], "requestBody": single_body,
            "responses": { "200": one_row, "204": { "description": "Written" }, "400": error_response("Invalid row") }
        });
    }
    if writes.delete {
        item["delete"] = json!({
            "tags": tag, "operationId": format!("delete_{name}_by_key"), "summary": format!("Delete one row of {name}"),
            "parameters": [key_parameter, common_parameter("prefer"), common_parameter("select")],
            "responses": { "200": one_row, "204": { "description": "Deleted" }, "404": error_response("No such row") }
        });
    }
    (collection, Some(item))
}

/// The OpenAPI 3.1 document for `schema` as served under `config` to a caller with `access`.
pub fn document(config: &RuntimeConfig, schema: &Schema, access: &Access<'_>) -> Value {
    let base = crate::app::base_path(config);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let view = access.view(schema);
    for table in view.tables.values() {
        let writable = !config.database.read_only && table.updatable;
        let writes = Writes {
            create: writable && access.may(&table.name, Verb::Create),
            update: writable && access.may(&table.name, Verb::Update),
            delete: writable && access.may(&table.name, Verb::Delete),
        };
        let (collection, item) = table_paths(table, config.rest.max_page_size, writes);
        paths.insert(format!("/{}", table.name), collection);
        if let Some(item) = item {
            paths.insert(format!("/{}/{{key}}", table.name), item);
        }
        schemas.insert(table.name.clone(), row_schema(table));
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": { "type": "string", "description": "Stable machine-readable code" },
                "message": { "type": "string" },
                "details": { "type": ["string", "null"] },
                "hint": { "type": ["string", "null"], "description": "What to do about it" }
            }
        }),
    );
    let text = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("{} data API", config.data_api.name),
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "REST API over the {} database of DataApi {}, served by Sluice. Query grammar follows PostgREST. \
                 Integers and decimals are JSON numbers carrying every digit the database stores; timestamps are RFC 3339 strings; \
                 binary columns are base64 strings (hex on SQLite). Every response carries an x-request-id header.",
                config.database.engine.as_str(), config.data_api
            )
        },
        "servers": [{ "url": if base.is_empty() { "/".to_owned() } else { base } }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {
                "select": { "name": "select", "in": "query", "schema": text("Columns, renames (alias:column) and embedded related tables: id,name,orders(id,total)") },
                "order": { "name": "order", "in": "query", "schema": text("column.asc|desc[.nullsfirst|.nullslast], comma-separated") },
                "limit": { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "description": format!("Rows to return (default {}, at most {}; larger values are clamped)", config.rest.default_page_size, config.rest.max_page_size) } },
                "offset": { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                "range": { "name": "Range", "in": "header", "schema": text("Rows first-last, e.g. 0-24 (Range-Unit: items)") },
                "prefer": { "name": "Prefer", "in": "header", "schema": text("return=representation|minimal, count=exact, resolution=merge-duplicates|ignore-duplicates") },
                "on_conflict": { "name": "on_conflict", "in": "query", "schema": text("Unique columns that identify duplicates when upserting (default: the primary key)") },
                "columns": { "name": "columns", "in": "query", "schema": text("Body keys to insert; missing keys become null") }
            },
            "securitySchemes": {
                "apiKey": { "type": "apiKey", "in": "header", "name": config.auth.api_key_header }
            }
        }
    })
}
