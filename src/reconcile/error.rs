//! What can make a reconcile (or one of its items) fail, with the class kept for metrics and
//! for the decision of what happens next.

use crate::platform::{ErrorClass, PlatformError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Platform(#[from] PlatformError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot learn the API client's tenant: {0}")]
    Root(PlatformError),
    /// A versioned write kept losing to another writer.
    #[error("gave up after {retries} version conflicts: {last}")]
    Conflicts { retries: usize, last: PlatformError },
    #[error("gave up after {retries} version conflicts")]
    TooManyConflicts { retries: usize },
    #[error("branding.logo_file: cannot read {path}: {source}")]
    Logo {
        path: String,
        source: std::io::Error,
    },
    #[error("branding task failed: {0}")]
    Task(String),
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
}

impl ReconcileError {
    /// A platform error of a write: a conflict that survived every retry says so.
    pub fn from_write(e: PlatformError, retries: usize) -> ReconcileError {
        if e.class == ErrorClass::Conflict {
            ReconcileError::Conflicts { retries, last: e }
        } else {
            ReconcileError::Platform(e)
        }
    }

    /// The class of the failure, as a metric label or a report field.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Platform(e) | ReconcileError::Root(e) => e.class.metric_label(),
            ReconcileError::Store(_) => "store",
            ReconcileError::Conflicts { .. } | ReconcileError::TooManyConflicts { .. } => {
                "conflict"
            }
            ReconcileError::Logo { .. } => "config",
            ReconcileError::Task(_) => "internal",
            ReconcileError::NotConfigured(_) => "config",
        }
    }
}
