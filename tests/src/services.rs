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
