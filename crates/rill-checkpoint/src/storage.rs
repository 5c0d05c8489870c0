//! `CheckpointStorage`: the synchronous handle that writes, verifies, finds, retains
//! and discards snapshots.
//!
//! It owns a small private tokio runtime and blocks on it, so plain threads can call
//! it. Write order is the durability contract: every state file first, `_metadata`
//! last; a directory without a valid `_metadata` is never treated as a snapshot, and
//! deletion removes `_metadata` first so a half-deleted snapshot is never "complete".
//!
//! Native RocksDB snapshots arrive as local directories (see
//! `rill_state::native`): `write` uploads their files, from the caller's thread
//! rather than the task's, and removes the directory afterwards. Checkpoints keep
//! the files (all of them, or for incremental ones the SST files not already held
//! by the newest complete checkpoint, under `<job>/shared/`); savepoints turn the
//! database into the portable key-group format so they stay self-contained.
//! `retain` deletes shared files that no retained checkpoint's `_metadata` lists.
//!
//! In a cluster the coordinator cannot read a TaskManager's disk, so the
//! TaskManager calls `stage_native` first: the same upload, to the same
//! paths, done where the files are, leaving a [`StagedSnapshot`] that `write`
//! records as is (or, for a savepoint, downloads and converts). Garbage of
//! staged checkpoints that never complete is left to `retain`: shared files
//! are named after the checkpoint that uploaded them and reference counted,
//! and the other files lie in the checkpoint's own `chk-<n>` directory, which
//! `retain` deletes once a newer checkpoint is complete.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::backend::Backend;
use crate::format::{
    self, FileMetadata, Metadata, MetadataError, NativeFileMetadata, NativeMetadata,
    NativeTableMetadata, OperatorMetadata,
};
use crate::layout::{self, LocationShape};
use crate::staged::StagedSnapshot;
use crate::{
    CheckpointError, CheckpointId, OperatorSnapshot, Result, Snapshot, SnapshotKind, SubtaskState,
};
use rill_state::native::{
    LocalSnapshot, RemoteFile, RestoredFile, RestoredSnapshot, TableInfo, NATIVE_UID_SUFFIX,
};
use rill_state::KeyGroupRange;

/// How many files are uploaded or downloaded at once.
const IO_CONCURRENCY: usize = 8;

/// Handle to a checkpoint storage root. Cheap to clone; all clones share one
/// connection pool and runtime.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Always `Some` until drop; taken in `Drop` to shut down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    backend: Backend,
    /// The options the storage was opened with, to open the root a staged
    /// snapshot names when it is not this one.
    options: BTreeMap<String, String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the last handle is fine even inside async code.
            rt.shutdown_background();
        }
    }
}

/// A snapshot write running on a background thread (see
/// [`CheckpointStorage::write_async`]).
#[derive(Debug)]
pub struct WriteHandle {
    thread: JoinHandle<Result<String>>,
}

impl WriteHandle {
    /// True once the write has finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the write; returns the snapshot's location URI.
    pub fn wait(self) -> Result<String> {
        match self.thread.join() {
            Ok(result) => result,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(CheckpointError::BackgroundWritePanicked(msg))
            }
        }
    }
}

/// What one [`CheckpointStorage::write_with_stats`] call stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Files uploaded (state files, native files, `_metadata`).
    pub files_uploaded: usize,
    /// Bytes of those files.
    pub bytes_uploaded: u64,
    /// Native files referenced from earlier checkpoints instead of uploaded.
    pub files_reused: usize,
    /// Bytes of those files.
    pub bytes_reused: u64,
    /// Native files a TaskManager uploaded ahead of the write
    /// ([`CheckpointStorage::stage_native`]), recorded without upload.
    pub files_staged: usize,
    /// Bytes of those files.
    pub bytes_staged: u64,
}

/// Local snapshot directories taken over for upload; removed when dropped,
/// whether the upload succeeded or not.
struct Claimed(Vec<std::path::PathBuf>);

impl Drop for Claimed {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Err(e) = rill_state::native::remove_local_dir(dir) {
                tracing::warn!(error = %e, "local snapshot not removed");
            }
        }
    }
}

fn local_err(dir: &std::path::Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::LocalSnapshot {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Takes over a local snapshot directory by renaming it, so the store that
/// made it no longer removes it (a store removes unclaimed old snapshots).
fn claim(local: &mut LocalSnapshot, claimed: &mut Claimed) -> Result<()> {
    let mut target = local.dir.clone().into_os_string();
    target.push(".uploading");
    let target = std::path::PathBuf::from(target);
    std::fs::rename(&local.dir, &target).map_err(|e| local_err(&local.dir, e))?;
    claimed.0.push(target.clone());
    local.dir = target;
    Ok(())
}

/// Merges two key-group blobs of the store format (lists of `(table, entries)`).
fn merge_group_blobs(a: &[u8], b: &[u8]) -> std::result::Result<Vec<u8>, rill_state::StateError> {
    let mut tables: Vec<(String, Vec<u8>)> = rill_state::codec::decode(a)?;
    tables.extend(rill_state::codec::decode::<Vec<(String, Vec<u8>)>>(b)?);
    rill_state::codec::encode(&tables)
}

/// One local snapshot after its upload: its `_metadata` description and the
/// paths the upload wrote (the other files were already kept).
struct Uploaded {
    meta: NativeMetadata,
    owned: Vec<String>,
}

/// A native file to upload: where it comes from and where it goes.
struct NativeUpload {
    part: usize,
    file: usize,
    source: std::path::PathBuf,
    size: u64,
    dest: String,
}

fn storage_err(
    op: &'static str,
    path: &str,
) -> impl FnOnce(object_store::Error) -> CheckpointError {
    let path = path.to_string();
    move |source| CheckpointError::Storage { op, path, source }
}

fn to_path(rel: &str) -> Result<Path> {
    Path::parse(rel).map_err(|e| CheckpointError::InvalidLocation {
        location: rel.to_string(),
        reason: e.to_string(),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Eight hex characters that differ between calls (savepoint directory suffix).
fn short_random() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // `RandomState` is seeded randomly per process and varies per instance.
    let h = std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("{:08x}", h as u32)
}

/// One operator's validated parts, ready to write.
struct OperatorPlan {
    parallelism: usize,
    max_parallelism: usize,
    parts: BTreeMap<usize, SubtaskState>,
}

fn plan_parts(parts: Vec<SubtaskState>) -> Result<BTreeMap<String, OperatorPlan>> {
    let mut ops: BTreeMap<String, OperatorPlan> = BTreeMap::new();
    for part in parts {
        let bad = |reason: String| CheckpointError::InconsistentParts {
            uid: part.uid.clone(),
            reason,
        };
        if part.uid.len() > u32::MAX as usize {
            return Err(bad("uid is longer than 4 GiB".to_string()));
        }
        if part.parallelism == 0 || part.max_parallelism == 0 {
            return Err(bad(format!(
                "parallelism {} and max parallelism {} must both be positive",
                part.parallelism, part.max_parallelism
            )));
        }
        if part.parallelism > part.max_parallelism {
            return Err(bad(format!(
                "parallelism {} exceeds max parallelism {}",
                part.parallelism, part.max_parallelism
            )));
        }
        if part.subtask >= part.parallelism {
            return Err(bad(format!(
                "subtask {} is out of range for parallelism {}",
                part.subtask, part.parallelism
            )));
        }
        let mut own_groups = BTreeSet::new();
        for (kg, _) in &part.keyed {
            if *kg >= part.max_parallelism {
                return Err(bad(format!(
                    "subtask {} reports key group {kg}, but max parallelism is {}",
                    part.subtask, part.max_parallelism
                )));
            }
            if !own_groups.insert(*kg) {
                return Err(bad(format!(
                    "subtask {} reports key group {kg} twice",
                    part.subtask
                )));
            }
        }
        let plan = ops.entry(part.uid.clone()).or_insert_with(|| OperatorPlan {
            parallelism: part.parallelism,
            max_parallelism: part.max_parallelism,
            parts: BTreeMap::new(),
        });
        if plan.parallelism != part.parallelism || plan.max_parallelism != part.max_parallelism {
            return Err(bad(format!(
                "subtask {} reports parallelism {}/max {}, another subtask reported {}/{}",
                part.subtask,
                part.parallelism,
                part.max_parallelism,
                plan.parallelism,
                plan.max_parallelism
            )));
        }
        if plan.parts.contains_key(&part.subtask) {
            return Err(bad(format!("subtask {} reported twice", part.subtask)));
        }
        for (other_subtask, other) in &plan.parts {
            if let Some((kg, _)) = other.keyed.iter().find(|(kg, _)| own_groups.contains(kg)) {
                return Err(bad(format!(
                    "key group {kg} is reported by subtasks {other_subtask} and {}",
                    part.subtask
                )));
            }
        }
        plan.parts.insert(part.subtask, part);
    }
    // Distinct uids must map to distinct file names (only hashed long names could clash).
    let mut names = BTreeSet::new();
    for uid in ops.keys() {
        if !names.insert(layout::escape_uid(uid)) {
            return Err(CheckpointError::InconsistentParts {
                uid: uid.clone(),
                reason: "its file name collides with another operator's".to_string(),
            });
        }
    }
    Ok(ops)
}

impl CheckpointStorage {
    /// Open a storage root: `file:///dir`, `/abs/dir`, or `s3://bucket/prefix`.
    ///
    /// For S3, settings come from the AWS environment variables (`AWS_ENDPOINT_URL`,
    /// `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`, …) and are overridden by the Flink-style `options`
    /// `s3.endpoint`, `s3.access-key`, `s3.secret-key`, `s3.region` and
    /// `s3.path.style.access`. Requests use path-style addressing unless virtual
    /// hosting is requested, and an `http://` endpoint is allowed automatically.
    /// Other keys in `options` are ignored. A local root directory is created.
    pub fn open(uri: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rill-checkpoint-io")
            .enable_all()
            .build()
            .map_err(CheckpointError::Runtime)?;
        let backend = {
            let _guard = runtime.enter();
            Backend::open(uri, options)?
        };
        Ok(CheckpointStorage {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                backend,
                options: options.clone(),
            }),
        })
    }

    /// URI of the storage root (no trailing slash), e.g. `file:///data/ckpt`.
    pub fn root_uri(&self) -> &str {
        &self.inner.backend.root_uri
    }

    /// URI of checkpoint `id` of `job_id` (whether or not it exists).
    pub fn checkpoint_location(&self, job_id: &str, id: CheckpointId) -> String {
        self.inner
            .backend
            .uri_of(&layout::checkpoint_dir(job_id, id))
    }

    fn store(&self) -> &dyn ObjectStore {
        self.inner.backend.store.as_ref()
    }

    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(rt) = self.inner.runtime.as_ref() else {
            unreachable!("the runtime is only taken when the last handle is dropped");
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from inside some async runtime: blocking this thread on our
            // runtime would panic, so drive the future from a helper thread.
            std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            rt.block_on(fut)
        }
    }

    /// Write a complete snapshot: all state files, then `_metadata`. Returns the URI
    /// of the snapshot directory.
    ///
    /// Checkpoints go to `<root>/<job-id>/chk-<id>` (an existing complete checkpoint
    /// with the same id is an error); savepoints to a fresh
    /// `<root>/savepoints/savepoint-<job-id>-<id>-<random>`. Parts are validated
    /// first: one parallelism/max parallelism per uid, subtasks and key groups in
    /// range, no subtask or key group reported twice.
    pub fn write(
        &self,
        job_id: &str,
        snapshot_id: CheckpointId,
        kind: SnapshotKind,
        parts: Vec<SubtaskState>,
    ) -> Result<String> {
        layout::validate_job_id(job_id)?;
        let ops = plan_parts(parts)?;
        let dir = match kind {
            SnapshotKind::Checkpoint => layout::checkpoint_dir(job_id, snapshot_id),
            SnapshotKind::Savepoint => layout::savepoint_dir(job_id, snapshot_id, &short_random()),
        };
        let location = self.inner.backend.uri_of(&dir);
        self.block_on(self.write_dir(&dir, &location, job_id, snapshot_id, kind, ops))?;
        tracing::debug!(%location, "snapshot written");
        Ok(location)
    }

    /// [`write`](Self::write), also reporting what was uploaded and what was
    /// referenced from earlier checkpoints.
    pub fn write_with_stats(
        &self,
        job_id: &str,
        snapshot_id: CheckpointId,
        kind: SnapshotKind,
        parts: Vec<SubtaskState>,
    ) -> Result<(String, WriteStats)> {
        layout::validate_job_id(job_id)?;
        let ops = plan_parts(parts)?;
        let dir = match kind {
            SnapshotKind::Checkpoint => layout::checkpoint_dir(job_id, snapshot_id),
            SnapshotKind::Savepoint => layout::savepoint_dir(job_id, snapshot_id, &short_random()),
        };
        let location = self.inner.backend.uri_of(&dir);
        let stats =
            self.block_on(self.write_dir(&dir, &location, job_id, snapshot_id, kind, ops))?;
        Ok((location, stats))
    }

    /// The validated `_metadata` of the snapshot in `location` (state files are
    /// not read).
    pub fn metadata(&self, location: &str) -> Result<Metadata> {
        let rel = self.inner.backend.resolve(location)?;
        self.block_on(self.read_metadata(&rel))
    }

    /// [`write`](Self::write) on a background thread, so the caller's stream keeps
    /// flowing while the upload runs. Wait on the returned handle for the location.
    pub fn write_async(
        &self,
        job_id: &str,
        snapshot_id: CheckpointId,
        kind: SnapshotKind,
        parts: Vec<SubtaskState>,
    ) -> WriteHandle {
        let this = self.clone();
        let job_id = job_id.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("rill-checkpoint-write-{snapshot_id}"))
            .spawn(move || this.write(&job_id, snapshot_id, kind, parts));
        let thread = match spawned {
            Ok(thread) => thread,
            // Could not start a thread: report through the handle all the same.
            Err(e) => std::thread::spawn(move || Err(CheckpointError::Runtime(e))),
        };
        WriteHandle { thread }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_dir(
        &self,
        dir: &str,
        location: &str,
        job_id: &str,
        id: CheckpointId,
        kind: SnapshotKind,
        mut ops: BTreeMap<String, OperatorPlan>,
    ) -> Result<WriteStats> {
        let store = self.store();
        let meta_rel = layout::metadata_path(dir);
        let meta_path = to_path(&meta_rel)?;
        // Native snapshots are taken over first, so their directories go away
        // whatever happens below.
        let mut claimed = Claimed(Vec::new());
        let mut natives: Vec<(String, usize, LocalSnapshot)> = Vec::new();
        let mut staged: Vec<(String, usize, StagedSnapshot)> = Vec::new();
        for (uid, plan) in ops.iter_mut() {
            if !uid.ends_with(NATIVE_UID_SUFFIX) {
                continue;
            }
            for (subtask, part) in plan.parts.iter_mut() {
                let Some(blob) = part.operator.take_if(|b| {
                    LocalSnapshot::is_local_snapshot(b) || StagedSnapshot::is_staged(b)
                }) else {
                    continue;
                };
                let inconsistent = |reason: String| CheckpointError::InconsistentParts {
                    uid: uid.clone(),
                    reason: format!("subtask {subtask}: {reason}"),
                };
                if StagedSnapshot::is_staged(&blob) {
                    let handle = StagedSnapshot::decode(&blob).map_err(inconsistent)?;
                    self.check_staged(&handle, job_id, id, kind, plan.max_parallelism)
                        .map_err(inconsistent)?;
                    staged.push((uid.clone(), *subtask, handle));
                    continue;
                }
                let mut local =
                    LocalSnapshot::decode(&blob).map_err(|e| inconsistent(e.to_string()))?;
                claim(&mut local, &mut claimed)?;
                if local.max_parallelism != plan.max_parallelism {
                    return Err(inconsistent(format!(
                        "it reports a RocksDB snapshot of max parallelism {}",
                        local.max_parallelism
                    )));
                }
                natives.push((uid.clone(), *subtask, local));
            }
        }
        match store.head(&meta_path).await {
            Ok(_) => {
                return Err(CheckpointError::AlreadyExists {
                    location: location.to_string(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_err("head", &meta_rel)(e)),
        }

        let mut stats = WriteStats::default();
        // Savepoints hold the portable key-group format, never database files.
        let mut staged_garbage: Vec<(String, Vec<String>)> = Vec::new();
        if kind == SnapshotKind::Savepoint {
            let mut converted = Vec::new();
            for (uid, subtask, local) in std::mem::take(&mut natives) {
                let groups = rill_state::native::key_group_blobs(
                    &local.dir,
                    local.max_parallelism,
                    &local.tables,
                    Some(local.key_groups),
                )
                .map_err(|e| local_err(&local.dir, e))?;
                converted.push((uid, subtask, local.dir.display().to_string(), groups));
            }
            for (uid, subtask, handle) in std::mem::take(&mut staged) {
                let groups = self.convert_staged(&handle, location).await?;
                converted.push((uid, subtask, handle.root.clone(), groups));
                staged_garbage.push((handle.root, handle.uploaded));
            }
            for (uid, subtask, source, groups) in converted {
                let Some(part) = ops.get_mut(&uid).and_then(|p| p.parts.get_mut(&subtask)) else {
                    unreachable!("the native part came from this plan");
                };
                let mut keyed: BTreeMap<usize, Vec<u8>> =
                    std::mem::take(&mut part.keyed).into_iter().collect();
                for (kg, blob) in groups {
                    let merged = match keyed.remove(&kg) {
                        Some(pending) => merge_group_blobs(&pending, &blob).map_err(|e| {
                            CheckpointError::LocalSnapshot {
                                path: source.clone(),
                                reason: e.to_string(),
                            }
                        })?,
                        None => blob,
                    };
                    keyed.insert(kg, merged);
                }
                part.keyed = keyed.into_iter().collect();
            }
        }

        let uploaded = self
            .upload_natives(job_id, dir, id, &natives, &mut stats)
            .await?;
        let mut native_of: HashMap<(String, usize), NativeMetadata> = natives
            .iter()
            .map(|(uid, subtask, _)| (uid.clone(), *subtask))
            .zip(uploaded.into_iter().map(|u| u.meta))
            .collect();
        for (uid, subtask, handle) in staged {
            let owned: HashSet<&String> = handle.uploaded.iter().collect();
            for f in &handle.native.files {
                if owned.contains(&f.path) {
                    stats.files_staged += 1;
                    stats.bytes_staged += f.size;
                } else {
                    stats.files_reused += 1;
                    stats.bytes_reused += f.size;
                }
            }
            native_of.insert((uid, subtask), handle.native);
        }

        let mut operators = Vec::with_capacity(ops.len());
        let mut uploads = Vec::new();
        for (uid, plan) in ops {
            let mut files = Vec::with_capacity(plan.parts.len());
            for (subtask, part) in plan.parts {
                let bytes =
                    format::encode_state_file(&uid, subtask, &part.keyed, part.operator.as_deref());
                let file = layout::state_file_name(&uid, subtask);
                files.push(FileMetadata {
                    subtask,
                    file: file.clone(),
                    size: bytes.len() as u64,
                    crc32: format::checksum(&bytes),
                    native: native_of.remove(&(uid.clone(), subtask)),
                });
                uploads.push((layout::join(dir, &file), bytes));
            }
            operators.push(OperatorMetadata {
                uid,
                parallelism: plan.parallelism,
                max_parallelism: plan.max_parallelism,
                files,
            });
        }
        stats.files_uploaded += uploads.len() + 1;
        stats.bytes_uploaded += uploads.iter().map(|(_, b)| b.len() as u64).sum::<u64>();

        stream::iter(uploads)
            .map(|(rel, bytes)| async move {
                let path = to_path(&rel)?;
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(storage_err("put", &rel))?;
                Ok::<(), CheckpointError>(())
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;

        let has_native = operators
            .iter()
            .any(|op| op.files.iter().any(|f| f.native.is_some()));
        let meta = Metadata {
            format_version: if has_native {
                format::NATIVE_METADATA_FORMAT_VERSION
            } else {
                format::METADATA_FORMAT_VERSION
            },
            job_id: job_id.to_string(),
            id,
            kind,
            created_ms: now_ms(),
            operators,
        };
        let meta_bytes = format::encode_metadata(&meta);
        stats.bytes_uploaded += meta_bytes.len() as u64;
        store
            .put(&meta_path, PutPayload::from(meta_bytes))
            .await
            .map_err(storage_err("put", &meta_rel))?;
        drop(claimed);
        // The savepoint holds what it needs; files staged only for it go.
        for (root, paths) in staged_garbage {
            if let Err(e) = self.delete_staged(&root, paths).await {
                tracing::warn!(error = %e, "files staged for a savepoint not removed");
            }
        }
        Ok(stats)
    }

    /// Checks a staged snapshot before `write` records or converts it: it must
    /// belong to this job and operator, describe itself consistently, and (for
    /// checkpoints) lie in this storage, in this checkpoint's directory or the
    /// job's shared files, so `_metadata` never points anywhere else.
    fn check_staged(
        &self,
        handle: &StagedSnapshot,
        job_id: &str,
        id: CheckpointId,
        kind: SnapshotKind,
        max_parallelism: usize,
    ) -> std::result::Result<(), String> {
        if handle.job_id != job_id {
            return Err(format!(
                "its RocksDB snapshot was staged for job `{}`",
                handle.job_id
            ));
        }
        if handle.max_parallelism != max_parallelism {
            return Err(format!(
                "it reports a RocksDB snapshot of max parallelism {}",
                handle.max_parallelism
            ));
        }
        format::validate_native(&handle.native, max_parallelism)?;
        if kind == SnapshotKind::Checkpoint {
            if handle.checkpoint != id {
                return Err(format!(
                    "its RocksDB snapshot was staged for checkpoint {}",
                    handle.checkpoint
                ));
            }
            if handle.root != self.root_uri() {
                return Err(format!(
                    "its RocksDB snapshot was staged to {}, not to this storage ({})",
                    handle.root,
                    self.root_uri()
                ));
            }
        }
        let own = format!("{}/", layout::checkpoint_dir(job_id, handle.checkpoint));
        let paths: HashSet<&String> = handle.native.files.iter().map(|f| &f.path).collect();
        for f in &handle.native.files {
            if !f.path.starts_with(&own) && !layout::is_shared_path(job_id, &f.path) {
                return Err(format!(
                    "staged file `{}` lies outside checkpoint {} and the job's shared files",
                    f.path, handle.checkpoint
                ));
            }
        }
        if let Some(stray) = handle.uploaded.iter().find(|p| !paths.contains(p)) {
            return Err(format!("staged upload `{stray}` is not one of its files"));
        }
        Ok(())
    }

    /// The store a staged snapshot's files lie in: this one, or another root
    /// opened with this storage's options (a savepoint directory configured
    /// apart from the checkpoint directory the TaskManagers stage to).
    fn staged_store(&self, root: &str) -> Result<Arc<dyn ObjectStore>> {
        if root == self.root_uri() {
            Ok(self.inner.backend.store.clone())
        } else {
            Ok(Backend::open(root, &self.inner.options)?.store)
        }
    }

    /// Downloads a staged snapshot into a temporary directory, verifying every
    /// file's size and CRC32, and reads it into key-group blobs.
    async fn convert_staged(
        &self,
        handle: &StagedSnapshot,
        location: &str,
    ) -> Result<Vec<(usize, Vec<u8>)>> {
        let source = self.staged_store(&handle.root)?;
        let dir = std::env::temp_dir().join(format!(
            "rill-savepoint-{}-{}-{}",
            handle.job_id,
            handle.checkpoint,
            short_random()
        ));
        // Removed on every path out of here.
        let _scratch = Claimed(vec![dir.clone()]);
        std::fs::create_dir_all(&dir).map_err(|e| local_err(&dir, e))?;
        stream::iter(handle.native.files.clone())
            .map(|f| {
                // Owned captures keep the future `Send` for any lifetime.
                let (source, dir, location) = (source.clone(), dir.clone(), location.to_string());
                async move {
                    let bytes = match source.get(&to_path(&f.path)?).await {
                        Ok(got) => got.bytes().await.map_err(storage_err("get", &f.path))?,
                        Err(object_store::Error::NotFound { .. }) => {
                            return Err(CheckpointError::MissingStateFile {
                                location,
                                file: f.path.clone(),
                            })
                        }
                        Err(e) => return Err(storage_err("get", &f.path)(e)),
                    };
                    if bytes.len() as u64 != f.size {
                        return Err(CheckpointError::SizeMismatch {
                            location,
                            file: f.path.clone(),
                            expected: f.size,
                            actual: bytes.len() as u64,
                        });
                    }
                    let actual = format::checksum(&bytes);
                    if actual != f.crc32 {
                        return Err(CheckpointError::ChecksumMismatch {
                            location,
                            file: f.path.clone(),
                            expected: f.crc32,
                            actual,
                        });
                    }
                    let target = dir.join(&f.name);
                    std::fs::write(&target, &bytes).map_err(|e| local_err(&target, e))?;
                    Ok::<(), CheckpointError>(())
                }
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let tables: Vec<TableInfo> = handle
            .native
            .tables
            .iter()
            .map(|t| TableInfo {
                name: t.name.clone(),
                type_name: t.type_name.clone(),
                ttl_ms: t.ttl_ms,
            })
            .collect();
        rill_state::native::key_group_blobs(
            &dir,
            handle.max_parallelism,
            &tables,
            Some(KeyGroupRange {
                start: handle.native.key_group_start,
                end: handle.native.key_group_end,
            }),
        )
        .map_err(|e| local_err(&dir, e))
    }

    /// Deletes files a staging uploaded (a missing file is fine).
    async fn delete_staged(&self, root: &str, paths: Vec<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let store = self.staged_store(root)?;
        let mut doomed = Vec::with_capacity(paths.len());
        for p in &paths {
            doomed.push(to_path(p)?);
        }
        let results: Vec<object_store::Result<Path>> = store
            .delete_stream(stream::iter(doomed.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        for result in results {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_err("delete", root)(e)),
            }
        }
        Ok(())
    }

    /// Uploads the files of claimed local snapshots of checkpoint `id` to
    /// their final paths: SST files of incremental snapshots to the job's
    /// shared files (unless the newest complete checkpoint, or the checkpoint
    /// the database was restored from, already holds them), everything else
    /// to `dir`. Describes each snapshot as `_metadata` records it. When an
    /// upload fails, what was uploaded is removed again (best effort).
    async fn upload_natives(
        &self,
        job_id: &str,
        dir: &str,
        id: CheckpointId,
        natives: &[(String, usize, LocalSnapshot)],
        stats: &mut WriteStats,
    ) -> Result<Vec<Uploaded>> {
        let store = self.store();
        // Incremental checkpoints reuse SST files the newest complete checkpoint holds.
        let base = if natives.iter().any(|(_, _, l)| l.incremental) {
            self.shared_files_of_latest(job_id).await?
        } else {
            HashMap::new()
        };
        let mut described: Vec<Uploaded> = Vec::with_capacity(natives.len());
        let mut native_uploads: Vec<NativeUpload> = Vec::new();
        for (index, (uid, subtask, local)) in natives.iter().enumerate() {
            let mut files = Vec::with_capacity(local.files.len());
            let mut owned = Vec::new();
            for (file_index, f) in local.files.iter().enumerate() {
                if !layout::is_plain_file_name(&f.name) {
                    return Err(local_err(&local.dir, format!("file name {:?}", f.name)));
                }
                let shareable = local.incremental && LocalSnapshot::is_shareable(&f.name);
                let mut reused = None;
                if shareable {
                    reused = base
                        .get(&(local.db_id.clone(), f.name.clone()))
                        .filter(|r| r.size == f.size)
                        .cloned();
                    if reused.is_none() {
                        if let Some(r) = f
                            .uploaded
                            .as_ref()
                            .filter(|r| r.size == f.size && layout::is_shared_path(job_id, &r.path))
                        {
                            // Inherited from the restored checkpoint: still there?
                            match store.head(&to_path(&r.path)?).await {
                                Ok(m) if m.size == f.size => reused = Some(r.clone()),
                                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                                Err(e) => return Err(storage_err("head", &r.path)(e)),
                            }
                        }
                    }
                }
                match reused {
                    Some(r) => {
                        stats.files_reused += 1;
                        stats.bytes_reused += r.size;
                        files.push(NativeFileMetadata {
                            name: f.name.clone(),
                            path: r.path,
                            size: r.size,
                            crc32: r.crc32,
                        });
                    }
                    None => {
                        let dest = if shareable {
                            layout::shared_file_path(
                                job_id,
                                uid,
                                *subtask,
                                &local.db_id,
                                id,
                                &f.name,
                            )
                        } else {
                            layout::join(&layout::native_dir(dir, uid, *subtask), &f.name)
                        };
                        native_uploads.push(NativeUpload {
                            part: index,
                            file: file_index,
                            source: local.dir.join(&f.name),
                            size: f.size,
                            dest: dest.clone(),
                        });
                        owned.push(dest.clone());
                        files.push(NativeFileMetadata {
                            name: f.name.clone(),
                            path: dest,
                            size: f.size,
                            crc32: 0,
                        });
                    }
                }
            }
            described.push(Uploaded {
                meta: NativeMetadata {
                    db_id: local.db_id.clone(),
                    key_group_start: local.key_groups.start,
                    key_group_end: local.key_groups.end,
                    incremental: local.incremental,
                    tables: local
                        .tables
                        .iter()
                        .map(|t| NativeTableMetadata {
                            name: t.name.clone(),
                            type_name: t.type_name.clone(),
                            ttl_ms: t.ttl_ms,
                        })
                        .collect(),
                    files,
                },
                owned,
            });
        }
        let dests: Vec<String> = native_uploads.iter().map(|u| u.dest.clone()).collect();
        let checksums: Result<Vec<(usize, usize, u32, u64)>> = stream::iter(native_uploads)
            .map(|u| async move {
                let bytes = std::fs::read(&u.source).map_err(|e| local_err(&u.source, e))?;
                if bytes.len() as u64 != u.size {
                    return Err(local_err(
                        &u.source,
                        format!("has {} bytes, the subtask reported {}", bytes.len(), u.size),
                    ));
                }
                let crc = format::checksum(&bytes);
                store
                    .put(&to_path(&u.dest)?, PutPayload::from(bytes))
                    .await
                    .map_err(storage_err("put", &u.dest))?;
                Ok::<_, CheckpointError>((u.part, u.file, crc, u.size))
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect()
            .await;
        let checksums = match checksums {
            Ok(checksums) => checksums,
            Err(e) => {
                let root = self.root_uri().to_string();
                if let Err(cleanup) = self.delete_staged(&root, dests).await {
                    tracing::warn!(error = %cleanup, "partly uploaded native files not removed");
                }
                return Err(e);
            }
        };
        for (part, file, crc, size) in checksums {
            described[part].meta.files[file].crc32 = crc;
            stats.files_uploaded += 1;
            stats.bytes_uploaded += size;
        }
        Ok(described)
    }

    /// TaskManager side of a native checkpoint in a cluster, where the
    /// process that writes `_metadata` cannot read this machine's files.
    ///
    /// If `part` is a RocksDB store's local snapshot handle (operator state
    /// of a `…#rocksdb` uid), its files are uploaded now, to the paths
    /// [`write`](Self::write) would have used for checkpoint `checkpoint`
    /// (incremental snapshots skip SST files the job's newest complete
    /// checkpoint already holds), the local directory is removed, and the
    /// handle is replaced by a [`StagedSnapshot`] naming the uploaded files.
    /// `write` then records staged handles without uploading anything, or
    /// for a savepoint converts them to key groups and deletes the files
    /// staged for it. Any other part is left alone. Returns what was
    /// uploaded and reused.
    ///
    /// Files staged for a checkpoint that never completes are removed by
    /// [`retain`](Self::retain) once a newer checkpoint completed: shared
    /// files by reference counting, the rest with the incomplete `chk-<n>`
    /// directory.
    pub fn stage_native(
        &self,
        job_id: &str,
        checkpoint: CheckpointId,
        part: &mut SubtaskState,
    ) -> Result<WriteStats> {
        if !part.uid.ends_with(NATIVE_UID_SUFFIX) {
            return Ok(WriteStats::default());
        }
        let Some(blob) = part
            .operator
            .as_deref()
            .filter(|b| LocalSnapshot::is_local_snapshot(b))
        else {
            return Ok(WriteStats::default());
        };
        let inconsistent = |reason: String| CheckpointError::InconsistentParts {
            uid: part.uid.clone(),
            reason: format!("subtask {}: {reason}", part.subtask),
        };
        let mut local = LocalSnapshot::decode(blob).map_err(|e| inconsistent(e.to_string()))?;
        // Whatever happens next, the local directory goes.
        let mut claimed = Claimed(Vec::new());
        claim(&mut local, &mut claimed)?;
        layout::validate_job_id(job_id)?;
        if local.max_parallelism != part.max_parallelism {
            return Err(inconsistent(format!(
                "it reports a RocksDB snapshot of max parallelism {}",
                local.max_parallelism
            )));
        }
        if local.checkpoint != checkpoint {
            return Err(inconsistent(format!(
                "its RocksDB snapshot belongs to checkpoint {}, not {checkpoint}",
                local.checkpoint
            )));
        }
        let dir = layout::checkpoint_dir(job_id, checkpoint);
        let natives = vec![(part.uid.clone(), part.subtask, local)];
        let (uploaded, stats) = self.block_on(async {
            // Never add files to a checkpoint that is already complete.
            let meta_rel = layout::metadata_path(&dir);
            match self.store().head(&to_path(&meta_rel)?).await {
                Ok(_) => {
                    return Err(CheckpointError::AlreadyExists {
                        location: self.inner.backend.uri_of(&dir),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_err("head", &meta_rel)(e)),
            }
            let mut stats = WriteStats::default();
            let uploaded = self
                .upload_natives(job_id, &dir, checkpoint, &natives, &mut stats)
                .await?;
            Ok((uploaded, stats))
        })?;
        let Some(uploaded) = uploaded.into_iter().next() else {
            unreachable!("one snapshot was uploaded");
        };
        let handle = StagedSnapshot {
            root: self.root_uri().to_string(),
            job_id: job_id.to_string(),
            checkpoint,
            max_parallelism: part.max_parallelism,
            native: uploaded.meta,
            uploaded: uploaded.owned,
        };
        let encoded = handle
            .encode()
            .map_err(|e| CheckpointError::LocalSnapshot {
                path: natives[0].2.dir.display().to_string(),
                reason: e.to_string(),
            })?;
        part.operator = Some(encoded);
        drop(claimed);
        tracing::debug!(
            job_id,
            checkpoint,
            uid = %part.uid,
            subtask = part.subtask,
            files = stats.files_uploaded,
            bytes = stats.bytes_uploaded,
            "native snapshot staged"
        );
        Ok(stats)
    }

    /// The shared native files of the job's newest complete checkpoint, by
    /// (database id, file name).
    async fn shared_files_of_latest(
        &self,
        job_id: &str,
    ) -> Result<HashMap<(String, String), RemoteFile>> {
        let mut out = HashMap::new();
        for id in self
            .checkpoint_dirs(&layout::job_dir(job_id))
            .await?
            .into_iter()
            .rev()
        {
            let meta = match self
                .read_metadata(&layout::checkpoint_dir(job_id, id))
                .await
            {
                Ok(meta) => meta,
                Err(e) if e.is_snapshot_damage() => continue,
                Err(e) => return Err(e),
            };
            for native in meta
                .operators
                .iter()
                .flat_map(|op| &op.files)
                .filter_map(|f| f.native.as_ref())
            {
                for f in native
                    .files
                    .iter()
                    .filter(|f| layout::is_shared_path(job_id, &f.path))
                {
                    out.insert(
                        (native.db_id.clone(), f.name.clone()),
                        RemoteFile {
                            path: f.path.clone(),
                            size: f.size,
                            crc32: f.crc32,
                        },
                    );
                }
            }
            break;
        }
        Ok(out)
    }

    /// Read and fully verify the snapshot in `location` (a `chk-<n>` or savepoint
    /// directory, as a URI, an absolute path, or a path relative to the root).
    pub fn read(&self, location: &str) -> Result<Snapshot> {
        let rel = self.inner.backend.resolve(location)?;
        self.block_on(self.read_dir(&rel))
    }

    async fn fetch(&self, rel: &str) -> Result<Option<bytes::Bytes>> {
        let path = to_path(rel)?;
        match self.store().get(&path).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(storage_err("get", rel))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_err("get", rel)(e)),
        }
    }

    async fn read_metadata(&self, rel: &str) -> Result<Metadata> {
        let location = self.inner.backend.uri_of(rel);
        let Some(bytes) = self.fetch(&layout::metadata_path(rel)).await? else {
            return Err(CheckpointError::MissingMetadata { location });
        };
        let meta = format::decode_metadata(&bytes).map_err(|e| match e {
            MetadataError::Corrupt(reason) => CheckpointError::CorruptMetadata {
                location: location.clone(),
                reason,
            },
            MetadataError::UnsupportedVersion(found) => CheckpointError::UnsupportedFormatVersion {
                location: location.clone(),
                found,
                supported: format::NATIVE_METADATA_FORMAT_VERSION,
            },
        })?;
        if let LocationShape::Checkpoint { job_id, id } = layout::classify(rel) {
            if meta.job_id != job_id || meta.id != id || meta.kind != SnapshotKind::Checkpoint {
                return Err(CheckpointError::CorruptMetadata {
                    location,
                    reason: format!(
                        "it describes {:?} {} of job `{}`, not checkpoint {id} of job `{job_id}`",
                        meta.kind, meta.id, meta.job_id
                    ),
                });
            }
        }
        Ok(meta)
    }

    /// The bytes of `rel_file`, which the metadata of the snapshot at
    /// `location` lists as `file` with `size` bytes and checksum `crc32`;
    /// a missing, short or altered file is an error naming both.
    async fn fetch_verified(
        &self,
        rel_file: &str,
        location: &str,
        file: &str,
        size: u64,
        crc32: u32,
    ) -> Result<bytes::Bytes> {
        let Some(bytes) = self.fetch(rel_file).await? else {
            return Err(CheckpointError::MissingStateFile {
                location: location.to_string(),
                file: file.to_string(),
            });
        };
        if bytes.len() as u64 != size {
            return Err(CheckpointError::SizeMismatch {
                location: location.to_string(),
                file: file.to_string(),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        let actual = format::checksum(&bytes);
        if actual != crc32 {
            return Err(CheckpointError::ChecksumMismatch {
                location: location.to_string(),
                file: file.to_string(),
                expected: crc32,
                actual,
            });
        }
        Ok(bytes)
    }

    async fn read_dir(&self, rel: &str) -> Result<Snapshot> {
        let location = self.inner.backend.uri_of(rel);
        let meta = self.read_metadata(rel).await?;

        let wanted: Vec<(usize, FileMetadata)> = meta
            .operators
            .iter()
            .enumerate()
            .flat_map(|(i, op)| op.files.iter().map(move |f| (i, f.clone())))
            .collect();
        let location_ref = &location;
        let loaded: Vec<(usize, FileMetadata, format::StateFile)> = stream::iter(wanted)
            .map(|(op_index, f)| async move {
                let rel_file = layout::join(rel, &f.file);
                let bytes = self
                    .fetch_verified(&rel_file, location_ref, &f.file, f.size, f.crc32)
                    .await?;
                let state = format::decode_state_file(&bytes).map_err(|reason| {
                    CheckpointError::CorruptStateFile {
                        location: location_ref.clone(),
                        file: f.file.clone(),
                        reason,
                    }
                })?;
                Ok((op_index, f, state))
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect()
            .await?;

        // Native database files, verified like state files. Their paths are
        // relative to the root the checkpoint was written under, where it
        // lies at `<job>/chk-<n>`; this storage may be opened elsewhere (at
        // the job directory, say, when restoring from a checkpoint's path),
        // so paths are moved by the difference between the two frames.
        let written = match meta.kind {
            SnapshotKind::Checkpoint => layout::checkpoint_dir(&meta.job_id, meta.id),
            SnapshotKind::Savepoint => rel.to_string(),
        };
        let (strip, prepend) = if written == rel {
            (String::new(), String::new())
        } else if rel.is_empty() {
            (format!("{written}/"), String::new())
        } else if let Some(above) = written.strip_suffix(rel).filter(|p| p.ends_with('/')) {
            (above.to_string(), String::new())
        } else if let Some(above) = rel
            .strip_suffix(written.as_str())
            .filter(|p| p.ends_with('/'))
        {
            (String::new(), above.to_string())
        } else {
            (String::new(), String::new())
        };
        let mut native_jobs = Vec::new();
        for (op_index, op) in meta.operators.iter().enumerate() {
            for f in &op.files {
                let Some(native) = &f.native else { continue };
                for (file_index, nf) in native.files.iter().enumerate() {
                    let inside = nf
                        .path
                        .strip_prefix(written.as_str())
                        .is_some_and(|rest| rest.starts_with('/'));
                    let here = nf
                        .path
                        .strip_prefix(strip.as_str())
                        .map(|p| format!("{prepend}{p}"));
                    let (true, Some(here)) = (
                        inside || layout::is_shared_path(&meta.job_id, &nf.path),
                        here,
                    ) else {
                        return Err(CheckpointError::CorruptMetadata {
                            location: location.clone(),
                            reason: format!(
                                "native file `{}` lies outside the snapshot and the job's shared files",
                                nf.path
                            ),
                        });
                    };
                    native_jobs.push((op_index, f.subtask, file_index, nf.clone(), here));
                }
            }
        }
        let fetched: Vec<(usize, usize, usize, bytes::Bytes)> = stream::iter(native_jobs)
            .map(|(op_index, subtask, file_index, nf, here)| async move {
                let bytes = self
                    .fetch_verified(&here, location_ref, &nf.path, nf.size, nf.crc32)
                    .await?;
                Ok((op_index, subtask, file_index, bytes))
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect()
            .await?;
        let mut native_bytes: HashMap<(usize, usize), BTreeMap<usize, bytes::Bytes>> =
            HashMap::new();
        for (op_index, subtask, file_index, bytes) in fetched {
            native_bytes
                .entry((op_index, subtask))
                .or_default()
                .insert(file_index, bytes);
        }

        let mut operators: BTreeMap<String, OperatorSnapshot> = meta
            .operators
            .iter()
            .map(|op| {
                (
                    op.uid.clone(),
                    OperatorSnapshot {
                        parallelism: op.parallelism,
                        max_parallelism: op.max_parallelism,
                        ..OperatorSnapshot::default()
                    },
                )
            })
            .collect();
        for (op_index, f, state) in loaded {
            let op_meta = &meta.operators[op_index];
            let corrupt = |reason: String| CheckpointError::CorruptStateFile {
                location: location.clone(),
                file: f.file.clone(),
                reason,
            };
            if state.uid != op_meta.uid || state.subtask != f.subtask {
                return Err(corrupt(format!(
                    "it holds operator `{}` subtask {}, `_metadata` says `{}` subtask {}",
                    state.uid, state.subtask, op_meta.uid, f.subtask
                )));
            }
            let Some(op) = operators.get_mut(&op_meta.uid) else {
                unreachable!("operators was built from the same metadata");
            };
            for (kg, blob) in state.keyed {
                if kg >= op.max_parallelism {
                    return Err(corrupt(format!(
                        "key group {kg} is out of range for max parallelism {}",
                        op.max_parallelism
                    )));
                }
                if op.keyed.insert(kg, blob).is_some() {
                    return Err(corrupt(format!(
                        "key group {kg} also appears in another subtask's file"
                    )));
                }
            }
            if let Some(blob) = state.operator {
                op.operator.insert(f.subtask, blob);
            }
            if let Some(native) = &f.native {
                if op.operator.contains_key(&f.subtask) {
                    return Err(corrupt(
                        "it holds operator state and `_metadata` lists native files for it"
                            .to_string(),
                    ));
                }
                let mut bytes = native_bytes
                    .remove(&(op_index, f.subtask))
                    .unwrap_or_default();
                let restored = RestoredSnapshot {
                    db_id: native.db_id.clone(),
                    max_parallelism: op.max_parallelism,
                    key_groups: KeyGroupRange {
                        start: native.key_group_start,
                        end: native.key_group_end,
                    },
                    tables: native
                        .tables
                        .iter()
                        .map(|t| TableInfo {
                            name: t.name.clone(),
                            type_name: t.type_name.clone(),
                            ttl_ms: t.ttl_ms,
                        })
                        .collect(),
                    files: native
                        .files
                        .iter()
                        .enumerate()
                        .map(|(i, nf)| RestoredFile {
                            name: nf.name.clone(),
                            shared: layout::is_shared_path(&meta.job_id, &nf.path).then(|| {
                                RemoteFile {
                                    path: nf.path.clone(),
                                    size: nf.size,
                                    crc32: nf.crc32,
                                }
                            }),
                            bytes: bytes.remove(&i).map(|b| b.to_vec()).unwrap_or_default(),
                        })
                        .collect(),
                };
                let blob = restored.encode().map_err(|e| corrupt(e.to_string()))?;
                op.operator.insert(f.subtask, blob);
            }
        }
        Ok(Snapshot {
            id: meta.id,
            kind: meta.kind,
            job: meta.job_id,
            created_ms: meta.created_ms,
            operators,
        })
    }

    /// Ids of the `chk-<n>` directories directly under `rel`, ascending, whether
    /// complete or not.
    async fn checkpoint_dirs(&self, rel: &str) -> Result<Vec<CheckpointId>> {
        let prefix = if rel.is_empty() {
            None
        } else {
            Some(to_path(rel)?)
        };
        let listing = match self.store().list_with_delimiter(prefix.as_ref()).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(storage_err("list", rel)(e)),
        };
        let mut ids: Vec<CheckpointId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(layout::parse_checkpoint_dir_name))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Checkpoints of a job split into (complete, incomplete) ids, both ascending.
    /// Complete means `_metadata` exists, decodes and names this checkpoint.
    async fn classify_checkpoints(
        &self,
        job_id: &str,
    ) -> Result<(Vec<CheckpointId>, Vec<CheckpointId>)> {
        let mut complete = Vec::new();
        let mut incomplete = Vec::new();
        for id in self.checkpoint_dirs(&layout::job_dir(job_id)).await? {
            match self
                .read_metadata(&layout::checkpoint_dir(job_id, id))
                .await
            {
                Ok(_) => complete.push(id),
                Err(e) if e.is_snapshot_damage() => incomplete.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok((complete, incomplete))
    }

    /// Ids of the job's complete checkpoints (valid `_metadata`), ascending. State
    /// files are not verified here; [`read`](Self::read) and
    /// [`restore_point`](Self::restore_point) do that.
    pub fn complete_checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointId>> {
        layout::validate_job_id(job_id)?;
        Ok(self.block_on(self.classify_checkpoints(job_id))?.0)
    }

    /// The newest complete checkpoint of a job and its location URI.
    pub fn latest_complete(&self, job_id: &str) -> Result<Option<(CheckpointId, String)>> {
        layout::validate_job_id(job_id)?;
        self.block_on(async {
            let ids = self.checkpoint_dirs(&layout::job_dir(job_id)).await?;
            for id in ids.into_iter().rev() {
                let dir = layout::checkpoint_dir(job_id, id);
                match self.read_metadata(&dir).await {
                    Ok(_) => return Ok(Some((id, self.inner.backend.uri_of(&dir)))),
                    Err(e) if e.is_snapshot_damage() => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })
    }

    /// Find what to restore from `location`:
    ///
    /// * a snapshot directory (`chk-<n>` or a savepoint, or any directory holding a
    ///   `_metadata`) is read and verified as is;
    /// * a job directory (`<root>/<job-id>`, or just the job id) restores its newest
    ///   checkpoint that verifies. Damaged newer checkpoints (missing `_metadata`,
    ///   corrupt metadata, missing or corrupt state files) are skipped, each with a
    ///   warning naming the checkpoint and the reason; storage outages are errors,
    ///   not reasons to fall back.
    ///
    /// Errors with [`CheckpointError::NothingRestorable`] when no checkpoint verifies.
    pub fn restore_point(&self, location: &str) -> Result<(Snapshot, Vec<String>)> {
        let rel = self.inner.backend.resolve(location)?;
        self.block_on(self.restore_rel(location, &rel))
    }

    async fn restore_rel(&self, location: &str, rel: &str) -> Result<(Snapshot, Vec<String>)> {
        let shape = layout::classify(rel);
        let has_metadata = !rel.is_empty()
            && self
                .store()
                .head(&to_path(&layout::metadata_path(rel))?)
                .await
                .is_ok();
        if has_metadata
            || matches!(
                shape,
                LocationShape::Checkpoint { .. } | LocationShape::Savepoint { .. }
            )
        {
            return Ok((self.read_dir(rel).await?, Vec::new()));
        }

        let ids = self.checkpoint_dirs(rel).await?;
        if ids.is_empty() {
            return Err(CheckpointError::NothingRestorable {
                location: location.to_string(),
                reason: format!(
                    "{} holds no snapshot (`_metadata`) and no chk-* checkpoint directories",
                    self.inner.backend.uri_of(rel)
                ),
            });
        }
        let mut warnings = Vec::new();
        for id in ids.into_iter().rev() {
            let dir = layout::join(rel, &layout::checkpoint_dir_name(id));
            match self.read_dir(&dir).await {
                Ok(snapshot) => return Ok((snapshot, warnings)),
                Err(e) if e.is_snapshot_damage() => {
                    let warning = format!(
                        "skipped checkpoint {} ({}): {e}",
                        layout::checkpoint_dir_name(id),
                        self.inner.backend.uri_of(&dir)
                    );
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                }
                Err(e) => return Err(e),
            }
        }
        Err(CheckpointError::NothingRestorable {
            location: location.to_string(),
            reason: format!("every checkpoint is damaged: {}", warnings.join("; ")),
        })
    }

    /// Delete all but the newest `keep` complete checkpoints of a job, plus every
    /// incomplete `chk-*` directory older than the newest complete one (newer ones
    /// may still be in progress). Savepoints are never touched. Returns the deleted
    /// ids, ascending. `keep == 0` deletes every complete checkpoint.
    pub fn retain(&self, job_id: &str, keep: usize) -> Result<Vec<CheckpointId>> {
        layout::validate_job_id(job_id)?;
        self.block_on(async {
            let (complete, incomplete) = self.classify_checkpoints(job_id).await?;
            let newest_complete = complete.last().copied();
            let mut doomed: Vec<CheckpointId> =
                complete[..complete.len().saturating_sub(keep)].to_vec();
            if let Some(newest) = newest_complete {
                doomed.extend(incomplete.iter().copied().filter(|id| *id < newest));
            }
            doomed.sort_unstable();
            for id in &doomed {
                self.delete_dir(&layout::checkpoint_dir(job_id, *id))
                    .await?;
            }
            if !doomed.is_empty() {
                tracing::debug!(job_id, ?doomed, "old checkpoints deleted");
            }
            if let Some(newest) = newest_complete {
                let kept: Vec<CheckpointId> = complete
                    .iter()
                    .copied()
                    .filter(|id| !doomed.contains(id))
                    .collect();
                self.delete_unreferenced_shared(job_id, &kept, newest)
                    .await?;
            }
            Ok(doomed)
        })
    }

    /// Shared files no checkpoint in `kept` references. Files uploaded by a
    /// checkpoint newer than `newest` (the newest complete one) may belong to
    /// a checkpoint still being written, and files whose name does not say
    /// which checkpoint uploaded them are not ours to judge; both are left.
    async fn unreferenced_shared(
        &self,
        job_id: &str,
        kept: &[CheckpointId],
        newest: CheckpointId,
    ) -> Result<Vec<Path>> {
        let mut referenced: HashSet<String> = HashSet::new();
        for id in kept {
            let meta = match self
                .read_metadata(&layout::checkpoint_dir(job_id, *id))
                .await
            {
                Ok(meta) => meta,
                // Unreadable metadata makes the checkpoint unusable; its files go.
                Err(e) if e.is_snapshot_damage() => continue,
                Err(e) => return Err(e),
            };
            for native in meta
                .operators
                .iter()
                .flat_map(|op| &op.files)
                .filter_map(|f| f.native.as_ref())
            {
                referenced.extend(native.files.iter().map(|f| f.path.clone()));
            }
        }
        let shared = layout::shared_dir(job_id);
        let listed: Vec<Path> = match self
            .store()
            .list(Some(&to_path(&shared)?))
            .map_ok(|m| m.location)
            .try_collect()
            .await
        {
            Ok(files) => files,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(storage_err("list", &shared)(e)),
        };
        Ok(listed
            .into_iter()
            .filter(|p| {
                !referenced.contains(p.as_ref())
                    && layout::shared_file_checkpoint(p.as_ref()).is_some_and(|n| n <= newest)
            })
            .collect())
    }

    async fn delete_unreferenced_shared(
        &self,
        job_id: &str,
        kept: &[CheckpointId],
        newest: CheckpointId,
    ) -> Result<()> {
        let doomed = self.unreferenced_shared(job_id, kept, newest).await?;
        if doomed.is_empty() {
            return Ok(());
        }
        let count = doomed.len();
        let results: Vec<object_store::Result<Path>> = self
            .store()
            .delete_stream(stream::iter(doomed.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        for result in results {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_err("delete", &layout::shared_dir(job_id))(e)),
            }
        }
        tracing::debug!(job_id, count, "unreferenced shared files deleted");
        Ok(())
    }

    /// Paths (relative to the root) of the job's shared files, sorted.
    pub fn shared_files(&self, job_id: &str) -> Result<Vec<String>> {
        layout::validate_job_id(job_id)?;
        let shared = layout::shared_dir(job_id);
        self.block_on(async {
            let listed: Vec<String> = match self
                .store()
                .list(Some(&to_path(&shared)?))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
            {
                Ok(files) => files,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(storage_err("list", &shared)(e)),
            };
            let mut listed = listed;
            listed.sort();
            Ok(listed)
        })
    }

    /// Delete checkpoint `id` of a job (e.g. an aborted one), whatever state it is
    /// in. Deleting a checkpoint that does not exist is not an error.
    pub fn discard(&self, job_id: &str, id: CheckpointId) -> Result<()> {
        layout::validate_job_id(job_id)?;
        self.block_on(self.delete_dir(&layout::checkpoint_dir(job_id, id)))
    }

    /// Delete a snapshot directory: `_metadata` first (so it stops being complete at
    /// once), then everything else under it.
    async fn delete_dir(&self, rel: &str) -> Result<()> {
        let store = self.store();
        let meta_rel = layout::metadata_path(rel);
        match store.delete(&to_path(&meta_rel)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_err("delete", &meta_rel)(e)),
        }
        let prefix = to_path(rel)?;
        let files: Vec<Path> = match store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
        {
            Ok(files) => files,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(storage_err("list", rel)(e)),
        };
        let results: Vec<object_store::Result<Path>> = store
            .delete_stream(stream::iter(files.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        for result in results {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_err("delete", rel)(e)),
            }
        }
        Ok(())
    }
}
