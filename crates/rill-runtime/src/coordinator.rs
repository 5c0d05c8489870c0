//! The checkpoint coordinator's bookkeeping: when to trigger, which task
//! acknowledgements are still missing, when a checkpoint has everything it
//! needs, and when it has taken too long.
//!
//! It holds no threads and does no I/O, so the protocol is unit tested on
//! its own; the executor feeds it task reports and the clock, writes the
//! completed snapshots, and tells the tasks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rill_api::checkpoint::{CheckpointId, Snapshotted};
use rill_api::{Configuration, Error};
use rill_checkpoint::{SnapshotKind, SubtaskState};

/// Periodic checkpointing, from `execution.checkpointing.*` and
/// `state.checkpoints.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub min_pause: Duration,
    pub max_concurrent: usize,
    pub retained: usize,
}

impl CheckpointSettings {
    /// `None` when `execution.checkpointing.interval` is not set.
    pub fn from_config(config: &Configuration) -> Result<Option<Self>, Error> {
        let Some(interval) = config.get_duration("execution.checkpointing.interval")? else {
            return Ok(None);
        };
        let mode = config
            .get("execution.checkpointing.mode")
            .unwrap_or("EXACTLY_ONCE");
        if !mode.eq_ignore_ascii_case("EXACTLY_ONCE") {
            return Err(Error::Config(format!(
                "execution.checkpointing.mode: '{mode}' is not supported; checkpoints align \
                 barriers (EXACTLY_ONCE)"
            )));
        }
        let number = |key: &str| -> Result<usize, Error> {
            config
                .get_parsed::<usize>(key)?
                .filter(|n| *n >= 1)
                .ok_or_else(|| Error::Config(format!("{key} must be at least 1")))
        };
        let duration = |key: &str| -> Result<Duration, Error> {
            Ok(config.get_duration(key)?.unwrap_or_default())
        };
        Ok(Some(Self {
            interval: interval.max(Duration::from_millis(10)),
            timeout: duration("execution.checkpointing.timeout")?,
            min_pause: duration("execution.checkpointing.min-pause")?,
            max_concurrent: number("execution.checkpointing.max-concurrent-checkpoints")?,
            retained: number("state.checkpoints.num-retained")?,
        }))
    }
}

/// A checkpoint or savepoint in flight.
#[derive(Debug)]
pub struct PendingSnapshot {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub started: Instant,
    /// Tasks whose barrier has not passed yet.
    waiting: usize,
    pub parts: Vec<SubtaskState>,
    declined: Option<String>,
}

/// What a report to the coordinator led to.
#[derive(Debug)]
pub enum Outcome {
    /// Every task acknowledged: the snapshot can be written.
    Ready(PendingSnapshot),
    /// The snapshot cannot complete.
    Declined {
        id: CheckpointId,
        kind: SnapshotKind,
        reason: String,
    },
}

/// Tracks triggers and acknowledgements of one running attempt of a job.
#[derive(Debug)]
pub struct Coordinator {
    settings: Option<CheckpointSettings>,
    tasks: usize,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, PendingSnapshot>,
    last_trigger: Option<Instant>,
    last_completion: Option<Instant>,
    /// Once a task has finished, barriers can no longer reach everything.
    open: bool,
}

impl Coordinator {
    /// `tasks` is the number of tasks that acknowledge each snapshot;
    /// `first_id` the id of the next snapshot.
    pub fn new(settings: Option<CheckpointSettings>, tasks: usize, first_id: CheckpointId) -> Self {
        Self {
            settings,
            tasks,
            next_id: first_id.max(1),
            pending: BTreeMap::new(),
            last_trigger: None,
            last_completion: None,
            open: true,
        }
    }

    pub fn next_id(&self) -> CheckpointId {
        self.next_id
    }

    /// Whether a periodic checkpoint should start now.
    pub fn due(&self, now: Instant) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        self.open
            && self.pending.len() < s.max_concurrent
            && self.last_trigger.is_none_or(|t| now >= t + s.interval)
            && self.last_completion.is_none_or(|t| now >= t + s.min_pause)
    }

    /// How long until something may be due (for the executor's wait).
    pub fn next_wakeup(&self, now: Instant) -> Duration {
        let Some(s) = &self.settings else {
            return Duration::from_millis(100);
        };
        let mut at = self.last_trigger.map_or(now, |t| t + s.interval);
        if let Some(c) = self.last_completion {
            at = at.max(c + s.min_pause);
        }
        for p in self.pending.values() {
            at = at.min(p.started + s.timeout);
        }
        at.saturating_duration_since(now)
            .clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    /// Starts a snapshot; `None` if barriers cannot reach every task any more.
    pub fn start(&mut self, kind: SnapshotKind, now: Instant) -> Option<CheckpointId> {
        if !self.open {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            PendingSnapshot {
                id,
                kind,
                started: now,
                waiting: self.tasks,
                parts: Vec::new(),
                declined: None,
            },
        );
        if kind == SnapshotKind::Checkpoint {
            self.last_trigger = Some(now);
        }
        Some(id)
    }

    /// A task reported part of a snapshot.
    pub fn report(&mut self, item: Snapshotted) -> Option<Outcome> {
        let id = match item {
            Snapshotted::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            } => {
                let p = self.pending.get_mut(&checkpoint)?;
                p.parts.push(SubtaskState {
                    uid,
                    subtask,
                    parallelism,
                    max_parallelism,
                    keyed: state.keyed,
                    operator: state.operator,
                });
                return None;
            }
            Snapshotted::Failed(id, reason) => {
                let p = self.pending.get_mut(&id)?;
                p.declined.get_or_insert(reason);
                return None;
            }
            Snapshotted::BarrierDone(id) => id,
        };
        let p = self.pending.get_mut(&id)?;
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting > 0 {
            return None;
        }
        let p = self.pending.remove(&id)?;
        Some(match p.declined {
            Some(reason) => Outcome::Declined {
                id,
                kind: p.kind,
                reason,
            },
            None => Outcome::Ready(p),
        })
    }

    /// A snapshot was written (or failed to be); the pause starts now.
    pub fn finished_writing(&mut self, now: Instant) {
        self.last_completion = Some(now);
    }

    /// Snapshots that took longer than the timeout, now aborted.
    pub fn expire(&mut self, now: Instant) -> Vec<Outcome> {
        let Some(timeout) = self.settings.as_ref().map(|s| s.timeout) else {
            return Vec::new();
        };
        let late: Vec<CheckpointId> = self
            .pending
            .values()
            .filter(|p| timeout > Duration::ZERO && now.duration_since(p.started) > timeout)
            .map(|p| p.id)
            .collect();
        late.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| Outcome::Declined {
                id: p.id,
                kind: p.kind,
                reason: format!("expired after {timeout:?}"),
            })
            .collect()
    }

    /// A task finished: no later barrier can pass it, so pending snapshots
    /// are aborted and no more are started.
    pub fn task_finished(&mut self) -> Vec<Outcome> {
        self.open = false;
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| Outcome::Declined {
                id: p.id,
                kind: p.kind,
                reason: "a task finished before its barrier passed".into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_api::checkpoint::OperatorState;

    fn settings() -> CheckpointSettings {
        CheckpointSettings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            min_pause: Duration::from_millis(50),
            max_concurrent: 1,
            retained: 1,
        }
    }

    fn state(checkpoint: CheckpointId, subtask: usize) -> Snapshotted {
        Snapshotted::State {
            checkpoint,
            uid: "op".into(),
            subtask,
            parallelism: 2,
            max_parallelism: 128,
            state: OperatorState {
                keyed: vec![(subtask, vec![1])],
                operator: None,
            },
        }
    }

    #[test]
    fn completes_after_every_task_acknowledged() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(Some(settings()), 2, 5);
        assert!(c.due(t0));
        assert_eq!(c.start(SnapshotKind::Checkpoint, t0), Some(5));
        assert!(
            !c.due(t0 + Duration::from_millis(200)),
            "one in flight at most"
        );
        assert!(c.report(state(5, 0)).is_none());
        assert!(c.report(Snapshotted::BarrierDone(5)).is_none());
        assert!(c.report(state(5, 1)).is_none());
        assert!(c.report(state(4, 1)).is_none(), "stale reports are ignored");
        match c.report(Snapshotted::BarrierDone(5)) {
            Some(Outcome::Ready(p)) => {
                assert_eq!(p.id, 5);
                assert_eq!(p.parts.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        c.finished_writing(t0 + Duration::from_millis(120));
        assert!(!c.due(t0 + Duration::from_millis(150)), "min pause");
        assert!(c.due(t0 + Duration::from_millis(170)));
    }

    #[test]
    fn declines_expires_and_stops_after_a_task_finished() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(Some(settings()), 1, 1);
        let id = c.start(SnapshotKind::Checkpoint, t0).unwrap();
        c.report(Snapshotted::Failed(id, "disk full".into()));
        assert!(matches!(
            c.report(Snapshotted::BarrierDone(id)),
            Some(Outcome::Declined { reason, .. }) if reason == "disk full"
        ));
        let id = c.start(SnapshotKind::Checkpoint, t0).unwrap();
        assert!(c.expire(t0 + Duration::from_millis(500)).is_empty());
        let expired = c.expire(t0 + Duration::from_secs(2));
        assert!(matches!(expired.as_slice(), [Outcome::Declined { id: e, .. }] if *e == id));
        c.start(SnapshotKind::Savepoint, t0).unwrap();
        assert_eq!(c.task_finished().len(), 1);
        assert_eq!(c.start(SnapshotKind::Checkpoint, t0), None);
        assert!(!c.due(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn settings_come_from_flink_keys() {
        let mut config = Configuration::new();
        assert_eq!(CheckpointSettings::from_config(&config).unwrap(), None);
        config
            .set("execution.checkpointing.interval", "2 s")
            .unwrap();
        config.set("state.checkpoints.num-retained", "3").unwrap();
        let s = CheckpointSettings::from_config(&config).unwrap().unwrap();
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.retained, 3);
        assert_eq!(s.timeout, Duration::from_secs(600));
        config.set("state.checkpoints.num-retained", "0").unwrap();
        assert!(CheckpointSettings::from_config(&config).is_err());
    }
}
