//! What happens to a job's checkpoints when its FlinkJob is deleted.
//!
//! Flink's `execution.checkpointing.externalized-checkpoint-retention`
//! decides: `RETAIN_ON_CANCELLATION` (the default) keeps them, so a new
//! FlinkJob can start from one with `job.initialSavepointPath`;
//! `DELETE_ON_CANCELLATION` and `NO_EXTERNALIZED_CHECKPOINTS` delete them
//! once the cluster has stopped. Nothing else removes them: owner
//! references only reach Kubernetes objects, which is why this runs in the
//! finalizer. Savepoints are never deleted.

use std::collections::BTreeMap;

use rill_checkpoint::CheckpointStorage;

use crate::{Error, Result};

/// The Flink key read from `flinkConfiguration`.
pub const RETENTION_KEY: &str = "execution.checkpointing.externalized-checkpoint-retention";

/// The fate of a deleted job's checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Retain,
    Delete,
}

/// The retention a configuration asks for (values as in Flink, any case).
pub fn retention(conf: &BTreeMap<String, String>) -> Result<Retention> {
    let Some(value) = conf.get(RETENTION_KEY) else {
        return Ok(Retention::Retain);
    };
    match value.trim().to_ascii_uppercase().as_str() {
        "RETAIN_ON_CANCELLATION" => Ok(Retention::Retain),
        "DELETE_ON_CANCELLATION" | "NO_EXTERNALIZED_CHECKPOINTS" => Ok(Retention::Delete),
        _ => Err(Error::InvalidSpec(format!(
            "flinkConfiguration.{RETENTION_KEY}: '{value}' is not one of RETAIN_ON_CANCELLATION, DELETE_ON_CANCELLATION, NO_EXTERNALIZED_CHECKPOINTS"
        ))),
    }
}

/// Deletes every checkpoint of `job_id` under `storage` (and the shared
/// files they used); `options` carries the storage settings (`s3.*`).
/// Returns how many complete checkpoints were deleted.
pub async fn delete_checkpoints(
    storage: &str,
    options: &BTreeMap<String, String>,
    job_id: &str,
) -> Result<usize> {
    let (storage, options, job_id) = (storage.to_string(), options.clone(), job_id.to_string());
    // The storage client blocks on its own runtime.
    tokio::task::spawn_blocking(move || {
        let store = CheckpointStorage::open(&storage, &options)?;
        Ok(store.retain(&job_id, 0)?.len())
    })
    .await
    .map_err(|e| Error::Internal(format!("deleting checkpoints: {e}")))?
}

#[cfg(test)]
mod tests {
    use rill_checkpoint::SnapshotKind;

    use super::*;

    fn conf(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(RETENTION_KEY.to_string(), value.to_string())])
    }

    #[test]
    fn retention_follows_the_flink_key() {
        assert_eq!(retention(&BTreeMap::new()).ok(), Some(Retention::Retain));
        assert_eq!(
            retention(&conf("RETAIN_ON_CANCELLATION")).ok(),
            Some(Retention::Retain)
        );
        assert_eq!(
            retention(&conf("delete_on_cancellation")).ok(),
            Some(Retention::Delete)
        );
        assert_eq!(
            retention(&conf("NO_EXTERNALIZED_CHECKPOINTS")).ok(),
            Some(Retention::Delete)
        );
        let e = retention(&conf("sometimes")).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("sometimes")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn deleting_removes_every_checkpoint_of_the_job_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uri = format!("file://{}", dir.path().display());
        // Checkpoints written by the storage itself, so they are complete.
        let written = {
            let uri = uri.clone();
            tokio::task::spawn_blocking(move || {
                let store = CheckpointStorage::open(&uri, &BTreeMap::new()).expect("open");
                for (job, id) in [("job-a", 1), ("job-a", 2), ("job-b", 1)] {
                    store
                        .write(job, id, SnapshotKind::Checkpoint, Vec::new())
                        .expect("write");
                }
                store
                    .write("job-a", 3, SnapshotKind::Savepoint, Vec::new())
                    .expect("savepoint");
                (
                    store.complete_checkpoints("job-a").expect("list").len(),
                    store.complete_checkpoints("job-b").expect("list").len(),
                )
            })
            .await
            .expect("join")
        };
        assert_eq!(written, (2, 1));
        let n = delete_checkpoints(&uri, &BTreeMap::new(), "job-a")
            .await
            .expect("delete");
        assert_eq!(n, 2);
        let left = tokio::task::spawn_blocking(move || {
            let store = CheckpointStorage::open(&uri, &BTreeMap::new()).expect("open");
            (
                store.complete_checkpoints("job-a").expect("list").len(),
                store.complete_checkpoints("job-b").expect("list").len(),
            )
        })
        .await
        .expect("join");
        assert_eq!(left, (0, 1), "only job-a's checkpoints are gone");
        let savepoints = std::fs::read_dir(dir.path().join("savepoints"))
            .expect("savepoints dir")
            .count();
        assert_eq!(savepoints, 1, "the savepoint is kept");
    }
}
