//! Staged native snapshots: RocksDB files a TaskManager has already uploaded.
//!
//! In a cluster the task that made a native snapshot and the coordinator that
//! writes `_metadata` run in different processes, often on different machines,
//! so the coordinator cannot read the task's local snapshot directory. The
//! TaskManager therefore uploads the files itself, right after the barrier
//! (see [`CheckpointStorage::stage_native`](crate::CheckpointStorage::stage_native)),
//! to the very paths a local upload would have used, and replaces the local
//! handle with a [`StagedSnapshot`] naming those files. It is small: the
//! description `_metadata` will hold, plus where the files lie and which of
//! them this staging uploaded.
//!
//! The coordinator then only records the description (checkpoints) or
//! downloads and converts the files (savepoints, which must stay
//! self-contained), after which the files only the savepoint needed are
//! deleted again.
//!
//! The handle is a magic tag followed by a bincode encoding, like the handles
//! of `rill_state::native`, so it is never mistaken for another kind of blob.

use serde::{Deserialize, Serialize};

use crate::format::NativeMetadata;
use crate::CheckpointId;

const STAGED_MAGIC: &[u8; 8] = b"RILLRDS1";

/// A native snapshot whose files a TaskManager uploaded to checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSnapshot {
    /// URI of the storage root the paths are relative to.
    pub root: String,
    /// Job the files were staged for.
    pub job_id: String,
    /// Checkpoint (or savepoint) id of the barrier that made the snapshot.
    pub checkpoint: CheckpointId,
    /// Max parallelism of the operator.
    pub max_parallelism: usize,
    /// The snapshot exactly as `_metadata` records it: key groups, tables,
    /// and every file with its path, size and CRC32.
    pub native: NativeMetadata,
    /// Paths (relative to `root`) this staging uploaded; the other files of
    /// `native` were already kept by an earlier complete checkpoint.
    pub uploaded: Vec<String>,
}

impl StagedSnapshot {
    /// The tagged encoding carried as the subtask's operator state.
    pub fn encode(&self) -> Result<Vec<u8>, rill_state::StateError> {
        let mut out = STAGED_MAGIC.to_vec();
        rill_state::codec::encode_into(self, &mut out)?;
        Ok(out)
    }

    /// Decodes [`encode`](Self::encode)'s output; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.strip_prefix(&STAGED_MAGIC[..]) {
            Some(rest) => rill_state::codec::decode(rest)
                .map_err(|e| format!("staged RocksDB snapshot does not decode: {e}")),
            None => Err("not a staged RocksDB snapshot".to_string()),
        }
    }

    /// Whether `bytes` claim to be a staged snapshot (they may still be damaged).
    pub fn is_staged(bytes: &[u8]) -> bool {
        bytes.starts_with(STAGED_MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{NativeFileMetadata, NativeTableMetadata};

    #[test]
    fn staged_handles_round_trip_and_reject_other_bytes() {
        let staged = StagedSnapshot {
            root: "file:///ck".into(),
            job_id: "job".into(),
            checkpoint: 4,
            max_parallelism: 128,
            native: NativeMetadata {
                db_id: "00ff".into(),
                key_group_start: 0,
                key_group_end: 63,
                incremental: true,
                tables: vec![NativeTableMetadata {
                    name: "v".into(),
                    type_name: "u64".into(),
                    ttl_ms: None,
                }],
                files: vec![NativeFileMetadata {
                    name: "000009.sst".into(),
                    path: "job/shared/op-0-00ff/4-000009.sst".into(),
                    size: 10,
                    crc32: 7,
                }],
            },
            uploaded: vec!["job/shared/op-0-00ff/4-000009.sst".into()],
        };
        let bytes = staged.encode().expect("encodes");
        assert!(StagedSnapshot::is_staged(&bytes));
        assert_eq!(StagedSnapshot::decode(&bytes), Ok(staged));
        assert!(StagedSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(StagedSnapshot::decode(b"RILLRDL1xxxx").is_err());
        assert!(!StagedSnapshot::is_staged(b"RILL"));
    }
}
