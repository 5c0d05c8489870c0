//! Checkpoint duration and size of a RocksDB store with many keys, in the
//! key-group format, as full native checkpoints and as incremental ones: a
//! first checkpoint of every key, then a second one after changing a share
//! of the keys. Run in release mode:
//!
//! ```text
//! cargo run --release -p rill-checkpoint --example rocksdb_checkpoint_figures -- 1000000 0.01
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rill_checkpoint::{CheckpointStorage, SnapshotKind, SubtaskState};
use rill_state::native::native_uid;
use rill_state::{KeyGroupRange, KeyedStateStore, RocksDbOptions, StateBackend, ValueState};

const MAX: usize = 128;

type Error = Box<dyn std::error::Error>;

struct Figure {
    snapshot: Duration,
    upload: Duration,
    bytes: u64,
    files: usize,
}

fn checkpoint(
    storage: &CheckpointStorage,
    store: &mut KeyedStateStore<u64>,
    id: u64,
    native: bool,
) -> Result<Figure, Error> {
    let started = Instant::now();
    let part = if native {
        let range = KeyGroupRange {
            start: 0,
            end: MAX - 1,
        };
        let snapshot = store
            .native_snapshot(id, range)?
            .ok_or("not a RocksDB store")?;
        SubtaskState {
            uid: native_uid("counter"),
            subtask: 0,
            parallelism: 1,
            max_parallelism: MAX,
            keyed: snapshot.pending,
            operator: Some(snapshot.handle),
        }
    } else {
        SubtaskState {
            uid: "counter".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: MAX,
            keyed: store.snapshot(MAX)?,
            operator: None,
        }
    };
    let snapshot = started.elapsed();
    let started = Instant::now();
    let (_, stats) =
        storage.write_with_stats("figures", id, SnapshotKind::Checkpoint, vec![part])?;
    let upload = started.elapsed();
    storage.retain("figures", 1)?;
    Ok(Figure {
        snapshot,
        upload,
        bytes: stats.bytes_uploaded,
        files: stats.files_uploaded,
    })
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let changed: f64 = args.next().map_or(Ok(0.01), |a| a.parse())?;
    let v = ValueState::<u64>::new("count");
    for (name, native, incremental) in [
        ("key-group format", false, false),
        ("full native", true, false),
        ("incremental native", true, true),
    ] {
        let root = tempfile::tempdir()?;
        let local = tempfile::tempdir()?;
        let storage = CheckpointStorage::open(
            root.path().to_str().ok_or("temp dir is not UTF-8")?,
            &BTreeMap::new(),
        )?;
        let backend = StateBackend::RocksDb(RocksDbOptions {
            local_dir: Some(local.path().to_path_buf()),
            incremental,
        });
        let mut store = KeyedStateStore::<u64>::open(&backend, MAX, "figures")?;
        for k in 0..keys {
            store.set_current_key(k);
            v.set(&mut store, k);
        }
        let first = checkpoint(&storage, &mut store, 1, native)?;
        // Change a spread-out share of the keys.
        let step = (1.0 / changed.max(1e-9)).round().max(1.0) as u64;
        let mut n = 0;
        for k in (0..keys).step_by(step as usize) {
            store.set_current_key(k);
            v.set(&mut store, k + 1);
            n += 1;
        }
        let second = checkpoint(&storage, &mut store, 2, native)?;
        if let Some(e) = store.take_failure() {
            return Err(e.into());
        }
        for (label, f) in [
            ("first", &first),
            (&format!("second ({n} keys changed)")[..], &second),
        ] {
            println!(
                "{name:>19} | {label:<28} | snapshot {:>8.1} ms | upload {:>8.1} ms | total {:>8.1} ms | {:>7.2} MiB in {:>3} files",
                f.snapshot.as_secs_f64() * 1e3,
                f.upload.as_secs_f64() * 1e3,
                (f.snapshot + f.upload).as_secs_f64() * 1e3,
                f.bytes as f64 / (1 << 20) as f64,
                f.files,
            );
        }
    }
    Ok(())
}
