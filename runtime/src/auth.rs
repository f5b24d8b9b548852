//! Authentication: who is calling, from the request's credentials.
//!
//! An API key in the DataApi's key header is hashed and compared, in fixed time, with every key
//! hash in the config; a request without credentials gets the anonymous role when the DataApi
//! names one. Credentials that are present but not accepted are always 401: a caller with a
//! wrong or revoked key never silently becomes anonymous.

use axum::http::HeaderMap;
use sluice_crds::config::{ApiKeyEntry, AuthConfig};

use crate::error::ApiError;

/// The caller id of requests served under the anonymous role.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// Who, for audit lines and rate-limit buckets: `<role>/<key name>` for API keys,
    /// [`ANONYMOUS_CALLER`] without credentials. Never the key itself.
    pub id: String,
    /// The ApiRole whose rules apply.
    pub role: String,
    /// Token claims, for row filters; empty for API keys and anonymous callers.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Identifies the caller of a request from its headers.
pub fn authenticate(auth: &AuthConfig, keys: &[ApiKeyEntry], headers: &HeaderMap) -> Result<Caller, ApiError> {
    let refuse = |reason: &'static str| {
        tracing::info!(reason, "authentication refused");
        ApiError::Unauthenticated {
            reason,
            challenge: challenge(auth),
        }
    };
    if let Some(value) = headers.get(auth.api_key_header.as_str()) {
        let presented = sluice_crds::hash_api_key(value.to_str().unwrap_or_default().trim());
        // Every entry is compared, so the time taken does not tell which key came close.
        let mut matched = None;
        for entry in keys {
            if fixed_time_eq(presented.as_bytes(), entry.sha256.as_bytes()) {
                matched = Some(entry);
            }
        }
        return match matched {
            Some(entry) => Ok(Caller {
                id: entry.id.clone(),
                role: entry.role.clone(),
                claims: serde_json::Map::new(),
            }),
            None => Err(refuse("the API key is not valid for this API")),
        };
    }
    if let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) {
        let bearer = authorization
            .to_str()
            .unwrap_or_default()
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "));
        return Err(match (bearer, &auth.jwt) {
            (true, Some(_)) => refuse("JWT authentication is not available yet; send an API key instead"),
            (true, None) => refuse("this API does not accept bearer tokens; send an API key instead"),
            (false, _) => refuse("the Authorization header's scheme is not accepted; send an API key instead"),
        });
    }
    match &auth.anonymous_role {
        Some(role) => Ok(Caller {
            id: ANONYMOUS_CALLER.to_owned(),
            role: role.clone(),
            claims: serde_json::Map::new(),
        }),
        None => Err(refuse("this API requires credentials")),
    }
}

/// The `WWW-Authenticate` value naming the schemes the API accepts.
fn challenge(auth: &AuthConfig) -> String {
    let api_key = format!("ApiKey header=\"{}\"", auth.api_key_header);
    match auth.jwt {
        Some(_) => format!("{api_key}, Bearer"),
        None => api_key,
    }
}

/// Compares two byte strings in time that depends only on their lengths (hex digests always
/// have the same length), so response timing does not reveal how much of a hash matched.
fn fixed_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use sluice_crds::config::JwtConfig;

    use super::*;

    const KEY: &str = "sk_valid";

    fn auth(anonymous: Option<&str>, jwt: bool) -> AuthConfig {
        AuthConfig {
            api_key_header: "X-API-Key".into(),
            jwt: jwt.then(|| JwtConfig {
                issuer: "https://issuer.example/".into(),
                audiences: vec!["api".into()],
                jwks_uri: None,
                hmac_secret_env: Some("SECRET".into()),
                role_claim: "role".into(),
                leeway_seconds: 30,
                role_map: Default::default(),
            }),
            anonymous_role: anonymous.map(str::to_owned),
        }
    }

    fn keys() -> Vec<ApiKeyEntry> {
        vec![ApiKeyEntry {
            id: "admin/local".into(),
            role: "admin".into(),
            sha256: sluice_crds::hash_api_key(KEY),
        }]
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        headers
    }

    fn refusal(result: Result<Caller, ApiError>) -> (&'static str, String) {
        match result {
            Err(ApiError::Unauthenticated { reason, challenge }) => (reason, challenge),
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn a_known_key_authenticates_as_its_role() {
        let caller = authenticate(&auth(None, false), &keys(), &headers(&[("x-api-key", KEY)])).expect("valid key");
        assert_eq!((caller.id.as_str(), caller.role.as_str()), ("admin/local", "admin"));
        assert!(caller.claims.is_empty());
    }

    #[test]
    fn an_unknown_key_is_refused_even_when_anonymous_access_exists() {
        let (reason, challenge) = refusal(authenticate(
            &auth(Some("visitor"), false),
            &keys(),
            &headers(&[("x-api-key", "sk_other_data_api")]),
        ));
        assert!(reason.contains("not valid"), "{reason}");
        assert_eq!(challenge, "ApiKey header=\"X-API-Key\"");
        refusal(authenticate(
            &auth(Some("visitor"), false),
            &keys(),
            &headers(&[("x-api-key", "")]),
        ));
    }

    #[test]
    fn no_credentials_is_anonymous_or_refused() {
        let caller = authenticate(&auth(Some("visitor"), false), &keys(), &HeaderMap::new()).expect("anonymous");
        assert_eq!(
            (caller.id.as_str(), caller.role.as_str()),
            (ANONYMOUS_CALLER, "visitor")
        );
        let (reason, _) = refusal(authenticate(&auth(None, false), &keys(), &HeaderMap::new()));
        assert!(reason.contains("requires credentials"), "{reason}");
    }

    #[test]
    fn bearer_tokens_are_refused_honestly_until_jwt_is_supported() {
        let bearer = headers(&[("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")]);
        let (reason, challenge) = refusal(authenticate(&auth(Some("visitor"), true), &keys(), &bearer));
        assert!(reason.contains("not available yet"), "{reason}");
        assert_eq!(challenge, "ApiKey header=\"X-API-Key\", Bearer");
        let (reason, _) = refusal(authenticate(&auth(Some("visitor"), false), &keys(), &bearer));
        assert!(reason.contains("does not accept bearer tokens"), "{reason}");
    }

    #[test]
    fn fixed_time_comparison_is_equality() {
        assert!(fixed_time_eq(b"abc", b"abc"));
        assert!(!fixed_time_eq(b"abc", b"abd"));
        assert!(!fixed_time_eq(b"abc", b"ab"));
    }
}
