//! The databases `scripts/services.sh` starts are real, reachable servers. These tests fail,
//! never skip, when they are absent.

use sluice_tests::services::{mysql_url, postgres_url};
use sqlx::Connection;

#[tokio::test]
async fn postgres_is_real_and_reachable() {
    let url = postgres_url();
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}; is scripts/services.sh running?"));

    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(version.starts_with("PostgreSQL "), "{version}");
    let sum: i32 = sqlx::query_scalar("SELECT $1::int + 1")
        .bind(41)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(sum, 42);
}

#[tokio::test]
async fn mariadb_is_real_and_reachable() {
    let url = mysql_url();
    let mut conn = sqlx::MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB at {url}: {e}; is scripts/services.sh running?"));

    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        version.to_lowercase().contains("mariadb") || version.starts_with('8'),
        "{version}"
    );
    let sum: i64 = sqlx::query_scalar("SELECT CAST(? AS SIGNED) + 1")
        .bind(41)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(sum, 42);
}
