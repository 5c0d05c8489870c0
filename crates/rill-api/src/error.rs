//! The error type of the API layer.

/// Everything that can go wrong while building or running a job's operators.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job argument or option is missing or malformed.
    #[error("invalid argument: {0}")]
    Args(String),
    /// A configuration key or value is not acceptable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The job graph cannot be executed as built.
    #[error("invalid job graph: {0}")]
    Graph(String),
    /// A source failed to read.
    #[error("source '{name}' failed: {message}")]
    Source { name: String, message: String },
    /// A sink failed to write.
    #[error("sink '{name}' failed: {message}")]
    Sink { name: String, message: String },
    /// Keyed state was misused.
    #[error(transparent)]
    State(#[from] rill_state::StateError),
    /// State could not be snapshotted or restored.
    #[error("checkpoint state: {0}")]
    Checkpoint(String),
    /// An I/O error with context.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A task stopped for another reason (for example a panic in user code).
    #[error("task '{task}' failed: {message}")]
    Task { task: String, message: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
