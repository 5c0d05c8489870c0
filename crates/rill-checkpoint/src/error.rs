//! The single error type of the crate, so callers can tell a missing or corrupt
//! snapshot (fall back to an older one) from a storage outage or a caller bug.

/// Everything that can go wrong while storing or restoring snapshots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The storage URI could not be parsed or is not usable.
    #[error("invalid checkpoint storage URI `{uri}`: {reason}")]
    InvalidUri { uri: String, reason: String },

    /// The URI's scheme is not one this crate can store to.
    #[error(
        "unsupported checkpoint storage scheme `{scheme}` in `{uri}` \
         (supported: file://, s3://, s3a://, or an absolute path)"
    )]
    UnsupportedScheme { scheme: String, uri: String },

    /// A configuration option has a value that cannot be used.
    #[error("invalid checkpoint storage option `{key}`: {reason}")]
    InvalidOption { key: String, reason: String },

    /// A job id that cannot be used as a directory name.
    #[error("invalid job id `{job_id}`: {reason}")]
    InvalidJobId { job_id: String, reason: String },

    /// The subtask states handed to `write` do not form one consistent snapshot.
    #[error("inconsistent state for operator `{uid}`: {reason}")]
    InconsistentParts { uid: String, reason: String },

    /// A complete snapshot with this id already exists.
    #[error("snapshot {location} already exists (it has a `_metadata`)")]
    AlreadyExists { location: String },

    /// A location that does not lie under this storage's root.
    #[error("location `{location}` is not under the checkpoint storage root `{root}`")]
    OutsideRoot { location: String, root: String },

    /// The location is syntactically unusable (e.g. contains `..`).
    #[error("invalid snapshot location `{location}`: {reason}")]
    InvalidLocation { location: String, reason: String },

    /// The snapshot directory has no `_metadata`: it was never completed.
    #[error("snapshot {location} is incomplete: `_metadata` is missing")]
    MissingMetadata { location: String },

    /// `_metadata` exists but cannot be decoded or is self-inconsistent.
    #[error("snapshot {location} has corrupt `_metadata`: {reason}")]
    CorruptMetadata { location: String, reason: String },

    /// `_metadata` was written by a newer (or unknown) format.
    #[error("snapshot {location} has metadata format version {found}, this build reads version {supported}")]
    UnsupportedFormatVersion {
        location: String,
        found: u32,
        supported: u32,
    },

    /// A state file listed in `_metadata` does not exist.
    #[error("snapshot {location} is missing state file `{file}`")]
    MissingStateFile { location: String, file: String },

    /// A state file has a different size than `_metadata` records.
    #[error("snapshot {location}: state file `{file}` has {actual} bytes, `_metadata` records {expected}")]
    SizeMismatch {
        location: String,
        file: String,
        expected: u64,
        actual: u64,
    },

    /// A state file's checksum does not match `_metadata`.
    #[error("snapshot {location}: state file `{file}` has checksum {actual:08x}, `_metadata` records {expected:08x}")]
    ChecksumMismatch {
        location: String,
        file: String,
        expected: u32,
        actual: u32,
    },

    /// A state file passed its checksum but its contents cannot be decoded or do not
    /// match what `_metadata` says it holds.
    #[error("snapshot {location}: state file `{file}` is corrupt: {reason}")]
    CorruptStateFile {
        location: String,
        file: String,
        reason: String,
    },

    /// No complete snapshot could be found at a restore location.
    #[error("nothing restorable at {location}: {reason}")]
    NothingRestorable { location: String, reason: String },

    /// The underlying object store failed (I/O, network, permissions, …).
    #[error("storage operation `{op}` on `{path}` failed: {source}")]
    Storage {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// Local file-system preparation (creating the root directory) failed.
    #[error("cannot prepare local checkpoint directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The private I/O runtime could not be started.
    #[error("cannot start the checkpoint storage runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// A local native snapshot handed over for upload cannot be used (its directory
    /// is gone or its files differ from what the subtask reported).
    #[error("local RocksDB snapshot {path}: {reason}")]
    LocalSnapshot { path: String, reason: String },

    /// A background write (see `CheckpointStorage::write_async`) panicked.
    #[error("background checkpoint write panicked: {0}")]
    BackgroundWritePanicked(String),
}

impl CheckpointError {
    /// True when the error says the snapshot itself is unusable (missing or corrupt
    /// pieces), as opposed to a storage outage or a caller mistake. Restoring falls
    /// back to an older checkpoint only for these.
    pub fn is_snapshot_damage(&self) -> bool {
        matches!(
            self,
            CheckpointError::MissingMetadata { .. }
                | CheckpointError::CorruptMetadata { .. }
                | CheckpointError::UnsupportedFormatVersion { .. }
                | CheckpointError::MissingStateFile { .. }
                | CheckpointError::SizeMismatch { .. }
                | CheckpointError::ChecksumMismatch { .. }
                | CheckpointError::CorruptStateFile { .. }
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
