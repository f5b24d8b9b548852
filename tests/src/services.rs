//! The real databases the suite runs against, started by `scripts/services.sh` (which the
//! README's test command and `.ci/run` call). A missing database fails the test that needs it:
//! the suite never skips what it cannot reach.

/// Environment variable holding the PostgreSQL URL for tests.
pub const POSTGRES_URL_ENV: &str = "SLUICE_TEST_POSTGRES_URL";
/// Environment variable holding the MariaDB/MySQL URL for tests.
pub const MYSQL_URL_ENV: &str = "SLUICE_TEST_MYSQL_URL";

fn required_url(variable: &str) -> String {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{variable} is not set: start the test databases with `source scripts/services.sh` \
             (or run the whole suite with `scripts/test`)"
        ),
    }
}

/// URL of the test PostgreSQL server; panics with instructions when it is not configured.
pub fn postgres_url() -> String {
    required_url(POSTGRES_URL_ENV)
}

/// URL of the test MariaDB server; panics with instructions when it is not configured.
pub fn mysql_url() -> String {
    required_url(MYSQL_URL_ENV)
}

/// Environment variable holding the HS256 secret the fixture DataApi verifies test tokens with.
pub const JWT_SECRET_ENV: &str = "SLUICE_TEST_JWT_HMAC_SECRET";

/// The fixture's token secret; panics with instructions when it is not configured.
pub fn jwt_secret() -> String {
    match std::env::var(JWT_SECRET_ENV) {
        Ok(secret) if secret.len() >= 32 => secret,
        _ => panic!(
            "{JWT_SECRET_ENV} is not set (or shorter than 32 bytes): `source scripts/services.sh` sets it \
             (or run the whole suite with `scripts/test`)"
        ),
    }
}
