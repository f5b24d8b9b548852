//! Support code shared by Sluice's integration and end-to-end tests.

pub mod runtime;
pub mod services;
