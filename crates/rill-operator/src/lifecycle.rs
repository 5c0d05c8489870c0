//! What to do next with a FlinkJob, decided from its spec and status alone.
//!
//! The reconciler asks [`next_action`] and then performs that one step;
//! steps that take time (savepoints) are recorded in status and the next
//! reconcile continues them. Keeping the decision pure makes the upgrade
//! rules (what counts as a spec change, which mode applies, when a
//! savepoint is due) testable without a cluster or a JobManager.

use crate::crd::{DesiredJobState, FlinkJobSpec, FlinkJobStatus, LifecycleState, UpgradeMode};

/// One step toward the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing is deployed yet (or the job was suspended and is resumed):
    /// apply the children.
    Deploy { resume: bool },
    /// The deployed spec differs: roll it out with this mode.
    Upgrade(UpgradeMode),
    /// `job.state: suspended` on a deployed job.
    Suspend(UpgradeMode),
    /// A new `savepointTriggerNonce`.
    TriggerSavepoint(i64),
    /// In sync: re-apply children (idempotent) and refresh status.
    Observe,
    /// Suspended and meant to stay so.
    StaySuspended,
}

/// The spec as far as the running cluster is concerned: fields that do not
/// change the cluster (desired state, nonce, upgrade mode) are cleared.
pub fn deployable_view(spec: &FlinkJobSpec) -> FlinkJobSpec {
    let mut s = spec.clone();
    s.job.state = DesiredJobState::Running;
    s.job.savepoint_trigger_nonce = None;
    s.job.upgrade_mode = UpgradeMode::Stateless;
    s
}

/// Serialised [`deployable_view`], stored as `status.reconciledSpec`.
pub fn reconciled_spec_json(spec: &FlinkJobSpec) -> String {
    serde_json::to_string(&deployable_view(spec)).unwrap_or_default()
}

/// The next step for an application-mode FlinkJob.
pub fn next_action(spec: &FlinkJobSpec, status: Option<&FlinkJobStatus>) -> Action {
    let lifecycle = status.and_then(|s| s.lifecycle_state);
    let deployed: Option<FlinkJobSpec> = status
        .and_then(|s| s.reconciled_spec.as_deref())
        .and_then(|j| serde_json::from_str(j).ok());
    let suspended = lifecycle == Some(LifecycleState::Suspended);
    if spec.job.state == DesiredJobState::Suspended {
        return if suspended {
            Action::StaySuspended
        } else {
            Action::Suspend(spec.job.upgrade_mode)
        };
    }
    let Some(deployed) = deployed else {
        return Action::Deploy { resume: false };
    };
    if suspended {
        return Action::Deploy { resume: true };
    }
    if deployed != deployable_view(spec) {
        return Action::Upgrade(spec.job.upgrade_mode);
    }
    if let Some(nonce) = spec.job.savepoint_trigger_nonce {
        let done = status
            .and_then(|s| s.last_savepoint.as_ref())
            .and_then(|s| s.trigger_nonce);
        let pending = status
            .and_then(|s| s.pending_savepoint.as_ref())
            .and_then(|p| p.trigger_nonce);
        if done != Some(nonce) && pending != Some(nonce) {
            return Action::TriggerSavepoint(nonce);
        }
    }
    Action::Observe
}

/// The job id a FlinkJob in a session is submitted under: 32 hex digits
/// derived from the object's uid and the generation being deployed. The
/// same submission repeated (its answer or the status write was lost) has
/// the same id, which the JobManager runs only once; an upgrade or resume
/// (a new generation) gets a new one.
pub fn session_job_id(uid: &str, generation: i64) -> String {
    // FNV-1a, twice with different offsets: stable across builds and
    // operator versions, unlike std's hasher.
    fn fnv(offset: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(offset, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    let key = format!("{uid}/{generation}");
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325, key.as_bytes()),
        fnv(0x6c62_272e_07bb_0142, key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_job_ids_are_stable_per_generation() {
        let id = session_job_id("0b5d6a8e-1f2c-4c1e-9a57-3f0e2d1c4b6a", 1);
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            id,
            session_job_id("0b5d6a8e-1f2c-4c1e-9a57-3f0e2d1c4b6a", 1),
            "a repeated submission has the same id"
        );
        assert_ne!(
            id,
            session_job_id("0b5d6a8e-1f2c-4c1e-9a57-3f0e2d1c4b6a", 2),
            "a new generation gets a new id"
        );
        assert_ne!(
            id,
            session_job_id("7e1f0c2d-0000-4c1e-9a57-3f0e2d1c4b6a", 1),
            "another object gets another id"
        );
        assert_ne!(session_job_id("a", 11), session_job_id("a1", 1));
    }
    use crate::crd::{JobSpec, PendingSavepoint, SavepointStatus};

    fn spec() -> FlinkJobSpec {
        FlinkJobSpec {
            image: "rill:1".into(),
            image_pull_policy: None,
            service_account: None,
            job: JobSpec {
                entry: "windowed-sum".into(),
                parallelism: Some(2),
                upgrade_mode: UpgradeMode::Savepoint,
                ..Default::default()
            },
            checkpointing: None,
            state_backend: None,
            restart_strategy: None,
            high_availability: None,
            job_manager: None,
            task_manager: None,
            flink_configuration: Default::default(),
            session_ref: None,
        }
    }

    fn deployed(spec: &FlinkJobSpec, state: LifecycleState) -> FlinkJobStatus {
        FlinkJobStatus {
            lifecycle_state: Some(state),
            reconciled_spec: Some(reconciled_spec_json(spec)),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_job_is_deployed() {
        assert_eq!(next_action(&spec(), None), Action::Deploy { resume: false });
        let created = FlinkJobStatus {
            lifecycle_state: Some(LifecycleState::Created),
            ..Default::default()
        };
        assert_eq!(
            next_action(&spec(), Some(&created)),
            Action::Deploy { resume: false }
        );
    }

    #[test]
    fn an_unchanged_job_is_observed() {
        let s = spec();
        assert_eq!(
            next_action(&s, Some(&deployed(&s, LifecycleState::Stable))),
            Action::Observe
        );
    }

    #[test]
    fn a_spec_change_upgrades_with_the_new_upgrade_mode() {
        let old = spec();
        let status = deployed(&old, LifecycleState::Stable);
        let mut new = old.clone();
        new.job.parallelism = Some(4);
        assert_eq!(
            next_action(&new, Some(&status)),
            Action::Upgrade(UpgradeMode::Savepoint)
        );
        new.job.upgrade_mode = UpgradeMode::LastState;
        assert_eq!(
            next_action(&new, Some(&status)),
            Action::Upgrade(UpgradeMode::LastState)
        );
        let mut image = old.clone();
        image.image = "rill:2".into();
        image.job.upgrade_mode = UpgradeMode::Stateless;
        assert_eq!(
            next_action(&image, Some(&status)),
            Action::Upgrade(UpgradeMode::Stateless)
        );
    }

    #[test]
    fn changing_only_the_upgrade_mode_or_nonce_does_not_redeploy() {
        let old = spec();
        let status = deployed(&old, LifecycleState::Stable);
        let mut new = old.clone();
        new.job.upgrade_mode = UpgradeMode::LastState;
        assert_eq!(next_action(&new, Some(&status)), Action::Observe);
        new.job.savepoint_trigger_nonce = Some(3);
        assert_eq!(
            next_action(&new, Some(&status)),
            Action::TriggerSavepoint(3)
        );
    }

    #[test]
    fn a_nonce_triggers_once() {
        let mut s = spec();
        s.job.savepoint_trigger_nonce = Some(1);
        let mut status = deployed(&s, LifecycleState::Stable);
        assert_eq!(next_action(&s, Some(&status)), Action::TriggerSavepoint(1));
        status.pending_savepoint = Some(PendingSavepoint {
            job_id: "j".into(),
            request_id: "r".into(),
            reason: "trigger".into(),
            trigger_nonce: Some(1),
        });
        assert_eq!(next_action(&s, Some(&status)), Action::Observe);
        status.pending_savepoint = None;
        status.last_savepoint = Some(SavepointStatus {
            path: "file:///s/1".into(),
            time: None,
            trigger_nonce: Some(1),
        });
        assert_eq!(next_action(&s, Some(&status)), Action::Observe);
        s.job.savepoint_trigger_nonce = Some(2);
        assert_eq!(next_action(&s, Some(&status)), Action::TriggerSavepoint(2));
    }

    #[test]
    fn suspend_and_resume() {
        let mut s = spec();
        let status = deployed(&s, LifecycleState::Stable);
        s.job.state = DesiredJobState::Suspended;
        assert_eq!(
            next_action(&s, Some(&status)),
            Action::Suspend(UpgradeMode::Savepoint)
        );
        let suspended = deployed(&s, LifecycleState::Suspended);
        assert_eq!(next_action(&s, Some(&suspended)), Action::StaySuspended);
        s.job.state = DesiredJobState::Running;
        assert_eq!(
            next_action(&s, Some(&suspended)),
            Action::Deploy { resume: true }
        );
    }
}
