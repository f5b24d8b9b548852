//! Hot reload: follows the config file and applies each valid new version without a restart.
//!
//! The operator rewrites the config Secret; the kubelet swaps the mounted file (a symlink flip,
//! which file-change notifications on the directory miss in some setups), so the file is polled:
//! its bytes are compared every [`POLL_INTERVAL`], well inside the two seconds a role change
//! may take to apply. A file that does not load is refused with an error in the log and the
//! `config_reloads_total{result="rejected"}` metric, and the last good config stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::config;

/// How often the config file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Applies every new valid version of the config file at `path`, for as long as the process runs.
pub async fn follow_config_file(state: Arc<AppState>, path: PathBuf) {
    let digest = |bytes: &[u8]| Sha256::digest(bytes).to_vec();
    let mut seen = tokio::fs::read(&path).await.map(|bytes| digest(&bytes)).ok();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        let current = digest(&bytes);
        if seen.as_ref() == Some(&current) {
            continue;
        }
        seen = Some(current);
        match config::from_file(&path) {
            Ok(loaded) => {
                if let Err(error) = state.apply(loaded.config).await {
                    tracing::error!(%error, path = %path.display(), "the changed config file is refused; the previous config stays in force");
                }
            }
            Err(error) => {
                state.metrics.record_reload(false);
                tracing::error!(%error, path = %path.display(), "the changed config file is refused; the previous config stays in force");
            }
        }
    }
}
