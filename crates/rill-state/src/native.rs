//! Native RocksDB snapshots: the hand-over between a RocksDB store, the
//! checkpoint uploader and a restoring store.
//!
//! Iterating a large database into the key-group format at every barrier
//! costs time proportional to the whole state, and so does uploading it. A
//! native snapshot instead asks RocksDB for a checkpoint (hard links of the
//! immutable SST files plus a copy of the small MANIFEST, CURRENT and OPTIONS
//! files) in a directory next to the database, and hands that directory to
//! the uploader, which runs off the task thread. Because SST files never
//! change once written, an incremental checkpoint only uploads the files that
//! a previous completed checkpoint did not already hold.
//!
//! Three shapes travel between the crates, each a magic tag followed by a
//! bincode encoding, so that a blob of another kind is recognised as such:
//!
//! * [`LocalSnapshot`] — what a store reports at a barrier: the local
//!   directory, its files and what they hold (database id, key-group range,
//!   tables). The uploader owns the directory from then on and removes it.
//! * [`RestoredSnapshot`] — what checkpoint storage hands back on restore:
//!   the verified file contents, and for each file already kept in shared
//!   storage where it lies, so the next incremental checkpoint can refer to
//!   it instead of uploading it again.
//! * Key-group blobs ([`key_group_blobs`]) — the portable format of the heap
//!   backend, made from a snapshot directory for savepoints (which must stay
//!   self-contained and restorable on either backend) and for restoring a
//!   native checkpoint into a heap store.
//!
//! A native snapshot travels as the operator state of a companion operator
//! uid, the keyed operator's uid followed by [`NATIVE_UID_SUFFIX`], so the
//! runtime moves it like any other state and every restoring subtask sees the
//! snapshots of all old subtasks (each with its key-group range) to pick the
//! ones that overlap its own range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{codec, KeyGroupRange, StateError};

/// Suffix of the operator uid under which a keyed operator reports its native
/// RocksDB snapshot (the operator's own uid keeps its timers and other state).
pub const NATIVE_UID_SUFFIX: &str = "#rocksdb";

const LOCAL_MAGIC: &[u8; 8] = b"RILLRDL1";
const RESTORED_MAGIC: &[u8; 8] = b"RILLRDR1";

/// A state table (column family) of a native snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The state name (the column family is `state/<name>`).
    pub name: String,
    /// The value type the table was written with, for people reading metadata.
    pub type_name: String,
    /// The TTL of the table, if any, so that unbound restored tables still expire.
    pub ttl_ms: Option<i64>,
}

/// A file already kept in checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Path relative to the checkpoint storage root.
    pub path: String,
    pub size: u64,
    pub crc32: u32,
}

/// One file of a local snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    /// File name inside the snapshot directory (e.g. `000012.sst`, `CURRENT`).
    pub name: String,
    pub size: u64,
    /// Where an identical file already is in shared checkpoint storage: set
    /// for SST files the database was restored from.
    pub uploaded: Option<RemoteFile>,
}

/// What a RocksDB store hands to the uploader at a barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSnapshot {
    /// Identity of the database instance: unique per opened store, so an SST
    /// file is identified by this id and its name.
    pub db_id: String,
    pub checkpoint: u64,
    pub max_parallelism: usize,
    /// The key groups the subtask owns; the database holds no others.
    pub key_groups: KeyGroupRange,
    /// Whether SST files may be shared with earlier checkpoints.
    pub incremental: bool,
    pub tables: Vec<TableInfo>,
    /// The local checkpoint directory (hard links into the database).
    pub dir: PathBuf,
    pub files: Vec<LocalFile>,
}

/// One file of a native snapshot read back from checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFile {
    pub name: String,
    /// Where the file lies in shared storage (SST files of incremental checkpoints).
    pub shared: Option<RemoteFile>,
    pub bytes: Vec<u8>,
}

/// A native snapshot as checkpoint storage hands it back (files verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredSnapshot {
    pub db_id: String,
    pub max_parallelism: usize,
    pub key_groups: KeyGroupRange,
    pub tables: Vec<TableInfo>,
    pub files: Vec<RestoredFile>,
}

fn encode_tagged<T: Serialize>(magic: &[u8; 8], value: &T) -> Result<Vec<u8>, StateError> {
    let mut out = magic.to_vec();
    codec::encode_into(value, &mut out)?;
    Ok(out)
}

fn decode_tagged<T: serde::de::DeserializeOwned>(
    magic: &[u8; 8],
    what: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    match bytes.strip_prefix(&magic[..]) {
        Some(rest) => codec::decode(rest)
            .map_err(|e| StateError::Corrupt(format!("{what} does not decode: {e}"))),
        None => Err(StateError::Corrupt(format!("not a {what}"))),
    }
}

impl LocalSnapshot {
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        encode_tagged(LOCAL_MAGIC, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        decode_tagged(LOCAL_MAGIC, "local RocksDB snapshot", bytes)
    }

    /// Whether `bytes` claim to be a local snapshot (they may still be damaged).
    pub fn is_local_snapshot(bytes: &[u8]) -> bool {
        bytes.starts_with(LOCAL_MAGIC)
    }

    /// Whether a file is an SST file: immutable and uniquely named within
    /// its database, so it can be shared between checkpoints.
    pub fn is_shareable(name: &str) -> bool {
        name.ends_with(".sst")
    }
}

impl RestoredSnapshot {
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        encode_tagged(RESTORED_MAGIC, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        decode_tagged(RESTORED_MAGIC, "restored RocksDB snapshot", bytes)
    }
}

/// The uid under which operator `uid` reports its native snapshot.
pub fn native_uid(uid: &str) -> String {
    format!("{uid}{NATIVE_UID_SUFFIX}")
}

/// Removes a local snapshot directory; a directory already gone is fine.
pub fn remove_local_dir(dir: &Path) -> Result<(), StateError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::Storage(format!(
            "removing the local snapshot {}: {e}",
            dir.display()
        ))),
    }
}

/// The state of a snapshot directory in the portable key-group format (one
/// blob per key group, as [`KeyedStateStore::snapshot`](crate::KeyedStateStore::snapshot)
/// writes it), limited to `range` when given. Expired entries are kept: the
/// restoring store drops them on access.
pub fn key_group_blobs(
    dir: &Path,
    max_parallelism: usize,
    tables: &[TableInfo],
    range: Option<KeyGroupRange>,
) -> Result<Vec<(usize, Vec<u8>)>, StateError> {
    crate::rocks::key_group_blobs_of_dir(dir, max_parallelism, tables, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_other_bytes() {
        let local = LocalSnapshot {
            db_id: "abc".into(),
            checkpoint: 3,
            max_parallelism: 128,
            key_groups: KeyGroupRange { start: 0, end: 63 },
            incremental: true,
            tables: vec![TableInfo {
                name: "count".into(),
                type_name: "u64".into(),
                ttl_ms: Some(5),
            }],
            dir: PathBuf::from("/tmp/x"),
            files: vec![LocalFile {
                name: "000009.sst".into(),
                size: 10,
                uploaded: None,
            }],
        };
        let bytes = local.encode().unwrap();
        assert!(LocalSnapshot::is_local_snapshot(&bytes));
        assert_eq!(LocalSnapshot::decode(&bytes).unwrap(), local);
        assert!(LocalSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(RestoredSnapshot::decode(&bytes).is_err());
        assert!(!LocalSnapshot::is_local_snapshot(b"RILL"));
        assert!(LocalSnapshot::is_shareable("000009.sst"));
        assert!(!LocalSnapshot::is_shareable("MANIFEST-000005"));
        assert_eq!(native_uid("op"), "op#rocksdb");
    }
}
