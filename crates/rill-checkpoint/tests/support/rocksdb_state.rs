//! What the native RocksDB checkpoint tests share: one operator's keyed
//! `ValueState<u64>` ("v" = f(key)) in RocksDB stores, its native snapshot
//! parts, restores at any parallelism, and checks of what a store holds.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rill_checkpoint::format::Metadata;
use rill_checkpoint::{CheckpointStorage, SubtaskState};
use rill_state::native::native_uid;
use rill_state::{KeyGroupRange, KeyedStateStore, RocksDbOptions, StateBackend, ValueState};

pub const UID: &str = "counter";
pub const MAX: usize = 128;

pub fn open(dir: &Path) -> CheckpointStorage {
    CheckpointStorage::open(dir.to_str().expect("utf8 tempdir"), &BTreeMap::new())
        .expect("open local storage")
}

pub fn rocksdb(local: &Path, incremental: bool) -> StateBackend {
    StateBackend::RocksDb(RocksDbOptions {
        local_dir: Some(local.to_path_buf()),
        incremental,
    })
}

pub fn value() -> ValueState<u64> {
    ValueState::new("v")
}

pub fn range_of(parallelism: usize, index: usize) -> KeyGroupRange {
    KeyGroupRange::for_subtask(MAX, parallelism, index).expect("range")
}

pub fn owns(range: KeyGroupRange, key: u64) -> bool {
    let kg = rill_state::key_group::key_group_for_hash(rill_state::hash_key(&key), MAX);
    (range.start..=range.end).contains(&kg)
}

/// Sets `v = f(k)` for every key in `keys` the store's range owns.
pub fn fill(
    store: &mut KeyedStateStore<u64>,
    range: KeyGroupRange,
    keys: std::ops::Range<u64>,
    f: impl Fn(u64) -> u64,
) {
    let v = value();
    for k in keys.filter(|k| owns(range, *k)) {
        store.set_current_key(k);
        v.set(store, f(k));
    }
    assert_eq!(store.take_failure().map(|e| e.to_string()), None);
}

/// The native part of subtask `index` of `parallelism` for checkpoint `id`.
pub fn native_part(
    store: &mut KeyedStateStore<u64>,
    id: u64,
    parallelism: usize,
    index: usize,
) -> SubtaskState {
    let native = store
        .native_snapshot(id, range_of(parallelism, index))
        .expect("native snapshot")
        .expect("a RocksDB store snapshots natively");
    SubtaskState {
        uid: native_uid(UID),
        subtask: index,
        parallelism,
        max_parallelism: MAX,
        keyed: native.pending,
        operator: Some(native.handle),
    }
}

/// A store for subtask `index` of `parallelism` restored from `location`.
pub fn restore(
    storage: &CheckpointStorage,
    location: &str,
    backend: &StateBackend,
    parallelism: usize,
    index: usize,
) -> KeyedStateStore<u64> {
    let snapshot = storage.read(location).expect("read");
    let op = &snapshot.operators[&native_uid(UID)];
    let range = range_of(parallelism, index);
    let mut store =
        KeyedStateStore::open(backend, MAX, &format!("restored-{index}")).expect("open store");
    let blobs: Vec<&[u8]> = op.operator.values().map(Vec::as_slice).collect();
    store.restore_native(&blobs, range).expect("restore native");
    for (kg, blob) in op.keyed.range(range.start..=range.end) {
        store.restore(*kg, blob).expect("restore key group");
    }
    store
}

/// Checks that `store` holds exactly `v = f(k)` for the keys of `keys` in its
/// range, and nothing for other keys or for the next 100 keys.
pub fn check(
    store: &mut KeyedStateStore<u64>,
    range: KeyGroupRange,
    keys: std::ops::Range<u64>,
    f: impl Fn(u64) -> u64,
) {
    let v = value();
    let mut owned = 0;
    for k in keys.start..keys.end + 100 {
        store.set_current_key(k);
        let got = v.get(store);
        if k >= keys.end {
            assert_eq!(got, None, "key {k} was never written");
        } else if owns(range, k) {
            owned += 1;
            assert_eq!(got, Some(f(k)), "key {k}");
        } else {
            assert_eq!(got, None, "key {k} belongs to another subtask");
        }
    }
    assert_eq!(store.entries("v"), owned, "entries in {range:?}");
    assert_eq!(store.take_failure().map(|e| e.to_string()), None);
}

/// (file name → path) of every native file of a checkpoint.
pub fn native_files(meta: &Metadata) -> BTreeMap<String, String> {
    meta.operators
        .iter()
        .flat_map(|op| &op.files)
        .filter_map(|f| f.native.as_ref())
        .flat_map(|n| n.files.iter().map(|f| (f.name.clone(), f.path.clone())))
        .collect()
}

pub fn ssts(meta: &Metadata) -> BTreeSet<String> {
    native_files(meta)
        .into_keys()
        .filter(|n| n.ends_with(".sst"))
        .collect()
}

/// Local RocksDB snapshot directories (`*.chk-*`) still on disk.
pub fn local_snapshots_left(local: &Path) -> Vec<String> {
    std::fs::read_dir(local)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.contains(".chk-"))
                .collect()
        })
        .unwrap_or_default()
}
