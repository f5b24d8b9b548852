//! Support code shared by Sluice's integration and end-to-end tests.

pub mod controlplane;
pub mod crds;
pub mod e2e;
pub mod private_db;
pub mod runtime;
pub mod services;
