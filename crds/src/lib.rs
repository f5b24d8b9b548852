//! Sluice's API contract, shared by the operator and the runtime.
//!
//! - [`DataApi`] and [`ApiRole`]: the custom resources users apply (group `sluice.dev`, version `v1alpha1`).
//! - [`RuntimeConfig`]: the resolved, self-contained configuration one runtime pod reads.
//! - [`resolve`]: turns a DataApi and the ApiRoles around it into a [`RuntimeConfig`].
//! - [`crdgen`]: renders the CRD YAML committed under `crds/` and detects drift from these types;
//!   [`reference`] renders the Markdown reference under `docs/`.

pub mod apirole;
pub mod common;
pub mod config;
pub mod crdgen;
pub mod dataapi;
pub mod limits;
pub mod reference;
pub mod resolve;

pub use apirole::{ApiRole, ApiRoleSpec, ApiRoleStatus};
pub use config::RuntimeConfig;
pub use dataapi::{DataApi, DataApiSpec, DataApiStatus};
pub use resolve::{API_KEY_PREFIX, KeyHashes, ResolveError, generate_api_key, hash_api_key, resolve};

/// The API group of every Sluice resource.
pub const GROUP: &str = "sluice.dev";
/// The served and stored version of every Sluice resource.
pub const VERSION: &str = "v1alpha1";
