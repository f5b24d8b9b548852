//! Every manifest under `examples/` parses into the Rust types, and each example folder's
//! DataApis resolve with the roles beside them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_crds::{ApiRole, DataApi, KeyHashes, resolve};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

#[derive(Default)]
struct Folder {
    data_apis: Vec<DataApi>,
    roles: Vec<ApiRole>,
}

#[test]
fn every_example_manifest_parses_and_resolves() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    yaml_files(&examples, &mut files);
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the quickstart, postgres and mysql examples, found {files:?}"
    );

    let mut folders: std::collections::BTreeMap<PathBuf, Folder> = Default::default();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let folder = folders.entry(file.parent().unwrap().to_owned()).or_default();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let kind = value.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
            match kind.as_deref() {
                Some("DataApi") => folder
                    .data_apis
                    .push(serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{}: DataApi: {e}", file.display()))),
                Some("ApiRole") => folder
                    .roles
                    .push(serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{}: ApiRole: {e}", file.display()))),
                Some(_) => {}
                None => panic!("{}: a document without kind", file.display()),
            }
        }
    }

    let mut resolved = 0;
    for (folder, Folder { data_apis, roles }) in &folders {
        let mut hashes = KeyHashes::new();
        for role in roles {
            for key in &role.spec.api_keys {
                let name = role.metadata.name.as_deref().unwrap();
                hashes.insert_plaintext(name, &key.name, &format!("sk_example_{name}_{}", key.name));
            }
        }
        for data_api in data_apis {
            let config = resolve(data_api, roles, &hashes).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
            assert!(
                !config.roles.is_empty(),
                "{}: every example binds at least one role",
                folder.display()
            );
            resolved += 1;
        }
    }
    assert_eq!(resolved, 3, "one DataApi each in quickstart, postgres and mysql");
}
