//! The `FlinkJob` and `FlinkSession` custom resources (`rill.dev/v1alpha1`).
//!
//! The Rust types are the source of truth: the CRD YAML in `crds/` (and the
//! Helm chart's copy) is generated from them by [`crate::run_crdgen`], and a
//! test fails when the checked-in files drift. Whatever the OpenAPI schema
//! can say (required fields, enums, minimums) is said here so a malformed
//! spec is refused at admission; the rest is checked by
//! [`crate::config::validate_job`] and reported in `status.error`.
//!
//! Field names follow the Flink Kubernetes Operator where it has one, so its
//! users can read a `FlinkJob` without a manual.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Rill's custom resources.
pub const GROUP: &str = "rill.dev";
/// API version of Rill's custom resources.
pub const VERSION: &str = "v1alpha1";

/// A Rill job on Kubernetes: an application cluster of its own (JobManager
/// Deployment, TaskManager pods created by the JobManager), or a job
/// submitted to a [`FlinkSession`] when `sessionRef` is set.
// Several printer columns repeat `type_`, which the lint mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rill.dev",
    version = "v1alpha1",
    kind = "FlinkJob",
    namespaced,
    status = "FlinkJobStatus",
    shortname = "fj",
    category = "rill",
    doc = "A Rill streaming job: an application cluster of its own, or a job in a FlinkSession",
    printcolumn(name = "State", type_ = "string", json_path = ".status.lifecycleState"),
    printcolumn(name = "Job State", type_ = "string", json_path = ".status.jobState"),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.job.parallelism"
    ),
    printcolumn(
        name = "Last Checkpoint",
        type_ = "integer",
        json_path = ".status.lastCheckpoint.id"
    ),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlinkJobSpec {
    /// Container image holding the `rill` binary and the job catalogue.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Kubernetes image pull policy for JobManager and TaskManager pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Service account for the JobManager and TaskManagers; the operator
    /// creates `<name>-jobmanager` with least-privilege RBAC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// What to run and how to upgrade it.
    pub job: JobSpec,
    /// Periodic checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointingSpec>,
    /// Keyed state backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_backend: Option<StateBackendSpec>,
    /// What to do when the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_strategy: Option<RestartStrategySpec>,
    /// JobManager high availability (ConfigMap leader election).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_availability: Option<HighAvailabilitySpec>,
    /// JobManager pod settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager: Option<JobManagerSpec>,
    /// TaskManager pod settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_manager: Option<TaskManagerSpec>,
    /// Free-form Flink-style configuration keys (`key: value`), written to
    /// the cluster's `config.yaml` under the operator-managed keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flink_configuration: BTreeMap<String, String>,
    /// Run the job in this FlinkSession (same namespace) instead of an
    /// application cluster of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ref: Option<SessionRef>,
}

/// The job to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Catalogue entry compiled into the image (`rill jobmanager --job ENTRY`).
    #[schemars(length(min = 1))]
    pub entry: String,
    /// Arguments passed to the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Default parallelism (`parallelism.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<u32>,
    /// Number of key groups (`pipeline.max-parallelism`); the upper bound
    /// for rescaling from a savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_parallelism: Option<u32>,
    /// Desired state: `running`, or `suspended` (savepoint per upgrade mode,
    /// then the cluster is removed; HA data and savepoints are kept).
    #[serde(default)]
    pub state: DesiredJobState,
    /// How spec changes and suspension carry the job's state over.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// Changing this value triggers a savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// Savepoint to start from when the job has no state of its own yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,
    /// Skip savepoint state that maps to no operator of the new graph.
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

/// Desired job state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredJobState {
    #[default]
    Running,
    Suspended,
}

/// How a running job's state survives an upgrade or suspension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Start fresh: state is dropped (no savepoint, HA pointers removed).
    #[default]
    Stateless,
    /// Take a savepoint with cancel, redeploy from it.
    Savepoint,
    /// Redeploy; the new JobManager restores from the latest checkpoint
    /// recorded in the HA ConfigMap.
    LastState,
}

/// Kubernetes image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Periodic checkpointing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointingSpec {
    /// Interval as a Flink duration (`10s`, `1 min`, `500ms`);
    /// `execution.checkpointing.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Checkpoint directory URI (`file:///…`, `s3://bucket/prefix`);
    /// `state.checkpoints.dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Completed checkpoints to keep (`state.checkpoints.num-retained`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retained: Option<u32>,
}

/// Keyed state backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateBackendSpec {
    /// `state.backend.type`.
    #[serde(rename = "type", default)]
    pub kind: StateBackendType,
    /// `state.backend.incremental` (RocksDB only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
}

/// Keyed state backend kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackendType {
    #[default]
    Hashmap,
    Rocksdb,
}

/// Restart strategy (`restart-strategy.type` and its sub-keys).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStrategySpec {
    /// Strategy kind.
    #[serde(rename = "type", default)]
    pub kind: RestartStrategyType,
    /// fixed-delay: `restart-strategy.fixed-delay.attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub attempts: Option<u32>,
    /// fixed-delay / failure-rate delay, or exponential-delay initial
    /// backoff (a Flink duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// exponential-delay: `restart-strategy.exponential-delay.max-backoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
    /// failure-rate: `restart-strategy.failure-rate.max-failures-per-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_failures_per_interval: Option<u32>,
    /// failure-rate: `restart-strategy.failure-rate.failure-rate-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_interval: Option<String>,
}

/// Restart strategy kind (Flink's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartStrategyType {
    None,
    #[default]
    FixedDelay,
    ExponentialDelay,
    FailureRate,
}

/// JobManager high availability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilitySpec {
    /// `high-availability.type: kubernetes` (ConfigMap leader election and
    /// job pointers); needs `checkpointing.storage`.
    #[serde(default)]
    pub enabled: bool,
    /// JobManager replicas (one leads, the others stand by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub job_manager_replicas: Option<u32>,
}

/// CPU and memory of one pod's main container (Kubernetes quantities).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    /// CPU request and limit (`500m`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit (`1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// JobManager pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobManagerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// A Pod (metadata + spec) merged under the generated JobManager pod:
    /// extra containers, volumes, labels, node selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub pod_template: Option<serde_json::Value>,
}

/// TaskManager pods (created by the JobManager).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// Slots per TaskManager (`taskmanager.numberOfTaskSlots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub slots: Option<u32>,
    /// A Pod merged under the generated TaskManager pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub pod_template: Option<serde_json::Value>,
}

/// Reference to a FlinkSession in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A long-running Rill session cluster: a JobManager that accepts
/// submissions of any catalogue entry in its image, and TaskManagers shared
/// by the jobs (FlinkJobs with `sessionRef`).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rill.dev",
    version = "v1alpha1",
    kind = "FlinkSession",
    namespaced,
    status = "FlinkSessionStatus",
    shortname = "fs",
    category = "rill",
    doc = "A Rill session cluster that runs the FlinkJobs referring to it",
    printcolumn(name = "State", type_ = "string", json_path = ".status.lifecycleState"),
    printcolumn(name = "Jobs", type_ = "integer", json_path = ".status.jobsRunning"),
    printcolumn(
        name = "TaskManagers",
        type_ = "integer",
        json_path = ".status.taskManagers.ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlinkSessionSpec {
    /// Container image holding the `rill` binary and the job catalogue.
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager: Option<JobManagerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_manager: Option<SessionTaskManagerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_availability: Option<HighAvailabilitySpec>,
    /// Checkpoint defaults for the session's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_backend: Option<StateBackendSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_strategy: Option<RestartStrategySpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flink_configuration: BTreeMap<String, String>,
}

/// TaskManagers of a session cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTaskManagerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub slots: Option<u32>,
    /// TaskManagers kept even when idle
    /// (`slotmanager.number-of-slots.min` = min × slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_task_managers: Option<u32>,
    /// Upper bound (`slotmanager.number-of-slots.max` = max × slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_task_managers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub pod_template: Option<serde_json::Value>,
}

/// Where a resource is in its life, as the operator drives it.
///
/// ```text
/// CREATED ──deploy──▶ DEPLOYED ──job RUNNING──▶ STABLE
///    ▲                   │  ▲                     │ spec change
///    │                   │  └──redeployed─── UPGRADING ◀┘
///    │                   └──job FAILED / bad spec──▶ FAILED
/// state: suspended ──savepoint/cancel──▶ SUSPENDED ──state: running──▶ DEPLOYED
/// delete ──▶ DELETING (finalizer cleanup)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleState {
    /// Seen by the operator; nothing deployed yet.
    Created,
    /// Children applied; the job is not reported running yet.
    Deployed,
    /// The job (or session JobManager) is running as specified.
    Stable,
    /// A spec change is being rolled out (savepoint, redeploy).
    Upgrading,
    /// `job.state: suspended` took effect: no cluster, state kept.
    Suspended,
    /// The spec is invalid or the job failed terminally.
    Failed,
    /// The resource is being deleted; external cleanup runs.
    Deleting,
}

impl LifecycleState {
    pub const ALL: [LifecycleState; 7] = [
        LifecycleState::Created,
        LifecycleState::Deployed,
        LifecycleState::Stable,
        LifecycleState::Upgrading,
        LifecycleState::Suspended,
        LifecycleState::Failed,
        LifecycleState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Created => "CREATED",
            LifecycleState::Deployed => "DEPLOYED",
            LifecycleState::Stable => "STABLE",
            LifecycleState::Upgrading => "UPGRADING",
            LifecycleState::Suspended => "SUSPENDED",
            LifecycleState::Failed => "FAILED",
            LifecycleState::Deleting => "DELETING",
        }
    }
}

/// The latest completed checkpoint as the JobManager reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// RFC 3339 completion time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// The latest savepoint the operator took or saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    pub path: String,
    /// RFC 3339 completion time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The `savepointTriggerNonce` that asked for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_nonce: Option<i64>,
}

/// A savepoint the operator asked for and has not seen complete.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSavepoint {
    pub job_id: String,
    pub request_id: String,
    /// `upgrade`, `suspend` or `trigger`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_nonce: Option<i64>,
}

/// TaskManager pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagersStatus {
    pub ready: u32,
    pub desired: u32,
}

/// A condition in the Kubernetes convention (`Ready`, `JobRunning`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Observed state of a FlinkJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlinkJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<LifecycleState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The JobManager's job status (`RUNNING`, `RESTARTING`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_savepoint: Option<PendingSavepoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_managers: Option<TaskManagersStatus>,
    /// Pod name of the leading JobManager (HA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager_leader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Why the spec cannot be deployed or the job failed; cleared when fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The spec (JSON) the running cluster was deployed from, to detect
    /// upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_spec: Option<String>,
    /// The savepoint the current deployment was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_savepoint: Option<String>,
}

/// Observed state of a FlinkSession.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlinkSessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<LifecycleState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_managers: Option<TaskManagersStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager_leader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_spec: Option<String>,
}

fn preserve_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// File name (in `crds/`) and YAML of every CRD, generated from the types.
pub fn generated_crds() -> crate::Result<Vec<(String, String)>> {
    use kube::CustomResourceExt;
    let mut out = Vec::new();
    for crd in [FlinkJob::crd(), FlinkSession::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_yaml_ng::to_string(&crd)?;
        let text = format!(
            "# Generated by `rill crdgen` from crates/rill-operator/src/crd.rs; do not edit.\n{yaml}"
        );
        out.push((format!("{name}.yaml"), text));
    }
    Ok(out)
}
