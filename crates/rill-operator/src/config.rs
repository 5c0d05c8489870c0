//! From a custom resource to the Flink-style configuration of its cluster.
//!
//! The JobManager and TaskManagers read `config.yaml` (flat `key: value`,
//! Flink's key names) from the `<name>-config` ConfigMap the operator
//! mounts. Everything the operator decides — cluster id, namespace, where
//! the RPC endpoint lives, HA, the TaskManager pod template — is rendered
//! here by pure functions, so the mapping is unit-tested without a cluster.
//! Checks the OpenAPI schema cannot express (durations, URIs, cross-field
//! rules) live in [`validate`] and surface as `status.error`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::crd::{
    CheckpointingSpec, FlinkJobSpec, FlinkSessionSpec, HighAvailabilitySpec, ImagePullPolicy,
    JobManagerSpec, JobSpec, ResourceSpec, RestartStrategySpec, RestartStrategyType,
    StateBackendSpec, StateBackendType, UpgradeMode,
};
use crate::{Error, Result};

/// Where the config ConfigMap is mounted in every pod.
pub const CONF_DIR: &str = "/opt/rill/conf";
/// The configuration file in [`CONF_DIR`].
pub const CONFIG_FILE: &str = "config.yaml";
/// The TaskManager pod template file in [`CONF_DIR`].
pub const TM_TEMPLATE_FILE: &str = "taskmanager-pod-template.yaml";
/// REST port (`rest.port`).
pub const REST_PORT: u16 = 8081;
/// RPC port (`jobmanager.rpc.port`).
pub const RPC_PORT: u16 = 6123;

pub const KEY_CLUSTER_ID: &str = "kubernetes.cluster-id";
pub const KEY_NAMESPACE: &str = "kubernetes.namespace";
pub const KEY_TARGET: &str = "execution.target";
pub const KEY_RPC_ADDRESS: &str = "jobmanager.rpc.address";
pub const KEY_TM_TEMPLATE: &str = "kubernetes.taskmanager.pod-template";
/// Name of the JobManager Deployment that owns TaskManager pods (a Rill
/// key; Flink passes `kubernetes.jobmanager.owner.reference` instead).
pub const KEY_JM_DEPLOYMENT: &str = "kubernetes.jobmanager.deployment";
pub const KEY_HA_TYPE: &str = "high-availability.type";
pub const KEY_LEASE_DURATION: &str = "high-availability.kubernetes.leader-election.lease-duration";
pub const KEY_RENEW_DEADLINE: &str = "high-availability.kubernetes.leader-election.renew-deadline";
pub const KEY_RETRY_PERIOD: &str = "high-availability.kubernetes.leader-election.retry-period";

/// Keys only the operator sets; a spec that sets them is refused.
pub const MANAGED_KEYS: [&str; 6] = [
    KEY_CLUSTER_ID,
    KEY_NAMESPACE,
    KEY_TARGET,
    KEY_RPC_ADDRESS,
    KEY_TM_TEMPLATE,
    KEY_JM_DEPLOYMENT,
];

/// Parses a Flink duration: `500ms`, `10s`, `10 s`, `1min`, `2 m`, `1h`,
/// `1d`; a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::InvalidSpec(format!("'{text}' is not a duration")))?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hour" | "hours" => 3_600e3,
        "d" | "day" | "days" => 86_400e3,
        other => {
            return Err(Error::InvalidSpec(format!(
                "'{text}': unknown duration unit '{other}'"
            )))
        }
    };
    let ms = value * millis;
    if !ms.is_finite() || ms < 0.0 {
        return Err(Error::InvalidSpec(format!("'{text}' is not a duration")));
    }
    Ok(Duration::from_millis(ms.round() as u64))
}

/// Reads a duration key with a default.
pub fn duration_key(
    conf: &BTreeMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration> {
    match conf.get(key) {
        None => Ok(default),
        Some(v) => {
            parse_duration(v).map_err(|_| Error::Config(format!("{key}: '{v}' is not a duration")))
        }
    }
}

/// A required string key.
pub fn required_key<'a>(conf: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str> {
    conf.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Config(format!("{key} is not set")))
}

/// The namespace to act in: `kubernetes.namespace`, else the pod's own
/// (`POD_NAMESPACE`), else the service account's namespace file, else
/// `default`.
pub fn namespace_of(conf: &BTreeMap<String, String>) -> String {
    if let Some(ns) = conf.get(KEY_NAMESPACE).filter(|v| !v.is_empty()) {
        return ns.clone();
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE") {
        if !ns.is_empty() {
            return ns;
        }
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Parses `config.yaml` text (flat `key: value`) into a map.
pub fn parse_config_yaml(text: &str) -> Result<BTreeMap<String, String>> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    let mut out = BTreeMap::new();
    if let serde_yaml_ng::Value::Mapping(map) = value {
        for (k, v) in map {
            let key =
                scalar(&k).ok_or_else(|| Error::Config("non-scalar key in config.yaml".into()))?;
            let val = scalar(&v)
                .ok_or_else(|| Error::Config(format!("{key}: value must be a scalar")))?;
            out.insert(key, val);
        }
    }
    Ok(out)
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Renders a flat key map as `config.yaml`.
pub fn render_config_yaml(conf: &BTreeMap<String, String>) -> Result<String> {
    Ok(serde_yaml_ng::to_string(conf)?)
}

/// Application cluster (one job, started by the JobManager) or session
/// cluster (jobs submitted over REST).
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterMode {
    Application(JobSpec),
    Session {
        min_task_managers: Option<u32>,
        max_task_managers: Option<u32>,
    },
}

/// The parts of a FlinkJob or FlinkSession that shape a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub mode: ClusterMode,
    pub image: String,
    pub image_pull_policy: Option<ImagePullPolicy>,
    pub service_account: Option<String>,
    pub job_manager: JobManagerSpec,
    pub tm_resources: Option<ResourceSpec>,
    pub tm_slots: Option<u32>,
    pub tm_pod_template: Option<serde_json::Value>,
    pub high_availability: HighAvailabilitySpec,
    pub checkpointing: Option<CheckpointingSpec>,
    pub state_backend: Option<StateBackendSpec>,
    pub restart_strategy: Option<RestartStrategySpec>,
    pub flink_configuration: BTreeMap<String, String>,
}

impl ClusterSpec {
    pub fn from_job(spec: &FlinkJobSpec) -> Self {
        let tm = spec.task_manager.clone().unwrap_or_default();
        ClusterSpec {
            mode: ClusterMode::Application(spec.job.clone()),
            image: spec.image.clone(),
            image_pull_policy: spec.image_pull_policy,
            service_account: spec.service_account.clone(),
            job_manager: spec.job_manager.clone().unwrap_or_default(),
            tm_resources: tm.resources,
            tm_slots: tm.slots,
            tm_pod_template: tm.pod_template,
            high_availability: spec.high_availability.clone().unwrap_or_default(),
            checkpointing: spec.checkpointing.clone(),
            state_backend: spec.state_backend.clone(),
            restart_strategy: spec.restart_strategy.clone(),
            flink_configuration: spec.flink_configuration.clone(),
        }
    }

    pub fn from_session(spec: &FlinkSessionSpec) -> Self {
        let tm = spec.task_manager.clone().unwrap_or_default();
        ClusterSpec {
            mode: ClusterMode::Session {
                min_task_managers: tm.min_task_managers,
                max_task_managers: tm.max_task_managers,
            },
            image: spec.image.clone(),
            image_pull_policy: spec.image_pull_policy,
            service_account: spec.service_account.clone(),
            job_manager: spec.job_manager.clone().unwrap_or_default(),
            tm_resources: tm.resources,
            tm_slots: tm.slots,
            tm_pod_template: tm.pod_template,
            high_availability: spec.high_availability.clone().unwrap_or_default(),
            checkpointing: spec.checkpointing.clone(),
            state_backend: spec.state_backend.clone(),
            restart_strategy: spec.restart_strategy.clone(),
            flink_configuration: spec.flink_configuration.clone(),
        }
    }

    /// JobManager replicas: the HA replica count, or one.
    pub fn job_manager_replicas(&self) -> u32 {
        if self.high_availability.enabled {
            self.high_availability.job_manager_replicas.unwrap_or(1)
        } else {
            1
        }
    }

    pub fn slots(&self) -> u32 {
        self.tm_slots.unwrap_or(1)
    }

    fn storage(&self) -> Option<&str> {
        self.checkpointing
            .as_ref()
            .and_then(|c| c.storage.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// TaskManagers a session wants for jobs holding `wanted` slots: whole
/// TaskManagers of `slots` each, at least `min`, at most `max` (as the
/// JobManager's resource manager counts them).
pub fn session_task_managers(wanted: u32, slots: u32, min: Option<u32>, max: Option<u32>) -> u32 {
    let n = wanted.div_ceil(slots.max(1)).max(min.unwrap_or(0));
    max.map_or(n, |m| n.min(m))
}

const SCHEMES: [&str; 8] = ["file", "s3", "s3a", "gs", "az", "abfs", "abfss", "memory"];

fn check_uri(what: &str, uri: &str) -> Result<()> {
    let scheme = uri.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if SCHEMES.contains(&s) => Ok(()),
        _ => Err(Error::InvalidSpec(format!(
            "{what} '{uri}' must be a URI with one of the schemes {}",
            SCHEMES.join(", ")
        ))),
    }
}

fn check_quantity(what: &str, q: &str) -> Result<()> {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.parse::<f64>().is_ok_and(|v| v > 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&&q[digits.len()..]);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "{what} '{q}' is not a Kubernetes quantity"
        )))
    }
}

fn check_resources(what: &str, r: &Option<ResourceSpec>) -> Result<()> {
    if let Some(r) = r {
        if let Some(cpu) = &r.cpu {
            check_quantity(&format!("{what}.cpu"), cpu)?;
        }
        if let Some(mem) = &r.memory {
            check_quantity(&format!("{what}.memory"), mem)?;
        }
    }
    Ok(())
}

/// Checks what the schema cannot; the message names the offending field.
pub fn validate(spec: &ClusterSpec) -> Result<()> {
    if spec.image.trim().is_empty() {
        return Err(Error::InvalidSpec("image must not be empty".into()));
    }
    if let ClusterMode::Application(job) = &spec.mode {
        if job.entry.trim().is_empty() {
            return Err(Error::InvalidSpec("job.entry must not be empty".into()));
        }
        if let (Some(p), Some(m)) = (job.parallelism, job.max_parallelism) {
            if p > m {
                return Err(Error::InvalidSpec(format!(
                    "job.parallelism {p} exceeds job.maxParallelism {m}"
                )));
            }
        }
        if job.parallelism == Some(0) {
            return Err(Error::InvalidSpec(
                "job.parallelism must be at least 1".into(),
            ));
        }
        if job.upgrade_mode != UpgradeMode::Stateless && spec.storage().is_none() {
            return Err(Error::InvalidSpec(format!(
                "job.upgradeMode {:?} needs checkpointing.storage",
                job.upgrade_mode
            )));
        }
        if job.upgrade_mode == UpgradeMode::LastState && !spec.high_availability.enabled {
            return Err(Error::InvalidSpec(
                "job.upgradeMode last-state needs highAvailability.enabled (the latest checkpoint is found through the HA ConfigMap)".into(),
            ));
        }
        if let Some(sp) = &job.initial_savepoint_path {
            check_uri("job.initialSavepointPath", sp)?;
        }
    }
    if let ClusterMode::Session {
        min_task_managers: Some(min),
        max_task_managers: Some(max),
    } = &spec.mode
    {
        if min > max {
            return Err(Error::InvalidSpec(format!(
                "taskManager.minTaskManagers {min} exceeds maxTaskManagers {max}"
            )));
        }
    }
    if spec.tm_slots == Some(0) {
        return Err(Error::InvalidSpec(
            "taskManager.slots must be at least 1".into(),
        ));
    }
    if let Some(c) = &spec.checkpointing {
        if let Some(i) = &c.interval {
            parse_duration(i)
                .map_err(|e| Error::InvalidSpec(format!("checkpointing.interval: {e}")))?;
        }
        if let Some(s) = &c.storage {
            check_uri("checkpointing.storage", s)?;
        }
    }
    if let Some(r) = &spec.restart_strategy {
        for (field, v) in [
            ("delay", &r.delay),
            ("maxDelay", &r.max_delay),
            ("failureRateInterval", &r.failure_rate_interval),
        ] {
            if let Some(v) = v {
                parse_duration(v)
                    .map_err(|e| Error::InvalidSpec(format!("restartStrategy.{field}: {e}")))?;
            }
        }
    }
    if spec.high_availability.enabled && spec.storage().is_none() {
        return Err(Error::InvalidSpec(
            "highAvailability.enabled needs checkpointing.storage (HA metadata lives beside it)"
                .into(),
        ));
    }
    check_resources("jobManager.resources", &spec.job_manager.resources)?;
    check_resources("taskManager.resources", &spec.tm_resources)?;
    for key in spec.flink_configuration.keys() {
        if key.trim().is_empty() {
            return Err(Error::InvalidSpec(
                "flinkConfiguration has an empty key".into(),
            ));
        }
        if MANAGED_KEYS.contains(&key.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "flinkConfiguration.{key} is managed by the operator"
            )));
        }
        // The JobManager refuses unknown keys at start; saying so here
        // beats a crash-looping pod.
        if !rill_api::config::is_key(key) {
            return Err(Error::InvalidSpec(format!(
                "flinkConfiguration.{key} is not a configuration key Rill knows"
            )));
        }
    }
    crate::retention::retention(&spec.flink_configuration)?;
    for (what, t) in [
        ("jobManager.podTemplate", &spec.job_manager.pod_template),
        ("taskManager.podTemplate", &spec.tm_pod_template),
    ] {
        if let Some(t) = t {
            if !t.is_object() {
                return Err(Error::InvalidSpec(format!("{what} must be a Pod object")));
            }
        }
    }
    Ok(())
}

/// Names of a cluster's children, derived from the resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster_id: String,
    pub namespace: String,
}

impl Names {
    pub fn new(cluster_id: &str, namespace: &str) -> Self {
        Names {
            cluster_id: cluster_id.to_string(),
            namespace: namespace.to_string(),
        }
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster_id)
    }
    pub fn service_account(&self) -> String {
        format!("{}-jobmanager", self.cluster_id)
    }
    pub fn role(&self) -> String {
        format!("{}-jobmanager", self.cluster_id)
    }
    pub fn deployment(&self) -> String {
        format!("{}-jobmanager", self.cluster_id)
    }
    pub fn rest_service(&self) -> String {
        format!("{}-rest", self.cluster_id)
    }
    pub fn rpc_service(&self) -> String {
        format!("{}-rpc", self.cluster_id)
    }
    /// The HA ConfigMap written by the JobManagers (not owned).
    pub fn ha_config_map(&self) -> String {
        crate::ha::cluster_config_map_name(&self.cluster_id)
    }
    /// In-cluster REST base URL.
    pub fn rest_url(&self) -> String {
        format!(
            "http://{}.{}:{REST_PORT}",
            self.rest_service(),
            self.namespace
        )
    }
    pub fn rpc_address(&self) -> String {
        format!("{}.{}", self.rpc_service(), self.namespace)
    }
}

fn put(conf: &mut BTreeMap<String, String>, key: &str, value: impl ToString) {
    conf.insert(key.to_string(), value.to_string());
}

/// The cluster's `config.yaml` keys. User `flinkConfiguration` comes first;
/// the keys the spec's typed fields name override it; operator-managed
/// keys override everything. `restore_savepoint` is the savepoint the
/// deployment starts from (the operator's upgrade savepoint or
/// `initialSavepointPath`).
pub fn render(
    names: &Names,
    spec: &ClusterSpec,
    restore_savepoint: Option<&str>,
) -> Result<BTreeMap<String, String>> {
    validate(spec)?;
    let mut c = spec.flink_configuration.clone();
    put(&mut c, "rest.port", REST_PORT);
    put(&mut c, "jobmanager.rpc.port", RPC_PORT);
    put(&mut c, "taskmanager.numberOfTaskSlots", spec.slots());
    match &spec.mode {
        ClusterMode::Application(job) => {
            // The JobManager stays up after its job ends: the operator reads
            // the outcome, and the Deployment does not restart it into
            // running the job again.
            put(&mut c, "execution.shutdown-on-application-finish", false);
            if let Some(p) = job.parallelism {
                put(&mut c, "parallelism.default", p);
            }
            if let Some(m) = job.max_parallelism {
                put(&mut c, "pipeline.max-parallelism", m);
            }
            if let Some(sp) = restore_savepoint {
                put(&mut c, "execution.savepoint.path", sp);
                put(
                    &mut c,
                    "execution.savepoint.ignore-unclaimed-state",
                    job.allow_non_restored_state,
                );
            }
        }
        ClusterMode::Session {
            min_task_managers,
            max_task_managers,
        } => {
            if let Some(min) = min_task_managers {
                put(
                    &mut c,
                    "slotmanager.number-of-slots.min",
                    min * spec.slots(),
                );
            }
            if let Some(max) = max_task_managers {
                put(
                    &mut c,
                    "slotmanager.number-of-slots.max",
                    max * spec.slots(),
                );
            }
        }
    }
    if let Some(cp) = &spec.checkpointing {
        if let Some(i) = &cp.interval {
            put(&mut c, "execution.checkpointing.interval", i);
        }
        if let Some(s) = &cp.storage {
            let base = s.trim_end_matches('/');
            put(&mut c, "state.checkpoints.dir", base);
            put(&mut c, "state.savepoints.dir", format!("{base}/savepoints"));
        }
        if let Some(r) = cp.retained {
            put(&mut c, "state.checkpoints.num-retained", r);
        }
    }
    if let Some(sb) = &spec.state_backend {
        let kind = match sb.kind {
            StateBackendType::Hashmap => "hashmap",
            StateBackendType::Rocksdb => "rocksdb",
        };
        put(&mut c, "state.backend.type", kind);
        if let Some(inc) = sb.incremental {
            put(&mut c, "state.backend.incremental", inc);
        }
    }
    if let Some(rs) = &spec.restart_strategy {
        render_restart(&mut c, rs);
    }
    if spec.high_availability.enabled {
        put(&mut c, KEY_HA_TYPE, "kubernetes");
        if let Some(s) = spec.storage() {
            put(
                &mut c,
                "high-availability.storageDir",
                format!("{}/ha", s.trim_end_matches('/')),
            );
        }
    } else {
        put(&mut c, KEY_HA_TYPE, "none");
    }
    put(
        &mut c,
        "kubernetes.jobmanager.replicas",
        spec.job_manager_replicas(),
    );
    let target = match spec.mode {
        ClusterMode::Application(_) => "kubernetes-application",
        ClusterMode::Session { .. } => "kubernetes-session",
    };
    put(&mut c, KEY_TARGET, target);
    put(&mut c, KEY_CLUSTER_ID, &names.cluster_id);
    put(&mut c, KEY_NAMESPACE, &names.namespace);
    put(&mut c, KEY_RPC_ADDRESS, names.rpc_address());
    put(
        &mut c,
        KEY_TM_TEMPLATE,
        format!("{CONF_DIR}/{TM_TEMPLATE_FILE}"),
    );
    put(&mut c, KEY_JM_DEPLOYMENT, names.deployment());
    Ok(c)
}

fn render_restart(c: &mut BTreeMap<String, String>, rs: &RestartStrategySpec) {
    match rs.kind {
        RestartStrategyType::None => put(c, "restart-strategy.type", "none"),
        RestartStrategyType::FixedDelay => {
            put(c, "restart-strategy.type", "fixed-delay");
            if let Some(a) = rs.attempts {
                put(c, "restart-strategy.fixed-delay.attempts", a);
            }
            if let Some(d) = &rs.delay {
                put(c, "restart-strategy.fixed-delay.delay", d);
            }
        }
        RestartStrategyType::ExponentialDelay => {
            put(c, "restart-strategy.type", "exponential-delay");
            if let Some(d) = &rs.delay {
                put(c, "restart-strategy.exponential-delay.initial-backoff", d);
            }
            if let Some(d) = &rs.max_delay {
                put(c, "restart-strategy.exponential-delay.max-backoff", d);
            }
            if let Some(a) = rs.attempts {
                put(
                    c,
                    "restart-strategy.exponential-delay.attempts-before-reset-backoff",
                    a,
                );
            }
        }
        RestartStrategyType::FailureRate => {
            put(c, "restart-strategy.type", "failure-rate");
            if let Some(m) = rs.max_failures_per_interval {
                put(
                    c,
                    "restart-strategy.failure-rate.max-failures-per-interval",
                    m,
                );
            }
            if let Some(i) = &rs.failure_rate_interval {
                put(c, "restart-strategy.failure-rate.failure-rate-interval", i);
            }
            if let Some(d) = &rs.delay {
                put(c, "restart-strategy.failure-rate.delay", d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DesiredJobState, TaskManagerSpec};

    #[test]
    fn a_session_wants_taskmanagers_for_its_jobs_within_min_and_max() {
        assert_eq!(session_task_managers(0, 1, Some(1), Some(4)), 1);
        assert_eq!(session_task_managers(4, 1, Some(1), Some(4)), 4);
        assert_eq!(session_task_managers(2, 1, Some(1), Some(4)), 2);
        assert_eq!(session_task_managers(9, 1, Some(1), Some(4)), 4);
        assert_eq!(session_task_managers(3, 2, None, None), 2);
        assert_eq!(session_task_managers(0, 2, None, None), 0);
    }

    fn job_spec() -> FlinkJobSpec {
        FlinkJobSpec {
            image: "rill:latest".into(),
            image_pull_policy: None,
            service_account: None,
            job: JobSpec {
                entry: "windowed-sum".into(),
                args: vec!["--rate".into(), "1000".into()],
                parallelism: Some(4),
                max_parallelism: Some(128),
                state: DesiredJobState::Running,
                upgrade_mode: UpgradeMode::Savepoint,
                savepoint_trigger_nonce: None,
                initial_savepoint_path: None,
                allow_non_restored_state: true,
            },
            checkpointing: Some(CheckpointingSpec {
                interval: Some("10s".into()),
                storage: Some("s3://bucket/rill/".into()),
                retained: Some(3),
            }),
            state_backend: Some(StateBackendSpec {
                kind: StateBackendType::Rocksdb,
                incremental: Some(true),
            }),
            restart_strategy: Some(RestartStrategySpec {
                kind: RestartStrategyType::FixedDelay,
                attempts: Some(5),
                delay: Some("2 s".into()),
                ..Default::default()
            }),
            high_availability: Some(HighAvailabilitySpec {
                enabled: true,
                job_manager_replicas: Some(2),
            }),
            job_manager: None,
            task_manager: Some(TaskManagerSpec {
                resources: None,
                slots: Some(2),
                pod_template: None,
            }),
            flink_configuration: [
                ("heartbeat.timeout".to_string(), "20000".to_string()),
                ("state.backend.type".to_string(), "hashmap".to_string()),
            ]
            .into(),
            session_ref: None,
        }
    }

    #[test]
    fn durations_parse_like_flink() {
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10 s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2 min").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250").ok(), Some(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn a_job_spec_renders_to_flink_keys() {
        let names = Names::new("wsum", "jobs");
        let conf = render(&names, &ClusterSpec::from_job(&job_spec()), None).expect("render");
        let get = |k: &str| conf.get(k).map(String::as_str);
        assert_eq!(get("kubernetes.cluster-id"), Some("wsum"));
        assert_eq!(get("kubernetes.namespace"), Some("jobs"));
        assert_eq!(get("execution.target"), Some("kubernetes-application"));
        assert_eq!(get("jobmanager.rpc.address"), Some("wsum-rpc.jobs"));
        assert_eq!(get("jobmanager.rpc.port"), Some("6123"));
        assert_eq!(get("rest.port"), Some("8081"));
        assert_eq!(get("taskmanager.numberOfTaskSlots"), Some("2"));
        assert_eq!(get("parallelism.default"), Some("4"));
        assert_eq!(get("pipeline.max-parallelism"), Some("128"));
        assert_eq!(get("execution.checkpointing.interval"), Some("10s"));
        assert_eq!(get("state.checkpoints.dir"), Some("s3://bucket/rill"));
        assert_eq!(
            get("state.savepoints.dir"),
            Some("s3://bucket/rill/savepoints")
        );
        assert_eq!(get("state.checkpoints.num-retained"), Some("3"));
        // The typed field wins over the free-form key.
        assert_eq!(get("state.backend.type"), Some("rocksdb"));
        assert_eq!(get("state.backend.incremental"), Some("true"));
        assert_eq!(get("restart-strategy.type"), Some("fixed-delay"));
        assert_eq!(get("restart-strategy.fixed-delay.attempts"), Some("5"));
        assert_eq!(get("restart-strategy.fixed-delay.delay"), Some("2 s"));
        assert_eq!(get("high-availability.type"), Some("kubernetes"));
        assert_eq!(
            get("high-availability.storageDir"),
            Some("s3://bucket/rill/ha")
        );
        assert_eq!(get("kubernetes.jobmanager.replicas"), Some("2"));
        assert_eq!(
            get("kubernetes.taskmanager.pod-template"),
            Some("/opt/rill/conf/taskmanager-pod-template.yaml")
        );
        assert_eq!(
            get("kubernetes.jobmanager.deployment"),
            Some("wsum-jobmanager")
        );
        assert_eq!(get("heartbeat.timeout"), Some("20000"));
        assert_eq!(get("execution.savepoint.path"), None);

        let restored = render(
            &names,
            &ClusterSpec::from_job(&job_spec()),
            Some("s3://bucket/rill/savepoints/savepoint-1"),
        )
        .expect("render");
        assert_eq!(
            restored.get("execution.savepoint.path").map(String::as_str),
            Some("s3://bucket/rill/savepoints/savepoint-1")
        );
        assert_eq!(
            restored
                .get("execution.savepoint.ignore-unclaimed-state")
                .map(String::as_str),
            Some("true")
        );
        // The YAML round-trips.
        let yaml = render_config_yaml(&restored).expect("yaml");
        assert_eq!(parse_config_yaml(&yaml).expect("parse"), restored);
    }

    #[test]
    fn a_session_renders_slot_bounds() {
        let spec = FlinkSessionSpec {
            image: "rill".into(),
            image_pull_policy: None,
            service_account: None,
            job_manager: None,
            task_manager: Some(crate::crd::SessionTaskManagerSpec {
                slots: Some(4),
                min_task_managers: Some(2),
                max_task_managers: Some(5),
                ..Default::default()
            }),
            high_availability: None,
            checkpointing: None,
            state_backend: None,
            restart_strategy: Some(RestartStrategySpec {
                kind: RestartStrategyType::ExponentialDelay,
                delay: Some("1s".into()),
                max_delay: Some("1min".into()),
                ..Default::default()
            }),
            flink_configuration: BTreeMap::new(),
        };
        let conf = render(
            &Names::new("s", "d"),
            &ClusterSpec::from_session(&spec),
            None,
        )
        .expect("render");
        let get = |k: &str| conf.get(k).map(String::as_str);
        assert_eq!(get("execution.target"), Some("kubernetes-session"));
        assert_eq!(get("slotmanager.number-of-slots.min"), Some("8"));
        assert_eq!(get("slotmanager.number-of-slots.max"), Some("20"));
        assert_eq!(get("high-availability.type"), Some("none"));
        assert_eq!(get("kubernetes.jobmanager.replicas"), Some("1"));
        assert_eq!(
            get("restart-strategy.exponential-delay.initial-backoff"),
            Some("1s")
        );
        assert_eq!(
            get("restart-strategy.exponential-delay.max-backoff"),
            Some("1min")
        );
        assert_eq!(get("parallelism.default"), None);
    }

    #[test]
    fn invalid_specs_are_reported_with_the_field() {
        let names = Names::new("x", "d");
        type Breaks = Box<dyn Fn(&mut FlinkJobSpec)>;
        let cases: Vec<(Breaks, &str)> = vec![
            (Box::new(|s| s.image = " ".into()), "image"),
            (Box::new(|s| s.job.entry.clear()), "job.entry"),
            (
                Box::new(|s| s.job.parallelism = Some(500)),
                "maxParallelism",
            ),
            (
                Box::new(|s| s.checkpointing.as_mut().expect("cp").interval = Some("often".into())),
                "checkpointing.interval",
            ),
            (
                Box::new(|s| s.checkpointing.as_mut().expect("cp").storage = Some("/tmp/x".into())),
                "checkpointing.storage",
            ),
            (
                Box::new(|s| s.checkpointing = None),
                "checkpointing.storage",
            ),
            (
                Box::new(|s| {
                    s.flink_configuration
                        .insert("kubernetes.cluster-id".into(), "other".into());
                }),
                "managed by the operator",
            ),
            (
                Box::new(|s| {
                    s.flink_configuration
                        .insert("s3.path-style-access".into(), "true".into());
                }),
                "flinkConfiguration.s3.path-style-access is not a configuration key",
            ),
            (
                Box::new(|s| {
                    s.job_manager = Some(JobManagerSpec {
                        resources: Some(ResourceSpec {
                            cpu: Some("lots".into()),
                            memory: None,
                        }),
                        pod_template: None,
                    })
                }),
                "jobManager.resources.cpu",
            ),
        ];
        for (mutate, needle) in cases {
            let mut spec = job_spec();
            mutate(&mut spec);
            match render(&names, &ClusterSpec::from_job(&spec), None) {
                Err(Error::InvalidSpec(msg)) => {
                    assert!(msg.contains(needle), "'{msg}' should mention '{needle}'")
                }
                other => panic!("expected invalid spec mentioning {needle}, got {other:?}"),
            }
        }
    }

    #[test]
    fn quantities() {
        for ok in ["1", "500m", "1.5", "2Gi", "512Mi", "1G"] {
            assert!(check_quantity("q", ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "1Zi", "-1", "0"] {
            assert!(check_quantity("q", bad).is_err(), "{bad}");
        }
    }
}
