//! Flink-style configuration.
//!
//! Rill reads the keys Flink users already know (`parallelism.default`,
//! `taskmanager.numberOfTaskSlots`, `execution.checkpointing.interval`, …) from
//! a `config.yaml` (flat `a.b: v` keys or nested maps, as in Flink 2) and from
//! `-D key=value` overrides. Unknown keys are errors rather than silently
//! ignored: a misspelt key is a bug that would otherwise surface in production.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// Known keys, their defaults (Flink's where Flink has the key) and meaning.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "parallelism.default",
        "1",
        "parallelism of operators that set none",
    ),
    (
        "pipeline.max-parallelism",
        "",
        "number of key groups (default: derived from parallelism)",
    ),
    (
        "pipeline.auto-watermark-interval",
        "200 ms",
        "period of periodic watermark emission",
    ),
    (
        "execution.buffer-timeout",
        "100 ms",
        "longest time a record waits in a network buffer",
    ),
    (
        "execution.checkpointing.interval",
        "",
        "checkpoint interval (unset: no checkpoints)",
    ),
    (
        "execution.checkpointing.timeout",
        "10 min",
        "a checkpoint slower than this is aborted",
    ),
    (
        "execution.checkpointing.min-pause",
        "0 ms",
        "minimum pause between checkpoints",
    ),
    (
        "execution.checkpointing.max-concurrent-checkpoints",
        "1",
        "checkpoints in flight at once",
    ),
    (
        "state.checkpoints.dir",
        "",
        "where checkpoints are written (file://, s3://, …)",
    ),
    (
        "state.checkpoints.num-retained",
        "1",
        "completed checkpoints kept",
    ),
    ("state.savepoints.dir", "", "default savepoint location"),
    (
        "execution.checkpointing.externalized-checkpoint-retention",
        "RETAIN_ON_CANCELLATION",
        "on Kubernetes: whether deleting a FlinkJob keeps its checkpoints (RETAIN_ON_CANCELLATION) or deletes them (DELETE_ON_CANCELLATION)",
    ),
    (
        "execution.checkpointing.mode",
        "EXACTLY_ONCE",
        "EXACTLY_ONCE (aligned barriers) or AT_LEAST_ONCE",
    ),
    (
        "execution.savepoint.path",
        "",
        "checkpoint or savepoint to restore the job from",
    ),
    (
        "execution.savepoint.ignore-unclaimed-state",
        "false",
        "allow restoring state of operators the job no longer has",
    ),
    (
        "$internal.pipeline.job-id",
        "",
        "job id (names the checkpoint directory; default: the job name)",
    ),
    (
        "s3.endpoint",
        "",
        "S3 endpoint (MinIO and other S3-compatible stores)",
    ),
    ("s3.region", "", "S3 region"),
    ("s3.access-key", "", "S3 access key"),
    ("s3.secret-key", "", "S3 secret key"),
    ("s3.path.style.access", "false", "path-style S3 URLs"),
    ("state.backend.type", "hashmap", "hashmap or rocksdb"),
    (
        "state.backend.incremental",
        "false",
        "incremental RocksDB checkpoints",
    ),
    (
        "state.backend.rocksdb.localdir",
        "",
        "parent directory of the per-subtask RocksDB directories (default: temp dir)",
    ),
    (
        "restart-strategy.type",
        "",
        "none, fixed-delay, exponential-delay or failure-rate",
    ),
    (
        "restart-strategy.fixed-delay.attempts",
        "1",
        "restarts before the job fails",
    ),
    (
        "restart-strategy.fixed-delay.delay",
        "1 s",
        "pause before a restart",
    ),
    (
        "restart-strategy.exponential-delay.initial-backoff",
        "1 s",
        "first pause",
    ),
    (
        "restart-strategy.exponential-delay.max-backoff",
        "1 min",
        "longest pause",
    ),
    (
        "restart-strategy.exponential-delay.backoff-multiplier",
        "1.5",
        "growth of the pause",
    ),
    (
        "restart-strategy.exponential-delay.attempts-before-reset-backoff",
        "",
        "restarts allowed",
    ),
    (
        "restart-strategy.exponential-delay.reset-backoff-threshold",
        "1 h",
        "a run this long resets the pause",
    ),
    (
        "restart-strategy.exponential-delay.jitter-factor",
        "0.1",
        "random share added to or taken from a pause",
    ),
    (
        "restart-strategy.failure-rate.max-failures-per-interval",
        "1",
        "failures tolerated",
    ),
    (
        "restart-strategy.failure-rate.failure-rate-interval",
        "1 min",
        "window for counting failures",
    ),
    (
        "restart-strategy.failure-rate.delay",
        "1 s",
        "pause before a restart",
    ),
    ("rest.port", "8081", "JobManager REST port"),
    ("rest.address", "", "JobManager REST address"),
    (
        "rest.bind-address",
        "0.0.0.0",
        "address the REST server binds",
    ),
    (
        "jobmanager.rpc.address",
        "localhost",
        "JobManager RPC address",
    ),
    ("jobmanager.rpc.port", "6123", "JobManager RPC port"),
    (
        "taskmanager.numberOfTaskSlots",
        "1",
        "slots per TaskManager",
    ),
    (
        "taskmanager.data.port",
        "0",
        "TaskManager data port (0: any)",
    ),
    ("taskmanager.host", "", "address TaskManagers advertise"),
    ("heartbeat.interval", "10 s", "heartbeat period"),
    ("heartbeat.timeout", "50 s", "heartbeat timeout"),
    ("high-availability.type", "none", "none or kubernetes"),
    ("high-availability.storageDir", "", "HA metadata storage"),
    (
        "kubernetes.cluster-id",
        "",
        "cluster id used for HA ConfigMaps and labels",
    ),
    (
        "kubernetes.namespace",
        "default",
        "namespace of the cluster",
    ),
    (
        "metrics.reporter.prom.port",
        "9249",
        "Prometheus metrics port",
    ),
    (
        "jobmanager.bind-host",
        "0.0.0.0",
        "address the JobManager RPC server binds",
    ),
    (
        "taskmanager.bind-host",
        "0.0.0.0",
        "address the TaskManager data server binds",
    ),
    (
        "taskmanager.resource-id",
        "",
        "TaskManager id (default: POD_NAME, else host and port)",
    ),
    (
        "slot.request.timeout",
        "5 min",
        "how long a job waits for enough free slots",
    ),
    (
        "resourcemanager.taskmanager-timeout",
        "30 s",
        "idle TaskManagers beyond what jobs need are released after this",
    ),
    (
        "slotmanager.number-of-slots.min",
        "0",
        "slots kept available even when no job needs them (whole TaskManagers, rounded up)",
    ),
    (
        "slotmanager.number-of-slots.max",
        "",
        "most slots the cluster asks TaskManagers for (unset: no limit)",
    ),
    (
        "execution.target",
        "",
        "kubernetes-application or kubernetes-session: the JobManager starts TaskManager pods",
    ),
    (
        "kubernetes.taskmanager.pod-template",
        "",
        "file with the pod template of TaskManagers the JobManager creates",
    ),
    (
        "kubernetes.jobmanager.replicas",
        "1",
        "JobManager replicas (more than one needs high availability)",
    ),
    (
        "execution.shutdown-on-application-finish",
        "true",
        "an application cluster's JobManager exits when its job ends",
    ),
    (
        "kubernetes.taskmanager.resync-interval",
        "10 s",
        "how often the JobManager reconciles its TaskManager pods",
    ),
    (
        "kubernetes.jobmanager.deployment",
        "",
        "name of the JobManager Deployment that owns TaskManager pods",
    ),
    (
        "high-availability.kubernetes.leader-election.lease-duration",
        "15 s",
        "how long a leader's lease lasts without renewal",
    ),
    (
        "high-availability.kubernetes.leader-election.renew-deadline",
        "15 s",
        "a leader that cannot renew within this stops leading",
    ),
    (
        "high-availability.kubernetes.leader-election.retry-period",
        "5 s",
        "pause between leader-election attempts",
    ),
];

/// Whether `key` is one of [`KEYS`].
pub fn is_key(key: &str) -> bool {
    KEYS.iter().any(|(k, _, _)| *k == key)
}

/// A set of configuration keys and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    values: BTreeMap<String, String>,
}

impl Configuration {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_key(key: &str) -> Result<()> {
        if is_key(key) {
            Ok(())
        } else {
            Err(Error::Config(format!("unknown configuration key '{key}'")))
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        Self::check_key(key)?;
        self.values.insert(key.to_string(), value.into());
        Ok(())
    }

    /// Applies a `key=value` override (the argument of `-D`).
    pub fn apply_override(&mut self, kv: &str) -> Result<()> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("'{kv}' is not of the form key=value")))?;
        self.set(k.trim(), v.trim())
    }

    /// Reads a Flink `config.yaml` (flat or nested keys).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
            .map_err(|e| Error::Config(format!("config.yaml: {e}")))?;
        let mut conf = Configuration::new();
        if doc.is_null() {
            return Ok(conf);
        }
        flatten("", &doc, &mut conf)?;
        Ok(conf)
    }

    /// Reads `config.yaml` in `dir` if it exists.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_yaml(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The value or Flink's default; `None` when neither is set.
    pub fn get(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.values.get(key) {
            return Some(v);
        }
        KEYS.iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, d, _)| *d)
            .filter(|d| !d.is_empty())
    }

    /// Whether the key was set explicitly.
    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn get_parsed<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::Config(format!("{key}: cannot parse '{v}'"))),
        }
    }

    pub fn get_duration(&self, key: &str) -> Result<Option<Duration>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_duration(v)
                .map(Some)
                .map_err(|m| Error::Config(format!("{key}: {m}"))),
        }
    }

    pub fn parallelism(&self) -> Result<usize> {
        match self.get_parsed::<usize>("parallelism.default")? {
            Some(0) => Err(Error::Config(
                "parallelism.default must be at least 1".into(),
            )),
            p => Ok(p.unwrap_or(1)),
        }
    }

    pub fn max_parallelism(&self) -> Result<Option<usize>> {
        self.get_parsed::<usize>("pipeline.max-parallelism")
    }

    /// Every explicitly set key.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    /// Layers `other` on top of this configuration.
    pub fn merge(&mut self, other: &Configuration) {
        for (k, v) in &other.values {
            self.values.insert(k.clone(), v.clone());
        }
    }
}

fn flatten(prefix: &str, value: &serde_yaml_ng::Value, conf: &mut Configuration) -> Result<()> {
    use serde_yaml_ng::Value;
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .map(|s| s.trim().to_string())
                        .map_err(|e| Error::Config(e.to_string()))?,
                };
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, conf)?;
            }
            Ok(())
        }
        Value::Null => Ok(()),
        Value::String(s) => conf.set(prefix, s.clone()),
        Value::Bool(b) => conf.set(prefix, b.to_string()),
        Value::Number(n) => conf.set(prefix, n.to_string()),
        other => Err(Error::Config(format!(
            "{prefix}: unsupported value {}",
            serde_yaml_ng::to_string(other).unwrap_or_default().trim()
        ))),
    }
}

/// Flink durations: `500`, `500 ms`, `10 s`, `10s`, `1 min`, `2 h`, `1 d`
/// (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration"))?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => n,
        "s" | "sec" | "secs" | "second" | "seconds" => n * 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60_000,
        "h" | "hour" | "hours" => n * 3_600_000,
        "d" | "day" | "days" => n * 86_400_000,
        other => return Err(format!("unknown time unit '{other}' in '{text}'")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_yaml() {
        let c = Configuration::from_yaml(
            "parallelism.default: 4\ntaskmanager:\n  numberOfTaskSlots: 2\nstate.backend.type: rocksdb\n",
        )
        .unwrap();
        assert_eq!(c.parallelism().unwrap(), 4);
        assert_eq!(c.get("taskmanager.numberOfTaskSlots"), Some("2"));
        assert_eq!(c.get("rest.port"), Some("8081"), "Flink's default");
        assert_eq!(c.get("execution.checkpointing.interval"), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Configuration::from_yaml("paralelism.default: 4").is_err());
        let mut c = Configuration::new();
        assert!(c.apply_override("rest.port").is_err());
        c.apply_override("parallelism.default=0").unwrap();
        assert!(c.parallelism().is_err());
        c.apply_override("heartbeat.timeout=5 parsecs").unwrap();
        assert!(c.get_duration("heartbeat.timeout").is_err());
        assert!(Configuration::from_yaml("a: [").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10 s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1 min").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("ten s").is_err());
    }
}
