//! Renders the CustomResourceDefinitions from the Rust types, and finds where committed YAML
//! has drifted from them.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ApiRole, DataApi};

/// The command that regenerates the files, quoted in their header.
pub const REGENERATE_COMMAND: &str = "cargo run -p sluice-crds --bin crdgen";

/// Every CRD with the repository-relative paths its YAML is committed at.
pub fn crds() -> Vec<(CustomResourceDefinition, Vec<&'static str>)> {
    vec![
        (
            DataApi::crd(),
            vec!["crds/dataapi.yaml", "charts/sluice/crds/dataapi.yaml"],
        ),
        (
            ApiRole::crd(),
            vec!["crds/apirole.yaml", "charts/sluice/crds/apirole.yaml"],
        ),
    ]
}

/// The YAML committed for `crd`: a header saying how it is made, then the object.
pub fn render(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serialises to YAML");
    format!("# Generated from the Rust types in crds/src by `{REGENERATE_COMMAND}`. Do not edit.\n{body}")
}

/// Writes every CRD file and the CRD reference under the repository root `root`; returns the
/// paths written.
pub fn write_all(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let reference = root.join(crate::reference::REFERENCE_PATH);
    if let Some(parent) = reference.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let definitions: Vec<CustomResourceDefinition> = crds().into_iter().map(|(crd, _)| crd).collect();
    std::fs::write(&reference, crate::reference::markdown(&definitions))?;
    written.push(reference);
    for (crd, paths) in crds() {
        let yaml = render(&crd);
        for relative in paths {
            let path = root.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &yaml)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Where `committed` YAML differs from `generated`: one line per differing JSON path. Empty
/// when they describe the same object (formatting and comments aside).
pub fn drift(committed: &str, generated: &CustomResourceDefinition) -> Result<Vec<String>, serde_yaml::Error> {
    let committed: serde_json::Value = serde_yaml::from_str(committed)?;
    let generated = serde_json::to_value(generated).expect("a CRD always serialises to JSON");
    let mut differences = Vec::new();
    compare(&committed, &generated, "", &mut differences);
    Ok(differences)
}

fn compare(committed: &serde_json::Value, generated: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (committed, generated) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, new_value) in new {
                let child = format!("{path}.{key}");
                match old.get(key) {
                    Some(old_value) => compare(old_value, new_value, &child, out),
                    None => out.push(format!("{child}: in the Rust types but not in the committed YAML")),
                }
            }
            for key in old.keys().filter(|key| !new.contains_key(*key)) {
                out.push(format!("{path}.{key}: in the committed YAML but not in the Rust types"));
            }
        }
        (Value::Array(old), Value::Array(new)) if old.len() == new.len() => {
            for (index, (old_item, new_item)) in old.iter().zip(new).enumerate() {
                compare(old_item, new_item, &format!("{path}[{index}]"), out);
            }
        }
        _ if committed != generated => out.push(format!(
            "{path}: committed {committed} but the Rust types give {generated}"
        )),
        _ => {}
    }
}
