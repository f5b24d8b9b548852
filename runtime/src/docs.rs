//! A human-readable docs page rendered on the server from the OpenAPI document: no scripts,
//! no fonts, nothing fetched from the internet, so it works air-gapped.

use serde_json::Value;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
code{background:#f3f3f3;padding:0 .2rem}table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}\
td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}\
.m{font-weight:bold;font-family:monospace;display:inline-block;min-width:4rem}section{margin-bottom:2rem}";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn type_label(schema: &Value) -> String {
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        Some(Value::String(kind)) => kind.clone(),
        _ => "any JSON".to_owned(),
    };
    match schema.get("format").and_then(Value::as_str) {
        Some(format) => format!("{kind} ({format})"),
        None => kind,
    }
}

/// The page for `document`.
pub fn render(document: &Value) -> String {
    let info = &document["info"];
    let base = document["servers"][0]["url"].as_str().unwrap_or("/");
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>\
         <h1>{title}</h1><p>{description}</p><p>Machine-readable: <a href=\"{base}/openapi.json\">{base}/openapi.json</a></p>",
        title = escape(text(info, "title")),
        description = escape(text(info, "description")),
        base = escape(base.trim_end_matches('/')),
    );
    let schemas = &document["components"]["schemas"];
    if let Some(paths) = document["paths"].as_object() {
        for (path, operations) in paths {
            html.push_str(&format!(
                "<section><h2><code>{}{}</code></h2>",
                escape(base.trim_end_matches('/')),
                escape(path)
            ));
            for (method, operation) in operations.as_object().into_iter().flatten() {
                html.push_str(&format!(
                    "<p><span class=\"m\">{}</span> {}</p>",
                    escape(&method.to_uppercase()),
                    escape(text(operation, "summary"))
                ));
            }
            if !path.contains('{') {
                let name = path.trim_start_matches('/');
                if let Some(properties) = schemas[name]["properties"].as_object() {
                    html.push_str(&format!(
                        "<p>{}</p><table><tr><th>Column</th><th>Type</th><th>Notes</th></tr>",
                        escape(text(&schemas[name], "description"))
                    ));
                    for (column, schema) in properties {
                        html.push_str(&format!(
                            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                            escape(column),
                            escape(&type_label(schema)),
                            escape(text(schema, "description"))
                        ));
                    }
                    html.push_str("</table>");
                }
            }
            html.push_str("</section>");
        }
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names_from_the_database() {
        let document = serde_json::json!({
            "info": { "title": "t", "description": "d" },
            "servers": [{ "url": "/api" }],
            "paths": { "/<script>": { "get": { "summary": "x" } } },
            "components": { "schemas": {} }
        });
        let page = render(&document);
        assert!(page.contains("/api/&lt;script&gt;"));
        assert!(!page.contains("<script>"));
    }
}
