//! Where the runtime's configuration comes from: a rendered `RuntimeConfig` file, or a folder of
//! DataApi and ApiRole manifests resolved locally (API keys generated and printed once).

use std::path::{Path, PathBuf};

use sluice_crds::config::{CONFIG_FORMAT_VERSION, RuntimeConfig};
use sluice_crds::dataapi::Engine;
use sluice_crds::{ApiRole, DataApi, KeyHashes, ResolveError};

/// Why the configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path} is not valid: {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The config's layout version is unknown.
    #[error(
        "{path} has formatVersion {found}; this runtime reads version {CONFIG_FORMAT_VERSION}: upgrade the runtime or the operator"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The manifests folder holds no DataApi, or more than one.
    #[error("{dir} must hold exactly one DataApi manifest, found {found}")]
    DataApiCount {
        /// The folder.
        dir: PathBuf,
        /// How many.
        found: usize,
    },
    /// The manifests do not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No connection URL.
    #[error("environment variable {0} is not set; set it to the database's connection URL")]
    MissingUrl(String),
    /// The database section names neither a URL variable nor a path.
    #[error("the config names neither database.urlEnv nor database.path")]
    NoDatabase,
}

/// A loaded configuration and what came with it.
#[derive(Debug)]
pub struct Loaded {
    /// The resolved config.
    pub config: RuntimeConfig,
    /// Relative SQLite paths are resolved against this folder.
    pub base_dir: PathBuf,
    /// Keys generated for manifests mode: (`role/key`, plaintext), shown once at start.
    pub generated_keys: Vec<(String, String)>,
}

/// Reads a rendered `RuntimeConfig` JSON file.
pub fn from_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: RuntimeConfig = serde_json::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.to_owned(),
        problem: error.to_string(),
    })?;
    if config.format_version != CONFIG_FORMAT_VERSION {
        return Err(ConfigError::Version {
            path: path.to_owned(),
            found: config.format_version,
        });
    }
    let base_dir = std::env::current_dir().unwrap_or_default();
    Ok(Loaded {
        config,
        base_dir,
        generated_keys: Vec::new(),
    })
}

/// Reads every `*.yaml`/`*.yml` in `dir` (multi-document files too): one DataApi and any ApiRoles.
pub fn from_manifests(dir: &Path) -> Result<Loaded, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    let mut data_apis: Vec<DataApi> = Vec::new();
    let mut roles: Vec<ApiRole> = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let parse_error = |problem: String| ConfigError::Parse {
            path: path.clone(),
            problem,
        };
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                .map_err(|e| parse_error(e.to_string()))?;
            match value.get("kind").and_then(serde_yaml::Value::as_str) {
                Some("DataApi") => {
                    data_apis.push(serde_yaml::from_value(value).map_err(|e| parse_error(format!("DataApi: {e}")))?)
                }
                Some("ApiRole") => {
                    roles.push(serde_yaml::from_value(value).map_err(|e| parse_error(format!("ApiRole: {e}")))?)
                }
                // Secrets and other objects beside the manifests are not the runtime's business.
                _ => {}
            }
        }
    }
    let [data_api] = data_apis.as_slice() else {
        return Err(ConfigError::DataApiCount {
            dir: dir.to_owned(),
            found: data_apis.len(),
        });
    };
    let mut hashes = KeyHashes::new();
    let mut generated_keys = Vec::new();
    for role in &roles {
        let role_name = role.metadata.name.clone().unwrap_or_default();
        for key in &role.spec.api_keys {
            let plaintext = sluice_crds::generate_api_key();
            hashes.insert_plaintext(&role_name, &key.name, &plaintext);
            generated_keys.push((format!("{role_name}/{}", key.name), plaintext));
        }
    }
    let config = sluice_crds::resolve(data_api, &roles, &hashes)?;
    Ok(Loaded {
        config,
        base_dir: dir.to_owned(),
        generated_keys,
    })
}

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A connection URL.
    Url(String),
    /// A SQLite file.
    SqliteFile(PathBuf),
}

/// The database named by the config: the URL in `database.urlEnv`, or the SQLite path
/// (relative paths against `base_dir`).
pub fn database_location(loaded: &Loaded) -> Result<DatabaseLocation, ConfigError> {
    let database = &loaded.config.database;
    if let Some(variable) = &database.url_env {
        let url = std::env::var(variable)
            .ok()
            .filter(|url| !url.is_empty())
            .ok_or_else(|| ConfigError::MissingUrl(variable.clone()))?;
        return Ok(DatabaseLocation::Url(url));
    }
    match (&database.path, database.engine) {
        (Some(path), Engine::Sqlite) => {
            let path = Path::new(path);
            Ok(DatabaseLocation::SqliteFile(if path.is_absolute() {
                path.to_owned()
            } else {
                loaded.base_dir.join(path)
            }))
        }
        _ => Err(ConfigError::NoDatabase),
    }
}

/// The SQL that creates a missing SQLite database: `explicit`, else `seed.sql` or `shop.sql`
/// beside the manifests.
pub fn seed_script(explicit: Option<&Path>, base_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    ["seed.sql", "shop.sql"]
        .iter()
        .map(|name| base_dir.join(name))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_config_file_loads_and_its_version_is_checked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let rendered = from_manifests(&dir).expect("quickstart resolves").config;
        let path = std::env::temp_dir().join(format!("sluice-config-{}.json", std::process::id()));
        std::fs::write(&path, rendered.to_canonical_json()).expect("write config");
        assert_eq!(from_file(&path).expect("loads").config, rendered);
        let mut future = rendered.clone();
        future.format_version = CONFIG_FORMAT_VERSION + 1;
        std::fs::write(&path, future.to_canonical_json()).expect("write config");
        let error = from_file(&path).expect_err("unknown version");
        assert!(error.to_string().contains("upgrade"), "{error}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_quickstart_manifests_resolve_with_generated_keys() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let loaded = from_manifests(&dir).expect("quickstart resolves");
        assert_eq!(loaded.config.database.engine, Engine::Sqlite);
        assert_eq!(loaded.generated_keys.len(), loaded.config.api_keys.len());
        assert!(!loaded.generated_keys.is_empty());
        let location = database_location(&loaded).expect("sqlite path");
        assert_eq!(location, DatabaseLocation::SqliteFile(dir.join("quickstart.db")));
    }
}
