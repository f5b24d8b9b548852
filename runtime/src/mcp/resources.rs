//! Resources: each table the caller may read, described as `describe_table` describes it, for
//! clients that browse resources instead of calling tools.

use rmcp::model::{ErrorData, ReadResourceResult, Resource, ResourceContents};
use serde_json::json;
use sluice_crds::RuntimeConfig;

use crate::authz::Access;
use crate::schema::Schema;

use super::tools;

/// Prefix of table resource URIs: `sluice://tables/<table>`.
const TABLE_URI_PREFIX: &str = "sluice://tables/";

const JSON: &str = "application/json";

/// The caller's table resources.
pub fn list(view: &Schema) -> Vec<Resource> {
    view.tables
        .values()
        .map(|table| {
            Resource::new(format!("{TABLE_URI_PREFIX}{}", table.name), table.name.clone())
                .with_title(format!("Table {}", table.name))
                .with_description(format!(
                    "Columns, keys and your role's verbs on \"{}\" ({} columns)",
                    table.name,
                    table.columns.len()
                ))
                .with_mime_type(JSON)
        })
        .collect()
}

/// Reads one table resource; a table the caller may not read is as unknown as one that does
/// not exist.
pub fn read(
    config: &RuntimeConfig,
    view: &Schema,
    access: &Access<'_>,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let table = uri
        .strip_prefix(TABLE_URI_PREFIX)
        .and_then(|name| view.tables.get(name))
        .ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("no resource {uri}; resources/list names the tables you may read"),
                Some(json!({ "uri": uri })),
            )
        })?;
    let text = tools::describe(config, table, access).to_string();
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type(JSON),
    ]))
}
