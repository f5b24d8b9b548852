//! `resolve`: a DataApi and the ApiRoles around it become one [`RuntimeConfig`].
//!
//! Both the operator (before rendering the config Secret) and the runtime (`serve --manifests`)
//! call it, so a spec is judged the same way with or without an API server. It re-checks what
//! the CRD schema already enforces because manifests read from a folder never met that schema.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::apirole::{ApiRole, FilterOperator, MaskStrategy};
use crate::config::{
    ApiKeyEntry, AuthConfig, CONFIG_FORMAT_VERSION, DATABASE_URL_ENV, DatabaseConfig, JWT_HMAC_SECRET_ENV, JwtConfig,
    ObjectName, ResolvedRateLimit, RoleConfig, RuntimeConfig,
};
use crate::dataapi::{BUILT_IN_TOOLS, DataApi, Engine, NamedQuery, ParameterType};

/// Why a DataApi and its roles do not make a valid runtime config. Each message names the
/// object and field at fault and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The anonymous role names no ApiRole bound to the DataApi.
    #[error(
        "DataApi {data_api}: spec.auth.anonymousRole names ApiRole \"{role}\", which does not exist in namespace {namespace} or does not list \"{data_api}\" in spec.dataApis; create it or unset anonymousRole"
    )]
    UnknownAnonymousRole {
        /// The DataApi's name.
        data_api: String,
        /// The namespace searched.
        namespace: String,
        /// The missing role.
        role: String,
    },
    /// One role lists the same key name twice.
    #[error(
        "ApiRole {role}: spec.apiKeys lists the key name \"{key}\" more than once; key names must be unique within a role"
    )]
    DuplicateKeyName {
        /// The role at fault.
        role: String,
        /// The repeated name.
        key: String,
    },
    /// A key's Secret has not been read yet, so its hash is unknown.
    #[error("ApiRole {role}: spec.apiKeys \"{key}\": its key is not available yet ({hint})")]
    MissingKeyHash {
        /// The role at fault.
        role: String,
        /// The key without a hash.
        key: String,
        /// Where the key should come from.
        hint: String,
    },
    /// Two roles claim the same JWT role value.
    #[error(
        "ApiRoles {first} and {second} both map the JWT role \"{value}\" in spec.subjects.jwtRoles; a role-claim value must map to one ApiRole per DataApi"
    )]
    AmbiguousJwtRole {
        /// The shared claim value.
        value: String,
        /// One role mapping it.
        first: String,
        /// The other role mapping it.
        second: String,
    },
    /// A field holds a value the runtime cannot use.
    #[error("{kind} {object}: {field}: {problem}")]
    InvalidField {
        /// `DataApi` or `ApiRole`.
        kind: &'static str,
        /// `namespace/name`.
        object: String,
        /// The field's path, e.g. `spec.rules[0].rowFilter[1].value`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// SHA-256 hashes of API keys, by (role name, key name). Only hashes ever enter a [`RuntimeConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHashes(BTreeMap<(String, String), String>);

impl KeyHashes {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the hash of the key `key` of role `role`.
    pub fn insert_hash(&mut self, role: &str, key: &str, sha256_hex: String) {
        self.0.insert((role.to_owned(), key.to_owned()), sha256_hex);
    }

    /// Hashes `plaintext` and records it as the key `key` of role `role`.
    pub fn insert_plaintext(&mut self, role: &str, key: &str, plaintext: &str) {
        self.insert_hash(role, key, hash_api_key(plaintext));
    }

    fn get(&self, role: &str, key: &str) -> Option<&String> {
        self.0.get(&(role.to_owned(), key.to_owned()))
    }
}

/// Prefix of every API key Sluice generates, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "sluice_";

/// A new random API key: [`API_KEY_PREFIX`] and 256 bits from the operating system's CSPRNG,
/// base64url-encoded. The operator generates keys into Secrets with it, and the runtime for
/// local `serve --manifests` runs.
pub fn generate_api_key() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Lowercase hex SHA-256 of an API key. Keys are random with at least 256 bits of entropy, so
/// a fast hash is enough; a slow password hash would only slow every request.
pub fn hash_api_key(plaintext: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Every governed request hashes its key; `hex::encode` went through a per-character
    // iterator that cost a sizeable share of the hash itself.
    let mut hash = String::with_capacity(64);
    for byte in Sha256::digest(plaintext.as_bytes()) {
        hash.push(char::from(HEX[usize::from(byte >> 4)]));
        hash.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hash
}

/// Resolves `data_api` and the `roles` of its namespace into the config its runtime pods read.
///
/// Roles in other namespaces, or not listing the DataApi in `spec.dataApis`, are left out.
/// Every API key of a bound role must have its hash in `key_hashes`.
pub fn resolve(data_api: &DataApi, roles: &[ApiRole], key_hashes: &KeyHashes) -> Result<RuntimeConfig, ResolveError> {
    let name = data_api.name_any();
    let namespace = data_api.namespace().unwrap_or_default();
    let spec = &data_api.spec;
    let api = Checker::new("DataApi", &namespace, &name);

    if spec.rest.default_page_size > spec.rest.max_page_size {
        return Err(api.invalid(
            "spec.rest.defaultPageSize",
            format!(
                "{} exceeds spec.rest.maxPageSize {}; lower it or raise maxPageSize",
                spec.rest.default_page_size, spec.rest.max_page_size
            ),
        ));
    }
    if let Some(field) = spec.limits.first_zero() {
        return Err(api.invalid(
            &format!("spec.limits.{field}"),
            "is 0, which would refuse every request or close every connection; set at least 1, or leave it out for its default".into(),
        ));
    }
    if spec.rest.enabled && spec.mcp.enabled && spec.rest.base_path == spec.mcp.path {
        return Err(api.invalid(
            "spec.mcp.path",
            format!(
                "equals spec.rest.basePath \"{}\"; give the MCP endpoint its own path",
                spec.mcp.path
            ),
        ));
    }
    let database = resolve_database(&api, data_api)?;
    let mut bound: Vec<&ApiRole> = roles
        .iter()
        .filter(|role| role.namespace().unwrap_or_default() == namespace)
        .filter(|role| role.spec.data_apis.contains(&name))
        .collect();
    // The same roles in any order make the same config, byte for byte: callers gather them from
    // caches whose order changes, and a config that differs only in order would be written again
    // and reloaded by every pod.
    bound.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let default_limit = spec.rate_limit.as_ref().map(ResolvedRateLimit::from);
    let mut resolved_roles = BTreeMap::new();
    let mut api_keys = Vec::new();
    for role in &bound {
        let role_name = role.name_any();
        check_role(role)?;
        resolved_roles.insert(
            role_name.clone(),
            RoleConfig {
                description: role.spec.description.clone(),
                rules: role.spec.rules.clone(),
                rate_limit: role
                    .spec
                    .rate_limit
                    .as_ref()
                    .map(ResolvedRateLimit::from)
                    .or(default_limit),
                mcp_enabled: role.spec.mcp.enabled,
                admin: role.spec.admin,
            },
        );
        for key in &role.spec.api_keys {
            let sha256 = key_hashes.get(&role_name, &key.name).ok_or_else(|| {
                let hint = match &key.secret_ref {
                    Some(secret) => format!(
                        "create Secret \"{}\" with key \"{}\" in namespace {namespace}",
                        secret.name, secret.key
                    ),
                    None => format!(
                        "the operator generates Secret \"{}\"",
                        crate::apirole::generated_key_secret_name(&role_name, &key.name)
                    ),
                };
                ResolveError::MissingKeyHash {
                    role: role_name.clone(),
                    key: key.name.clone(),
                    hint,
                }
            })?;
            api_keys.push(ApiKeyEntry {
                id: format!("{role_name}/{}", key.name),
                role: role_name.clone(),
                sha256: sha256.clone(),
            });
        }
    }

    if let Some(anonymous) = &spec.auth.anonymous_role
        && !resolved_roles.contains_key(anonymous)
    {
        return Err(ResolveError::UnknownAnonymousRole {
            data_api: name,
            namespace,
            role: anonymous.clone(),
        });
    }

    let jwt = match &spec.auth.jwt {
        None => None,
        Some(jwt) => {
            if jwt.audiences.is_empty() {
                return Err(api.invalid(
                    "spec.auth.jwt.audiences",
                    "is empty; list at least one accepted audience".into(),
                ));
            }
            if jwt.jwks_uri.is_some() == jwt.hmac_secret_ref.is_some() {
                return Err(api.invalid(
                    "spec.auth.jwt",
                    "set exactly one of jwksUri (RS256/ES256) or hmacSecretRef (HS256)".into(),
                ));
            }
            Some(JwtConfig {
                issuer: jwt.issuer.clone(),
                audiences: jwt.audiences.clone(),
                jwks_uri: jwt.jwks_uri.clone(),
                hmac_secret_env: jwt.hmac_secret_ref.as_ref().map(|_| JWT_HMAC_SECRET_ENV.to_owned()),
                role_claim: jwt.role_claim.clone(),
                leeway_seconds: jwt.leeway_seconds,
                role_map: jwt_role_map(&bound)?,
            })
        }
    };

    for (index, query) in spec.queries.iter().enumerate() {
        check_query(&api, index, query)?;
    }
    if let Some(duplicate) = first_duplicate(spec.queries.iter().map(|q| q.name.as_str())) {
        return Err(api.invalid(
            "spec.queries",
            format!("the name \"{duplicate}\" is used twice; query names must be unique"),
        ));
    }

    Ok(RuntimeConfig {
        format_version: CONFIG_FORMAT_VERSION,
        data_api: ObjectName { namespace, name },
        database,
        rest: spec.rest.clone(),
        mcp: spec.mcp.clone(),
        auth: AuthConfig {
            api_key_header: spec.auth.api_key_header.clone(),
            jwt,
            anonymous_role: spec.auth.anonymous_role.clone(),
        },
        audit: spec.audit.clone(),
        limits: spec.limits.clone(),
        queries: spec.queries.clone(),
        roles: resolved_roles,
        api_keys,
    })
}

fn resolve_database(api: &Checker, data_api: &DataApi) -> Result<DatabaseConfig, ResolveError> {
    let db = &data_api.spec.database;
    match (db.engine, &db.connection_secret_ref, &db.path) {
        (Engine::Sqlite, None, None) => {
            return Err(api.invalid(
                "spec.database",
                "set connectionSecretRef or path for the SQLite database".into(),
            ));
        }
        (Engine::Postgres | Engine::Mysql, None, _) => {
            return Err(api.invalid(
                "spec.database.connectionSecretRef",
                format!(
                    "is required for engine {}: name the Secret key holding the connection URL",
                    db.engine.as_str()
                ),
            ));
        }
        (Engine::Postgres | Engine::Mysql, Some(_), Some(_)) => {
            return Err(api.invalid("spec.database.path", "is only for engine sqlite; remove it".into()));
        }
        _ => {}
    }
    if db.engine == Engine::Sqlite && data_api.spec.runtime.replicas > 1 {
        return Err(api.invalid(
            "spec.runtime.replicas",
            format!(
                "is {}, but SQLite is a single-writer file database; use 1 replica or a postgres/mysql database",
                data_api.spec.runtime.replicas
            ),
        ));
    }
    if db.pool.min_connections > db.pool.max_connections {
        return Err(api.invalid("spec.database.pool.minConnections", "exceeds maxConnections".into()));
    }
    let schemas = if db.schemas.is_empty() {
        match db.engine {
            Engine::Postgres => vec!["public".to_owned()],
            // MySQL's "schema" is the database named in the connection URL; the runtime asks for it.
            Engine::Mysql => Vec::new(),
            Engine::Sqlite => vec!["main".to_owned()],
        }
    } else {
        db.schemas.clone()
    };
    Ok(DatabaseConfig {
        engine: db.engine,
        url_env: db.connection_secret_ref.as_ref().map(|_| DATABASE_URL_ENV.to_owned()),
        path: if db.connection_secret_ref.is_some() {
            None
        } else {
            db.path.clone()
        },
        schemas,
        include: db.include.clone(),
        exclude: db.exclude.clone(),
        read_only: db.read_only,
        pool: db.pool.clone(),
        schema_refresh_seconds: db.schema_refresh_seconds,
    })
}

fn check_role(role: &ApiRole) -> Result<(), ResolveError> {
    let namespace = role.namespace().unwrap_or_default();
    let checker = Checker::new("ApiRole", &namespace, &role.name_any());
    if let Some(duplicate) = first_duplicate(role.spec.api_keys.iter().map(|k| k.name.as_str())) {
        return Err(ResolveError::DuplicateKeyName {
            role: role.name_any(),
            key: duplicate.to_owned(),
        });
    }
    for (index, rule) in role.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{index}]");
        if rule.tables.is_empty() {
            return Err(checker.invalid(
                &format!("{at}.tables"),
                "is empty; name at least one table or glob".into(),
            ));
        }
        if rule.verbs.is_empty() {
            return Err(checker.invalid(
                &format!("{at}.verbs"),
                "is empty; list read, create, update or delete".into(),
            ));
        }
        if let Some(fields) = &rule.fields {
            if !fields.allow.is_empty() && !fields.deny.is_empty() {
                return Err(checker.invalid(&format!("{at}.fields"), "set either allow or deny, not both".into()));
            }
            for (mask_index, mask) in fields.mask.iter().enumerate() {
                let mask_at = format!("{at}.fields.mask[{mask_index}]");
                match mask.strategy {
                    MaskStrategy::Fixed if mask.with.is_none() => {
                        return Err(
                            checker.invalid(&mask_at, "strategy fixed needs `with`, the text shown instead".into())
                        );
                    }
                    MaskStrategy::KeepLast if mask.keep_last.is_none() => {
                        return Err(checker.invalid(&mask_at, "strategy keepLast needs `keepLast`".into()));
                    }
                    _ => {}
                }
            }
        }
        for (predicate_index, predicate) in rule.row_filter.iter().enumerate() {
            let value_at = format!("{at}.rowFilter[{predicate_index}].value");
            check_predicate_value(predicate.op, predicate.value.as_ref())
                .map_err(|problem| checker.invalid(&value_at, problem))?;
        }
    }
    Ok(())
}

fn check_predicate_value(op: FilterOperator, value: Option<&serde_json::Value>) -> Result<(), String> {
    use serde_json::Value;
    match (op, value) {
        (FilterOperator::Is, Some(Value::Null | Value::Bool(_))) => Ok(()),
        (FilterOperator::Is, _) => Err("op is compares with null, true or false".into()),
        (FilterOperator::In, Some(Value::Array(items))) => {
            for item in items {
                check_scalar(item)?;
            }
            Ok(())
        }
        (FilterOperator::In, Some(Value::String(text))) if is_single_placeholder(text) => check_placeholders(text),
        (FilterOperator::In, _) => {
            Err("op in needs a list, or one {claims.<name>} placeholder naming a list claim".into())
        }
        (_, Some(item)) => check_scalar(item),
        (_, None) => Err("is required for this op".into()),
    }
}

fn check_scalar(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::String(text) => check_placeholders(text),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Ok(()),
        serde_json::Value::Null => Err("null only compares with op is".into()),
        _ => Err("must be a string, number or boolean".into()),
    }
}

/// The prefix of a claim placeholder, as in `{claims.region}`.
pub const CLAIM_PLACEHOLDER_PREFIX: &str = "{claims.";

fn is_single_placeholder(text: &str) -> bool {
    text.starts_with(CLAIM_PLACEHOLDER_PREFIX) && text.ends_with('}') && text.matches('{').count() == 1
}

/// Every `{` must open a well-formed `{claims.<name>}` placeholder, so a typo is caught at
/// apply time rather than silently compared as literal text.
fn check_placeholders(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("\"{text}\": unclosed placeholder; write {{claims.<name>}}"))?;
        let claim = after[..end]
            .strip_prefix(CLAIM_PLACEHOLDER_PREFIX)
            .ok_or_else(|| format!("\"{text}\": placeholders are written {{claims.<name>}}"))?;
        let valid = !claim.is_empty()
            && claim.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':')
            });
        if !valid {
            return Err(format!(
                "\"{text}\": \"{claim}\" is not a claim name (letters, digits, _ - :, dots for nesting)"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn jwt_role_map(roles: &[&ApiRole]) -> Result<BTreeMap<String, String>, ResolveError> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for role in roles {
        let role_name = role.name_any();
        for value in &role.spec.subjects.jwt_roles {
            if let Some(first) = map.get(value)
                && *first != role_name
            {
                return Err(ResolveError::AmbiguousJwtRole {
                    value: value.clone(),
                    first: first.clone(),
                    second: role_name,
                });
            }
            map.insert(value.clone(), role_name.clone());
        }
    }
    Ok(map)
}

fn check_query(api: &Checker, index: usize, query: &NamedQuery) -> Result<(), ResolveError> {
    let at = format!("spec.queries[{index}]");
    if BUILT_IN_TOOLS.contains(&query.name.as_str()) {
        return Err(api.invalid(
            &format!("{at}.name"),
            format!(
                "\"{}\" is a built-in MCP tool, so agents could not call this query; rename it (reserved: {})",
                query.name,
                BUILT_IN_TOOLS.join(", ")
            ),
        ));
    }
    let used = named_parameters(&query.sql);
    let declared: BTreeSet<&str> = query.parameters.iter().map(|p| p.name.as_str()).collect();
    if let Some(missing) = used.iter().find(|name| !declared.contains(name.as_str())) {
        return Err(api.invalid(
            &format!("{at}.sql"),
            format!(
                "query \"{}\" uses :{missing}, which is not in its parameters; declare it",
                query.name
            ),
        ));
    }
    for (param_index, param) in query.parameters.iter().enumerate() {
        let param_at = format!("{at}.parameters[{param_index}]");
        if !used.contains(&param.name) {
            return Err(api.invalid(
                &param_at,
                format!("parameter \"{}\" is not used as :{} in the SQL", param.name, param.name),
            ));
        }
        if let Some(default) = &param.default {
            let fits = match param.param_type {
                ParameterType::String => default.is_string(),
                ParameterType::Integer => default.is_i64() || default.is_u64(),
                ParameterType::Number => default.is_number(),
                ParameterType::Boolean => default.is_boolean(),
            };
            if !fits {
                return Err(api.invalid(
                    &format!("{param_at}.default"),
                    format!("{default} is not a {:?}", param.param_type).to_lowercase(),
                ));
            }
        }
        if let (Some(min), Some(max)) = (param.minimum, param.maximum)
            && min > max
        {
            return Err(api.invalid(&format!("{param_at}.minimum"), format!("{min} exceeds maximum {max}")));
        }
    }
    Ok(())
}

/// Names written `:name` in `sql`, outside string literals, quoted identifiers and `::` casts.
pub fn named_parameters(sql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(open) => {
                if c == open {
                    quote = None;
                }
                i += 1;
            }
            None if c == '\'' || c == '"' || c == '`' => {
                quote = Some(c);
                i += 1;
            }
            None if c == ':' && chars.get(i + 1) == Some(&':') => i += 2,
            None if c == ':' => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_') {
                    end += 1;
                }
                if end > start && !chars[start].is_ascii_digit() {
                    names.insert(chars[start..end].iter().collect());
                }
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    names
}

fn first_duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|name| !seen.insert(*name))
}

/// Builds [`ResolveError::InvalidField`]s for one object.
struct Checker {
    kind: &'static str,
    object: String,
}

impl Checker {
    fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            object: format!("{namespace}/{name}"),
        }
    }

    fn invalid(&self, field: &str, problem: String) -> ResolveError {
        ResolveError::InvalidField {
            kind: self.kind,
            object: self.object.clone(),
            field: field.to_owned(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResolvedRateLimit;

    fn data_api(yaml: &str) -> DataApi {
        serde_yaml::from_str(yaml).expect("test DataApi parses")
    }

    fn role(yaml: &str) -> ApiRole {
        serde_yaml::from_str(yaml).expect("test ApiRole parses")
    }

    const SALES: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: { name: sales, namespace: team-a }
spec:
  database: { engine: postgres, connectionSecretRef: { name: sales-db, key: url } }
  auth:
    anonymousRole: viewer
    jwt: { issuer: "https://login.example.com/", audiences: [sales-api], jwksUri: "https://login.example.com/jwks" }
  rateLimit: { requestsPerMinute: 600, burst: 100 }
"#;

    fn viewer() -> ApiRole {
        role(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: viewer, namespace: team-a }
spec:
  dataApis: [sales]
  rules: [{ tables: [products], verbs: [read] }]
"#,
        )
    }

    fn analyst() -> ApiRole {
        role(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: analyst, namespace: team-a }
spec:
  dataApis: [sales, marketing]
  subjects: { jwtRoles: [analysts, bi] }
  rules:
    - tables: [customers]
      verbs: [read]
      fields: { deny: [email] }
      rowFilter: [{ column: region, op: eq, value: "{claims.region}" }]
  rateLimit: { requestsPerMinute: 120 }
  apiKeys: [{ name: dashboard }]
"#,
        )
    }

    fn hashes() -> KeyHashes {
        let mut hashes = KeyHashes::new();
        hashes.insert_plaintext("analyst", "dashboard", "sk_test_dashboard");
        hashes
    }

    #[test]
    fn binds_only_roles_that_name_this_data_api_in_its_namespace() {
        let other_api = role(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: marketer, namespace: team-a }
spec: { dataApis: [marketing], rules: [{ tables: ["*"], verbs: [read] }] }
"#,
        );
        let mut other_namespace = analyst();
        other_namespace.metadata.namespace = Some("team-b".into());
        other_namespace.metadata.name = Some("outsider".into());

        let config = resolve(
            &data_api(SALES),
            &[viewer(), analyst(), other_api, other_namespace],
            &hashes(),
        )
        .unwrap();

        assert_eq!(config.roles.keys().collect::<Vec<_>>(), ["analyst", "viewer"]);
    }

    #[test]
    fn the_same_roles_in_any_order_make_the_same_config() {
        let mut auditor = analyst();
        auditor.metadata.name = Some("auditor".into());
        auditor.spec.api_keys[0].name = "report".into();
        auditor.spec.subjects.jwt_roles.clear();
        let mut hashes = hashes();
        hashes.insert_plaintext("auditor", "report", "sk_test_report");

        let one = resolve(&data_api(SALES), &[analyst(), auditor.clone(), viewer()], &hashes).unwrap();
        let other = resolve(&data_api(SALES), &[viewer(), auditor, analyst()], &hashes).unwrap();

        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            serde_json::to_string(&other).unwrap()
        );
        let key_ids: Vec<&str> = one.api_keys.iter().map(|key| key.id.as_str()).collect();
        assert_eq!(key_ids, ["analyst/dashboard", "auditor/report"]);
    }

    #[test]
    fn unknown_anonymous_role_is_an_error_naming_it() {
        let error = resolve(&data_api(SALES), &[analyst()], &hashes()).unwrap_err();

        assert_eq!(
            error,
            ResolveError::UnknownAnonymousRole {
                data_api: "sales".into(),
                namespace: "team-a".into(),
                role: "viewer".into()
            }
        );
        assert!(
            error
                .to_string()
                .contains("spec.auth.anonymousRole names ApiRole \"viewer\""),
            "{error}"
        );
    }

    #[test]
    fn anonymous_role_bound_to_another_data_api_is_unknown() {
        let mut elsewhere = viewer();
        elsewhere.spec.data_apis = vec!["marketing".into()];

        let error = resolve(&data_api(SALES), &[elsewhere], &KeyHashes::new()).unwrap_err();

        assert!(matches!(error, ResolveError::UnknownAnonymousRole { role, .. } if role == "viewer"));
    }

    #[test]
    fn duplicate_key_names_are_an_error() {
        let mut twice = analyst();
        twice.spec.api_keys.push(twice.spec.api_keys[0].clone());

        let error = resolve(&data_api(SALES), &[viewer(), twice], &hashes()).unwrap_err();

        assert_eq!(
            error,
            ResolveError::DuplicateKeyName {
                role: "analyst".into(),
                key: "dashboard".into()
            }
        );
    }

    #[test]
    fn keys_appear_only_as_hashes() {
        let config = resolve(&data_api(SALES), &[viewer(), analyst()], &hashes()).unwrap();

        assert_eq!(
            config.api_keys,
            [ApiKeyEntry {
                id: "analyst/dashboard".into(),
                role: "analyst".into(),
                sha256: hash_api_key("sk_test_dashboard"),
            }]
        );
        assert!(!config.to_canonical_json().contains("sk_test_dashboard"));
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_keys_are_prefixed_256_bit_and_distinct() {
        use base64::Engine as _;
        let first = generate_api_key();

        let encoded = first.strip_prefix(API_KEY_PREFIX).expect("prefixed");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .unwrap()
                .len(),
            32
        );
        assert_ne!(first, generate_api_key());
    }

    #[test]
    fn a_key_without_a_hash_says_where_it_should_come_from() {
        let error = resolve(&data_api(SALES), &[viewer(), analyst()], &KeyHashes::new()).unwrap_err();

        assert!(
            error
                .to_string()
                .contains("the operator generates Secret \"analyst-key-dashboard\""),
            "{error}"
        );
    }

    #[test]
    fn jwt_role_claim_values_map_to_role_names() {
        let config = resolve(&data_api(SALES), &[viewer(), analyst()], &hashes()).unwrap();

        let jwt = config.auth.jwt.unwrap();
        assert_eq!(
            jwt.role_map,
            BTreeMap::from([("analysts".into(), "analyst".into()), ("bi".into(), "analyst".into())])
        );
        assert_eq!(jwt.role_claim, "roles");
        assert_eq!(jwt.leeway_seconds, 30);
        assert_eq!(jwt.hmac_secret_env, None);
    }

    #[test]
    fn one_jwt_role_mapped_by_two_roles_is_ambiguous() {
        let mut rival = viewer();
        rival.spec.subjects.jwt_roles = vec!["bi".into()];

        let error = resolve(&data_api(SALES), &[analyst(), rival], &hashes()).unwrap_err();

        assert_eq!(
            error,
            ResolveError::AmbiguousJwtRole {
                value: "bi".into(),
                first: "analyst".into(),
                second: "viewer".into()
            }
        );
    }

    #[test]
    fn defaults_are_applied() {
        let minimal = data_api(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: { name: tiny, namespace: ns }
spec: { database: { engine: sqlite, path: /data/tiny.db } }
"#,
        );

        let config = resolve(&minimal, &[], &KeyHashes::new()).unwrap();

        assert_eq!(config.format_version, CONFIG_FORMAT_VERSION);
        assert_eq!(config.database.schemas, ["main"]);
        assert_eq!(config.database.url_env, None);
        assert_eq!(config.database.path.as_deref(), Some("/data/tiny.db"));
        assert_eq!(config.database.pool.max_connections, 10);
        assert_eq!(config.database.pool.statement_timeout_ms, 10_000);
        assert_eq!(config.rest.base_path, "/api/v1");
        assert_eq!((config.rest.default_page_size, config.rest.max_page_size), (100, 1000));
        assert_eq!(config.rest.max_body_bytes, 1_048_576);
        assert!(config.rest.enabled && config.mcp.enabled);
        assert_eq!(config.mcp.path, "/mcp");
        assert_eq!(config.auth.api_key_header, "X-API-Key");
        assert_eq!(config.auth.anonymous_role, None);
        assert!(config.audit.enabled && !config.audit.include_bodies);
        assert!(config.roles.is_empty() && config.api_keys.is_empty());
    }

    #[test]
    fn role_rate_limit_falls_back_to_the_data_api_default_with_burst_filled_in() {
        let config = resolve(&data_api(SALES), &[viewer(), analyst()], &hashes()).unwrap();

        assert_eq!(
            config.roles["viewer"].rate_limit,
            Some(ResolvedRateLimit {
                requests_per_minute: 600,
                burst: 100
            })
        );
        assert_eq!(
            config.roles["analyst"].rate_limit,
            Some(ResolvedRateLimit {
                requests_per_minute: 120,
                burst: 12
            })
        );
        assert!(config.roles["analyst"].mcp_enabled);
        assert_eq!(config.database.url_env.as_deref(), Some(DATABASE_URL_ENV));
        assert_eq!(config.database.schemas, ["public"]);
    }

    #[test]
    fn resolving_is_deterministic() {
        let first = resolve(&data_api(SALES), &[viewer(), analyst()], &hashes()).unwrap();
        let second = resolve(&data_api(SALES), &[analyst(), viewer()], &hashes()).unwrap();

        assert_eq!(first.to_canonical_json(), second.to_canonical_json());
        let reparsed: RuntimeConfig = serde_json::from_str(&first.to_canonical_json()).unwrap();
        assert_eq!(reparsed, first);
    }

    fn invalid_field(error: ResolveError) -> (String, String) {
        match error {
            ResolveError::InvalidField { field, problem, .. } => (field, problem),
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn cross_field_rules_are_checked_without_an_api_server() {
        let cases = [
            (
                "spec: { database: { engine: sqlite, path: a.db }, rest: { defaultPageSize: 50, maxPageSize: 10 } }",
                "spec.rest.defaultPageSize",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, runtime: { replicas: 3 } }",
                "spec.runtime.replicas",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, limits: { idleTimeoutSeconds: 0 } }",
                "spec.limits.idleTimeoutSeconds",
            ),
            (
                "spec: { database: { engine: postgres } }",
                "spec.database.connectionSecretRef",
            ),
            ("spec: { database: { engine: sqlite } }", "spec.database"),
            (
                "spec: { database: { engine: mysql, path: a.db, connectionSecretRef: { name: s, key: k } } }",
                "spec.database.path",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, rest: { basePath: /x }, mcp: { path: /x } }",
                "spec.mcp.path",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, auth: { jwt: { issuer: i, audiences: [a] } } }",
                "spec.auth.jwt",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, queries: [{ name: q, sql: 'SELECT :missing' }] }",
                "spec.queries[0].sql",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, queries: [{ name: ok, sql: 'SELECT 1' }, { name: query_rows, sql: 'SELECT 1' }] }",
                "spec.queries[1].name",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, queries: [{ name: q, sql: 'SELECT 1', parameters: [{ name: unused, type: string }] }] }",
                "spec.queries[0].parameters[0]",
            ),
            (
                "spec: { database: { engine: sqlite, path: a.db }, queries: [{ name: q, sql: 'SELECT :n', parameters: [{ name: n, type: integer, default: ten }] }] }",
                "spec.queries[0].parameters[0].default",
            ),
        ];
        for (spec, field) in cases {
            let api = data_api(&format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: x, namespace: ns }}\n{spec}"
            ));
            let (got, problem) = invalid_field(resolve(&api, &[], &KeyHashes::new()).unwrap_err());
            assert_eq!(got, field, "{spec}: {problem}");
        }
    }

    #[test]
    fn role_rules_are_checked_and_errors_name_the_field() {
        let cases = [
            (
                "{ tables: [t], verbs: [read], fields: { allow: [a], deny: [b] } }",
                "spec.rules[0].fields",
            ),
            (
                "{ tables: [t], verbs: [read], fields: { mask: [{ field: p }] } }",
                "spec.rules[0].fields.mask[0]",
            ),
            (
                "{ tables: [t], verbs: [read], fields: { mask: [{ field: p, strategy: keepLast }] } }",
                "spec.rules[0].fields.mask[0]",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: is, value: maybe }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: in, value: x }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: eq }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: eq, value: { a: 1 } }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: eq, value: '{claim.region}' }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            (
                "{ tables: [t], verbs: [read], rowFilter: [{ column: c, op: eq, value: '{claims.region' }] }",
                "spec.rules[0].rowFilter[0].value",
            ),
            ("{ tables: [], verbs: [read] }", "spec.rules[0].tables"),
            ("{ tables: [t], verbs: [] }", "spec.rules[0].verbs"),
        ];
        let api = data_api(
            "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: { name: x, namespace: ns }\nspec: { database: { engine: sqlite, path: a.db } }",
        );
        for (rule, field) in cases {
            let bad = role(&format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: ApiRole\nmetadata: {{ name: r, namespace: ns }}\nspec: {{ dataApis: [x], rules: [{rule}] }}"
            ));
            let error = resolve(&api, &[bad], &KeyHashes::new()).unwrap_err();
            assert!(error.to_string().starts_with("ApiRole ns/r: "), "{error}");
            let (got, problem) = invalid_field(error);
            assert_eq!(got, field, "{rule}: {problem}");
        }
    }

    #[test]
    fn valid_row_filter_values_pass() {
        for value in [
            "'{claims.region}'",
            "'eu-{claims.team}-{claims.org.id}'",
            "42",
            "true",
            "[a, '{claims.x}', 3]",
        ] {
            let predicate: crate::apirole::RowPredicate = serde_yaml::from_str(&format!(
                "{{ column: c, op: {}, value: {value} }}",
                if value.starts_with('[') { "in" } else { "eq" }
            ))
            .unwrap();
            assert_eq!(
                check_predicate_value(predicate.op, predicate.value.as_ref()),
                Ok(()),
                "{value}"
            );
        }
        assert_eq!(
            check_predicate_value(FilterOperator::In, Some(&serde_json::json!("{claims.sites}"))),
            Ok(())
        );
        assert_eq!(
            check_predicate_value(FilterOperator::Is, Some(&serde_json::Value::Null)),
            Ok(())
        );
    }

    #[test]
    fn named_parameters_skip_casts_and_literals() {
        let names =
            named_parameters("SELECT ':not', \"a:b\", x::int FROM t WHERE a = :first AND b > :second_2 AND c = :first");
        assert_eq!(names, BTreeSet::from(["first".to_owned(), "second_2".to_owned()]));
    }
}
