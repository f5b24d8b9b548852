//! JWT bearer tokens: signature, lifetime, issuer and audience checks, and the caller's role.
//!
//! A [`JwtVerifier`] is built once per loaded config. HS256 tokens are checked with the shared
//! secret from the environment variable `auth.jwt.hmacSecretEnv` names; RS256 and ES256 tokens with
//! the identity provider's keys from `auth.jwt.jwksUri`. Which algorithms are accepted follows
//! from which of the two is configured, never from the token alone, so a token cannot choose
//! the key its own signature is checked with (no `alg: none`, no HS256 signed with a public key).
//!
//! The JWKS is fetched (5 s timeout) on the first token that needs it and kept for ten minutes.
//! A token naming an unknown `kid` (keys were rotated) fetches it again, but a fetch starts at
//! most once every ten seconds, so tokens with made-up key ids cannot hammer the identity
//! provider. When a refresh fails, the keys already held are kept.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Uri, header, uri::Scheme};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Map, Value};
use sluice_crds::config::JwtConfig;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 requires a key at least as long as the
/// hash output (256 bits).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A JWKS document larger than this is refused; real key sets are a few kilobytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The claims every accepted token must carry.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "aud", "sub"];

/// How the verifier paces its JWKS fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JwksTiming {
    /// Keys older than this are fetched again before they are used.
    pub(crate) max_age: Duration,
    /// At most one fetch is started per interval, whatever tokens arrive.
    pub(crate) min_interval: Duration,
    /// Time allowed for one fetch, from connecting to the last byte.
    pub(crate) timeout: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(600),
            min_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A token whose signature, lifetime, issuer and audience were checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// The `sub` claim.
    pub subject: String,
    /// The ApiRole the role claim maps to: the first of the claim's values, in claim order,
    /// that `auth.jwt.roleMap` knows. `None` when no value is mapped.
    pub role: Option<String>,
    /// Every claim of the token, for row filters (`{claims.<name>}`).
    pub claims: Map<String, Value>,
}

/// Why a verifier cannot be built from the config; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    /// Neither key source is configured.
    #[error("auth.jwt names neither jwksUri nor hmacSecretEnv, so no token could be verified; set one of them")]
    NoKeySource,
    /// No audience is configured, so no token could match.
    #[error("auth.jwt.audiences is empty, so no token could be accepted; list the audiences tokens are issued for")]
    NoAudiences,
    /// The secret's environment variable is unset or empty.
    #[error(
        "environment variable {variable} (auth.jwt.hmacSecretEnv) is not set or is empty; set it to the HS256 \
         secret, for example from a Secret through secretKeyRef"
    )]
    SecretMissing {
        /// The variable's name.
        variable: String,
    },
    /// The secret is shorter than [`MIN_HMAC_SECRET_BYTES`].
    #[error(
        "environment variable {variable} (auth.jwt.hmacSecretEnv) holds {length} bytes; an HS256 secret needs at \
         least {MIN_HMAC_SECRET_BYTES} (generate one with `openssl rand -base64 48`)"
    )]
    SecretTooShort {
        /// The variable's name.
        variable: String,
        /// The secret's length in bytes.
        length: usize,
    },
    /// The JWKS URL is not an absolute http or https URL.
    #[error("auth.jwt.jwksUri {uri:?} is not an absolute http:// or https:// URL")]
    InvalidJwksUri {
        /// The configured value.
        uri: String,
    },
    /// TLS for the JWKS fetch cannot be set up, usually because no CA certificates were found.
    #[error(
        "cannot set up TLS to fetch {uri}: {source}; if no CA certificates were found, mount a CA bundle and \
         point SSL_CERT_FILE at it"
    )]
    Tls {
        /// The JWKS URL.
        uri: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Why a token was not accepted.
///
/// [`JwtError::reason`] says it in words safe to send to the client: it never contains any part
/// of the token. Only [`JwtError::KeysUnavailable`] is the server's side, not the token's.
#[derive(Debug)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and claims.
    Malformed,
    /// The header names an algorithm this API does not accept (`none`, or one not configured).
    AlgorithmNotAccepted,
    /// The signature does not match.
    BadSignature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// No `aud` value is a configured audience.
    WrongAudience,
    /// A required claim (one of `exp`, `iss`, `aud`, `sub`) is absent or not of its type.
    MissingClaim(&'static str),
    /// `exp` or `nbf` is not a number.
    InvalidTimeClaim,
    /// The `kid` is not in the identity provider's key set, even after fetching it again.
    UnknownKey,
    /// The token names no `kid` while the key set has several keys for its algorithm.
    KeyIdRequired,
    /// The identity provider's key for the token cannot be used for its algorithm.
    UnusableKey,
    /// The key set cannot be fetched, and none was fetched before.
    KeysUnavailable {
        /// The JWKS URL.
        uri: String,
        /// What went wrong, for the log.
        cause: String,
    },
}

impl JwtError {
    /// Why the token was refused, in words safe to send to the client.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "the bearer token is not a well-formed JWT",
            Self::AlgorithmNotAccepted => "the token's signing algorithm is not one this API accepts",
            Self::BadSignature => "the token's signature is not valid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet (nbf)",
            Self::WrongIssuer => "the token was issued by an issuer this API does not trust (iss)",
            Self::WrongAudience => "the token is not issued for this API (aud)",
            Self::MissingClaim("exp") => "the token has no expiry (exp claim)",
            Self::MissingClaim("iss") => "the token has no issuer (iss claim)",
            Self::MissingClaim("aud") => "the token has no audience (aud claim)",
            Self::MissingClaim("sub") => "the token has no subject (sub claim)",
            Self::MissingClaim(_) => "the token lacks a claim this API requires",
            Self::InvalidTimeClaim => "the token's exp or nbf claim is not a number of seconds",
            Self::UnknownKey => "the token's signing key (kid) is not one the identity provider publishes",
            Self::KeyIdRequired => "the token names no signing key (kid) and the identity provider publishes several",
            Self::UnusableKey => "the identity provider's key for this token does not fit the token's algorithm",
            Self::KeysUnavailable { .. } => "the identity provider's signing keys cannot be fetched now",
        }
    }

    fn from_validation(error: jsonwebtoken::errors::Error) -> Self {
        match error.into_kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => Self::AlgorithmNotAccepted,
            ErrorKind::MissingRequiredClaim(claim) => REQUIRED_CLAIMS
                .into_iter()
                .find(|required| *required == claim)
                .map_or(Self::Malformed, Self::MissingClaim),
            ErrorKind::InvalidClaimFormat(_) => Self::InvalidTimeClaim,
            ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => Self::UnusableKey,
            _ => Self::Malformed,
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeysUnavailable { uri, cause } => write!(f, "the signing keys at {uri} cannot be fetched: {cause}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for JwtError {}

/// Verifies bearer tokens against one `auth.jwt` config.
pub struct JwtVerifier {
    issuer: String,
    audiences: Vec<String>,
    leeway_seconds: u64,
    role_claim: String,
    role_map: BTreeMap<String, String>,
    hmac_key: Option<DecodingKey>,
    jwks: Option<JwksCache>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("hs256", &self.hmac_key.is_some())
            .field("jwks_uri", &self.jwks.as_ref().map(|jwks| jwks.uri.to_string()))
            .finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier, reading the HS256 secret from the environment variable
    /// `hmacSecretEnv` names.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtSetupError> {
        let secret = config
            .hmac_secret_env
            .as_deref()
            .map(|variable| (variable, std::env::var(variable).unwrap_or_default()));
        Self::build(config, secret, JwksTiming::default())
    }

    /// Builds the verifier from the secret's variable name and value.
    pub(crate) fn build(
        config: &JwtConfig,
        secret: Option<(&str, String)>,
        timing: JwksTiming,
    ) -> Result<Self, JwtSetupError> {
        if config.jwks_uri.is_none() && config.hmac_secret_env.is_none() {
            return Err(JwtSetupError::NoKeySource);
        }
        if config.audiences.is_empty() {
            return Err(JwtSetupError::NoAudiences);
        }
        let hmac_key = secret
            .map(|(variable, secret)| hmac_key(variable, secret))
            .transpose()?;
        let jwks = config
            .jwks_uri
            .as_deref()
            .map(|uri| JwksCache::new(uri, timing))
            .transpose()?;
        Ok(Self {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            leeway_seconds: u64::from(config.leeway_seconds),
            role_claim: config.role_claim.clone(),
            role_map: config.role_map.clone(),
            hmac_key,
            jwks,
        })
    }

    /// Checks the token's signature, `exp`, `nbf`, `iss`, `aud` and `sub`, then maps its role claim.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        let header = TokenHeader::parse(token)?;
        let kid = header.kid.as_deref();
        let (algorithm, key) = match header.alg.as_str() {
            "HS256" => (
                Algorithm::HS256,
                self.hmac_key.clone().ok_or(JwtError::AlgorithmNotAccepted)?,
            ),
            "RS256" => (Algorithm::RS256, self.published_key(kid, Algorithm::RS256).await?),
            "ES256" => (Algorithm::ES256, self.published_key(kid, Algorithm::ES256).await?),
            _ => return Err(JwtError::AlgorithmNotAccepted),
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation(algorithm))
            .map_err(JwtError::from_validation)?
            .claims;
        let subject = match claims.get("sub") {
            Some(Value::String(subject)) if !subject.is_empty() => subject.clone(),
            _ => return Err(JwtError::MissingClaim("sub")),
        };
        Ok(VerifiedToken {
            subject,
            role: self.role_of(&claims),
            claims,
        })
    }

    /// The identity provider's key for an RS256 or ES256 token; refused when no JWKS is configured.
    async fn published_key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<DecodingKey, JwtError> {
        let jwks = self.jwks.as_ref().ok_or(JwtError::AlgorithmNotAccepted)?;
        jwks.key_for(kid, algorithm).await
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&REQUIRED_CLAIMS);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation
    }

    /// The ApiRole of the first role-claim value, in claim order, that the role map knows.
    fn role_of(&self, claims: &Map<String, Value>) -> Option<String> {
        let names: Vec<&str> = match claim_at(claims, &self.role_claim)? {
            // Space-separated, as OAuth `scope` and `scp` claims are.
            Value::String(names) => names.split_whitespace().collect(),
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        names.into_iter().find_map(|name| self.role_map.get(name)).cloned()
    }
}

/// The claim at a dotted path (`realm_access.roles`). A top-level claim whose own name is the
/// whole path wins, so namespaced claims such as `https://example.com/roles` work too.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let mut value = claims.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

/// The HS256 key: the secret's bytes as they are (not base64-decoded).
fn hmac_key(variable: &str, secret: String) -> Result<DecodingKey, JwtSetupError> {
    if secret.is_empty() {
        return Err(JwtSetupError::SecretMissing {
            variable: variable.to_owned(),
        });
    }
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(JwtSetupError::SecretTooShort {
            variable: variable.to_owned(),
            length: secret.len(),
        });
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

/// The fields of a token's header the verifier reads before choosing a key. Parsed here rather
/// than by `jsonwebtoken`, so an unknown algorithm (`none`) is reported as such.
#[derive(serde::Deserialize)]
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

impl TokenHeader {
    fn parse(token: &str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
    }
}

/// One usable signing key from the JWKS.
struct SigningKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of one successful fetch.
struct KeySet {
    fetched_at: Instant,
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// The key for `kid` and `algorithm`; without a `kid`, the only key for the algorithm.
    fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Option<DecodingKey>, JwtError> {
        let mut candidates = self
            .keys
            .iter()
            .filter(|key| key.algorithm == algorithm && (kid.is_none() || key.kid.as_deref() == kid));
        match (candidates.next(), candidates.next()) {
            (Some(only), None) => Ok(Some(only.key.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) if kid.is_none() => Err(JwtError::KeyIdRequired),
            // Two keys share the kid: the identity provider is rotating them, the first one listed wins.
            (Some(first), Some(_)) => Ok(Some(first.key.clone())),
        }
    }
}

/// When the last fetch was started, and why it failed if it did.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The identity provider's key set, fetched lazily and refreshed on rotation or age.
struct JwksCache {
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timing: JwksTiming,
    keys: RwLock<Option<Arc<KeySet>>>,
    // Held while fetching, so concurrent requests needing new keys wait for one fetch.
    fetch: tokio::sync::Mutex<FetchState>,
}

impl JwksCache {
    fn new(uri: &str, timing: JwksTiming) -> Result<Self, JwtSetupError> {
        let invalid = || JwtSetupError::InvalidJwksUri { uri: uri.to_owned() };
        let parsed: Uri = uri.parse().map_err(|_| invalid())?;
        let https = match parsed.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            Some(scheme) if *scheme == Scheme::HTTP => false,
            _ => return Err(invalid()),
        };
        if parsed.host().is_none() {
            return Err(invalid());
        }
        let tls = tls_config(https).map_err(|source| JwtSetupError::Tls {
            uri: uri.to_owned(),
            source,
        })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if https {
            connector.https_only()
        } else {
            connector.https_or_http()
        };
        let client = Client::builder(TokioExecutor::new()).build(connector.enable_http1().build());
        Ok(Self {
            uri: parsed,
            client,
            timing,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        })
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|keys| keys.clone())
    }

    /// The key for the token, fetching the key set first when it is missing, too old, or
    /// lacks the token's `kid`.
    async fn key_for(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<DecodingKey, JwtError> {
        let held = self.current();
        if let Some(keys) = &held
            && keys.fetched_at.elapsed() < self.timing.max_age
            && let Some(key) = keys.find(kid, algorithm)?
        {
            return Ok(key);
        }
        let keys = self.refresh(held).await?;
        keys.find(kid, algorithm)?.ok_or(JwtError::UnknownKey)
    }

    /// Fetches the key set unless another request did since `held` was read, or a fetch was
    /// started less than `min_interval` ago; returns the newest keys held.
    async fn refresh(&self, held: Option<Arc<KeySet>>) -> Result<Arc<KeySet>, JwtError> {
        let mut state = self.fetch.lock().await;
        let current = self.current();
        let fetched_meanwhile = match (&held, &current) {
            (Some(held), Some(current)) => !Arc::ptr_eq(held, current),
            (None, current) => current.is_some(),
            (Some(_), None) => false,
        };
        let too_soon = state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.timing.min_interval);
        if fetched_meanwhile || too_soon {
            return current.ok_or_else(|| JwtError::KeysUnavailable {
                uri: self.uri.to_string(),
                cause: state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no key set was fetched yet".to_owned()),
            });
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(uri = %self.uri, keys = keys.keys.len(), "fetched the JWKS");
                let keys = Arc::new(keys);
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Some(keys.clone());
                }
                state.last_error = None;
                Ok(keys)
            }
            Err(cause) => {
                tracing::warn!(uri = %self.uri, %cause, kept_previous_keys = current.is_some(), "JWKS fetch failed");
                state.last_error = Some(cause.clone());
                current.ok_or_else(|| JwtError::KeysUnavailable {
                    uri: self.uri.to_string(),
                    cause,
                })
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let request = Request::get(self.uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|error| error.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| error_chain(&error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("the server answered {status}"));
            }
            axum::body::to_bytes(Body::new(response.into_body()), MAX_JWKS_BYTES)
                .await
                .map_err(|error| format!("reading the body failed (over {MAX_JWKS_BYTES} bytes?): {error}"))
        };
        let body = tokio::time::timeout(self.timing.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timing.timeout.as_millis()))??;
        parse_key_set(&body)
    }
}

fn tls_config(https: bool) -> std::io::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    // A plain-http JWKS URL (an identity provider inside the cluster) never negotiates TLS, so
    // it must not depend on CA certificates being present.
    let builder = if https {
        builder.with_native_roots()?
    } else {
        builder.with_root_certificates(RootCertStore::empty())
    };
    Ok(builder.with_no_client_auth())
}

/// An error and its sources, for the log: hyper's own message alone says only "client error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The usable signing keys of a JWKS document. Keys of other types, for encryption, or for
/// algorithms other than RS256 and ES256 are skipped rather than failing the whole set.
fn parse_key_set(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|error| format!("the body is not a JWKS document: {error}"))?;
    let keys: Vec<SigningKey> = document
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .filter_map(|jwk| signing_key(&jwk))
        .collect();
    if keys.is_empty() {
        tracing::warn!("the JWKS holds no RS256 or ES256 signing key");
    }
    Ok(KeySet {
        fetched_at: Instant::now(),
        keys,
    })
}

fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let (algorithm, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    // A key published for another algorithm (RS384, PS256, ...) must not verify RS256 tokens.
    if jwk.common.key_algorithm.is_some_and(|alg| alg != declared) {
        return None;
    }
    Some(SigningKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
    const ISSUER: &str = "https://issuer.test/";
    const AUDIENCE: &str = "sales-api";

    fn config(jwks_uri: Option<String>, hmac: bool) -> JwtConfig {
        JwtConfig {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into(), "reports".into()],
            jwks_uri,
            hmac_secret_env: hmac.then(|| "SLUICE_JWT_HMAC_SECRET".into()),
            role_claim: "realm_access.roles".into(),
            leeway_seconds: 30,
            role_map: [("analysts", "analyst"), ("admins", "admin")]
                .map(|(claim, role)| (claim.to_owned(), role.to_owned()))
                .into(),
        }
    }

    fn hs256_verifier(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::build(
            config,
            Some(("SLUICE_JWT_HMAC_SECRET", SECRET.into())),
            JwksTiming::default(),
        )
        .expect("verifier")
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    /// Valid claims, with `changes` applied: a `null` removes the claim.
    fn claims(changes: Value) -> Value {
        let mut claims = json!({
            "sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 300,
            "realm_access": { "roles": ["analysts"] }, "region": "eu",
        });
        for (name, value) in changes.as_object().expect("object") {
            match value {
                Value::Null => claims.as_object_mut().expect("object").remove(name),
                value => claims
                    .as_object_mut()
                    .expect("object")
                    .insert(name.clone(), value.clone()),
            };
        }
        claims
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign")
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// A token signed with the test key `name` (a fixture), naming `kid`.
    fn signed(name: &str, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let pem = fixture(&format!("{name}.key.pem"));
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("test key");
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// A token with the given header, whatever it says, and an HMAC signature made with `secret`.
    fn hand_built(header: Value, claims: &Value, secret: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
                .expect("hmac");
        format!("{message}.{signature}")
    }

    fn jwk_set(names: &[&str]) -> Value {
        let keys: Vec<Value> = names
            .iter()
            .map(|name| serde_json::from_slice(&fixture(&format!("{name}.jwk.json"))).expect("jwk"))
            .collect();
        json!({ "keys": keys })
    }

    /// A JWKS endpoint on 127.0.0.1 that counts its fetches and serves whatever `document` holds.
    struct JwksServer {
        uri: String,
        fetches: Arc<AtomicUsize>,
        document: Arc<RwLock<Value>>,
    }

    impl JwksServer {
        async fn start(document: Value) -> Self {
            let fetches = Arc::new(AtomicUsize::new(0));
            let document = Arc::new(RwLock::new(document));
            let router = Router::new().route(
                "/jwks",
                get({
                    let (fetches, document) = (fetches.clone(), document.clone());
                    move || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        axum::Json(document.read().expect("document").clone())
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let uri = format!("http://{}/jwks", listener.local_addr().expect("address"));
            tokio::spawn(async move { axum::serve(listener, router).await });
            Self { uri, fetches, document }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn serve(&self, document: Value) {
            *self.document.write().expect("document") = document;
        }
    }

    const FAST: JwksTiming = JwksTiming {
        max_age: Duration::from_secs(600),
        // Long enough for a debug build to verify a handful of tokens within one interval.
        min_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    };

    fn jwks_verifier(uri: &str) -> JwtVerifier {
        JwtVerifier::build(&config(Some(uri.to_owned()), false), None, FAST).expect("verifier")
    }

    async fn refusal(verifier: &JwtVerifier, token: &str) -> JwtError {
        match verifier.verify(token).await {
            Err(error) => error,
            Ok(verified) => panic!("expected a refusal, got {verified:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_hs256_token_yields_its_subject_role_and_claims() {
        let verifier = hs256_verifier(&config(None, true));
        let verified = verifier.verify(&hs256(&claims(json!({})))).await.expect("valid");
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.role.as_deref(), Some("analyst"));
        assert_eq!(verified.claims.get("region"), Some(&json!("eu")));
    }

    #[tokio::test]
    async fn lifetime_is_checked_with_the_configured_leeway() {
        let verifier = hs256_verifier(&config(None, true));
        let expired = hs256(&claims(json!({ "exp": now() - 120 })));
        assert!(matches!(refusal(&verifier, &expired).await, JwtError::Expired));
        let early = hs256(&claims(json!({ "nbf": now() + 120 })));
        assert!(matches!(refusal(&verifier, &early).await, JwtError::NotYetValid));
        let skewed = hs256(&claims(json!({ "exp": now() - 10, "nbf": now() + 10 })));
        verifier.verify(&skewed).await.expect("within the 30 s leeway");
        let strict = hs256_verifier(&JwtConfig {
            leeway_seconds: 0,
            ..config(None, true)
        });
        assert!(matches!(refusal(&strict, &skewed).await, JwtError::Expired));
    }

    #[tokio::test]
    async fn issuer_and_audience_must_match() {
        let verifier = hs256_verifier(&config(None, true));
        let foreign = hs256(&claims(json!({ "iss": "https://elsewhere.test/" })));
        assert!(matches!(refusal(&verifier, &foreign).await, JwtError::WrongIssuer));
        let other_api = hs256(&claims(json!({ "aud": "billing-api" })));
        assert!(matches!(refusal(&verifier, &other_api).await, JwtError::WrongAudience));
        let none_of_ours = hs256(&claims(json!({ "aud": ["billing-api", "hr-api"] })));
        assert!(matches!(
            refusal(&verifier, &none_of_ours).await,
            JwtError::WrongAudience
        ));
        let one_of_ours = hs256(&claims(json!({ "aud": ["billing-api", "reports"] })));
        verifier
            .verify(&one_of_ours)
            .await
            .expect("an aud array with one accepted audience");
    }

    #[tokio::test]
    async fn exp_iss_aud_and_sub_are_required() {
        let verifier = hs256_verifier(&config(None, true));
        for claim in ["exp", "iss", "aud", "sub"] {
            let token = hs256(&claims(json!({ claim: null })));
            let error = refusal(&verifier, &token).await;
            assert!(
                matches!(error, JwtError::MissingClaim(missing) if missing == claim),
                "{claim}: {error:?}"
            );
            assert!(error.reason().contains(claim), "{}", error.reason());
        }
        let empty_subject = hs256(&claims(json!({ "sub": "" })));
        assert!(matches!(
            refusal(&verifier, &empty_subject).await,
            JwtError::MissingClaim("sub")
        ));
    }

    #[tokio::test]
    async fn unsigned_forged_and_malformed_tokens_are_refused() {
        let verifier = hs256_verifier(&config(None, true));
        let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        let unsigned = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(
            refusal(&verifier, &unsigned).await,
            JwtError::AlgorithmNotAccepted
        ));
        let other_secret = hand_built(
            json!({ "alg": "HS256" }),
            &claims(json!({})),
            b"another-secret-of-at-least-32-bytes!!",
        );
        assert!(matches!(
            refusal(&verifier, &other_secret).await,
            JwtError::BadSignature
        ));
        let genuine = hs256(&claims(json!({})));
        let admin_claims =
            URL_SAFE_NO_PAD.encode(claims(json!({ "realm_access": { "roles": ["admins"] } })).to_string());
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{admin_claims}.{}", parts[0], parts[2]);
        assert!(matches!(refusal(&verifier, &tampered).await, JwtError::BadSignature));
        for garbage in ["", "abc", "a.b", "a.b.c.d", "!!.e30.sig"] {
            assert!(
                matches!(refusal(&verifier, garbage).await, JwtError::Malformed),
                "{garbage:?}"
            );
        }
        let hs512 = hand_built(json!({ "alg": "HS512" }), &claims(json!({})), SECRET.as_bytes());
        assert!(matches!(
            refusal(&verifier, &hs512).await,
            JwtError::AlgorithmNotAccepted
        ));
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_through_a_cached_jwks() {
        let mut document = jwk_set(&["test-rsa-a", "test-ec-p256"]);
        // Keys the verifier must skip without failing the set.
        let keys = document["keys"].as_array_mut().expect("keys");
        keys.push(json!({ "kty": "oct", "kid": "symmetric", "k": "c2VjcmV0" }));
        keys.push(
            json!({ "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }),
        );
        keys.push(json!({ "kty": "RSA", "kid": "ps", "alg": "PS256", "n": keys[0]["n"], "e": "AQAB" }));
        keys.push(json!({ "kty": "RSA", "kid": "enc", "use": "enc", "n": keys[0]["n"], "e": "AQAB" }));
        let server = JwksServer::start(document).await;
        let verifier = jwks_verifier(&server.uri);
        assert_eq!(server.fetches(), 0, "the JWKS is fetched lazily");
        let rs256 = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        let verified = verifier.verify(&rs256).await.expect("RS256");
        assert_eq!(verified.role.as_deref(), Some("analyst"));
        let es256 = signed(
            "test-ec-p256",
            Algorithm::ES256,
            Some("test-ec-p256"),
            &claims(json!({ "sub": "bob" })),
        );
        assert_eq!(verifier.verify(&es256).await.expect("ES256").subject, "bob");
        assert_eq!(server.fetches(), 1, "the key set is cached");
        let expired = signed(
            "test-rsa-a",
            Algorithm::RS256,
            Some("test-rsa-a"),
            &claims(json!({ "exp": now() - 120 })),
        );
        assert!(matches!(refusal(&verifier, &expired).await, JwtError::Expired));
        for kid in ["ps", "enc"] {
            let token = signed("test-rsa-a", Algorithm::RS256, Some(kid), &claims(json!({})));
            assert!(
                matches!(refusal(&verifier, &token).await, JwtError::UnknownKey),
                "{kid}"
            );
        }
    }

    #[tokio::test]
    async fn no_algorithm_confusion_between_hmac_and_published_keys() {
        let server = JwksServer::start(jwk_set(&["test-rsa-a", "test-ec-p256"])).await;
        let verifier = jwks_verifier(&server.uri);
        let public_pem = fixture("test-rsa-a.pub.pem");
        let hs256_with_public_key = hand_built(
            json!({ "alg": "HS256", "kid": "test-rsa-a" }),
            &claims(json!({})),
            &public_pem,
        );
        assert!(matches!(
            refusal(&verifier, &hs256_with_public_key).await,
            JwtError::AlgorithmNotAccepted
        ));
        assert_eq!(server.fetches(), 0, "a refused algorithm fetches nothing");
        let rs256_with_hmac = hand_built(
            json!({ "alg": "RS256", "kid": "test-rsa-a" }),
            &claims(json!({})),
            &public_pem,
        );
        assert!(matches!(
            refusal(&verifier, &rs256_with_hmac).await,
            JwtError::BadSignature
        ));
        let es256_naming_an_rsa_key = signed("test-ec-p256", Algorithm::ES256, Some("test-rsa-a"), &claims(json!({})));
        assert!(matches!(
            refusal(&verifier, &es256_naming_an_rsa_key).await,
            JwtError::UnknownKey
        ));
        let hs256_only = hs256_verifier(&config(None, true));
        let rs256 = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        assert!(matches!(
            refusal(&hs256_only, &rs256).await,
            JwtError::AlgorithmNotAccepted
        ));
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let server = JwksServer::start(jwk_set(&["test-rsa-a"])).await;
        let verifier = jwks_verifier(&server.uri);
        let valid = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        let ghosts: Vec<String> = (0..5)
            .map(|n| {
                signed(
                    "test-rsa-a",
                    Algorithm::RS256,
                    Some(&format!("ghost-{n}")),
                    &claims(json!({})),
                )
            })
            .collect();
        verifier.verify(&valid).await.expect("valid");
        assert_eq!(server.fetches(), 1);
        tokio::time::sleep(FAST.min_interval).await;
        for ghost in &ghosts {
            assert!(matches!(refusal(&verifier, ghost).await, JwtError::UnknownKey));
        }
        assert_eq!(
            server.fetches(),
            2,
            "five unknown kids in one interval cause one refetch"
        );
        verifier.verify(&valid).await.expect("known keys still work");
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_and_the_retired_one_refused() {
        let server = JwksServer::start(jwk_set(&["test-rsa-a"])).await;
        let verifier = jwks_verifier(&server.uri);
        let old = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        verifier.verify(&old).await.expect("old key");
        server.serve(jwk_set(&["test-rsa-b"]));
        tokio::time::sleep(FAST.min_interval).await;
        let new = signed("test-rsa-b", Algorithm::RS256, Some("test-rsa-b"), &claims(json!({})));
        verifier.verify(&new).await.expect("rotated key");
        assert_eq!(server.fetches(), 2);
        assert!(matches!(refusal(&verifier, &old).await, JwtError::UnknownKey));
    }

    #[tokio::test]
    async fn keys_older_than_the_max_age_are_fetched_again() {
        let server = JwksServer::start(jwk_set(&["test-rsa-a"])).await;
        let timing = JwksTiming {
            max_age: Duration::from_secs(1),
            min_interval: Duration::from_millis(100),
            ..FAST
        };
        let verifier = JwtVerifier::build(&config(Some(server.uri.clone()), false), None, timing).expect("verifier");
        let token = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        verifier.verify(&token).await.expect("valid");
        verifier.verify(&token).await.expect("valid");
        assert_eq!(server.fetches(), 1);
        tokio::time::sleep(timing.max_age).await;
        verifier.verify(&token).await.expect("valid");
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn a_token_without_kid_needs_a_single_candidate_key() {
        let server = JwksServer::start(jwk_set(&["test-rsa-a", "test-ec-p256"])).await;
        let verifier = jwks_verifier(&server.uri);
        let no_kid = signed("test-rsa-a", Algorithm::RS256, None, &claims(json!({})));
        verifier.verify(&no_kid).await.expect("the only RS256 key");
        server.serve(jwk_set(&["test-rsa-a", "test-rsa-b"]));
        let verifier = jwks_verifier(&server.uri);
        assert!(matches!(refusal(&verifier, &no_kid).await, JwtError::KeyIdRequired));
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_a_clear_server_side_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let uri = format!("http://{}/jwks", listener.local_addr().expect("address"));
        drop(listener);
        let verifier = jwks_verifier(&uri);
        let token = signed("test-rsa-a", Algorithm::RS256, Some("test-rsa-a"), &claims(json!({})));
        let error = refusal(&verifier, &token).await;
        assert!(matches!(error, JwtError::KeysUnavailable { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&uri) && message.contains("refused"), "{message}");
        assert_eq!(
            error.reason(),
            "the identity provider's signing keys cannot be fetched now"
        );
        let again = refusal(&verifier, &token).await;
        assert!(
            again.to_string().contains("refused"),
            "the last failure is reported without refetching: {again}"
        );

        let server = JwksServer::start(json!({ "not": "a key set" })).await;
        let error = refusal(&jwks_verifier(&server.uri), &token).await;
        assert!(error.to_string().contains("not a JWKS document"), "{error}");
    }

    #[tokio::test]
    async fn the_role_comes_from_the_first_mapped_value_of_the_role_claim() {
        let verifier = |role_claim: &str| {
            hs256_verifier(&JwtConfig {
                role_claim: role_claim.into(),
                ..config(None, true)
            })
        };
        let role = |verifier: JwtVerifier, claims: Value| async move {
            verifier.verify(&hs256(&claims)).await.expect("valid").role
        };
        let nested = claims(json!({ "realm_access": { "roles": ["offline_access", "admins", "analysts"] } }));
        assert_eq!(
            role(verifier("realm_access.roles"), nested).await.as_deref(),
            Some("admin")
        );
        let string = claims(json!({ "role": "analysts" }));
        assert_eq!(role(verifier("role"), string).await.as_deref(), Some("analyst"));
        let scopes = claims(json!({ "scope": "openid analysts" }));
        assert_eq!(role(verifier("scope"), scopes).await.as_deref(), Some("analyst"));
        let namespaced = claims(json!({ "https://sluice.test/roles": ["admins"] }));
        assert_eq!(
            role(verifier("https://sluice.test/roles"), namespaced).await.as_deref(),
            Some("admin")
        );
        let unmapped = claims(json!({ "realm_access": { "roles": ["offline_access"] } }));
        assert_eq!(role(verifier("realm_access.roles"), unmapped).await, None);
        let absent = claims(json!({ "realm_access": null }));
        assert_eq!(role(verifier("realm_access.roles"), absent).await, None);
        let not_names = claims(json!({ "role": 7 }));
        assert_eq!(role(verifier("role"), not_names).await, None);
    }

    #[test]
    fn setup_errors_name_what_to_fix() {
        let unset = JwtConfig {
            hmac_secret_env: Some("SLUICE_TEST_JWT_SECRET_NEVER_SET".into()),
            ..config(None, true)
        };
        let error = JwtVerifier::new(&unset).expect_err("unset secret");
        assert!(matches!(error, JwtSetupError::SecretMissing { .. }), "{error:?}");
        assert!(
            error.to_string().contains("SLUICE_TEST_JWT_SECRET_NEVER_SET"),
            "{error}"
        );
        let short = JwtVerifier::build(
            &config(None, true),
            Some(("SLUICE_JWT_HMAC_SECRET", "too-short".into())),
            JwksTiming::default(),
        )
        .expect_err("short secret");
        assert!(
            matches!(short, JwtSetupError::SecretTooShort { length: 9, .. }),
            "{short:?}"
        );
        assert!(matches!(
            JwtVerifier::build(&config(None, false), None, JwksTiming::default()),
            Err(JwtSetupError::NoKeySource)
        ));
        let no_audience = JwtConfig {
            audiences: Vec::new(),
            ..config(None, true)
        };
        assert!(matches!(
            JwtVerifier::new(&no_audience),
            Err(JwtSetupError::NoAudiences)
        ));
        for uri in ["ftp://keys.test/jwks", "/jwks", "not a url"] {
            let error = JwtVerifier::new(&config(Some(uri.into()), false)).expect_err(uri);
            assert!(
                matches!(error, JwtSetupError::InvalidJwksUri { .. }),
                "{uri}: {error:?}"
            );
        }
    }

    #[test]
    fn claim_paths_prefer_a_whole_claim_name_then_follow_dots() {
        let claims = claims(json!({ "a.b": 1, "a": { "b": 2, "c": { "d": 3 } } }));
        let claims = claims.as_object().expect("object");
        assert_eq!(claim_at(claims, "a.b"), Some(&json!(1)));
        assert_eq!(claim_at(claims, "a.c.d"), Some(&json!(3)));
        assert_eq!(claim_at(claims, "a.x"), None);
        assert_eq!(claim_at(claims, "region.x"), None);
    }
}
