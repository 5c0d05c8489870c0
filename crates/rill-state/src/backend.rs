//! Which store keeps a job's keyed state.
//!
//! The choice is made once per job (Flink's `state.backend.type`) and handed
//! to every keyed operator subtask, which opens its own store with it. Both
//! backends write the same key-group format for savepoints, and either can
//! read the other's checkpoints, at any parallelism.

use std::path::PathBuf;

use crate::StateError;

/// Settings of the embedded RocksDB backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RocksDbOptions {
    /// Parent directory of the per-subtask databases (`state.backend.rocksdb.localdir`);
    /// the system temp directory when unset.
    pub local_dir: Option<PathBuf>,
    /// Whether checkpoints upload only the SST files that earlier completed
    /// checkpoints do not hold already (`state.backend.incremental`).
    pub incremental: bool,
}

/// Where keyed state lives while a job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateBackend {
    /// Objects in hash maps on the heap (`hashmap`, the default).
    #[default]
    HashMap,
    /// An embedded RocksDB per subtask on local disk (`rocksdb`).
    RocksDb(RocksDbOptions),
}

impl StateBackend {
    /// The backend named by `state.backend.type` (case-insensitive), with
    /// `state.backend.incremental` and `state.backend.rocksdb.localdir`.
    pub fn from_config(
        kind: &str,
        incremental: bool,
        local_dir: Option<&str>,
    ) -> Result<Self, StateError> {
        match kind.trim().to_ascii_lowercase().as_str() {
            "hashmap" if incremental => Err(StateError::Backend(
                "state.backend.incremental=true needs state.backend.type=rocksdb: the hashmap \
                 backend always writes full checkpoints; set it to false or use rocksdb"
                    .into(),
            )),
            "hashmap" => Ok(StateBackend::HashMap),
            "rocksdb" => Ok(StateBackend::RocksDb(RocksDbOptions {
                local_dir: local_dir
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
                incremental,
            })),
            other => Err(StateError::Backend(format!(
                "state.backend.type: unknown state backend '{other}' (expected hashmap or rocksdb)"
            ))),
        }
    }

    /// The configuration name of the backend.
    pub fn name(&self) -> &'static str {
        match self {
            StateBackend::HashMap => "hashmap",
            StateBackend::RocksDb(_) => "rocksdb",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!(
            StateBackend::from_config("hashmap", false, None).unwrap(),
            StateBackend::HashMap
        );
        assert_eq!(
            StateBackend::from_config(" RocksDB ", false, Some("/tmp/x")).unwrap(),
            StateBackend::RocksDb(RocksDbOptions {
                local_dir: Some(PathBuf::from("/tmp/x")),
                incremental: false,
            })
        );
        assert_eq!(
            StateBackend::from_config("rocksdb", false, Some("")).unwrap(),
            StateBackend::RocksDb(RocksDbOptions::default())
        );
        // Incremental checkpoints only concern RocksDB.
        let err = StateBackend::from_config("hashmap", true, None).unwrap_err();
        assert!(matches!(err, StateError::Backend(_)));
        assert!(
            err.to_string().contains("state.backend.incremental"),
            "{err}"
        );
        assert_eq!(
            StateBackend::from_config("rocksdb", true, None).unwrap(),
            StateBackend::RocksDb(RocksDbOptions {
                local_dir: None,
                incremental: true
            })
        );
        let err = StateBackend::from_config("filesystem", false, None).unwrap_err();
        assert!(matches!(err, StateError::Backend(_)));
        assert!(err.to_string().contains("filesystem"), "{err}");
    }
}
