//! Durable checkpoint and savepoint storage for Rill (DESIGN.md §6).
//!
//! This crate exists so that exactly one component decides where snapshot bytes go
//! and how they are verified on the way back: the checkpoint coordinator hands it
//! the per-subtask state of a finished checkpoint, and recovery asks it for the newest
//! snapshot that is provably intact. Storage goes through `object_store`: local
//! directories (`file://` or an absolute path) and S3-compatible stores
//! (`s3://bucket/prefix`, e.g. MinIO).
//!
//! Native RocksDB snapshots are uploaded either by [`CheckpointStorage::write`]
//! itself, when the coordinator shares a file system with the tasks (local
//! runs), or ahead of it by [`CheckpointStorage::stage_native`] in the
//! TaskManager that took them (clusters), see [`staged`].
//!
//! The API is synchronous because the runtime's callers are plain threads; a private
//! tokio runtime inside [`CheckpointStorage`] drives the I/O.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use rill_checkpoint::{CheckpointStorage, SnapshotKind, SubtaskState};
//!
//! let storage = CheckpointStorage::open("/var/lib/rill/checkpoints", &BTreeMap::new())?;
//! let part = SubtaskState {
//!     uid: "counter".into(),
//!     subtask: 0,
//!     parallelism: 1,
//!     max_parallelism: 128,
//!     keyed: vec![(7, b"state".to_vec())],
//!     operator: None,
//! };
//! let location = storage.write("job-1", 1, SnapshotKind::Checkpoint, vec![part])?;
//! let (snapshot, warnings) = storage.restore_point("job-1")?;
//! assert_eq!(snapshot.id, 1);
//! assert!(warnings.is_empty());
//! # let _ = location;
//! # Ok::<(), rill_checkpoint::CheckpointError>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod backend;
mod error;
pub mod format;
pub mod layout;
pub mod staged;
mod storage;

pub use error::{CheckpointError, Result};
pub use storage::{CheckpointStorage, WriteHandle, WriteStats};

/// Identifier of a checkpoint or savepoint within a job.
pub type CheckpointId = u64;

/// Whether a snapshot is a periodic checkpoint or a user-triggered savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Written under `<root>/<job-id>/chk-<n>`, subject to retention.
    Checkpoint,
    /// Written under `<root>/savepoints/…`, never deleted by this crate.
    Savepoint,
}

/// One subtask's share of one operator's state, as a task reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskState {
    /// Stable operator uid.
    pub uid: String,
    /// Index of the reporting subtask, `< parallelism`.
    pub subtask: usize,
    /// Parallelism of the operator when the snapshot was taken.
    pub parallelism: usize,
    /// Number of key groups of the operator.
    pub max_parallelism: usize,
    /// Keyed state, one blob per key group owned by this subtask.
    pub keyed: Vec<(usize, Vec<u8>)>,
    /// Operator (non-keyed) state of this subtask, e.g. source offsets.
    pub operator: Option<Vec<u8>>,
}

/// One operator's state in a complete snapshot, merged over its subtasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperatorSnapshot {
    pub parallelism: usize,
    pub max_parallelism: usize,
    /// Key group → blob.
    pub keyed: BTreeMap<usize, Vec<u8>>,
    /// Subtask → operator-state blob.
    pub operator: BTreeMap<usize, Vec<u8>>,
}

/// A complete, verified checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub job: String,
    /// Wall-clock time the snapshot was written (ms since the Unix epoch).
    pub created_ms: u64,
    /// Operator uid → merged state.
    pub operators: BTreeMap<String, OperatorSnapshot>,
}
