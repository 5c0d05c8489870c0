//! What operators put into a checkpoint and get back on restore.
//!
//! A barrier travels with the records. When it passes an operator, the
//! operator serialises its state into the task's [`SnapshotBuffer`]: keyed
//! state split by key group (so it can be redistributed to any parallelism up
//! to `maxParallelism`), and subtask-local operator state (source positions,
//! sink transactions, watermarks). The runtime ships the buffer to the
//! checkpoint coordinator; on restore, each subtask finds its share in
//! [`RestoredState`] through its [`SubtaskInfo`](crate::exec::SubtaskInfo).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use rill_state::StateBackend;

/// Checkpoint ids increase by one per triggered checkpoint.
pub type CheckpointId = u64;

/// One operator subtask's part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    /// Keyed state by key group.
    pub keyed: Vec<(usize, Vec<u8>)>,
    /// Subtask-local state.
    pub operator: Option<Vec<u8>>,
}

/// What a task's operators reported while a barrier passed.
#[derive(Debug)]
pub enum Snapshotted {
    State {
        checkpoint: CheckpointId,
        uid: String,
        subtask: usize,
        parallelism: usize,
        max_parallelism: usize,
        state: OperatorState,
    },
    /// Every operator of the task has passed barrier `id`.
    BarrierDone(CheckpointId),
    /// Snapshotting failed (the checkpoint is declined, the job goes on).
    Failed(CheckpointId, String),
}

/// Collects snapshots of the operators of one task.
#[derive(Debug, Clone, Default)]
pub struct SnapshotBuffer(Arc<Mutex<Vec<Snapshotted>>>);

impl SnapshotBuffer {
    pub fn put(&self, item: Snapshotted) {
        self.push(item);
    }

    pub fn done(&self, id: CheckpointId) {
        self.push(Snapshotted::BarrierDone(id));
    }

    pub fn failed(&self, id: CheckpointId, message: String) {
        self.push(Snapshotted::Failed(id, message));
    }

    fn push(&self, item: Snapshotted) {
        if let Ok(mut items) = self.0.lock() {
            items.push(item);
        }
    }

    /// Takes everything reported so far.
    pub fn drain(&self) -> Vec<Snapshotted> {
        self.0
            .lock()
            .map(|mut items| std::mem::take(&mut *items))
            .unwrap_or_default()
    }
}

/// One operator's state in a completed checkpoint, as the runtime loaded it.
#[derive(Debug, Clone, Default)]
pub struct RestoredOperator {
    pub parallelism: usize,
    pub max_parallelism: usize,
    /// Keyed state of every key group.
    pub keyed: BTreeMap<usize, Vec<u8>>,
    /// Operator state by the subtask index that wrote it.
    pub operator: BTreeMap<usize, Vec<u8>>,
}

/// The state a job restarts from.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    pub checkpoint: CheckpointId,
    pub operators: HashMap<String, RestoredOperator>,
}

/// What a subtask needs to take part in checkpoints.
#[derive(Debug, Clone, Default)]
pub struct CheckpointContext {
    /// Whether the job takes checkpoints (sinks then commit transactionally).
    pub enabled: bool,
    /// Where operators put their snapshots.
    pub snapshots: SnapshotBuffer,
    /// The state the job was restored from, if any.
    pub restored: Option<Arc<RestoredState>>,
    /// Where keyed operators keep their state (`state.backend.type`).
    pub state_backend: StateBackend,
}

impl CheckpointContext {
    /// The restored state of operator `uid`, if the job was restored and the
    /// snapshot holds that operator.
    pub fn operator(&self, uid: &str) -> Option<&RestoredOperator> {
        self.restored.as_ref()?.operators.get(uid)
    }
}

/// Keyed state blobs of operator `uid` for the key groups in `range`.
pub fn restored_key_groups(
    restored: Option<&RestoredOperator>,
    range: rill_state::KeyGroupRange,
) -> Vec<(usize, &[u8])> {
    restored
        .map(|op| {
            op.keyed
                .range(range.start..=range.end)
                .map(|(kg, blob)| (*kg, blob.as_slice()))
                .collect()
        })
        .unwrap_or_default()
}

/// The operator (non-keyed) states subtask `index` of `parallelism` takes
/// over: the states of the old subtasks `j` with `j % parallelism == index`.
/// With an unchanged parallelism that is exactly the subtask's own state.
pub fn restored_operator_states(
    restored: Option<&RestoredOperator>,
    index: usize,
    parallelism: usize,
) -> Vec<&[u8]> {
    restored
        .map(|op| {
            op.operator
                .iter()
                .filter(|(j, _)| *j % parallelism.max(1) == index)
                .map(|(_, blob)| blob.as_slice())
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes a snapshot blob, naming the operator when it is damaged.
pub fn decode_state<T: serde::de::DeserializeOwned>(uid: &str, bytes: &[u8]) -> Result<T> {
    rill_state::codec::decode(bytes)
        .map_err(|e| Error::Checkpoint(format!("operator '{uid}': {e}")))
}

/// Encodes a snapshot blob.
pub fn encode_state<T: Serialize + ?Sized>(uid: &str, value: &T) -> Result<Vec<u8>> {
    rill_state::codec::encode(value)
        .map_err(|e| Error::Checkpoint(format!("operator '{uid}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(parallelism: usize) -> RestoredOperator {
        RestoredOperator {
            parallelism,
            max_parallelism: 8,
            keyed: (0..8).map(|kg| (kg, vec![kg as u8])).collect(),
            operator: (0..parallelism).map(|j| (j, vec![j as u8])).collect(),
        }
    }

    #[test]
    fn key_groups_follow_the_new_range() {
        let op = operator(2);
        let range = rill_state::KeyGroupRange::for_subtask(8, 4, 1).unwrap();
        let groups: Vec<usize> = restored_key_groups(Some(&op), range)
            .into_iter()
            .map(|(kg, _)| kg)
            .collect();
        assert_eq!(groups, vec![2, 3]);
        assert!(restored_key_groups(None, range).is_empty());
    }

    #[test]
    fn operator_states_are_spread_round_robin() {
        let op = operator(4);
        assert_eq!(
            restored_operator_states(Some(&op), 0, 2),
            vec![&[0u8][..], &[2]]
        );
        assert_eq!(
            restored_operator_states(Some(&op), 1, 2),
            vec![&[1u8][..], &[3]]
        );
        assert_eq!(restored_operator_states(Some(&op), 3, 4), vec![&[3u8][..]]);
        assert!(restored_operator_states(Some(&operator(1)), 1, 2).is_empty());
    }

    #[test]
    fn damaged_blobs_are_errors() {
        let bytes = encode_state("op", &(1u64, "x".to_string())).unwrap();
        assert_eq!(
            decode_state::<(u64, String)>("op", &bytes).unwrap(),
            (1, "x".to_string())
        );
        let err = decode_state::<(u64, String)>("op", &bytes[..2]).unwrap_err();
        assert!(err.to_string().contains("op"), "{err}");
    }
}
