//! Native RocksDB checkpoints end to end on the local file system: a RocksDB
//! store hands its snapshot directory to `CheckpointStorage::write`, which
//! uploads the database files (all of them, or for incremental checkpoints the
//! new SST files only), and a store restores from what `read` hands back, at
//! the same or another parallelism. Also: retention of shared files, fallback
//! past a corrupt SST, savepoints in the portable format, and a million keys.

use std::collections::BTreeSet;

use rill_checkpoint::format::Metadata;
use rill_checkpoint::{layout, CheckpointStorage, SnapshotKind};
use rill_state::native::native_uid;
use rill_state::{KeyedStateStore, StateBackend};

#[path = "support/rocksdb_state.rs"]
mod rocksdb_state;
use rocksdb_state::*;

const JOB: &str = "native-job";

/// Native files checkpoint `id` uploaded itself (in its directory, or shared
/// files named after it).
fn uploaded_by(meta: &Metadata, id: u64) -> BTreeSet<String> {
    let own = format!("{}/", layout::checkpoint_dir(JOB, id));
    native_files(meta)
        .into_iter()
        .filter(|(_, path)| {
            path.starts_with(&own)
                || (layout::is_shared_path(JOB, path)
                    && layout::shared_file_checkpoint(path) == Some(id))
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn incremental_checkpoint_uploads_only_new_files() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), true);
    let all = range_of(1, 0);
    let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "inc").unwrap();

    fill(&mut store, all, 0..20_000, |k| k * 2);
    let p = native_part(&mut store, 1, 1, 0);
    let (chk1, stats1) = storage
        .write_with_stats(JOB, 1, SnapshotKind::Checkpoint, vec![p])
        .unwrap();
    let meta1 = storage.metadata(&chk1).unwrap();
    assert_eq!(meta1.format_version, 2);
    let ssts1 = ssts(&meta1);
    assert!(!ssts1.is_empty());
    assert_eq!(
        uploaded_by(&meta1, 1),
        native_files(&meta1).into_keys().collect()
    );
    assert_eq!(stats1.files_reused, 0);
    for path in native_files(&meta1).values() {
        let shared = layout::is_shared_path(JOB, path);
        assert_eq!(shared, path.ends_with(".sst"), "{path}");
    }

    // More keys, some changed: the second checkpoint adds new SST files.
    fill(&mut store, all, 20_000..30_000, |k| k * 2);
    fill(&mut store, all, 0..200, |k| k + 7);
    let p = native_part(&mut store, 2, 1, 0);
    let (chk2, stats2) = storage
        .write_with_stats(JOB, 2, SnapshotKind::Checkpoint, vec![p])
        .unwrap();
    let meta2 = storage.metadata(&chk2).unwrap();
    let ssts2 = ssts(&meta2);
    let new_ssts: BTreeSet<String> = ssts2.difference(&ssts1).cloned().collect();
    assert!(!new_ssts.is_empty());
    let uploaded2: BTreeSet<String> = uploaded_by(&meta2, 2)
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .collect();
    assert_eq!(uploaded2, new_ssts, "only SST files new since checkpoint 1");
    let kept: BTreeSet<&String> = ssts2.intersection(&ssts1).collect();
    assert_eq!(stats2.files_reused, kept.len());
    assert!(stats2.files_reused > 0);
    // The reused files are the very files checkpoint 1 uploaded.
    let files1 = native_files(&meta1);
    for (name, path) in native_files(&meta2) {
        if kept.contains(&name) {
            assert_eq!(files1[&name], path);
        }
    }
    // Bytes written: the new SST files plus the small private files.
    let new_bytes: u64 = meta2
        .operators
        .iter()
        .flat_map(|op| &op.files)
        .filter_map(|f| f.native.as_ref())
        .flat_map(|n| &n.files)
        .filter(|f| new_ssts.contains(&f.name))
        .map(|f| f.size)
        .sum();
    assert!(stats2.bytes_uploaded >= new_bytes);
    assert!(
        stats2.bytes_uploaded < stats1.bytes_uploaded,
        "second {} vs first {}",
        stats2.bytes_uploaded,
        stats1.bytes_uploaded
    );
    println!(
        "incremental: checkpoint 1 uploaded {} files / {} bytes; checkpoint 2 uploaded {} files / {} \
         bytes and reused {} files / {} bytes",
        stats1.files_uploaded,
        stats1.bytes_uploaded,
        stats2.files_uploaded,
        stats2.bytes_uploaded,
        stats2.files_reused,
        stats2.bytes_reused
    );
    // The uploader removed the local snapshot directories.
    assert_eq!(local_snapshots_left(local.path()), Vec::<String>::new());

    // Restoring the second checkpoint gives the full state, on either backend.
    let expected = |k: u64| if k < 200 { k + 7 } else { k * 2 };
    let mut restored = restore(&storage, &chk2, &backend, 1, 0);
    check(&mut restored, all, 0..30_000, expected);
    let mut heap = restore(&storage, &chk2, &StateBackend::HashMap, 1, 0);
    check(&mut heap, all, 0..30_000, expected);

    // A checkpoint of the restored store reuses the files it was restored from.
    fill(&mut restored, all, 30_000..30_100, |k| k * 2);
    let p = native_part(&mut restored, 3, 1, 0);
    let (chk3, stats3) = storage
        .write_with_stats(JOB, 3, SnapshotKind::Checkpoint, vec![p])
        .unwrap();
    let meta3 = storage.metadata(&chk3).unwrap();
    assert!(stats3.files_reused >= ssts2.len(), "{stats3:?}");
    assert!(ssts(&meta3).is_superset(&ssts2));
    let mut again = restore(&storage, &chk3, &backend, 1, 0);
    check(&mut again, all, 0..30_100, expected);
}

#[test]
fn full_native_checkpoints_keep_every_file_in_their_own_directory() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), false);
    let all = range_of(1, 0);
    let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "full").unwrap();
    fill(&mut store, all, 0..5_000, |k| k + 1);
    for id in 1..=2 {
        let p = native_part(&mut store, id, 1, 0);
        let (location, stats) = storage
            .write_with_stats(JOB, id, SnapshotKind::Checkpoint, vec![p])
            .unwrap();
        assert_eq!(stats.files_reused, 0);
        let meta = storage.metadata(&location).unwrap();
        let own = format!("{}/", layout::checkpoint_dir(JOB, id));
        assert!(!ssts(&meta).is_empty());
        assert!(native_files(&meta).values().all(|p| p.starts_with(&own)));
    }
    assert!(storage.shared_files(JOB).unwrap().is_empty());
    storage.retain(JOB, 1).unwrap();
    let location = storage.checkpoint_location(JOB, 2);
    check(
        &mut restore(&storage, &location, &backend, 1, 0),
        all,
        0..5_000,
        |k| k + 1,
    );
}

#[test]
fn retention_keeps_referenced_shared_files_and_deletes_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), true);
    let all = range_of(1, 0);
    let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "retain").unwrap();
    fill(&mut store, all, 0..10_000, |k| k);
    storage
        .write(
            JOB,
            1,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut store, 1, 1, 0)],
        )
        .unwrap();
    fill(&mut store, all, 10_000..12_000, |k| k);
    let chk2 = storage
        .write(
            JOB,
            2,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut store, 2, 1, 0)],
        )
        .unwrap();
    let meta2 = storage.metadata(&chk2).unwrap();
    let referenced2: BTreeSet<String> = native_files(&meta2)
        .into_values()
        .filter(|p| layout::is_shared_path(JOB, p))
        .collect();
    assert!(
        referenced2
            .iter()
            .any(|p| layout::shared_file_checkpoint(p) == Some(1)),
        "checkpoint 2 references files checkpoint 1 uploaded"
    );
    // An orphan of an older failed upload, and a file of a checkpoint that
    // may still be in progress.
    let orphan = format!("{}/op-0-dead/1-000001.sst", layout::shared_dir(JOB));
    let in_progress = format!("{}/op-0-dead/9-000002.sst", layout::shared_dir(JOB));
    for rel in [&orphan, &in_progress] {
        let path = root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    assert_eq!(storage.retain(JOB, 1).unwrap(), vec![1]);
    let shared: BTreeSet<String> = storage.shared_files(JOB).unwrap().into_iter().collect();
    let mut expected = referenced2.clone();
    expected.insert(in_progress.clone());
    assert_eq!(
        shared, expected,
        "kept exactly what checkpoint 2 references"
    );
    assert!(!root.path().join(&orphan).exists());
    check(
        &mut restore(&storage, &chk2, &backend, 1, 0),
        all,
        0..12_000,
        |k| k,
    );

    // A new database (e.g. after a restart) shares nothing with the old one:
    // once its checkpoint is the only one retained, the old files go.
    let mut fresh = KeyedStateStore::<u64>::open(&backend, MAX, "retain-2").unwrap();
    fill(&mut fresh, all, 0..3_000, |k| k + 1);
    let chk3 = storage
        .write(
            JOB,
            3,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut fresh, 3, 1, 0)],
        )
        .unwrap();
    assert_eq!(storage.retain(JOB, 2).unwrap(), Vec::<u64>::new());
    let shared: BTreeSet<String> = storage.shared_files(JOB).unwrap().into_iter().collect();
    assert!(
        shared.is_superset(&referenced2),
        "checkpoint 2 is still retained"
    );
    assert_eq!(storage.retain(JOB, 1).unwrap(), vec![2]);
    let shared: BTreeSet<String> = storage.shared_files(JOB).unwrap().into_iter().collect();
    let mut expected: BTreeSet<String> = native_files(&storage.metadata(&chk3).unwrap())
        .into_values()
        .filter(|p| layout::is_shared_path(JOB, p))
        .collect();
    expected.insert(in_progress);
    assert_eq!(shared, expected);
    check(
        &mut restore(&storage, &chk3, &backend, 1, 0),
        all,
        0..3_000,
        |k| k + 1,
    );
}

#[test]
fn a_corrupt_sst_falls_back_to_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), true);
    let all = range_of(1, 0);
    let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "corrupt").unwrap();
    fill(&mut store, all, 0..8_000, |k| k * 5);
    storage
        .write(
            JOB,
            1,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut store, 1, 1, 0)],
        )
        .unwrap();
    fill(&mut store, all, 8_000..9_000, |k| k * 5);
    let chk2 = storage
        .write(
            JOB,
            2,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut store, 2, 1, 0)],
        )
        .unwrap();
    let meta2 = storage.metadata(&chk2).unwrap();
    let (_, newest_sst) = native_files(&meta2)
        .into_iter()
        .find(|(name, path)| {
            name.ends_with(".sst") && layout::shared_file_checkpoint(path) == Some(2)
        })
        .expect("checkpoint 2 uploaded an SST");
    let path = root.path().join(&newest_sst);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let err = storage.read(&chk2).unwrap_err();
    assert!(err.is_snapshot_damage(), "{err}");
    let (snapshot, warnings) = storage.restore_point(JOB).unwrap();
    assert_eq!(snapshot.id, 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("chk-2") && warnings[0].contains("checksum"),
        "{warnings:?}"
    );
    let location = storage.checkpoint_location(JOB, 1);
    check(
        &mut restore(&storage, &location, &backend, 1, 0),
        all,
        0..8_000,
        |k| k * 5,
    );

    // A missing SST is damage as well.
    std::fs::remove_file(&path).unwrap();
    assert!(storage.read(&chk2).unwrap_err().is_snapshot_damage());
}

/// Writes one checkpoint of `keys` from `parallelism` RocksDB subtasks.
fn checkpoint_of(
    storage: &CheckpointStorage,
    backend: &StateBackend,
    parallelism: usize,
    id: u64,
    keys: u64,
    kind: SnapshotKind,
) -> String {
    let mut parts = Vec::new();
    for index in 0..parallelism {
        let range = range_of(parallelism, index);
        let mut store =
            KeyedStateStore::<u64>::open(backend, MAX, &format!("sub-{index}")).unwrap();
        fill(&mut store, range, 0..keys, |k| k * 11 + 1);
        parts.push(native_part(&mut store, id, parallelism, index));
    }
    storage.write(JOB, id, kind, parts).unwrap()
}

#[test]
fn native_checkpoints_restore_at_another_parallelism() {
    const KEYS: u64 = 40_000;
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    for incremental in [false, true] {
        let backend = rocksdb(local.path(), incremental);
        let id = if incremental { 2 } else { 1 };
        let location = checkpoint_of(&storage, &backend, 2, id, KEYS, SnapshotKind::Checkpoint);
        for parallelism in [1, 2, 3, 4] {
            let mut total = 0;
            for index in 0..parallelism {
                for target in [backend.clone(), StateBackend::HashMap] {
                    let mut store = restore(&storage, &location, &target, parallelism, index);
                    check(&mut store, range_of(parallelism, index), 0..KEYS, |k| {
                        k * 11 + 1
                    });
                    if target == StateBackend::HashMap {
                        total += store.entries("v");
                    }
                }
            }
            assert_eq!(total as u64, KEYS, "parallelism {parallelism}");
        }
    }
}

#[test]
fn savepoints_of_rocksdb_stores_are_portable_key_groups() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), true);
    let location = checkpoint_of(&storage, &backend, 2, 5, 6_000, SnapshotKind::Savepoint);
    assert!(location.contains("/savepoints/savepoint-"), "{location}");
    let meta = storage.metadata(&location).unwrap();
    assert_eq!(meta.format_version, 1, "no native files in a savepoint");
    assert!(native_files(&meta).is_empty());
    let snapshot = storage.read(&location).unwrap();
    let op = &snapshot.operators[&native_uid(UID)];
    assert!(op.operator.is_empty());
    assert!(op.keyed.len() > 100, "{} key groups", op.keyed.len());
    assert_eq!(local_snapshots_left(local.path()), Vec::<String>::new());
    for (target, parallelism) in [(StateBackend::HashMap, 3), (backend.clone(), 1)] {
        for index in 0..parallelism {
            let mut store = restore(&storage, &location, &target, parallelism, index);
            check(&mut store, range_of(parallelism, index), 0..6_000, |k| {
                k * 11 + 1
            });
        }
    }
    assert!(storage.shared_files(JOB).unwrap().is_empty());
}

#[test]
fn a_million_keys_checkpoint_natively_and_restore() {
    const KEYS: u64 = 1_000_000;
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let storage = open(root.path());
    let backend = rocksdb(local.path(), true);
    let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "million").unwrap();
    let v = value();
    for k in 0..KEYS {
        store.set_current_key(k);
        v.set(&mut store, k * 3 + 1);
    }
    let started = std::time::Instant::now();
    let (location, stats) = storage
        .write_with_stats(
            JOB,
            1,
            SnapshotKind::Checkpoint,
            vec![native_part(&mut store, 1, 1, 0)],
        )
        .unwrap();
    let took = started.elapsed();
    let started = std::time::Instant::now();
    let mut restored = restore(&storage, &location, &backend, 1, 0);
    let restore_took = started.elapsed();
    assert_eq!(restored.entries("v"), KEYS as usize);
    let mut k = 17u64;
    for _ in 0..20_000 {
        k = k
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
            % KEYS;
        restored.set_current_key(k);
        assert_eq!(v.get(&mut restored), Some(k * 3 + 1), "key {k}");
    }
    restored.set_current_key(KEYS);
    assert_eq!(v.get(&mut restored), None);
    assert_eq!(restored.take_failure().map(|e| e.to_string()), None);
    // Rescaled to two subtasks, the halves add up to every key.
    let halves: usize = (0..2)
        .map(|i| restore(&storage, &location, &backend, 2, i).entries("v"))
        .sum();
    assert_eq!(halves, KEYS as usize);
    println!(
        "1M keys, native checkpoint: {:.1} MiB in {} files, snapshot+upload {took:?}, restore {restore_took:?}",
        stats.bytes_uploaded as f64 / (1 << 20) as f64,
        stats.files_uploaded
    );
}
