//! Authentication: who is calling, from the request's credentials.
//!
//! An API key in the DataApi's key header is hashed and compared, in fixed time, with every key
//! hash in the config; it wins when a request carries both a key and a bearer token. A bearer
//! token is verified by the config's [`JwtVerifier`] and must map to an ApiRole through
//! `auth.jwt.roleMap`. A request without credentials gets the anonymous role when the DataApi
//! names one. Credentials that are present but not accepted are always 401: a caller with a
//! wrong or revoked key, or with a valid token whose roles this API does not know, never
//! silently becomes anonymous.

use axum::http::HeaderMap;
use sluice_crds::config::{ApiKeyEntry, AuthConfig};

use crate::error::ApiError;
use crate::jwt::{JwtError, JwtVerifier};

/// The caller id of requests served under the anonymous role.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// Why a token that verified is still refused: no value of its role claim is in the role map.
pub const NO_ROLE_REASON: &str = "the token carries no role this API knows";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// Who, for audit lines and rate-limit buckets: `<role>/<key name>` for API keys,
    /// `jwt:<sub>` for bearer tokens, [`ANONYMOUS_CALLER`] without credentials. Never the
    /// credential itself.
    pub id: String,
    /// The ApiRole whose rules apply.
    pub role: String,
    /// Token claims, for row filters; empty for API keys and anonymous callers.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Identifies the caller of a request from its headers. `jwt` is the verifier built from
/// `auth.jwt`; `None` there while `auth.jwt` is set means it could not be set up (500).
pub async fn authenticate(
    auth: &AuthConfig,
    keys: &[ApiKeyEntry],
    jwt: Option<&JwtVerifier>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
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
        return match (bearer_token(authorization.to_str().unwrap_or_default()), &auth.jwt) {
            (Some(token), Some(_)) => authenticate_bearer(auth, jwt, token).await,
            (Some(_), None) => Err(refuse(
                "this API does not accept bearer tokens; send an API key instead",
            )),
            (None, Some(_)) => Err(refuse(
                "the Authorization header's scheme is not accepted; send a Bearer token or an API key",
            )),
            (None, None) => Err(refuse(
                "the Authorization header's scheme is not accepted; send an API key instead",
            )),
        };
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

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(authorization: &str) -> Option<&str> {
    let authorization = authorization.trim();
    let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller a bearer token names, or why it is refused. The token itself is never logged
/// nor echoed.
async fn authenticate_bearer(auth: &AuthConfig, jwt: Option<&JwtVerifier>, token: &str) -> Result<Caller, ApiError> {
    let Some(verifier) = jwt else {
        tracing::error!("auth.jwt is configured but its verifier could not be set up (see the startup log)");
        return Err(ApiError::Internal);
    };
    let verified = match verifier.verify(token).await {
        Ok(verified) => verified,
        Err(error @ JwtError::KeysUnavailable { .. }) => {
            tracing::warn!(%error, "bearer token not verified");
            return Err(ApiError::IdentityProviderUnavailable);
        }
        Err(error) => return Err(invalid_token(auth, error.reason())),
    };
    let Some(role) = verified.role else {
        tracing::info!(subject = %verified.subject, "bearer token maps to no role");
        return Err(invalid_token(auth, NO_ROLE_REASON));
    };
    Ok(Caller {
        id: format!("jwt:{}", verified.subject),
        role,
        claims: verified.claims,
    })
}

/// 401 for a bearer token, with the RFC 6750 `invalid_token` error in the Bearer challenge.
fn invalid_token(auth: &AuthConfig, reason: &'static str) -> ApiError {
    tracing::info!(reason, "bearer token refused");
    ApiError::Unauthenticated {
        reason,
        challenge: format!(
            "ApiKey header=\"{}\", Bearer error=\"invalid_token\", error_description=\"{reason}\"",
            auth.api_key_header
        ),
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
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use sluice_crds::config::JwtConfig;

    use super::*;
    use crate::jwt::JwksTiming;

    const KEY: &str = "sk_valid";
    const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";

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
                role_map: [("analysts".to_owned(), "analyst".to_owned())].into(),
            }),
            anonymous_role: anonymous.map(str::to_owned),
        }
    }

    fn verifier(auth: &AuthConfig) -> JwtVerifier {
        let config = auth.jwt.as_ref().expect("jwt config");
        JwtVerifier::build(config, Some(("SECRET", SECRET.into())), JwksTiming::default()).expect("verifier")
    }

    fn token(role: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({
            "sub": "alice", "iss": "https://issuer.example/", "aud": "api", "exp": now + 300,
            "role": role, "region": "eu",
        });
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
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

    fn bearer(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    fn refusal(result: Result<Caller, ApiError>) -> (&'static str, String) {
        match result {
            Err(ApiError::Unauthenticated { reason, challenge }) => (reason, challenge),
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_known_key_authenticates_as_its_role() {
        let caller = authenticate(&auth(None, false), &keys(), None, &headers(&[("x-api-key", KEY)]))
            .await
            .expect("valid key");
        assert_eq!((caller.id.as_str(), caller.role.as_str()), ("admin/local", "admin"));
        assert!(caller.claims.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_key_is_refused_even_when_anonymous_access_exists() {
        let (reason, challenge) = refusal(
            authenticate(
                &auth(Some("visitor"), false),
                &keys(),
                None,
                &headers(&[("x-api-key", "sk_other_data_api")]),
            )
            .await,
        );
        assert!(reason.contains("not valid"), "{reason}");
        assert_eq!(challenge, "ApiKey header=\"X-API-Key\"");
        refusal(
            authenticate(
                &auth(Some("visitor"), false),
                &keys(),
                None,
                &headers(&[("x-api-key", "")]),
            )
            .await,
        );
    }

    #[tokio::test]
    async fn no_credentials_is_anonymous_or_refused() {
        let caller = authenticate(&auth(Some("visitor"), false), &keys(), None, &HeaderMap::new())
            .await
            .expect("anonymous");
        assert_eq!(
            (caller.id.as_str(), caller.role.as_str()),
            (ANONYMOUS_CALLER, "visitor")
        );
        let (reason, _) = refusal(authenticate(&auth(None, false), &keys(), None, &HeaderMap::new()).await);
        assert!(reason.contains("requires credentials"), "{reason}");
    }

    #[tokio::test]
    async fn a_valid_bearer_token_authenticates_as_its_mapped_role_with_its_claims() {
        let auth = auth(None, true);
        let verifier = verifier(&auth);
        let caller = authenticate(&auth, &keys(), Some(&verifier), &bearer(&token("analysts")))
            .await
            .expect("valid token");
        assert_eq!((caller.id.as_str(), caller.role.as_str()), ("jwt:alice", "analyst"));
        assert_eq!(caller.claims.get("region"), Some(&json!("eu")));
        let lowercase = headers(&[("authorization", &format!("bearer {}", token("analysts")))]);
        authenticate(&auth, &keys(), Some(&verifier), &lowercase)
            .await
            .expect("the scheme is case-insensitive");
    }

    #[tokio::test]
    async fn an_api_key_wins_over_a_bearer_token() {
        let auth = auth(None, true);
        let verifier = verifier(&auth);
        let mut both = bearer(&token("analysts"));
        both.insert("x-api-key", HeaderValue::from_static(KEY));
        let caller = authenticate(&auth, &keys(), Some(&verifier), &both).await.expect("key");
        assert_eq!(caller.role, "admin");
    }

    #[tokio::test]
    async fn an_invalid_bearer_token_is_refused_with_an_rfc_6750_challenge_and_never_anonymous() {
        let auth = auth(Some("visitor"), true);
        let verifier = verifier(&auth);
        let forged = format!("{}x", token("analysts"));
        let (reason, challenge) = refusal(authenticate(&auth, &keys(), Some(&verifier), &bearer(&forged)).await);
        assert_eq!(reason, "the token's signature is not valid");
        assert_eq!(
            challenge,
            "ApiKey header=\"X-API-Key\", Bearer error=\"invalid_token\", \
             error_description=\"the token's signature is not valid\""
        );
        assert!(HeaderValue::from_str(&challenge).is_ok());
        let (reason, _) = refusal(authenticate(&auth, &keys(), Some(&verifier), &bearer("")).await);
        assert_eq!(reason, "the bearer token is not a well-formed JWT");
    }

    #[tokio::test]
    async fn a_valid_token_without_a_mapped_role_is_refused_not_downgraded() {
        let auth = auth(Some("visitor"), true);
        let verifier = verifier(&auth);
        let (reason, challenge) =
            refusal(authenticate(&auth, &keys(), Some(&verifier), &bearer(&token("strangers"))).await);
        assert_eq!(reason, NO_ROLE_REASON);
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }

    #[tokio::test]
    async fn bearer_tokens_are_refused_when_jwt_is_not_configured_or_not_set_up() {
        let token = token("analysts");
        let (reason, challenge) =
            refusal(authenticate(&auth(Some("visitor"), false), &keys(), None, &bearer(&token)).await);
        assert!(reason.contains("does not accept bearer tokens"), "{reason}");
        assert_eq!(challenge, "ApiKey header=\"X-API-Key\"");
        let unset = authenticate(&auth(Some("visitor"), true), &keys(), None, &bearer(&token)).await;
        assert!(matches!(unset, Err(ApiError::Internal)), "{unset:?}");
    }

    #[tokio::test]
    async fn other_authorization_schemes_are_refused() {
        let basic = headers(&[("authorization", "Basic YWxpY2U6c2VjcmV0")]);
        let (reason, challenge) = refusal(authenticate(&auth(Some("visitor"), true), &keys(), None, &basic).await);
        assert!(reason.contains("send a Bearer token or an API key"), "{reason}");
        assert_eq!(challenge, "ApiKey header=\"X-API-Key\", Bearer");
        let (reason, _) = refusal(authenticate(&auth(Some("visitor"), false), &keys(), None, &basic).await);
        assert!(reason.contains("send an API key instead"), "{reason}");
    }

    #[test]
    fn fixed_time_comparison_is_equality() {
        assert!(fixed_time_eq(b"abc", b"abc"));
        assert!(!fixed_time_eq(b"abc", b"abd"));
        assert!(!fixed_time_eq(b"abc", b"ab"));
    }
}
