//! What the JobManager's REST API and dashboard can ask of it.
//!
//! The REST layer only speaks HTTP and JSON; everything it shows or does goes
//! through [`Dispatcher`]. Keeping this seam narrow lets the REST layer be
//! tested against a fake dispatcher, and lets the JobManager change its
//! internals without touching HTTP code. Field names follow Flink's REST API
//! (kebab-case) wherever Flink has the same response, so Flink tooling and
//! people used to it can read them.

use serde::{Deserialize, Serialize};

/// Lifecycle of a job, as Flink names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Initializing,
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Restarting,
    Suspended,
}

impl JobStatus {
    /// No further transitions happen from a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Failed | JobStatus::Canceled | JobStatus::Finished
        )
    }
}

/// `GET /overview`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterOverview {
    pub taskmanagers: usize,
    pub slots_total: usize,
    pub slots_available: usize,
    pub jobs_running: usize,
    pub jobs_finished: usize,
    pub jobs_cancelled: usize,
    pub jobs_failed: usize,
    pub flink_version: String,
}

/// One row of `GET /jobs/overview`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct JobSummary {
    pub jid: String,
    pub name: String,
    pub state: JobStatus,
    /// Milliseconds since the Unix epoch.
    pub start_time: u64,
    /// `-1` while running, as in Flink.
    pub end_time: i64,
    pub duration: u64,
    pub last_modification: u64,
    /// Subtasks of the job (all vertices).
    pub tasks: usize,
}

/// One vertex (task: a chain of operators) of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct VertexInfo {
    pub id: String,
    pub name: String,
    pub parallelism: usize,
    pub max_parallelism: usize,
    /// Ids of the vertices feeding this one, with the partitioning
    /// (`FORWARD`, `HASH`, `REBALANCE`, `RESCALE`, `BROADCAST`).
    pub inputs: Vec<VertexInput>,
    pub metrics: VertexMetrics,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct VertexInput {
    pub id: String,
    pub ship_strategy: String,
}

/// Totals over a vertex's subtasks since the job (attempt) started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct VertexMetrics {
    pub read_records: u64,
    pub write_records: u64,
    /// Share of time the vertex's subtasks were blocked by downstream
    /// (0.0–1.0, the maximum over subtasks).
    pub backpressure: f64,
    /// Event time the vertex has reached (ms), if any watermark arrived.
    pub watermark: Option<i64>,
}

/// `GET /jobs/:id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct JobDetails {
    pub jid: String,
    pub name: String,
    pub state: JobStatus,
    pub start_time: u64,
    pub end_time: i64,
    pub duration: u64,
    pub now: u64,
    /// The catalogue entry and its arguments.
    pub entry: String,
    pub args: Vec<String>,
    pub parallelism: usize,
    pub restarts: u32,
    /// Why the job failed (terminal failures and the latest restart).
    pub failure: Option<String>,
    pub vertices: Vec<VertexInfo>,
}

/// One checkpoint or savepoint in `GET /jobs/:id/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub struct CheckpointInfo {
    pub id: u64,
    /// `COMPLETED` or `FAILED`.
    pub status: String,
    pub is_savepoint: bool,
    pub trigger_timestamp: u64,
    pub latest_ack_timestamp: u64,
    pub state_size: u64,
    pub end_to_end_duration: u64,
    pub external_path: Option<String>,
    pub failure_message: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub struct CheckpointCounts {
    pub restored: u64,
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub struct LatestCheckpoints {
    pub completed: Option<CheckpointInfo>,
    pub savepoint: Option<CheckpointInfo>,
    pub failed: Option<CheckpointInfo>,
    /// The checkpoint the current attempt restored from.
    pub restored: Option<RestoredInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub struct RestoredInfo {
    pub id: u64,
    pub restore_timestamp: u64,
    pub is_savepoint: bool,
    pub external_path: String,
}

/// `GET /jobs/:id/checkpoints`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointHistory {
    pub counts: CheckpointCounts,
    pub latest: LatestCheckpoints,
    /// Newest first, bounded.
    pub history: Vec<CheckpointInfo>,
}

/// `POST /jobs` (Flink submits jars through `/jars/:id/run`; Rill jobs are
/// catalogue entries compiled into the image, so the body names one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitRequest {
    pub entry: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub parallelism: Option<usize>,
    pub savepoint_path: Option<String>,
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// A job id to use (32 hex digits); generated when absent.
    pub job_id: Option<String>,
}

/// State of an asynchronous savepoint request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SavepointStatus {
    InProgress,
    Completed { location: String },
    Failed { cause: String },
}

/// A TaskManager registered with the resource manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerInfo {
    pub id: String,
    /// The address the TaskManager serves data connections on.
    pub path: String,
    pub data_port: u16,
    pub time_since_last_heartbeat: u64,
    pub slots_number: usize,
    pub free_slots: usize,
}

/// Point-in-time figures of one running job, sampled by the REST layer to
/// keep a throughput/backpressure history for the dashboard.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobSample {
    /// Vertex id → totals.
    pub vertices: Vec<(String, VertexMetrics)>,
}

/// Why a dispatcher request was refused; the REST layer maps these to HTTP
/// status codes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request itself is wrong (unknown entry, bad arguments).
    #[error("{0}")]
    BadRequest(String),
    /// 409: the job is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 503: not now (no leader, cluster shutting down).
    #[error("{0}")]
    Unavailable(String),
}

/// The JobManager as the REST layer sees it.
pub trait Dispatcher: Send + Sync + 'static {
    fn overview(&self) -> ClusterOverview;
    fn jobs(&self) -> Vec<JobSummary>;
    fn job(&self, id: &str) -> Option<JobDetails>;
    fn submit(&self, request: SubmitRequest) -> Result<String, DispatchError>;
    fn cancel(&self, id: &str) -> Result<(), DispatchError>;
    fn checkpoints(&self, id: &str) -> Option<CheckpointHistory>;
    /// Starts a savepoint (and stops the job after it when `cancel_job`);
    /// returns a request id for [`Dispatcher::savepoint_status`].
    fn trigger_savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
        cancel_job: bool,
    ) -> Result<String, DispatchError>;
    fn savepoint_status(&self, id: &str, request: &str) -> Option<SavepointStatus>;
    fn taskmanagers(&self) -> Vec<TaskManagerInfo>;
    /// The effective configuration, as `key → value`.
    fn config(&self) -> Vec<(String, String)>;
    /// Current figures of a job (for the dashboard's history).
    fn sample(&self, id: &str) -> Option<JobSample>;
}
