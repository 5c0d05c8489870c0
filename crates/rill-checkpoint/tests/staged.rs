//! Native RocksDB snapshots staged by a "TaskManager" and written by a
//! "JobManager" that cannot see the TaskManager's disk.
//!
//! Each test stages with one `CheckpointStorage` (the TaskManager's, whose
//! RocksDB lives in its own local directory), then removes that local
//! directory entirely, and writes `_metadata` with another `CheckpointStorage`
//! on the same root (the JobManager's). Restores use a third local directory.
//! Covered: full and incremental checkpoints (the second uploads only new SST
//! files), savepoints converted from staged files into a separate savepoint
//! root, rescaling, fallback past a corrupt staged SST, and the removal of
//! files staged for checkpoints that never complete.

use std::collections::BTreeSet;
use std::path::Path;

use rill_checkpoint::staged::StagedSnapshot;
use rill_checkpoint::{layout, CheckpointStorage, SnapshotKind, SubtaskState};
use rill_state::{KeyedStateStore, StateBackend};

#[path = "support/rocksdb_state.rs"]
mod rocksdb_state;
use rocksdb_state::*;

const JOB: &str = "staged-job";

/// The TaskManager's share: snapshot subtask `index` natively for `id` and
/// stage it, checking the handle was replaced and the local snapshot removed.
fn staged_part(
    tm: &CheckpointStorage,
    store: &mut KeyedStateStore<u64>,
    local: &Path,
    id: u64,
    parallelism: usize,
    index: usize,
) -> (SubtaskState, rill_checkpoint::WriteStats) {
    let mut part = native_part(store, id, parallelism, index);
    let stats = tm.stage_native(JOB, id, &mut part).expect("stage");
    let handle = part.operator.as_deref().expect("a handle");
    assert!(StagedSnapshot::is_staged(handle), "the handle was replaced");
    assert_eq!(local_snapshots_left(local), Vec::<String>::new());
    (part, stats)
}

/// Drops the TaskManager's stores and deletes its local directory: nothing
/// the JobManager could read locally is left.
fn lose_taskmanager_disk(stores: Vec<KeyedStateStore<u64>>, local: tempfile::TempDir) {
    drop(stores);
    let path = local.path().to_path_buf();
    local
        .close()
        .expect("remove the TaskManager's local directory");
    assert!(!path.exists());
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn staged_full_checkpoints_restore_without_the_taskmanager_disk() {
    let root = tempfile::tempdir().unwrap();
    let tm_local = tempfile::tempdir().unwrap();
    let jm_local = tempfile::tempdir().unwrap();
    let (tm, jm) = (open(root.path()), open(root.path()));
    let all = range_of(1, 0);
    let mut store =
        KeyedStateStore::<u64>::open(&rocksdb(tm_local.path(), false), MAX, "full").unwrap();
    fill(&mut store, all, 0..5_000, |k| k + 1);
    let (part, staged) = staged_part(&tm, &mut store, tm_local.path(), 1, 1, 0);
    assert!(staged.files_uploaded > 0);
    assert_eq!(staged.files_reused, 0);
    lose_taskmanager_disk(vec![store], tm_local);

    let (location, stats) = jm
        .write_with_stats(JOB, 1, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    assert_eq!(stats.files_staged, staged.files_uploaded);
    assert_eq!(stats.bytes_staged, staged.bytes_uploaded);
    assert_eq!(stats.files_uploaded, 2, "one state file and `_metadata`");
    let meta = jm.metadata(&location).unwrap();
    assert_eq!(meta.format_version, 2);
    let own = format!("{}/", layout::checkpoint_dir(JOB, 1));
    assert!(!ssts(&meta).is_empty());
    assert!(native_files(&meta).values().all(|p| p.starts_with(&own)));

    for backend in [rocksdb(jm_local.path(), false), StateBackend::HashMap] {
        check(
            &mut restore(&jm, &location, &backend, 1, 0),
            all,
            0..5_000,
            |k| k + 1,
        );
    }
}

#[test]
fn staged_incremental_checkpoints_upload_only_new_files() {
    let root = tempfile::tempdir().unwrap();
    let tm_local = tempfile::tempdir().unwrap();
    let jm_local = tempfile::tempdir().unwrap();
    let (tm, jm) = (open(root.path()), open(root.path()));
    let all = range_of(1, 0);
    let mut store =
        KeyedStateStore::<u64>::open(&rocksdb(tm_local.path(), true), MAX, "inc").unwrap();

    fill(&mut store, all, 0..20_000, |k| k * 2);
    let (part, staged1) = staged_part(&tm, &mut store, tm_local.path(), 1, 1, 0);
    let chk1 = jm
        .write(JOB, 1, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    let meta1 = jm.metadata(&chk1).unwrap();
    let ssts1 = ssts(&meta1);
    assert!(!ssts1.is_empty());
    assert_eq!(staged1.files_reused, 0);

    fill(&mut store, all, 20_000..30_000, |k| k * 2);
    fill(&mut store, all, 0..200, |k| k + 7);
    let (part, staged2) = staged_part(&tm, &mut store, tm_local.path(), 2, 1, 0);
    lose_taskmanager_disk(vec![store], tm_local);
    let (chk2, stats2) = jm
        .write_with_stats(JOB, 2, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    let meta2 = jm.metadata(&chk2).unwrap();
    let ssts2 = ssts(&meta2);
    let new_ssts: BTreeSet<String> = ssts2.difference(&ssts1).cloned().collect();
    let kept: BTreeSet<String> = ssts2.intersection(&ssts1).cloned().collect();
    assert!(!new_ssts.is_empty() && !kept.is_empty());
    // The staging reused exactly the SST files checkpoint 1 holds, at the
    // paths checkpoint 1 recorded, and uploaded the new ones as checkpoint 2's.
    assert_eq!(staged2.files_reused, kept.len());
    assert_eq!(stats2.files_reused, kept.len());
    assert_eq!(stats2.files_staged, staged2.files_uploaded);
    let files1 = native_files(&meta1);
    for (name, path) in native_files(&meta2) {
        if kept.contains(&name) {
            assert_eq!(files1[&name], path);
        } else if new_ssts.contains(&name) {
            assert!(layout::is_shared_path(JOB, &path), "{path}");
            assert_eq!(layout::shared_file_checkpoint(&path), Some(2), "{path}");
        }
    }
    let new_bytes: u64 = meta2
        .operators
        .iter()
        .flat_map(|op| &op.files)
        .filter_map(|f| f.native.as_ref())
        .flat_map(|n| &n.files)
        .filter(|f| new_ssts.contains(&f.name))
        .map(|f| f.size)
        .sum();
    assert!(staged2.bytes_uploaded >= new_bytes);
    assert!(
        staged2.bytes_uploaded < staged1.bytes_uploaded,
        "second {} vs first {}",
        staged2.bytes_uploaded,
        staged1.bytes_uploaded
    );

    let expected = |k: u64| if k < 200 { k + 7 } else { k * 2 };
    for backend in [rocksdb(jm_local.path(), true), StateBackend::HashMap] {
        check(
            &mut restore(&jm, &chk2, &backend, 1, 0),
            all,
            0..30_000,
            expected,
        );
    }
    // Read through a storage opened at the job directory, as a restore from
    // the checkpoint's own path does: shared files are still found.
    let at_job = open(&root.path().join(JOB));
    check(
        &mut restore(&at_job, "chk-2", &StateBackend::HashMap, 1, 0),
        all,
        0..30_000,
        expected,
    );
    // Retention keeps what checkpoint 2 references.
    assert_eq!(jm.retain(JOB, 1).unwrap(), vec![1]);
    check(
        &mut restore(&jm, &chk2, &StateBackend::HashMap, 1, 0),
        all,
        0..30_000,
        expected,
    );
}

#[test]
fn savepoints_of_staged_snapshots_are_portable_and_drop_the_staged_files() {
    const KEYS: u64 = 6_000;
    let root = tempfile::tempdir().unwrap();
    let savepoints = tempfile::tempdir().unwrap();
    let tm_local = tempfile::tempdir().unwrap();
    let jm_local = tempfile::tempdir().unwrap();
    let tm = open(root.path());
    let jm = open(root.path());
    // Savepoints configured apart from checkpoints, as `state.savepoints.dir`.
    let jm_savepoints = open(savepoints.path());
    let backend = rocksdb(tm_local.path(), true);
    let mut stores: Vec<KeyedStateStore<u64>> = (0..2)
        .map(|i| KeyedStateStore::open(&backend, MAX, &format!("sub-{i}")).unwrap())
        .collect();

    // A complete checkpoint first, so the savepoint's staging reuses files.
    let mut parts = Vec::new();
    for (index, store) in stores.iter_mut().enumerate() {
        fill(store, range_of(2, index), 0..KEYS / 2, |k| k * 11 + 1);
        parts.push(staged_part(&tm, store, tm_local.path(), 1, 2, index).0);
    }
    let chk1 = jm.write(JOB, 1, SnapshotKind::Checkpoint, parts).unwrap();
    let before = files_under(root.path());

    let mut parts = Vec::new();
    let mut reused = 0;
    for (index, store) in stores.iter_mut().enumerate() {
        fill(store, range_of(2, index), KEYS / 2..KEYS, |k| k * 11 + 1);
        let (part, stats) = staged_part(&tm, store, tm_local.path(), 2, 2, index);
        reused += stats.files_reused;
        parts.push(part);
    }
    assert!(
        reused > 0,
        "the savepoint's staging reused checkpoint 1's files"
    );
    assert!(files_under(root.path()).len() > before.len());
    lose_taskmanager_disk(stores, tm_local);

    let location = jm_savepoints
        .write(JOB, 2, SnapshotKind::Savepoint, parts)
        .unwrap();
    assert!(location.contains("/savepoints/savepoint-"), "{location}");
    let meta = jm_savepoints.metadata(&location).unwrap();
    assert_eq!(meta.format_version, 1, "no native files in a savepoint");
    assert!(native_files(&meta).is_empty());
    // The files staged for the savepoint are gone; checkpoint 1's are not.
    assert_eq!(files_under(root.path()), before);
    assert!(!root.path().join(layout::checkpoint_dir(JOB, 2)).exists());

    for (target, parallelism) in [
        (StateBackend::HashMap, 3),
        (rocksdb(jm_local.path(), true), 1),
    ] {
        for index in 0..parallelism {
            let mut store = restore(&jm_savepoints, &location, &target, parallelism, index);
            check(&mut store, range_of(parallelism, index), 0..KEYS, |k| {
                k * 11 + 1
            });
        }
    }
    check(
        &mut restore(&jm, &chk1, &StateBackend::HashMap, 1, 0),
        range_of(1, 0),
        0..KEYS / 2,
        |k| k * 11 + 1,
    );
}

#[test]
fn staged_checkpoints_restore_at_another_parallelism() {
    const KEYS: u64 = 20_000;
    let root = tempfile::tempdir().unwrap();
    let jm_local = tempfile::tempdir().unwrap();
    let (tm, jm) = (open(root.path()), open(root.path()));
    for incremental in [false, true] {
        let tm_local = tempfile::tempdir().unwrap();
        let backend = rocksdb(tm_local.path(), incremental);
        let id = if incremental { 2 } else { 1 };
        let mut stores = Vec::new();
        let mut parts = Vec::new();
        for index in 0..2 {
            let mut store =
                KeyedStateStore::<u64>::open(&backend, MAX, &format!("sub-{index}")).unwrap();
            fill(&mut store, range_of(2, index), 0..KEYS, |k| k * 3);
            parts.push(staged_part(&tm, &mut store, tm_local.path(), id, 2, index).0);
            stores.push(store);
        }
        lose_taskmanager_disk(stores, tm_local);
        let location = jm.write(JOB, id, SnapshotKind::Checkpoint, parts).unwrap();
        for parallelism in [1, 3] {
            let mut total = 0;
            for index in 0..parallelism {
                for target in [rocksdb(jm_local.path(), incremental), StateBackend::HashMap] {
                    let heap = target == StateBackend::HashMap;
                    let mut store = restore(&jm, &location, &target, parallelism, index);
                    check(&mut store, range_of(parallelism, index), 0..KEYS, |k| k * 3);
                    if heap {
                        total += store.entries("v");
                    }
                }
            }
            assert_eq!(total as u64, KEYS, "parallelism {parallelism}");
        }
    }
}

#[test]
fn a_corrupt_staged_sst_falls_back_to_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let tm_local = tempfile::tempdir().unwrap();
    let jm_local = tempfile::tempdir().unwrap();
    let (tm, jm) = (open(root.path()), open(root.path()));
    let all = range_of(1, 0);
    let mut store =
        KeyedStateStore::<u64>::open(&rocksdb(tm_local.path(), true), MAX, "corrupt").unwrap();
    fill(&mut store, all, 0..8_000, |k| k * 5);
    let (part, _) = staged_part(&tm, &mut store, tm_local.path(), 1, 1, 0);
    jm.write(JOB, 1, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    fill(&mut store, all, 8_000..9_000, |k| k * 5);
    let (part, _) = staged_part(&tm, &mut store, tm_local.path(), 2, 1, 0);
    lose_taskmanager_disk(vec![store], tm_local);
    let chk2 = jm
        .write(JOB, 2, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    let meta2 = jm.metadata(&chk2).unwrap();
    let (_, newest_sst) = native_files(&meta2)
        .into_iter()
        .find(|(name, path)| {
            name.ends_with(".sst") && layout::shared_file_checkpoint(path) == Some(2)
        })
        .expect("checkpoint 2 staged an SST");
    let path = root.path().join(&newest_sst);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    assert!(jm.read(&chk2).unwrap_err().is_snapshot_damage());
    let (snapshot, warnings) = jm.restore_point(JOB).unwrap();
    assert_eq!(snapshot.id, 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("chk-2") && warnings[0].contains("checksum"),
        "{warnings:?}"
    );
    let location = jm.checkpoint_location(JOB, 1);
    check(
        &mut restore(&jm, &location, &rocksdb(jm_local.path(), true), 1, 0),
        all,
        0..8_000,
        |k| k * 5,
    );
    // A truncated one is damage as well.
    std::fs::write(&path, b"short").unwrap();
    let err = jm.read(&chk2).unwrap_err();
    assert!(err.is_snapshot_damage(), "{err}");
}

#[test]
fn files_staged_for_a_checkpoint_that_never_completes_are_removed_by_retention() {
    let root = tempfile::tempdir().unwrap();
    let tm_local = tempfile::tempdir().unwrap();
    let (tm, jm) = (open(root.path()), open(root.path()));
    let all = range_of(1, 0);
    let mut store =
        KeyedStateStore::<u64>::open(&rocksdb(tm_local.path(), true), MAX, "abandon").unwrap();
    fill(&mut store, all, 0..5_000, |k| k);
    let (part, _) = staged_part(&tm, &mut store, tm_local.path(), 1, 1, 0);
    jm.write(JOB, 1, SnapshotKind::Checkpoint, vec![part])
        .unwrap();

    // Checkpoint 2 is staged, then declined: `_metadata` is never written.
    fill(&mut store, all, 5_000..7_000, |k| k);
    let (abandoned, _) = staged_part(&tm, &mut store, tm_local.path(), 2, 1, 0);
    let handle = StagedSnapshot::decode(abandoned.operator.as_deref().unwrap()).unwrap();
    assert!(handle
        .uploaded
        .iter()
        .any(|p| layout::is_shared_path(JOB, p)));
    assert!(handle
        .uploaded
        .iter()
        .any(|p| !layout::is_shared_path(JOB, p)));
    for p in &handle.uploaded {
        assert!(root.path().join(p).is_file(), "{p}");
    }
    // A staged handle is only accepted for the checkpoint it was staged for.
    let err = jm
        .write(JOB, 3, SnapshotKind::Checkpoint, vec![abandoned])
        .unwrap_err();
    assert!(err.to_string().contains("staged for checkpoint 2"), "{err}");
    assert!(!root.path().join(layout::checkpoint_dir(JOB, 3)).exists());

    fill(&mut store, all, 7_000..8_000, |k| k);
    let (part, _) = staged_part(&tm, &mut store, tm_local.path(), 3, 1, 0);
    let chk3 = jm
        .write(JOB, 3, SnapshotKind::Checkpoint, vec![part])
        .unwrap();
    assert_eq!(jm.retain(JOB, 1).unwrap(), vec![1, 2]);
    for p in &handle.uploaded {
        assert!(!root.path().join(p).exists(), "{p} was removed");
    }
    assert!(!root.path().join(layout::checkpoint_dir(JOB, 2)).exists());
    let referenced: BTreeSet<String> = native_files(&jm.metadata(&chk3).unwrap())
        .into_values()
        .filter(|p| layout::is_shared_path(JOB, p))
        .collect();
    let shared: BTreeSet<String> = jm.shared_files(JOB).unwrap().into_iter().collect();
    assert_eq!(shared, referenced);
    check(
        &mut restore(&jm, &chk3, &StateBackend::HashMap, 1, 0),
        all,
        0..8_000,
        |k| k,
    );
}
