//! The crate's one error type.
//!
//! Everything that can go wrong in the operator, the HA services and the
//! TaskManager pod driver ends up here, so callers match on one enum and the
//! controller can count failures by a stable [`Error::label`]. The blocking
//! runtime traits want [`RuntimeError`]; the `From` impl below maps onto it.

use rill_runtime::RuntimeError;

/// Errors of the Kubernetes side of Rill.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource's spec cannot be turned into a cluster; reported in
    /// `status.error` and never retried until the spec changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Configuration given to the HA services, the worker provider or the
    /// operator is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// The JobManager's REST API failed or answered something unexpected.
    #[error("JobManager REST {url}: {message}")]
    Rest { url: String, message: String },
    /// JSON or YAML (de)serialisation failed.
    #[error("serialisation: {0}")]
    Serde(String),
    /// Reading or writing local files (CRDs, pod templates) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// This process does not hold the leadership it needs for a write.
    #[error("'{0}' is not the leader")]
    NotLeader(String),
    /// A finalizer step (add, cleanup, remove) failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Reading or deleting checkpoints in their storage failed.
    #[error("checkpoint storage: {0}")]
    Checkpoint(#[from] rill_checkpoint::CheckpointError),
    /// Internal plumbing failed (a runtime could not start, a task died).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// A short stable label for metrics (`errors_total{error=...}`).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Config(_) => "config",
            Error::Rest { .. } => "rest",
            Error::Serde(_) => "serde",
            Error::Io { .. } => "io",
            Error::NotLeader(_) => "not_leader",
            Error::Finalizer(_) => "finalizer",
            Error::Checkpoint(_) => "checkpoint_storage",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the API answered 409 Conflict (a stale resourceVersion) or
    /// 409 AlreadyExists.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }

    /// Whether the API answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 404)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serde(e.to_string())
    }
}

impl From<serde_yaml_ng::Error> for Error {
    fn from(e: serde_yaml_ng::Error) -> Self {
        Error::Serde(e.to_string())
    }
}

impl From<Error> for RuntimeError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotLeader(who) => RuntimeError::NotLeader(who),
            other => RuntimeError::Cluster(other.to_string()),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
