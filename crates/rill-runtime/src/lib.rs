//! The Rill runtime: turns a [`JobGraph`](rill_api::graph::JobGraph) into
//! running subtasks.
//!
//! * [`plan`] decides which operators share a task (chaining) — a pure
//!   function of the graph;
//! * [`local`] runs every subtask of a plan as a thread of this process,
//!   connected by bounded channels (the embedded mini cluster behind
//!   `rill run`).

pub mod cluster;
pub mod coordinator;
pub mod local;
pub mod options;
pub mod plan;
pub mod restart;

pub use coordinator::CheckpointSettings;
pub use local::{
    load_restore_point, JobControl, JobOptions, JobReport, LocalExecutor, SnapshotStats,
};
pub use plan::Plan;
pub use restart::RestartStrategy;

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The job graph or one of its operators rejected the job.
    #[error(transparent)]
    Api(#[from] rill_api::Error),
    /// A task failed while running.
    #[error("task '{task}' failed: {message}")]
    TaskFailed { task: String, message: String },
    /// The job was cancelled.
    #[error("job cancelled")]
    Cancelled,
    /// Checkpoint storage failed.
    #[error(transparent)]
    Storage(#[from] rill_checkpoint::CheckpointError),
    /// A thread could not be started.
    #[error("cannot start task thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// This JobManager lost (or never had) leadership.
    #[error("'{0}' is not the leading JobManager")]
    NotLeader(String),
    /// Cluster coordination failed (RPC, registration, HA services).
    #[error("{0}")]
    Cluster(String),
    /// Network I/O between processes failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
