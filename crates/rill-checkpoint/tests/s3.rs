//! The S3 path end to end against a real S3-protocol server (`s3s-fs`) that the test
//! starts itself on 127.0.0.1, so `s3://` storage with a path-style, plain-http
//! endpoint and static credentials from Flink-style options is exercised for real.
//!
//! The server binary is looked up in `$RILL_S3S_FS`, on `PATH`, and in
//! `$RILL_TOOLS_DIR/bin` (default `~/.cache/rill-tools/bin`); when missing it is
//! installed there with `cargo install s3s-fs` (a one-off few-minute build; later
//! runs reuse it). Without network the test prints "skipping S3 test: …" and
//! passes, unless `RILL_REQUIRE_S3_TEST=1` makes that a failure.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rill_checkpoint::{CheckpointError, CheckpointStorage, SnapshotKind, SubtaskState};

const BODY_TIMEOUT: Duration = Duration::from_secs(240);

const BUCKET: &str = "rill-bucket";
const PREFIX: &str = "checkpoints/prod";
const JOB: &str = "job-s3";

#[path = "support/s3s_fs.rs"]
mod s3s_fs;
use s3s_fs::{s3s_fs_binary, Server, ACCESS_KEY, SECRET_KEY};

fn parts(id: u64) -> Vec<SubtaskState> {
    (0..3)
        .map(|subtask| SubtaskState {
            uid: "window agg".into(),
            subtask,
            parallelism: 3,
            max_parallelism: 12,
            keyed: (subtask * 4..subtask * 4 + 4)
                .map(|kg| (kg, vec![id as u8; 100 + kg]))
                .collect(),
            operator: Some(format!("op-{id}-{subtask}").into_bytes()),
        })
        .collect()
}

/// A raw S3 client on the same bucket, to damage and inspect objects behind the
/// storage's back.
struct Raw {
    rt: tokio::runtime::Runtime,
    s3: object_store::aws::AmazonS3,
}

impl Raw {
    fn new(endpoint: &str) -> Raw {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let s3 = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("raw client");
        Raw { rt, s3 }
    }

    /// `parse`, not `from`: the storage writes keys verbatim (`~` included), while
    /// `Path::from` would percent-encode `~`.
    fn path(rel: &str) -> ObjectPath {
        ObjectPath::parse(format!("{PREFIX}/{rel}")).expect("valid key")
    }

    fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .rt
            .block_on(self.s3.list(Some(&Self::path(rel))).try_collect::<Vec<_>>())
            .expect("list")
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        names.sort();
        names
    }

    fn delete(&self, rel: &str) {
        self.rt
            .block_on(self.s3.delete(&Self::path(rel)))
            .expect("delete");
    }

    fn flip_last_byte(&self, rel: &str) {
        let path = Self::path(rel);
        self.rt.block_on(async {
            let mut bytes = self
                .s3
                .get(&path)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes")
                .to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
            self.s3
                .put(&path, PutPayload::from(bytes))
                .await
                .expect("put");
        });
    }
}

fn body(endpoint: String) {
    let mut options = BTreeMap::new();
    options.insert("s3.endpoint".to_string(), endpoint.clone());
    options.insert("s3.access-key".to_string(), ACCESS_KEY.to_string());
    options.insert("s3.secret-key".to_string(), SECRET_KEY.to_string());
    options.insert("s3.path.style.access".to_string(), "true".to_string());
    options.insert("s3.region".to_string(), "us-east-1".to_string());
    options.insert("state.backend.type".to_string(), "heap".to_string()); // ignored
    let root = format!("s3://{BUCKET}/{PREFIX}");
    let storage = CheckpointStorage::open(&root, &options).expect("open s3 storage");
    assert_eq!(storage.root_uri(), root);
    let raw = Raw::new(&endpoint);

    // Write and read back.
    let mut locations = Vec::new();
    for id in 1..=4 {
        let loc = storage
            .write(JOB, id, SnapshotKind::Checkpoint, parts(id))
            .expect("write to s3");
        assert_eq!(loc, format!("{root}/{JOB}/chk-{id}"));
        locations.push(loc);
    }
    assert_eq!(
        raw.list(&format!("{JOB}/chk-1")),
        vec![
            format!("{PREFIX}/{JOB}/chk-1/_metadata"),
            format!("{PREFIX}/{JOB}/chk-1/window~20agg-0.state"),
            format!("{PREFIX}/{JOB}/chk-1/window~20agg-1.state"),
            format!("{PREFIX}/{JOB}/chk-1/window~20agg-2.state"),
        ]
    );
    let snap = storage.read(&locations[0]).expect("read from s3");
    assert_eq!(
        (snap.id, snap.kind, snap.job.as_str()),
        (1, SnapshotKind::Checkpoint, JOB)
    );
    let op = &snap.operators["window agg"];
    assert_eq!((op.parallelism, op.max_parallelism), (3, 12));
    assert_eq!(op.keyed.len(), 12);
    assert_eq!(op.keyed[&11], vec![1u8; 111]);
    assert_eq!(op.operator[&2], b"op-1-2".to_vec());
    assert_eq!(
        storage.complete_checkpoints(JOB).expect("list"),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        storage.latest_complete(JOB).expect("latest"),
        Some((4, locations[3].clone()))
    );

    // Damage the two newest: chk-4 loses `_metadata`, chk-3 gets a flipped byte.
    raw.delete(&format!("{JOB}/chk-4/_metadata"));
    raw.flip_last_byte(&format!("{JOB}/chk-3/window~20agg-1.state"));
    let (snap, warnings) = storage
        .restore_point(&format!("{root}/{JOB}"))
        .expect("restore from s3");
    assert_eq!(snap.id, 2);
    assert_eq!(snap.operators["window agg"].keyed[&0], vec![2u8; 100]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("chk-4") && warnings[0].contains("`_metadata` is missing"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("chk-3") && warnings[1].contains("checksum"),
        "{warnings:?}"
    );
    // The job id relative to the root works the same.
    assert_eq!(storage.restore_point(JOB).expect("restore").0.id, 2);

    // Savepoint next to the checkpoints.
    let savepoint = storage
        .write(JOB, 10, SnapshotKind::Savepoint, parts(10))
        .expect("savepoint to s3");
    assert!(
        savepoint.starts_with(&format!("{root}/savepoints/savepoint-{JOB}-10-")),
        "{savepoint}"
    );

    // Retention: complete are 1, 2, 3 (chk-3's metadata is fine); chk-4 is newer
    // than every complete one, so it counts as in progress and stays.
    assert_eq!(storage.retain(JOB, 1).expect("retain"), vec![1, 2]);
    assert_eq!(storage.complete_checkpoints(JOB).expect("list"), vec![3]);
    assert!(raw.list(&format!("{JOB}/chk-1")).is_empty());
    assert!(raw.list(&format!("{JOB}/chk-2")).is_empty());
    assert!(!raw.list(&format!("{JOB}/chk-4")).is_empty());
    storage.discard(JOB, 4).expect("discard");
    assert!(raw.list(&format!("{JOB}/chk-4")).is_empty());

    // Only damaged chk-3 left: nothing restorable from the job directory ...
    match storage.restore_point(JOB) {
        Err(CheckpointError::NothingRestorable { reason, .. }) => {
            assert!(reason.contains("chk-3"), "{reason}")
        }
        other => panic!("expected nothing restorable, got {other:?}"),
    }
    // ... but the savepoint survived retention and restores by its own location.
    let (snap, warnings) = storage
        .restore_point(&savepoint)
        .expect("restore savepoint");
    assert!(warnings.is_empty());
    assert_eq!((snap.id, snap.kind), (10, SnapshotKind::Savepoint));
    assert_eq!(
        snap.operators["window agg"].operator[&0],
        b"op-10-0".to_vec()
    );

    // A background write goes through the same S3 client.
    let loc = storage
        .write_async(JOB, 11, SnapshotKind::Checkpoint, parts(11))
        .wait()
        .expect("async write to s3");
    assert_eq!(storage.read(&loc).expect("read").id, 11);
    assert!(matches!(
        storage.restore_point("other-job"),
        Err(CheckpointError::NothingRestorable { .. })
    ));
}

#[test]
fn s3_round_trip_against_s3s_fs() {
    let bin = match s3s_fs_binary() {
        Ok(bin) => bin,
        Err(reason) => {
            if s3s_fs::required() {
                panic!("S3 test required but s3s-fs is unavailable: {reason}");
            }
            println!("skipping S3 test: s3s-fs is not available: {reason}");
            eprintln!("skipping S3 test: s3s-fs is not available: {reason}");
            return;
        }
    };
    let server = Server::start(&bin, BUCKET);
    let endpoint = server.endpoint();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        body(endpoint);
        let _ = tx.send(());
    });
    match rx.recv_timeout(BODY_TIMEOUT) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic with its message.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
            panic!("S3 test body ended without reporting");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            drop(server); // stop the server so the stuck body fails fast
            panic!("S3 test did not finish within {BODY_TIMEOUT:?}");
        }
    }
    // Everything the storage wrote landed in the server's directory for the bucket.
    assert!(server
        .data
        .path()
        .join(BUCKET)
        .join(PREFIX)
        .join("savepoints")
        .is_dir());
}
