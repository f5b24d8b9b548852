//! The CRD reference in Markdown (field, type, default, description), generated from the same
//! schema the API server enforces, so the docs cannot drift from the types.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

/// Where the reference is committed, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/crd-reference.md";

/// The reference for `crds`, one section per kind and one table row per field.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# CRD reference\n\nGenerated from the Rust types in `crds/src` by `cargo run -p sluice-crds --bin crdgen`; do not edit.\n\
         Fields are written as paths; `[]` marks the items of a list. `kubectl explain` shows the same text.\n",
    );
    for crd in crds {
        let version = &crd.spec.versions[0];
        let _ = write!(
            out,
            "\n## {} (`{}/{}`)\n\n",
            crd.spec.names.kind, crd.spec.group, version.name
        );
        let Some(root) = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) else {
            continue;
        };
        if let Some(description) = &root.description {
            let _ = writeln!(out, "{}\n", one_line(description));
        }
        out.push_str("| Field | Type | Default | Description |\n|---|---|---|---|\n");
        for section in ["spec", "status"] {
            if let Some(schema) = root.properties.as_ref().and_then(|p| p.get(section)) {
                rows(&mut out, section, schema, is_required(root, section));
            }
        }
    }
    out
}

fn is_required(parent: &JSONSchemaProps, name: &str) -> bool {
    parent.required.iter().flatten().any(|r| r == name)
}

fn rows(out: &mut String, path: &str, schema: &JSONSchemaProps, required: bool) {
    let default = schema
        .default
        .as_ref()
        .map(|d| format!("`{}`", d.0))
        .unwrap_or_default();
    let description = schema.description.as_deref().map(one_line).unwrap_or_default();
    let required = if required { " (required)" } else { "" };
    let _ = writeln!(
        out,
        "| `{path}` | {}{required} | {default} | {} |",
        type_of(schema),
        escape(&description)
    );
    if let Some(properties) = &schema.properties {
        for (name, child) in properties {
            rows(out, &format!("{path}.{name}"), child, is_required(schema, name));
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items
        && items.properties.is_some()
    {
        for (name, child) in items.properties.iter().flatten() {
            rows(out, &format!("{path}[].{name}"), child, is_required(items, name));
        }
    }
}

fn type_of(schema: &JSONSchemaProps) -> String {
    if let Some(values) = &schema.enum_ {
        let values: Vec<String> = values
            .iter()
            .map(|v| v.0.to_string().trim_matches('"').to_owned())
            .collect();
        return format!("enum: {}", values.join(", "));
    }
    match (schema.type_.as_deref(), &schema.items) {
        (Some("array"), Some(JSONSchemaPropsOrArray::Schema(items))) => format!("list of {}", type_of(items)),
        (Some(type_), _) => type_.to_owned(),
        (None, _) if schema.x_kubernetes_int_or_string == Some(true) => "integer or string".to_owned(),
        (None, _) => "any".to_owned(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}
