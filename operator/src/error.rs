//! Errors that make a reconcile retry with backoff. A spec the user must fix is not an error
//! here: it becomes a status condition, and the reconcile succeeds.

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (network, conflict, permission).
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        /// What the reconciler was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
        }
    }
}

/// Attaches what the reconciler was doing to a Kubernetes client error.
pub trait Doing<T> {
    /// Wraps the error with `action`.
    fn doing(self, action: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Doing<T> for Result<T, kube::Error> {
    fn doing(self, action: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action(),
            source,
        })
    }
}
