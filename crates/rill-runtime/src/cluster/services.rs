//! The JobManager's pluggable cluster services: where its leadership and
//! durable job pointers live ([`HighAvailability`]) and where TaskManagers
//! come from ([`WorkerProvider`]).
//!
//! The runtime knows nothing about Kubernetes. Standalone clusters use the
//! in-process implementations here ([`StandaloneHa`], [`StaticWorkers`]);
//! the Kubernetes implementations (ConfigMap leader election, TaskManager
//! pods) live in `rill-operator` and are plugged in by the binary.
//!
//! The traits are blocking: the JobManager's control loop runs on plain
//! threads, and implementations that need async I/O own their runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// Where the leading JobManager can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderAddress {
    /// `host:port` of the RPC endpoint TaskManagers register with.
    pub rpc: String,
    /// Base URL of the REST API (`http://host:8081`).
    pub rest: String,
}

/// A job as the dispatcher must remember it to recover it after a
/// JobManager failover: enough to rebuild the graph from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredJob {
    pub job_id: String,
    pub entry: String,
    pub args: Vec<String>,
    pub parallelism: Option<usize>,
    /// The savepoint the job was submitted with (used only when it has no
    /// checkpoint yet).
    pub initial_savepoint: Option<String>,
    pub allow_non_restored_state: bool,
    /// Submission time, ms since the Unix epoch.
    pub submitted_ms: u64,
}

/// Pointer to the latest completed checkpoint of a job (the data stays in
/// object storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    pub id: u64,
    /// Location of the checkpoint directory (holds `_metadata`).
    pub location: String,
    pub completed_ms: u64,
}

/// Proof of leadership, checked before every write that must come from
/// the leader only. Implementations flip it to lost the moment they can no
/// longer renew, so a deposed leader stops acting at once.
#[derive(Debug, Clone)]
pub struct Leadership {
    identity: String,
    lost: Arc<AtomicBool>,
}

impl Leadership {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_leader(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Marks leadership as lost (for the implementation that granted it).
    pub fn revoke(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Fails with [`RuntimeError::NotLeader`] once leadership is gone.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(RuntimeError::NotLeader(self.identity.clone()))
        }
    }
}

/// Leader election among JobManagers and the durable pointers a new leader
/// recovers jobs from.
pub trait HighAvailability: Send + Sync + 'static {
    /// Blocks until this JobManager leads, then publishes its address.
    fn acquire_leadership(
        &self,
        identity: &str,
        address: &LeaderAddress,
    ) -> Result<Leadership, RuntimeError>;
    /// The current leader, if one has published its address.
    fn leader(&self) -> Result<Option<LeaderAddress>, RuntimeError>;
    /// Jobs submitted and not yet terminal.
    fn jobs(&self) -> Result<Vec<StoredJob>, RuntimeError>;
    fn put_job(&self, leadership: &Leadership, job: &StoredJob) -> Result<(), RuntimeError>;
    /// Forgets a job that reached a terminal state (its pointers too).
    fn remove_job(&self, leadership: &Leadership, job_id: &str) -> Result<(), RuntimeError>;
    /// Records a completed checkpoint; refuses if leadership is lost.
    fn put_checkpoint(
        &self,
        leadership: &Leadership,
        job_id: &str,
        pointer: &CheckpointPointer,
    ) -> Result<(), RuntimeError>;
    fn latest_checkpoint(&self, job_id: &str) -> Result<Option<CheckpointPointer>, RuntimeError>;
}

/// No failover: the configured address leads, pointers live in memory
/// (`high-availability.type: none`).
#[derive(Default)]
pub struct StandaloneHa {
    leader: Mutex<Option<LeaderAddress>>,
    jobs: Mutex<BTreeMap<String, StoredJob>>,
    checkpoints: Mutex<BTreeMap<String, CheckpointPointer>>,
}

impl StandaloneHa {
    /// Knows the leader from configuration (TaskManagers' view).
    pub fn with_leader(address: LeaderAddress) -> Self {
        Self {
            leader: Mutex::new(Some(address)),
            ..Self::default()
        }
    }
}

fn poisoned<T>(_: T) -> RuntimeError {
    RuntimeError::Cluster("internal lock poisoned".into())
}

impl HighAvailability for StandaloneHa {
    fn acquire_leadership(
        &self,
        identity: &str,
        address: &LeaderAddress,
    ) -> Result<Leadership, RuntimeError> {
        *self.leader.lock().map_err(poisoned)? = Some(address.clone());
        Ok(Leadership::new(identity))
    }

    fn leader(&self) -> Result<Option<LeaderAddress>, RuntimeError> {
        Ok(self.leader.lock().map_err(poisoned)?.clone())
    }

    fn jobs(&self) -> Result<Vec<StoredJob>, RuntimeError> {
        Ok(self
            .jobs
            .lock()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect())
    }

    fn put_job(&self, leadership: &Leadership, job: &StoredJob) -> Result<(), RuntimeError> {
        leadership.check()?;
        self.jobs
            .lock()
            .map_err(poisoned)?
            .insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    fn remove_job(&self, leadership: &Leadership, job_id: &str) -> Result<(), RuntimeError> {
        leadership.check()?;
        self.jobs.lock().map_err(poisoned)?.remove(job_id);
        self.checkpoints.lock().map_err(poisoned)?.remove(job_id);
        Ok(())
    }

    fn put_checkpoint(
        &self,
        leadership: &Leadership,
        job_id: &str,
        pointer: &CheckpointPointer,
    ) -> Result<(), RuntimeError> {
        leadership.check()?;
        self.checkpoints
            .lock()
            .map_err(poisoned)?
            .insert(job_id.to_string(), pointer.clone());
        Ok(())
    }

    fn latest_checkpoint(&self, job_id: &str) -> Result<Option<CheckpointPointer>, RuntimeError> {
        Ok(self
            .checkpoints
            .lock()
            .map_err(poisoned)?
            .get(job_id)
            .cloned())
    }
}

/// Where TaskManagers come from. The resource manager tells the provider how
/// many it wants; the provider starts or stops workers to match and replaces
/// ones that terminate. Workers register themselves over RPC.
pub trait WorkerProvider: Send + Sync + 'static {
    /// Wants `count` TaskManagers in total (running or starting).
    fn set_desired(&self, count: usize) -> Result<(), RuntimeError>;
    /// Releases an idle TaskManager by the id it registered with; the
    /// desired count drops by one.
    fn release(&self, worker_id: &str) -> Result<(), RuntimeError>;
}

/// TaskManagers are started by someone else (standalone clusters, tests):
/// requests are noted and nothing else happens.
#[derive(Default)]
pub struct StaticWorkers {
    desired: Mutex<usize>,
}

impl StaticWorkers {
    pub fn desired(&self) -> usize {
        self.desired.lock().map_or(0, |d| *d)
    }
}

impl WorkerProvider for StaticWorkers {
    fn set_desired(&self, count: usize) -> Result<(), RuntimeError> {
        *self.desired.lock().map_err(poisoned)? = count;
        Ok(())
    }

    fn release(&self, _worker_id: &str) -> Result<(), RuntimeError> {
        let mut desired = self.desired.lock().map_err(poisoned)?;
        *desired = desired.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_leadership_refuses_writes() {
        let ha = StandaloneHa::default();
        let address = LeaderAddress {
            rpc: "127.0.0.1:6123".into(),
            rest: "http://127.0.0.1:8081".into(),
        };
        let leadership = ha.acquire_leadership("jm-1", &address).unwrap();
        let pointer = CheckpointPointer {
            id: 3,
            location: "file:///tmp/c/j/chk-3".into(),
            completed_ms: 1,
        };
        ha.put_checkpoint(&leadership, "j", &pointer).unwrap();
        assert_eq!(ha.latest_checkpoint("j").unwrap(), Some(pointer.clone()));
        leadership.revoke();
        let newer = CheckpointPointer {
            id: 4,
            ..pointer.clone()
        };
        assert!(matches!(
            ha.put_checkpoint(&leadership, "j", &newer),
            Err(RuntimeError::NotLeader(_))
        ));
        assert_eq!(ha.latest_checkpoint("j").unwrap(), Some(pointer));
        assert_eq!(ha.leader().unwrap(), Some(address));
    }
}
