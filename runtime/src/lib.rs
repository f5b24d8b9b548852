//! `sluice-runtime`: serves one DataApi's database as a documented REST API.
//!
//! A request flows authenticate ([`auth`]) → parse ([`query`]) → plan ([`plan`], checked
//! against the caller's role's view of the introspected [`schema`]) → authorise ([`authz`],
//! in the single [`pipeline::run`] step) → execute ([`execute`], SQL from [`sql`], run on [`db`])
//! → respond ([`rest`]). The [`plan::Plan`] names table, verb, columns and filters, so audit
//! attaches to the same step without touching the handlers.
//!
//! # Values on the wire
//! - A read is one round trip per page. MySQL and SQLite render every row as one JSON text
//!   (`JSON_OBJECT`, `json_object`); on PostgreSQL the runtime renders rows from the values'
//!   binary forms ([`render`]), which costs the database far less than `json_build_object`, and
//!   byte for byte as `to_json` writes each value. Embedded rows are rendered by the database on
//!   every engine (`json_agg`, `JSON_ARRAYAGG`, `json_group_array`).
//! - Integers and decimals are JSON numbers carrying exactly the digits the database holds
//!   (`numeric(30,10)` keeps all 30); clients needing more than 2^53 parse with a big-number
//!   reader. Decimals written by clients are bound as the text they sent, never through a float.
//! - Timestamps are RFC 3339 (`2024-01-02T03:04:05`; zoned types in UTC: `…+00:00` for
//!   PostgreSQL `timestamptz`, `…Z` for MySQL `TIMESTAMP`), dates `YYYY-MM-DD`, JSON columns are JSON, booleans are `true`/`false`
//!   (MySQL `tinyint(1)`, SQLite declared `BOOLEAN`), binary is base64 (hex on SQLite, which has
//!   no base64 function).
//! - `limit` above `rest.maxPageSize` is clamped to it; without `order`, rows come in primary-key
//!   order so offset paging is stable.

pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod batch;
pub mod config;
pub mod db;
pub mod docs;
pub mod error;
pub mod execute;
pub mod gate;
pub mod introspect;
pub mod jwt;
pub mod limits;
pub mod mask;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod plan;
pub mod query;
pub mod ratelimit;
pub mod reload;
pub mod render;
pub mod rest;
pub mod rows;
pub mod schema;
pub mod server;
pub mod sql;
pub mod value;

pub use app::{App, AppState, build_app, router};
