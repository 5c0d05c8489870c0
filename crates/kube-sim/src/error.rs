//! The crate's one error type.
//!
//! Every failure a client can cause maps to a Kubernetes `Status` object with
//! the reason and HTTP code a real API server would use, so kubectl and
//! kube-rs react to kube-sim's errors exactly as they do to a cluster's
//! (retry on 409, re-list on 410, print the message on 422, …).

use serde_json::{json, Value};

/// Errors raised by kube-sim, both API-level (returned to clients as a
/// `Status`) and process-level (binding a port, writing a kubeconfig).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request itself is malformed (bad JSON, bad selector, …).
    #[error("{0}")]
    BadRequest(String),
    /// 404: the named object or resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409 with reason `AlreadyExists`: create of an existing name.
    #[error("{0}")]
    AlreadyExists(String),
    /// 409 with reason `Conflict`: stale resourceVersion.
    #[error("{0}")]
    Conflict(String),
    /// 422: the object is well-formed but fails validation.
    #[error("{0}")]
    Invalid(String),
    /// 403: the operation is refused (e.g. create in a terminating namespace).
    #[error("{0}")]
    Forbidden(String),
    /// 405: the verb is not supported on this path.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 410: the requested resourceVersion is older than the watch history.
    #[error("{0}")]
    Gone(String),
    /// 415: a patch content type the server does not understand.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 500: an internal invariant broke.
    #[error("{0}")]
    Internal(String),
    /// Local I/O (binding, writing files).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// HTTP status code for this error.
    pub fn code(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::AlreadyExists(_) | Error::Conflict(_) => 409,
            Error::Invalid(_) => 422,
            Error::Forbidden(_) => 403,
            Error::MethodNotAllowed(_) => 405,
            Error::Gone(_) => 410,
            Error::UnsupportedMediaType(_) => 415,
            Error::Internal(_) | Error::Io(_) => 500,
        }
    }

    /// The `reason` field of the Kubernetes `Status`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "BadRequest",
            Error::NotFound(_) => "NotFound",
            Error::AlreadyExists(_) => "AlreadyExists",
            Error::Conflict(_) => "Conflict",
            Error::Invalid(_) => "Invalid",
            Error::Forbidden(_) => "Forbidden",
            Error::MethodNotAllowed(_) => "MethodNotAllowed",
            Error::Gone(_) => "Expired",
            Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Error::Internal(_) | Error::Io(_) => "InternalError",
        }
    }

    /// Render as a `meta.k8s.io/v1` `Status` object.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        })
    }

    /// `NotFound` in the wording the API server uses.
    pub fn not_found(resource: &str, name: &str) -> Self {
        Error::NotFound(format!("{resource} \"{name}\" not found"))
    }

    /// `Conflict` for a stale resourceVersion, in the API server's wording.
    pub fn stale(resource: &str, name: &str) -> Self {
        Error::Conflict(format!(
            "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ))
    }
}
