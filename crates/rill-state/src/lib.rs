//! Keyed state for Rill.
//!
//! State is what makes a stream job more than a pipe of functions, so it sits
//! below every other crate. Two ideas live here:
//!
//! * **Key groups** ([`key_group`]): every key hashes into one of
//!   `maxParallelism` key groups, and every parallel subtask owns a contiguous
//!   range of them. Routing, state ownership and (later) state redistribution on
//!   rescale all follow from that one stable function.
//! * **State handles** ([`keyed`]): functions declare their state up front as
//!   named handles (`ValueState`, `ListState`, `MapState`, `ReducingState`,
//!   `AggregatingState`, optionally with a TTL) and read or write them for the
//!   key currently being processed through a [`KeyedStateStore`].
//! * **Backends** ([`backend`]): a store keeps its tables on the heap or in an
//!   embedded RocksDB ([`rocks`]), chosen per job; both write one portable
//!   key-group snapshot format, so savepoints move freely between them.
//!   RocksDB checkpoints are native instead ([`native`]): the database's own
//!   files, uploaded whole or, incrementally, only the ones that are new.

pub mod aggregate;
pub mod backend;
pub mod codec;
pub mod key_group;
pub mod keyed;
pub mod native;
pub mod rocks;

pub use aggregate::AggregateFunction;
pub use backend::{RocksDbOptions, StateBackend};
pub use key_group::{hash_key, KeyGroupRange};
pub use keyed::{
    AggregatingState, KeyedStateStore, ListState, MapState, NativeSnapshotParts, ReducingState,
    StateAccess, StateKey, StateTtl, StateValue, ValueState,
};

/// Errors raised by the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Two handles with one name but different value types were used on one store.
    #[error("state '{name}' is registered as {existing} but was accessed as {requested}")]
    TypeMismatch {
        name: String,
        existing: &'static str,
        requested: &'static str,
    },
    /// `maxParallelism` / parallelism combination that cannot be served.
    #[error("invalid key-group configuration: {0}")]
    InvalidKeyGroups(String),
    /// State could not be serialised.
    #[error("cannot encode state: {0}")]
    Encode(String),
    /// Stored state does not decode (damaged or written by another type).
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The configured state backend is unknown or cannot be used as configured.
    #[error("state backend: {0}")]
    Backend(String),
    /// The local state storage (RocksDB or its directory) failed.
    #[error("state storage: {0}")]
    Storage(String),
}
