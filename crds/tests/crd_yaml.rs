//! The committed CRD YAML must be exactly what the Rust types generate, and be a structural
//! `apiextensions.k8s.io/v1` schema carrying our printer columns and CEL rules.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;
use sluice_crds::crdgen::{REGENERATE_COMMAND, crds, drift, render};

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run `{REGENERATE_COMMAND}`", path.display()))
}

#[test]
fn committed_yaml_matches_the_rust_types() {
    for (crd, paths) in crds() {
        for path in paths {
            let differences = drift(&repo_file(path), &crd).unwrap();
            assert!(
                differences.is_empty(),
                "{path} has drifted from the Rust types; run `{REGENERATE_COMMAND}`:\n{}",
                differences.join("\n")
            );
        }
    }
}

#[test]
fn committed_reference_matches_the_rust_types() {
    let definitions: Vec<_> = crds().into_iter().map(|(crd, _)| crd).collect();
    assert!(
        repo_file(sluice_crds::reference::REFERENCE_PATH) == sluice_crds::reference::markdown(&definitions),
        "{} has drifted from the Rust types; run `{REGENERATE_COMMAND}`",
        sluice_crds::reference::REFERENCE_PATH
    );
}

#[test]
fn drift_check_catches_a_field_added_without_regenerating() {
    let (crd, _) = crds().remove(0);
    let committed = render(&crd);
    let mut with_new_field = crd.clone();
    let spec = with_new_field.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|root| root.properties.as_mut())
        .and_then(|props| props.get_mut("spec"))
        .and_then(|spec| spec.properties.as_mut())
        .expect("DataApi has a spec schema");
    spec.insert(
        "newField".into(),
        JSONSchemaProps {
            type_: Some("string".into()),
            ..Default::default()
        },
    );

    let differences = drift(&committed, &with_new_field).unwrap();

    assert_eq!(
        differences,
        [
            ".spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.newField: in the Rust types but not in the committed YAML"
        ]
    );
    assert!(drift(&committed, &crd).unwrap().is_empty());
}

#[test]
fn drift_check_catches_a_changed_value_and_a_removed_field() {
    let (crd, _) = crds().remove(1);
    let committed = render(&crd).replace("shortNames:\n    - arole", "shortNames:\n    - role");
    let mut without_status = crd.clone();
    without_status.spec.versions[0].subresources = None;

    let differences = drift(&committed, &without_status).unwrap();

    assert_eq!(differences.len(), 2, "{differences:#?}");
    assert!(
        differences[0].starts_with(".spec.names.shortNames[0]: committed \"role\""),
        "{differences:#?}"
    );
    assert_eq!(
        differences[1],
        ".spec.versions[0].subresources: in the committed YAML but not in the Rust types"
    );
}

fn schema_of(path: &str) -> (Value, Value) {
    let crd: Value = serde_yaml::from_str(&repo_file(path)).unwrap();
    let version = crd["spec"]["versions"][0].clone();
    (crd, version)
}

/// Kubernetes structural schemas: every property and array item carries a type, except nodes
/// that preserve unknown fields or are int-or-string.
fn untyped_nodes(schema: &Value, path: &str, out: &mut Vec<String>) {
    let exempt = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if schema.get("type").is_none() && !exempt {
        out.push(path.to_owned());
    }
    for forbidden in ["$ref", "oneOf", "allOf", "definitions", "$defs"] {
        if schema.get(forbidden).is_some() {
            out.push(format!("{path} uses {forbidden}"));
        }
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, child) in props {
            untyped_nodes(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        untyped_nodes(items, &format!("{path}[]"), out);
    }
    if let Some(additional @ Value::Object(_)) = schema.get("additionalProperties") {
        untyped_nodes(additional, &format!("{path}{{}}"), out);
    }
}

#[test]
fn schemas_are_structural_v1() {
    for path in ["crds/dataapi.yaml", "crds/apirole.yaml"] {
        let (crd, version) = schema_of(path);
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["spec"]["group"], "sluice.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        assert!(
            version["subresources"]["status"].is_object(),
            "{path}: status subresource"
        );
        assert_eq!(crd["spec"]["names"]["categories"], serde_json::json!(["sluice"]));
        let mut untyped = Vec::new();
        untyped_nodes(&version["schema"]["openAPIV3Schema"], "", &mut untyped);
        assert!(untyped.is_empty(), "{path}: nodes without a type: {untyped:#?}");
    }
}

fn printer_columns(version: &Value) -> Vec<(String, String)> {
    version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["jsonPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn printer_columns_and_short_names() {
    let (crd, version) = schema_of("crds/dataapi.yaml");
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["dapi"]));
    let columns = printer_columns(&version);
    for expected in [
        ("Engine", ".spec.database.engine"),
        ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
        ("Replicas", ".status.readyReplicas"),
        ("URL", ".status.url"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(
            columns.contains(&(expected.0.into(), expected.1.into())),
            "DataApi lacks {expected:?}: {columns:?}"
        );
    }

    let (crd, version) = schema_of("crds/apirole.yaml");
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["arole"]));
    let columns = printer_columns(&version);
    for expected in [
        ("Data APIs", ".spec.dataApis"),
        ("Keys", ".status.keys"),
        ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(
            columns.contains(&(expected.0.into(), expected.1.into())),
            "ApiRole lacks {expected:?}: {columns:?}"
        );
    }
}

fn collect_rules(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(Value::Array(rules)) = schema.get("x-kubernetes-validations") {
        for rule in rules {
            out.push((path.to_owned(), rule["rule"].as_str().unwrap().to_owned()));
            assert!(rule["message"].is_string(), "{path}: every CEL rule carries a message");
        }
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, child) in props {
            collect_rules(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        collect_rules(items, &format!("{path}[]"), out);
    }
}

#[test]
fn cel_rules_and_closed_sets_are_in_the_schema() {
    let (_, version) = schema_of("crds/dataapi.yaml");
    let root = &version["schema"]["openAPIV3Schema"];
    let mut rules = Vec::new();
    collect_rules(root, "", &mut rules);
    let at = |path: &str| rules.iter().filter(|(p, _)| p == path).count();
    assert_eq!(at(".spec"), 1, "SQLite replicas rule: {rules:#?}");
    assert_eq!(at(".spec.rest"), 1, "page size rule");
    assert_eq!(at(".spec.database"), 2, "connection rules");
    assert_eq!(at(".spec.database.pool"), 1, "pool rule");
    assert_eq!(at(".spec.auth.jwt"), 1, "JWT key source rule");
    assert_eq!(
        root["properties"]["spec"]["properties"]["database"]["properties"]["engine"]["enum"],
        serde_json::json!(["postgres", "mysql", "sqlite"])
    );
    assert_eq!(
        root["properties"]["spec"]["properties"]["queries"]["x-kubernetes-list-type"],
        "map"
    );

    let (_, version) = schema_of("crds/apirole.yaml");
    let root = &version["schema"]["openAPIV3Schema"];
    let mut rules = Vec::new();
    collect_rules(root, "", &mut rules);
    let rule_paths: Vec<&str> = rules.iter().map(|(p, _)| p.as_str()).collect();
    assert!(rule_paths.contains(&".spec.rules[].fields"), "{rule_paths:?}");
    assert_eq!(
        rule_paths
            .iter()
            .filter(|p| **p == ".spec.rules[].fields.mask[]")
            .count(),
        2
    );
    let rule = &root["properties"]["spec"]["properties"]["rules"]["items"]["properties"];
    assert_eq!(
        rule["rowFilter"]["items"]["properties"]["op"]["enum"],
        serde_json::json!(["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"])
    );
    assert_eq!(
        rule["verbs"]["items"]["enum"],
        serde_json::json!(["read", "create", "update", "delete"])
    );
    let api_keys = &root["properties"]["spec"]["properties"]["apiKeys"];
    assert_eq!(api_keys["x-kubernetes-list-type"], "map", "unique key names");
    assert_eq!(api_keys["x-kubernetes-list-map-keys"], serde_json::json!(["name"]));
}

#[test]
fn fields_are_documented_for_kubectl_explain() {
    let (_, version) = schema_of("crds/dataapi.yaml");
    let database = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["database"];
    assert!(database["description"].as_str().unwrap().contains("database"));
    let mut undocumented = Vec::new();
    for (name, prop) in database["properties"].as_object().unwrap() {
        if !prop["description"].is_string() {
            undocumented.push(name.clone());
        }
    }
    assert!(
        undocumented.is_empty(),
        "spec.database fields without docs: {undocumented:?}"
    );
}
