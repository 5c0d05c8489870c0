//! End-to-end behaviour of `CheckpointStorage` on the local file system: round trips,
//! retention, fallback past damaged checkpoints, savepoints and input validation.
//! These run against real directories (tempdir), the default deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rill_checkpoint::{
    CheckpointError, CheckpointStorage, OperatorSnapshot, Snapshot, SnapshotKind, SubtaskState,
};

const JOB: &str = "job-7f3a";
const SOURCE_UID: &str = "Source: kafka/orders#1";

fn open(dir: &Path) -> CheckpointStorage {
    CheckpointStorage::open(dir.to_str().expect("utf8 tempdir"), &BTreeMap::new())
        .expect("open local storage")
}

/// A two-operator job: a keyed `counter` at parallelism 2 over 8 key groups, and a
/// source with operator state at parallelism 2. Contents depend on `id`.
fn parts(id: u64) -> Vec<SubtaskState> {
    let mut out = Vec::new();
    for subtask in 0..2usize {
        out.push(SubtaskState {
            uid: "counter".into(),
            subtask,
            parallelism: 2,
            max_parallelism: 8,
            keyed: (subtask * 4..subtask * 4 + 4)
                .map(|kg| (kg, format!("id{id}-kg{kg}").into_bytes()))
                .collect(),
            operator: None,
        });
        out.push(SubtaskState {
            uid: SOURCE_UID.into(),
            subtask,
            parallelism: 2,
            max_parallelism: 128,
            keyed: vec![],
            operator: Some(format!("offset-{}", id * 100 + subtask as u64).into_bytes()),
        });
    }
    out
}

fn expected(id: u64, kind: SnapshotKind) -> Snapshot {
    let mut operators = BTreeMap::new();
    operators.insert(
        "counter".to_string(),
        OperatorSnapshot {
            parallelism: 2,
            max_parallelism: 8,
            keyed: (0..8)
                .map(|kg| (kg, format!("id{id}-kg{kg}").into_bytes()))
                .collect(),
            operator: BTreeMap::new(),
        },
    );
    operators.insert(
        SOURCE_UID.to_string(),
        OperatorSnapshot {
            parallelism: 2,
            max_parallelism: 128,
            keyed: BTreeMap::new(),
            operator: (0..2)
                .map(|s| (s, format!("offset-{}", id * 100 + s as u64).into_bytes()))
                .collect(),
        },
    );
    Snapshot {
        id,
        kind,
        job: JOB.to_string(),
        created_ms: 0,
        operators,
    }
}

fn assert_snapshot(mut got: Snapshot, id: u64, kind: SnapshotKind) {
    assert!(
        got.created_ms > 1_600_000_000_000,
        "created_ms {}",
        got.created_ms
    );
    got.created_ms = 0;
    assert_eq!(got, expected(id, kind));
}

fn write_checkpoints(storage: &CheckpointStorage, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        storage
            .write(JOB, id, SnapshotKind::Checkpoint, parts(id))
            .expect("write checkpoint");
    }
}

fn chk_dir(root: &Path, id: u64) -> PathBuf {
    root.join(JOB).join(format!("chk-{id}"))
}

fn state_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "state"))
        .collect();
    files.sort();
    files
}

#[test]
fn handle_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<CheckpointStorage>();
}

#[test]
fn write_read_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ckpt");
    let storage = open(&root);
    let location = storage
        .write(JOB, 1, SnapshotKind::Checkpoint, parts(1))
        .expect("write");
    assert!(location.starts_with("file:///"), "{location}");
    assert!(location.ends_with(&format!("/{JOB}/chk-1")), "{location}");

    // The layout on disk: one file per operator subtask, and `_metadata`.
    let dir = chk_dir(&root, 1);
    assert!(dir.join("_metadata").is_file());
    let names: Vec<String> = state_files(&dir)
        .iter()
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "Source~3A~20kafka~2Forders~231-0.state",
            "Source~3A~20kafka~2Forders~231-1.state",
            "counter-0.state",
            "counter-1.state",
        ]
    );
    let meta = std::fs::read_to_string(dir.join("_metadata")).expect("metadata");
    assert!(meta.contains("\"crc32\""), "{meta}");
    assert!(meta.contains(SOURCE_UID), "{meta}");

    // Readable by URI, absolute path, relative path and `_metadata` path.
    for loc in [
        location.clone(),
        dir.to_str().expect("utf8").to_string(),
        format!("{JOB}/chk-1"),
        format!("{location}/_metadata"),
    ] {
        assert_snapshot(
            storage.read(&loc).expect("read"),
            1,
            SnapshotKind::Checkpoint,
        );
    }
    // A second handle on the same root (e.g. after a restart) sees the same thing.
    let again = open(&root);
    assert_snapshot(
        again.read(&location).expect("read"),
        1,
        SnapshotKind::Checkpoint,
    );
    assert_eq!(
        again.latest_complete(JOB).expect("latest"),
        Some((1, location))
    );
}

#[test]
fn empty_and_unicode_state_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    let uid = "ünï/cödé op .. \u{1F600}";
    let loc = storage
        .write(
            JOB,
            3,
            SnapshotKind::Checkpoint,
            vec![SubtaskState {
                uid: uid.into(),
                subtask: 0,
                parallelism: 1,
                max_parallelism: 1,
                keyed: vec![(0, vec![])],
                operator: Some(vec![]),
            }],
        )
        .expect("write");
    let snap = storage.read(&loc).expect("read");
    let op = &snap.operators[uid];
    assert_eq!(op.keyed.get(&0), Some(&vec![]));
    assert_eq!(op.operator.get(&0), Some(&vec![]));

    // A stateless job still gets a complete (empty) checkpoint.
    let loc = storage
        .write(JOB, 4, SnapshotKind::Checkpoint, vec![])
        .expect("write empty");
    assert!(storage.read(&loc).expect("read").operators.is_empty());
}

#[test]
fn retention_keeps_the_newest_complete_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let storage = open(root);
    write_checkpoints(&storage, 1..=6);
    let savepoint = storage
        .write(JOB, 2, SnapshotKind::Savepoint, parts(2))
        .expect("savepoint");
    // chk-3 lost its metadata (crashed mid-way); chk-8 is in progress (no metadata yet).
    std::fs::remove_file(chk_dir(root, 3).join("_metadata")).expect("rm");
    std::fs::create_dir_all(chk_dir(root, 8)).expect("mkdir");
    std::fs::write(chk_dir(root, 8).join("counter-0.state"), b"partial").expect("write");

    assert_eq!(
        storage.complete_checkpoints(JOB).expect("list"),
        vec![1, 2, 4, 5, 6]
    );
    let deleted = storage.retain(JOB, 2).expect("retain");
    assert_eq!(deleted, vec![1, 2, 3, 4]);
    assert_eq!(storage.complete_checkpoints(JOB).expect("list"), vec![5, 6]);
    for id in 1..=4 {
        assert!(!chk_dir(root, id).exists(), "chk-{id} should be gone");
    }
    assert!(
        chk_dir(root, 8).join("counter-0.state").exists(),
        "in-progress kept"
    );
    assert_snapshot(
        storage.read(&savepoint).expect("savepoint"),
        2,
        SnapshotKind::Savepoint,
    );
    assert_eq!(
        storage
            .latest_complete(JOB)
            .expect("latest")
            .map(|(id, _)| id),
        Some(6)
    );

    // Retaining again is a no-op; keep=1 drops chk-5 only.
    assert_eq!(storage.retain(JOB, 2).expect("retain"), Vec::<u64>::new());
    assert_eq!(storage.retain(JOB, 1).expect("retain"), vec![5]);
    assert_eq!(storage.complete_checkpoints(JOB).expect("list"), vec![6]);
    assert_snapshot(
        storage.read(&savepoint).expect("savepoint"),
        2,
        SnapshotKind::Savepoint,
    );
}

#[test]
fn discard_removes_an_aborted_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    write_checkpoints(&storage, 1..=2);
    storage.discard(JOB, 2).expect("discard");
    assert!(!chk_dir(tmp.path(), 2).exists());
    assert_eq!(storage.complete_checkpoints(JOB).expect("list"), vec![1]);
    storage
        .discard(JOB, 99)
        .expect("discarding nothing is fine");
}

/// Write chk-1..=3, damage chk-3 with `damage`, and check that restoring the job
/// directory falls back to chk-2 with a warning naming chk-3 and `reason`.
fn check_fallback(damage: impl FnOnce(&Path), reason: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let storage = open(root);
    write_checkpoints(&storage, 1..=3);
    damage(&chk_dir(root, 3));

    let job_dir = root.join(JOB);
    let job_uri = format!("{}/{JOB}", storage.root_uri());
    for loc in [
        job_dir.to_str().expect("utf8").to_string(),
        job_uri,
        JOB.to_string(),
    ] {
        let (snap, warnings) = storage.restore_point(&loc).expect("restore");
        assert_snapshot(snap, 2, SnapshotKind::Checkpoint);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("chk-3"), "{warnings:?}");
        assert!(warnings[0].contains(reason), "{warnings:?}");
    }
    // Asking for the damaged checkpoint itself is an error, not a silent fallback.
    let err = storage
        .read(&format!("{JOB}/chk-3"))
        .expect_err("damaged checkpoint must not read");
    assert!(err.is_snapshot_damage(), "{err}");
    assert!(storage.restore_point(&format!("{JOB}/chk-3")).is_err());
}

#[test]
fn restore_skips_a_checkpoint_with_a_flipped_byte() {
    check_fallback(
        |dir| {
            let file = &state_files(dir)[2];
            let mut bytes = std::fs::read(file).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(file, bytes).expect("write");
        },
        "checksum",
    );
}

#[test]
fn restore_skips_a_checkpoint_without_metadata() {
    check_fallback(
        |dir| std::fs::remove_file(dir.join("_metadata")).expect("rm"),
        "`_metadata` is missing",
    );
}

#[test]
fn restore_skips_a_checkpoint_with_truncated_metadata() {
    check_fallback(
        |dir| {
            let path = dir.join("_metadata");
            let bytes = std::fs::read(&path).expect("read");
            std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        },
        "corrupt `_metadata`",
    );
}

#[test]
fn restore_skips_a_checkpoint_with_a_missing_state_file() {
    check_fallback(
        |dir| std::fs::remove_file(dir.join("counter-1.state")).expect("rm"),
        "missing state file `counter-1.state`",
    );
}

#[test]
fn restore_skips_a_checkpoint_with_a_truncated_state_file() {
    check_fallback(
        |dir| {
            let path = dir.join("counter-0.state");
            let bytes = std::fs::read(&path).expect("read");
            std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        },
        "`counter-0.state` has",
    );
}

#[test]
fn typed_errors_name_the_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let storage = open(root);
    write_checkpoints(&storage, 1..=1);
    let dir = chk_dir(root, 1);
    let file = dir.join("counter-1.state");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write");
    match storage.read(&format!("{JOB}/chk-1")) {
        Err(CheckpointError::ChecksumMismatch { file, location, .. }) => {
            assert_eq!(file, "counter-1.state");
            assert!(location.ends_with("/chk-1"), "{location}");
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    std::fs::write(dir.join("_metadata"), b"\xff\x00not json").expect("write");
    assert!(matches!(
        storage.read(&format!("{JOB}/chk-1")),
        Err(CheckpointError::CorruptMetadata { .. })
    ));
    // Metadata copied from another checkpoint does not pass for this one.
    write_checkpoints(&storage, 2..=2);
    std::fs::copy(chk_dir(root, 2).join("_metadata"), dir.join("_metadata")).expect("copy");
    match storage.read(&format!("{JOB}/chk-1")) {
        Err(CheckpointError::CorruptMetadata { reason, .. }) => {
            assert!(reason.contains("not checkpoint 1"), "{reason}")
        }
        other => panic!("expected corrupt metadata, got {other:?}"),
    }
}

#[test]
fn nothing_restorable_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let storage = open(root);
    assert!(matches!(
        storage.restore_point(JOB),
        Err(CheckpointError::NothingRestorable { .. })
    ));
    assert_eq!(storage.latest_complete(JOB).expect("latest"), None);

    write_checkpoints(&storage, 1..=2);
    std::fs::remove_file(chk_dir(root, 2).join("_metadata")).expect("rm");
    std::fs::remove_file(chk_dir(root, 1).join("counter-0.state")).expect("rm");
    match storage.restore_point(JOB) {
        Err(CheckpointError::NothingRestorable { reason, .. }) => {
            assert!(
                reason.contains("chk-2") && reason.contains("chk-1"),
                "{reason}"
            )
        }
        other => panic!("expected nothing restorable, got {other:?}"),
    }
    assert_eq!(
        storage.latest_complete(JOB).expect("latest").map(|l| l.0),
        Some(1)
    );
    assert!(storage.restore_point("/definitely/not/under/root").is_err());
}

#[test]
fn savepoints_are_self_contained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let storage = open(root);
    let loc = storage
        .write(JOB, 5, SnapshotKind::Savepoint, parts(5))
        .expect("savepoint");
    let prefix = format!("{}/savepoints/savepoint-{JOB}-5-", storage.root_uri());
    assert!(loc.starts_with(&prefix), "{loc}");
    let second = storage
        .write(JOB, 5, SnapshotKind::Savepoint, parts(5))
        .expect("second savepoint");
    assert_ne!(loc, second, "each savepoint gets its own directory");

    // Not a checkpoint of the job; readable on its own, also from a fresh handle and
    // after the job's checkpoints are gone.
    assert!(storage.complete_checkpoints(JOB).expect("list").is_empty());
    std::fs::remove_dir_all(root.join(JOB)).ok();
    let fresh = open(root);
    assert_snapshot(fresh.read(&loc).expect("read"), 5, SnapshotKind::Savepoint);
    let (snap, warnings) = fresh.restore_point(&loc).expect("restore");
    assert!(warnings.is_empty());
    assert_snapshot(snap, 5, SnapshotKind::Savepoint);
    let rel = loc.trim_start_matches(&format!("{}/", storage.root_uri()));
    assert_snapshot(
        fresh.read(rel).expect("read relative"),
        5,
        SnapshotKind::Savepoint,
    );
}

#[test]
fn inconsistent_parts_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    let base = || SubtaskState {
        uid: "op".into(),
        subtask: 0,
        parallelism: 2,
        max_parallelism: 4,
        keyed: vec![(0, vec![1])],
        operator: None,
    };
    let cases: Vec<(Vec<SubtaskState>, &str)> = vec![
        (
            vec![
                base(),
                SubtaskState {
                    subtask: 1,
                    parallelism: 3,
                    keyed: vec![],
                    ..base()
                },
            ],
            "parallelism",
        ),
        (
            vec![
                base(),
                SubtaskState {
                    subtask: 1,
                    max_parallelism: 8,
                    keyed: vec![],
                    ..base()
                },
            ],
            "parallelism",
        ),
        (
            vec![
                base(),
                SubtaskState {
                    keyed: vec![],
                    ..base()
                },
            ],
            "reported twice",
        ),
        (
            vec![SubtaskState {
                subtask: 2,
                ..base()
            }],
            "out of range",
        ),
        (
            vec![SubtaskState {
                keyed: vec![(4, vec![])],
                ..base()
            }],
            "key group 4",
        ),
        (
            vec![SubtaskState {
                keyed: vec![(1, vec![]), (1, vec![])],
                ..base()
            }],
            "twice",
        ),
        (
            vec![
                base(),
                SubtaskState {
                    subtask: 1,
                    ..base()
                },
            ],
            "key group 0",
        ),
        (
            vec![SubtaskState {
                parallelism: 0,
                ..base()
            }],
            "positive",
        ),
        (
            vec![SubtaskState {
                parallelism: 8,
                ..base()
            }],
            "exceeds",
        ),
    ];
    for (i, (parts, want)) in cases.into_iter().enumerate() {
        match storage.write(JOB, i as u64, SnapshotKind::Checkpoint, parts) {
            Err(CheckpointError::InconsistentParts { uid, reason }) => {
                assert_eq!(uid, "op");
                assert!(reason.contains(want), "case {i}: {reason}");
            }
            other => panic!("case {i}: expected inconsistent parts, got {other:?}"),
        }
    }
    assert!(storage.complete_checkpoints(JOB).expect("list").is_empty());
    assert!(matches!(
        storage.write("savepoints", 1, SnapshotKind::Checkpoint, vec![]),
        Err(CheckpointError::InvalidJobId { .. })
    ));
    assert!(matches!(
        storage.write("a/b", 1, SnapshotKind::Checkpoint, vec![]),
        Err(CheckpointError::InvalidJobId { .. })
    ));
}

#[test]
fn a_complete_checkpoint_is_not_overwritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    write_checkpoints(&storage, 1..=1);
    assert!(matches!(
        storage.write(JOB, 1, SnapshotKind::Checkpoint, parts(9)),
        Err(CheckpointError::AlreadyExists { .. })
    ));
    assert_snapshot(
        storage.read(&format!("{JOB}/chk-1")).expect("read"),
        1,
        SnapshotKind::Checkpoint,
    );
}

#[test]
fn write_async_runs_in_the_background() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    let handles: Vec<_> = (1..=4)
        .map(|id| storage.write_async(JOB, id, SnapshotKind::Checkpoint, parts(id)))
        .collect();
    let locations: Vec<String> = handles
        .into_iter()
        .map(|h| h.wait().expect("background write"))
        .collect();
    assert_eq!(locations.len(), 4);
    assert_eq!(
        storage.complete_checkpoints(JOB).expect("list"),
        vec![1, 2, 3, 4]
    );
    for (i, loc) in locations.iter().enumerate() {
        assert_snapshot(
            storage.read(loc).expect("read"),
            i as u64 + 1,
            SnapshotKind::Checkpoint,
        );
    }
    // Errors come back through the handle too.
    let err = storage
        .write_async(JOB, 1, SnapshotKind::Checkpoint, parts(1))
        .wait()
        .expect_err("duplicate");
    assert!(
        matches!(err, CheckpointError::AlreadyExists { .. }),
        "{err}"
    );
}

#[test]
fn usable_from_inside_an_async_runtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = open(tmp.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let loc = rt.block_on(async {
        storage
            .write(JOB, 1, SnapshotKind::Checkpoint, parts(1))
            .expect("write inside runtime")
    });
    let snap = rt.block_on(async { storage.read(&loc).expect("read inside runtime") });
    assert_snapshot(snap, 1, SnapshotKind::Checkpoint);
    // Dropping the last handle inside async code must not panic either.
    rt.block_on(async move { drop(storage) });
}

#[test]
fn open_reports_bad_uris() {
    for uri in ["gs://bucket/x", "ftp://host/x"] {
        assert!(
            matches!(
                CheckpointStorage::open(uri, &BTreeMap::new()),
                Err(CheckpointError::UnsupportedScheme { .. })
            ),
            "{uri}"
        );
    }
    for uri in ["", "relative/path", "s3://", "file://remote-host/x"] {
        let err = CheckpointStorage::open(uri, &BTreeMap::new()).expect_err(uri);
        assert!(
            matches!(err, CheckpointError::InvalidUri { .. }),
            "{uri}: {err}"
        );
    }
}
