//! The RocksDB keyed-state backend.
//!
//! The heap backend keeps every value as a live object, so a subtask's state
//! is bounded by memory. This backend keeps it in an embedded RocksDB on local
//! disk instead: only memtables and cached blocks are in memory, and values
//! are decoded when a handle touches them. Handles and operators do not see
//! the difference; [`KeyedStateStore`](crate::KeyedStateStore) routes to the
//! tables here when it was opened with [`StateBackend::RocksDb`](crate::StateBackend).
//!
//! Layout:
//! * one column family per state name;
//! * key = key group (2 bytes, big-endian) followed by the encoded current
//!   key, so each key group is one contiguous key range and a snapshot groups
//!   entries by reading the prefix, without decoding keys;
//! * value = encoded "touched" timestamp (the TTL clock) followed by the
//!   encoded state value.
//!
//! Snapshots are byte-compatible with the heap backend: a table's part of a
//! key-group blob is the encoding of `Vec<(K, S, i64)>`, which is a length
//! followed by each entry's key, value and timestamp encodings, so it can be
//! assembled from the stored bytes without knowing `S`. Restoring needs the
//! value type to split entries, so restored tables wait (as on the heap) for
//! the first handle that binds them and are then written into RocksDB.
//!
//! The database is scratch space: durability comes from checkpoints, so the
//! write-ahead log is off and the directory (a fresh one per store, under
//! `state.backend.rocksdb.localdir` or the temp directory) is removed when the
//! store is dropped.
//!
//! Checkpoints are native ([`crate::native`]): at a barrier the store flushes
//! its memtables and asks RocksDB for a checkpoint directory next to the
//! database (hard links of the SST files), which the uploader takes over.
//! Restoring opens the database of the snapshot that overlaps the subtask's
//! key groups most, deletes the key groups the subtask does not own, and
//! copies the owned key groups of any other overlapping snapshot into it, so
//! the same code serves equal parallelism (one snapshot, nothing to delete or
//! copy) and rescaling.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRawIteratorWithThreadMode, Options,
    WriteBatch, WriteOptions, DB,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::backend::RocksDbOptions;
use crate::key_group::{hash_key, key_group_for_hash};
use crate::keyed::{StateTtl, TtlUpdate};
use crate::native::{LocalFile, LocalSnapshot, RemoteFile, RestoredSnapshot, TableInfo};
use crate::{codec, KeyGroupRange, StateError};

/// Entries written per batch when copying key groups between databases.
const COPY_BATCH: usize = 50_000;
/// Suffix (before the checkpoint id) of local snapshot directories, which
/// sit next to their database directory.
const SNAPSHOT_INFIX: &str = ".chk-";

/// Entries the periodic TTL sweep examines per table and round; the sweep
/// resumes where it stopped, so large tables are covered over several rounds.
const SWEEP_BUDGET: usize = 50_000;

fn storage(context: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("{context}: {e}"))
}

pub(crate) fn expired(ttl: Option<StateTtl>, touched: i64, now: i64) -> bool {
    matches!(ttl, Some(t) if now.saturating_sub(touched) >= t.ttl_ms)
}

/// One state name's column family.
pub(crate) struct RocksTable {
    pub(crate) name: String,
    pub(crate) type_name: &'static str,
    pub(crate) ttl: Option<StateTtl>,
    /// Whether a handle has claimed the table (and so fixed its type). Tables
    /// restored from a native snapshot exist before any handle asks for them.
    pub(crate) bound: bool,
    /// The value type recorded in the snapshot a table was restored from.
    recorded_type: String,
    /// Where the next TTL sweep round starts (empty: at the beginning).
    sweep_from: Vec<u8>,
}

/// The RocksDB tables of one store.
pub(crate) struct RocksTables {
    // Field order matters: the database closes before its directory goes.
    db: DB,
    dir: tempfile::TempDir,
    write: WriteOptions,
    max_parallelism: usize,
    tables: Vec<RocksTable>,
    by_name: HashMap<String, usize>,
    incremental: bool,
    /// Identity of this database instance (see [`LocalSnapshot::db_id`]).
    db_id: String,
    /// SST files the database was restored from that already lie in shared
    /// checkpoint storage, by file name.
    inherited: HashMap<String, RemoteFile>,
    /// Local snapshot directories made by this store, oldest first.
    outstanding: Vec<PathBuf>,
    /// Name prefix of the database directory (`rill-rocksdb-<label>-`).
    prefix: String,
}

fn column_family(name: &str) -> String {
    // Keeps state names clear of RocksDB's own `default` column family.
    format!("state/{name}")
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_max_background_jobs(2);
    opts
}

fn cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

/// Sixteen hex characters that differ between calls.
fn random_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `RandomState` is seeded randomly per process and varies per instance.
    let h = std::collections::hash_map::RandomState::new().hash_one((nanos, n));
    format!("{h:016x}")
}

/// The first database key of key group `kg` (also the end bound of `kg - 1`).
fn group_start(kg: usize) -> Vec<u8> {
    if kg > u16::MAX as usize {
        // Past the last possible key group: every key sorts before this.
        vec![0xff, 0xff, 0xff]
    } else {
        (kg as u16).to_be_bytes().to_vec()
    }
}

/// Opens the database in `path` with every column family it has.
fn open_existing(path: &Path) -> Result<DB, StateError> {
    let names = DB::list_cf(&Options::default(), path)
        .map_err(|e| storage(&format!("listing column families in {}", path.display()), e))?;
    let cfs = names
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_options()));
    DB::open_cf_descriptors(&db_options(), path, cfs)
        .map_err(|e| storage(&format!("opening RocksDB in {}", path.display()), e))
}

/// Opens a snapshot directory read-only (nothing in it is changed).
fn open_read_only(path: &Path) -> Result<DB, StateError> {
    let names = DB::list_cf(&Options::default(), path)
        .map_err(|e| storage(&format!("listing column families in {}", path.display()), e))?;
    DB::open_cf_for_read_only(&Options::default(), path, names, false)
        .map_err(|e| storage(&format!("opening the snapshot in {}", path.display()), e))
}

/// Writes the files of a restored snapshot into a new directory under `parent`.
fn write_files(
    snapshot: &RestoredSnapshot,
    parent: Option<&Path>,
    prefix: &str,
) -> Result<tempfile::TempDir, StateError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    let dir = match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .map_err(|e| storage("creating a directory for restored state", e))?;
    for f in &snapshot.files {
        if f.name.is_empty() || f.name.contains(['/', '\\']) || f.name == "." || f.name == ".." {
            return Err(StateError::Corrupt(format!(
                "snapshot file name {:?} is not a plain file name",
                f.name
            )));
        }
        std::fs::write(dir.path().join(&f.name), &f.bytes)
            .map_err(|e| storage(&format!("writing restored file {}", f.name), e))?;
    }
    Ok(dir)
}

fn table_ttl(ttl_ms: Option<i64>) -> Option<StateTtl> {
    ttl_ms.map(|ttl_ms| StateTtl {
        ttl_ms,
        update: TtlUpdate::OnCreateAndWrite,
    })
}

/// Adds the live entries of one column family to `parts` (key group →
/// entry count and concatenated `(K, S, i64)` encodings). `regroup` maps the
/// encoded key (after its key-group prefix) to another key group, or `None`
/// to keep the prefix's.
fn collect_entries<F>(
    mut it: DBRawIteratorWithThreadMode<'_, DB>,
    table: &str,
    ttl: Option<StateTtl>,
    now: i64,
    range: Option<KeyGroupRange>,
    mut regroup: F,
    parts: &mut BTreeMap<usize, (u64, Vec<u8>)>,
) -> Result<(), StateError>
where
    F: FnMut(&[u8]) -> Result<Option<usize>, StateError>,
{
    match range {
        Some(r) => it.seek(group_start(r.start)),
        None => it.seek_to_first(),
    }
    let end = range.map(|r| group_start(r.end + 1));
    while let Some((key, value)) = it.item() {
        if end.as_deref().is_some_and(|end| key >= end) {
            break;
        }
        let corrupt = || StateError::Corrupt(format!("state '{table}': malformed RocksDB entry"));
        let (prefix, key_bytes) = key.split_at_checked(2).ok_or_else(corrupt)?;
        let (touched, used) = codec::decode_prefix::<i64>(value)?;
        if !expired(ttl, touched, now) {
            let kg = match regroup(key_bytes)? {
                Some(kg) => kg,
                None => u16::from_be_bytes([prefix[0], prefix[1]]) as usize,
            };
            let part = parts.entry(kg).or_default();
            part.0 += 1;
            part.1.extend_from_slice(key_bytes);
            part.1.extend_from_slice(&value[used..]);
            codec::encode_into(&touched, &mut part.1)?;
        }
        it.next();
    }
    it.status()
        .map_err(|e| storage(&format!("reading state '{table}' for a snapshot"), e))
}

/// Turns collected parts into key-group blobs of `(table, entries)` lists.
fn add_parts<'a>(
    table: &'a str,
    parts: BTreeMap<usize, (u64, Vec<u8>)>,
    groups: &mut BTreeMap<usize, Vec<(&'a str, Vec<u8>)>>,
) -> Result<(), StateError> {
    for (kg, (count, entries)) in parts {
        let mut bytes = codec::encode(&count)?;
        bytes.extend_from_slice(&entries);
        groups.entry(kg).or_default().push((table, bytes));
    }
    Ok(())
}

/// See [`crate::native::key_group_blobs`].
pub(crate) fn key_group_blobs_of_dir(
    dir: &Path,
    max_parallelism: usize,
    tables: &[TableInfo],
    range: Option<KeyGroupRange>,
) -> Result<Vec<(usize, Vec<u8>)>, StateError> {
    let db = open_read_only(dir)?;
    let mut groups: BTreeMap<usize, Vec<(&str, Vec<u8>)>> = BTreeMap::new();
    for table in tables {
        let Some(cf) = db.cf_handle(&column_family(&table.name)) else {
            return Err(StateError::Corrupt(format!(
                "the snapshot lacks the column family of state '{}'",
                table.name
            )));
        };
        let mut parts = BTreeMap::new();
        collect_entries(
            db.raw_iterator_cf(cf),
            &table.name,
            None,
            i64::MIN,
            range,
            |_| Ok(None),
            &mut parts,
        )?;
        if let Some((&kg, _)) = parts.range(max_parallelism..).next() {
            return Err(StateError::Corrupt(format!(
                "state '{}' holds key group {kg}, beyond max parallelism {max_parallelism}",
                table.name
            )));
        }
        add_parts(&table.name, parts, &mut groups)?;
    }
    groups
        .into_iter()
        .map(|(kg, tables)| Ok((kg, codec::encode(&tables)?)))
        .collect()
}

/// Local snapshot directories of databases that no longer exist (their
/// store is gone and the uploader never took them), under `parent` and
/// starting with `prefix`.
fn stale_snapshot_dirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            let (db_dir, id) = name.split_once(SNAPSHOT_INFIX)?;
            let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
            (plain && !parent.join(db_dir).exists()).then(|| e.path())
        })
        .collect()
}

impl RocksTables {
    /// Opens a fresh database for a store whose keys fall into
    /// `max_parallelism` key groups. `label` names the directory.
    pub(crate) fn open(
        options: &RocksDbOptions,
        max_parallelism: usize,
        label: &str,
    ) -> Result<Self, StateError> {
        if max_parallelism == 0 || max_parallelism > 1 << 16 {
            return Err(StateError::InvalidKeyGroups(format!(
                "the rocksdb backend needs 1 ≤ maxParallelism ≤ 65536, not {max_parallelism}"
            )));
        }
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        let prefix = format!("rill-rocksdb-{label}-");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match &options.local_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .map_err(|e| storage(&format!("creating {}", parent.display()), e))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .map_err(|e| storage("creating the RocksDB directory", e))?;
        if let Some(parent) = dir.path().parent() {
            // Snapshots a dropped store of this operator left behind.
            for stale in stale_snapshot_dirs(parent, &prefix) {
                let _ = crate::native::remove_local_dir(&stale);
            }
        }
        let db = DB::open(&db_options(), dir.path())
            .map_err(|e| storage(&format!("opening RocksDB in {}", dir.path().display()), e))?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(Self {
            db,
            dir,
            write,
            max_parallelism,
            tables: Vec::new(),
            by_name: HashMap::new(),
            incremental: options.incremental,
            db_id: random_id(),
            inherited: HashMap::new(),
            outstanding: Vec::new(),
            prefix,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn table_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn table(&self, index: usize) -> Option<&RocksTable> {
        self.tables.get(index)
    }

    /// Creates the column family of state `name`, holding values of `type_name`.
    pub(crate) fn create_table(
        &mut self,
        name: &str,
        type_name: &'static str,
        ttl: Option<StateTtl>,
    ) -> Result<usize, StateError> {
        if let Some(&index) = self.by_name.get(name) {
            // Restored from a native snapshot: the first handle fixes its type.
            let table = &mut self.tables[index];
            if !table.bound {
                table.bound = true;
                table.type_name = type_name;
                table.ttl = ttl;
            }
            return Ok(index);
        }
        self.db
            .create_cf(column_family(name), &cf_options())
            .map_err(|e| storage(&format!("creating the column family of '{name}'"), e))?;
        self.tables.push(RocksTable {
            name: name.to_string(),
            type_name,
            ttl,
            bound: true,
            recorded_type: type_name.to_string(),
            sweep_from: Vec::new(),
        });
        self.by_name.insert(name.to_string(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    /// Registers a column family restored from a snapshot, not yet claimed
    /// by a handle; creates it if the database lacks it.
    fn register_restored(&mut self, info: &TableInfo) -> Result<usize, StateError> {
        if let Some(&index) = self.by_name.get(&info.name) {
            return Ok(index);
        }
        let cf = column_family(&info.name);
        if self.db.cf_handle(&cf).is_none() {
            self.db.create_cf(&cf, &cf_options()).map_err(|e| {
                storage(&format!("creating the column family of '{}'", info.name), e)
            })?;
        }
        self.tables.push(RocksTable {
            name: info.name.clone(),
            type_name: "",
            ttl: table_ttl(info.ttl_ms),
            bound: false,
            recorded_type: info.type_name.clone(),
            sweep_from: Vec::new(),
        });
        self.by_name
            .insert(info.name.clone(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    fn cf(&self, index: usize) -> Result<&ColumnFamily, StateError> {
        let name = &self
            .tables
            .get(index)
            .ok_or_else(|| StateError::Storage(format!("no state table #{index}")))?
            .name;
        self.db
            .cf_handle(&column_family(name))
            .ok_or_else(|| StateError::Storage(format!("column family of '{name}' is missing")))
    }

    /// The database key of `key`: its key group, then its encoding.
    pub(crate) fn encode_key<K: Serialize + std::hash::Hash>(
        &self,
        key: &K,
    ) -> Result<Vec<u8>, StateError> {
        let kg = key_group_for_hash(hash_key(key), self.max_parallelism) as u16;
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&kg.to_be_bytes());
        codec::encode_into(key, &mut out)?;
        Ok(out)
    }

    /// The value stored under `key` and when it was last touched.
    pub(crate) fn get<S: DeserializeOwned>(
        &self,
        index: usize,
        key: &[u8],
    ) -> Result<Option<(S, i64)>, StateError> {
        let cf = self.cf(index)?;
        let Some(bytes) = self
            .db
            .get_pinned_cf(cf, key)
            .map_err(|e| storage("reading state", e))?
        else {
            return Ok(None);
        };
        let (touched, used) = codec::decode_prefix::<i64>(&bytes)?;
        let value = codec::decode::<S>(&bytes[used..])?;
        Ok(Some((value, touched)))
    }

    pub(crate) fn put<S: Serialize>(
        &self,
        index: usize,
        key: &[u8],
        value: &S,
        touched: i64,
    ) -> Result<(), StateError> {
        let cf = self.cf(index)?;
        let mut bytes = Vec::with_capacity(32);
        codec::encode_into(&touched, &mut bytes)?;
        codec::encode_into(value, &mut bytes)?;
        self.db
            .put_cf_opt(cf, key, bytes, &self.write)
            .map_err(|e| storage("writing state", e))
    }

    pub(crate) fn delete(&self, index: usize, key: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(index)?;
        self.db
            .delete_cf_opt(cf, key, &self.write)
            .map_err(|e| storage("deleting state", e))
    }

    /// Writes restored entries (a snapshot table part: `Vec<(K, S, i64)>`).
    pub(crate) fn load<K, S>(&self, index: usize, encoded: &[u8]) -> Result<(), StateError>
    where
        K: Serialize + DeserializeOwned + std::hash::Hash,
        S: Serialize + DeserializeOwned,
    {
        let entries: Vec<(K, S, i64)> = codec::decode(encoded)?;
        let cf = self.cf(index)?;
        let mut batch = WriteBatch::default();
        let mut value = Vec::with_capacity(32);
        for (key, state, touched) in &entries {
            value.clear();
            codec::encode_into(touched, &mut value)?;
            codec::encode_into(state, &mut value)?;
            batch.put_cf(cf, self.encode_key(key)?, &value);
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| storage("writing restored state", e))
    }

    /// Number of stored entries of a table (expired ones not yet swept included).
    pub(crate) fn count(&self, index: usize) -> Result<usize, StateError> {
        let cf = self.cf(index)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status().map_err(|e| storage("counting state", e))?;
        Ok(n)
    }

    /// One round of the TTL sweep: deletes expired entries among the next
    /// [`SWEEP_BUDGET`] of every table with a TTL.
    pub(crate) fn purge_expired(&mut self, now: i64) -> Result<(), StateError> {
        for index in 0..self.tables.len() {
            let ttl = self.tables[index].ttl;
            if ttl.is_none() {
                continue;
            }
            let cf = self.cf(index)?;
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek(&self.tables[index].sweep_from);
            let mut batch = WriteBatch::default();
            let mut seen = 0;
            while seen < SWEEP_BUDGET {
                let Some((key, value)) = it.item() else { break };
                // Values that do not decode are left for the read that reports them.
                if let Ok((touched, _)) = codec::decode_prefix::<i64>(value) {
                    if expired(ttl, touched, now) {
                        batch.delete_cf(cf, key);
                    }
                }
                seen += 1;
                it.next();
            }
            it.status()
                .map_err(|e| storage("sweeping expired state", e))?;
            let resume = it.key().map(<[u8]>::to_vec).unwrap_or_default();
            drop(it);
            self.db
                .write_opt(batch, &self.write)
                .map_err(|e| storage("sweeping expired state", e))?;
            self.tables[index].sweep_from = resume;
        }
        Ok(())
    }

    /// Adds the live entries of every table to `groups` (key group → list of
    /// (state name, encoded `Vec<(K, S, i64)>`)), from one consistent view.
    /// With the store's own `max_parallelism` the key group is read from the
    /// key prefix; with another one each key is decoded and hashed again.
    pub(crate) fn snapshot<'a, K>(
        &'a self,
        now: i64,
        max_parallelism: usize,
        groups: &mut BTreeMap<usize, Vec<(&'a str, Vec<u8>)>>,
    ) -> Result<(), StateError>
    where
        K: DeserializeOwned + std::hash::Hash,
    {
        let view = self.db.snapshot();
        for (index, table) in self.tables.iter().enumerate() {
            let cf = self.cf(index)?;
            let mut parts = BTreeMap::new();
            let own = max_parallelism == self.max_parallelism;
            collect_entries(
                view.raw_iterator_cf(cf),
                &table.name,
                table.ttl,
                now,
                None,
                |key_bytes| {
                    if own {
                        return Ok(None);
                    }
                    let key: K = codec::decode(key_bytes)?;
                    Ok(Some(key_group_for_hash(hash_key(&key), max_parallelism)))
                },
                &mut parts,
            )?;
            add_parts(&table.name, parts, groups)?;
        }
        Ok(())
    }

    /// Writes memtables to SST files (for size figures and tests).
    pub(crate) fn flush(&self) -> Result<(), StateError> {
        for index in 0..self.tables.len() {
            self.db
                .flush_cf(self.cf(index)?)
                .map_err(|e| storage("flushing state", e))?;
        }
        Ok(())
    }
}

impl RocksTables {
    /// The directory local snapshots and restored databases are made in.
    fn parent(&self) -> Option<&Path> {
        self.dir.path().parent()
    }

    /// Takes a native snapshot for checkpoint `checkpoint`: flushes the
    /// memtables and makes a RocksDB checkpoint (hard links) next to the
    /// database. The returned directory belongs to the uploader.
    pub(crate) fn native_snapshot(
        &mut self,
        checkpoint: u64,
        key_groups: KeyGroupRange,
    ) -> Result<LocalSnapshot, StateError> {
        self.flush()?;
        // Snapshots of earlier barriers that no uploader claimed belong to
        // checkpoints that did not complete.
        for old in std::mem::take(&mut self.outstanding) {
            crate::native::remove_local_dir(&old)?;
        }
        let name = self
            .dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StateError::Storage("the RocksDB directory has no name".into()))?;
        let target = match self.parent() {
            Some(parent) => parent.join(format!("{name}{SNAPSHOT_INFIX}{checkpoint}")),
            None => {
                return Err(StateError::Storage(
                    "the RocksDB directory has no parent".into(),
                ))
            }
        };
        crate::native::remove_local_dir(&target)?;
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&target))
            .map_err(|e| {
                storage(
                    &format!("making a RocksDB checkpoint in {}", target.display()),
                    e,
                )
            })?;
        self.outstanding.push(target.clone());
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&target)
            .map_err(|e| storage(&format!("listing {}", target.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| storage(&format!("listing {}", target.display()), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| storage(&format!("reading {}", entry.path().display()), e))?;
            if !meta.is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                return Err(StateError::Storage(format!(
                    "RocksDB made a file with a name that is not UTF-8 in {}",
                    target.display()
                )));
            };
            let size = meta.len();
            let uploaded = if LocalSnapshot::is_shareable(&name) {
                self.inherited
                    .get(&name)
                    .filter(|r| r.size == size)
                    .cloned()
            } else {
                None
            };
            files.push(LocalFile {
                name,
                size,
                uploaded,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let tables = self
            .tables
            .iter()
            .map(|t| TableInfo {
                name: t.name.clone(),
                type_name: if t.bound {
                    t.type_name.to_string()
                } else {
                    t.recorded_type.clone()
                },
                ttl_ms: t.ttl.map(|t| t.ttl_ms),
            })
            .collect();
        Ok(LocalSnapshot {
            db_id: self.db_id.clone(),
            checkpoint,
            max_parallelism: self.max_parallelism,
            key_groups,
            incremental: self.incremental,
            tables,
            dir: target,
            files,
        })
    }

    /// Restores the key groups `range` from native snapshots: opens the one
    /// that overlaps `range` most as this store's database, deletes the key
    /// groups outside `range` from it, and copies the overlapping key groups
    /// of every other snapshot in.
    pub(crate) fn restore_native(
        &mut self,
        snapshots: Vec<RestoredSnapshot>,
        range: KeyGroupRange,
    ) -> Result<(), StateError> {
        if self.tables.iter().any(|t| t.bound) {
            return Err(StateError::Corrupt(
                "native RocksDB state restored after state was first used".into(),
            ));
        }
        for s in &snapshots {
            if s.max_parallelism != self.max_parallelism {
                return Err(StateError::InvalidKeyGroups(format!(
                    "a RocksDB snapshot of max parallelism {} cannot restore a store of {}",
                    s.max_parallelism, self.max_parallelism
                )));
            }
        }
        let mut relevant: Vec<RestoredSnapshot> = snapshots
            .into_iter()
            .filter(|s| overlap(s.key_groups, range).is_some())
            .collect();
        let Some(base_index) = (0..relevant.len()).max_by_key(|&i| {
            overlap(relevant[i].key_groups, range).map_or(0, |(lo, hi)| hi - lo + 1)
        }) else {
            return Ok(());
        };
        let base = relevant.swap_remove(base_index);
        let dir = write_files(&base, self.parent(), &self.prefix)?;
        let db = open_existing(dir.path())?;
        // The old (empty) database closes before its directory is removed.
        self.db = db;
        self.dir = dir;
        self.tables.clear();
        self.by_name.clear();
        self.inherited = base
            .files
            .iter()
            .filter_map(|f| Some((f.name.clone(), f.shared.clone()?)))
            .collect();
        for table in &base.tables {
            let index = self.register_restored(table)?;
            self.delete_outside(index, range)?;
        }
        for other in relevant {
            self.copy_from(&other, range)?;
        }
        Ok(())
    }

    /// Deletes every key group outside `range` from a table.
    fn delete_outside(&self, index: usize, range: KeyGroupRange) -> Result<(), StateError> {
        let cf = self.cf(index)?;
        let fail = |e| storage("dropping key groups another subtask owns", e);
        if range.start > 0 {
            self.db
                .delete_range_cf_opt(cf, group_start(0), group_start(range.start), &self.write)
                .map_err(fail)?;
        }
        // Key group 65535 has no finite end key; its keys are deleted one by one.
        let last = self.max_parallelism.min(u16::MAX as usize);
        if range.end + 1 < last {
            self.db
                .delete_range_cf_opt(
                    cf,
                    group_start(range.end + 1),
                    group_start(last),
                    &self.write,
                )
                .map_err(fail)?;
        }
        if range.end + 1 < self.max_parallelism && self.max_parallelism > u16::MAX as usize {
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek(group_start(u16::MAX as usize));
            let mut batch = WriteBatch::default();
            while let Some(key) = it.key() {
                batch.delete_cf(cf, key);
                it.next();
            }
            it.status().map_err(fail)?;
            drop(it);
            self.db.write_opt(batch, &self.write).map_err(fail)?;
        }
        Ok(())
    }

    /// Copies the key groups of `range` from a snapshot into this database.
    fn copy_from(
        &mut self,
        snapshot: &RestoredSnapshot,
        range: KeyGroupRange,
    ) -> Result<(), StateError> {
        let Some((lo, hi)) = overlap(snapshot.key_groups, range) else {
            return Ok(());
        };
        let dir = write_files(snapshot, self.parent(), "rill-rocksdb-restore-")?;
        let source = open_read_only(dir.path())?;
        let fail = |e| storage("copying restored key groups", e);
        for table in &snapshot.tables {
            let index = self.register_restored(table)?;
            let Some(from) = source.cf_handle(&column_family(&table.name)) else {
                return Err(StateError::Corrupt(format!(
                    "the snapshot lacks the column family of state '{}'",
                    table.name
                )));
            };
            let to = self.cf(index)?;
            let end = group_start(hi + 1);
            let mut it = source.raw_iterator_cf(from);
            it.seek(group_start(lo));
            let mut batch = WriteBatch::default();
            while let Some((key, value)) = it.item() {
                if key >= end.as_slice() {
                    break;
                }
                batch.put_cf(to, key, value);
                if batch.len() >= COPY_BATCH {
                    self.db
                        .write_opt(std::mem::take(&mut batch), &self.write)
                        .map_err(fail)?;
                }
                it.next();
            }
            it.status().map_err(fail)?;
            self.db.write_opt(batch, &self.write).map_err(fail)?;
        }
        Ok(())
    }
}

/// The key groups two ranges share, if any.
fn overlap(a: KeyGroupRange, b: KeyGroupRange) -> Option<(usize, usize)> {
    let lo = a.start.max(b.start);
    let hi = a.end.min(b.end);
    (lo <= hi).then_some((lo, hi))
}

/// The key-group blobs of `range` in a restored native snapshot, for a store
/// that does not keep its state in RocksDB.
pub(crate) fn restored_key_group_blobs(
    snapshot: &RestoredSnapshot,
    range: KeyGroupRange,
) -> Result<Vec<(usize, Vec<u8>)>, StateError> {
    let Some((lo, hi)) = overlap(snapshot.key_groups, range) else {
        return Ok(Vec::new());
    };
    let dir = write_files(snapshot, None, "rill-rocksdb-restore-")?;
    key_group_blobs_of_dir(
        dir.path(),
        snapshot.max_parallelism,
        &snapshot.tables,
        Some(KeyGroupRange { start: lo, end: hi }),
    )
}

impl Drop for RocksTables {
    fn drop(&mut self) {
        // The newest snapshot may still be uploaded after the task ends; the
        // uploader removes it, and so does the next store of this operator
        // opened in the same directory if nobody took it.
        self.outstanding.pop();
        for old in self.outstanding.drain(..) {
            let _ = crate::native::remove_local_dir(&old);
        }
    }
}

/// Bytes under `path` (files only, recursively).
pub(crate) fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => directory_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::keyed::{KeyedStateStore, ListState, MapState, ReducingState, ValueState};
    use crate::{AggregateFunction, AggregatingState, StateBackend};

    fn rocksdb() -> StateBackend {
        StateBackend::RocksDb(RocksDbOptions::default())
    }

    fn rocks_store<K: crate::StateKey>() -> KeyedStateStore<K> {
        KeyedStateStore::open(&rocksdb(), 128, "rocks-test").unwrap()
    }

    #[derive(Clone)]
    struct Sum;
    impl AggregateFunction<i64> for Sum {
        type Acc = (i64, u32);
        type Out = i64;
        fn create_accumulator(&self) -> (i64, u32) {
            (0, 0)
        }
        fn add(&self, v: i64, acc: &mut (i64, u32)) {
            acc.0 += v;
            acc.1 += 1;
        }
        fn result(&self, acc: &(i64, u32)) -> i64 {
            acc.0
        }
        fn merge(&self, acc: &mut (i64, u32), o: (i64, u32)) {
            acc.0 += o.0;
            acc.1 += o.1;
        }
    }

    /// Handles over every kind of state, one of them with a TTL.
    #[derive(Clone)]
    struct States {
        count: ValueState<u64>,
        recent: ListState<String>,
        tags: MapState<String, i32>,
        max: ReducingState<i64, fn(&i64, &i64) -> i64>,
        sum: AggregatingState<i64, Sum>,
        seen: ValueState<bool>,
    }

    fn max_of(a: &i64, b: &i64) -> i64 {
        *a.max(b)
    }

    impl States {
        fn new() -> Self {
            Self {
                count: ValueState::new("count"),
                recent: ListState::new("recent"),
                tags: MapState::new("tags"),
                max: ReducingState::new("max", max_of as fn(&i64, &i64) -> i64),
                sum: AggregatingState::new("sum", Sum),
                seen: ValueState::new("seen")
                    .with_ttl(crate::StateTtl::new(Duration::from_millis(1_000))),
            }
        }

        /// Writes a deterministic mix of state for keys `0..n`; keys
        /// divisible by 5 get their TTL'd value early enough to expire.
        fn fill(&self, store: &mut KeyedStateStore<u32>, n: u32) {
            for phase in [0, 1] {
                store.advance_time(10_000 + phase * 1_000);
                for k in 0..n {
                    if (k % 5 == 0) != (phase == 0) {
                        continue;
                    }
                    store.set_current_key(k);
                    self.seen.set(store, true);
                }
            }
            for k in 0..n {
                store.set_current_key(k);
                self.count.set(store, k as u64 * 7);
                for i in 0..(k % 4) {
                    self.recent.add(store, format!("r{k}-{i}"));
                    self.tags.put(store, format!("t{}", i % 2), (k + i) as i32);
                    self.max.add(store, (k * 13 % 17 + i) as i64);
                    self.sum.add(store, (k + i) as i64);
                }
            }
        }

        /// Everything readable for key `k`.
        #[allow(clippy::type_complexity)]
        fn read(
            &self,
            store: &mut KeyedStateStore<u32>,
            k: u32,
        ) -> (
            Option<u64>,
            Vec<String>,
            Vec<(String, i32)>,
            Option<i64>,
            Option<i64>,
            Option<bool>,
        ) {
            store.set_current_key(k);
            let mut tags = self.tags.entries(store);
            tags.sort();
            (
                self.count.get(store),
                self.recent.get(store),
                tags,
                self.max.get(store),
                self.sum.get(store),
                self.seen.get(store),
            )
        }
    }

    fn copy(from: &KeyedStateStore<u32>, to: &mut KeyedStateStore<u32>, max: usize) {
        for (kg, blob) in from.snapshot(max).unwrap() {
            to.restore(kg, &blob).unwrap();
        }
    }

    #[test]
    fn all_kinds_of_state_move_between_heap_and_rocksdb() {
        let n = 500;
        let states = States::new();
        let mut heap = KeyedStateStore::<u32>::new();
        states.clone().fill(&mut heap, n);
        let mut rocks = rocks_store::<u32>();
        states.clone().fill(&mut rocks, n);
        assert_eq!(rocks.take_failure().map(|e| e.to_string()), None);
        // Same clock for reading: keys % 5 == 0 have an expired "seen".
        for store in [&mut heap, &mut rocks] {
            store.advance_time(11_700);
        }

        // Snapshots at the store's own and at another max parallelism.
        for max in [128, 16] {
            let mut heap_from_rocks = KeyedStateStore::<u32>::new();
            heap_from_rocks.advance_time(11_700);
            copy(&rocks, &mut heap_from_rocks, max);
            let mut rocks_from_heap = rocks_store::<u32>();
            rocks_from_heap.advance_time(11_700);
            copy(&heap, &mut rocks_from_heap, max);
            let mut rocks_from_rocks = rocks_store::<u32>();
            rocks_from_rocks.advance_time(11_700);
            copy(&rocks, &mut rocks_from_rocks, max);
            for k in 0..n {
                let expected = States::new().read(&mut heap, k);
                assert_eq!(expected.5, if k % 5 == 0 { None } else { Some(true) });
                assert_eq!(expected.0, Some(k as u64 * 7));
                for (what, store) in [
                    ("rocksdb", &mut rocks),
                    ("heap from rocksdb", &mut heap_from_rocks),
                    ("rocksdb from heap", &mut rocks_from_heap),
                    ("rocksdb from rocksdb", &mut rocks_from_rocks),
                ] {
                    assert_eq!(
                        States::new().read(store, k),
                        expected,
                        "{what}, key {k}, max {max}"
                    );
                }
            }
            for store in [
                &mut heap_from_rocks,
                &mut rocks_from_heap,
                &mut rocks_from_rocks,
            ] {
                assert_eq!(store.take_failure().map(|e| e.to_string()), None);
            }
        }
    }

    /// Decodes a snapshot into sorted entries of the known tables.
    /// (key group, state name, sorted (key, value shown as text, touched)).
    type Decoded = Vec<(usize, String, Vec<(u32, String, i64)>)>;

    fn decoded(groups: &[(usize, Vec<u8>)]) -> Decoded {
        let mut out = Vec::new();
        for (kg, blob) in groups {
            let tables: Vec<(String, Vec<u8>)> = codec::decode(blob).unwrap();
            for (name, bytes) in tables {
                let mut entries: Vec<(u32, String, i64)> = match name.as_str() {
                    "count" => codec::decode::<Vec<(u32, u64, i64)>>(&bytes)
                        .unwrap()
                        .into_iter()
                        .map(|(k, v, t)| (k, v.to_string(), t))
                        .collect(),
                    "recent" => codec::decode::<Vec<(u32, Vec<String>, i64)>>(&bytes)
                        .unwrap()
                        .into_iter()
                        .map(|(k, v, t)| (k, v.join("|"), t))
                        .collect(),
                    other => panic!("unexpected table {other}"),
                };
                entries.sort();
                out.push((*kg, name, entries));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn snapshots_of_both_backends_decode_to_the_same_entries() {
        let count = ValueState::<u64>::new("count");
        let recent = ListState::<String>::new("recent");
        let mut heap = KeyedStateStore::<u32>::new();
        let mut rocks = rocks_store::<u32>();
        for store in [&mut heap, &mut rocks] {
            for k in 0..300u32 {
                store.advance_time(1_000 + k as i64);
                store.set_current_key(k);
                count.clone().set(store, k as u64 + 1);
                if k % 3 == 0 {
                    recent.clone().add(store, format!("x{k}"));
                }
            }
        }
        for max in [128, 7] {
            let h = decoded(&heap.snapshot(max).unwrap());
            let r = decoded(&rocks.snapshot(max).unwrap());
            assert!(h.len() > 10);
            assert_eq!(h, r, "max parallelism {max}");
        }
    }

    #[test]
    fn keys_start_with_their_key_group() {
        let tables = RocksTables::open(&RocksDbOptions::default(), 128, "layout").unwrap();
        for k in 0..100u64 {
            let key = tables.encode_key(&k).unwrap();
            let kg = key_group_for_hash(hash_key(&k), 128);
            assert_eq!(u16::from_be_bytes([key[0], key[1]]) as usize, kg);
            assert_eq!(codec::decode::<u64>(&key[2..]).unwrap(), k);
        }
        assert!(RocksTables::open(&RocksDbOptions::default(), 0, "bad").is_err());
        assert!(RocksTables::open(&RocksDbOptions::default(), 70_000, "bad").is_err());
    }

    #[test]
    fn reads_do_not_write_and_writes_do() {
        let mut store = rocks_store::<u32>();
        let v = ValueState::<u64>::new("v");
        let m = MapState::<u8, u8>::new("m");
        store.set_current_key(1);
        v.set(&mut store, 5);
        m.put(&mut store, 1, 1);
        let sequence = |s: &KeyedStateStore<u32>| s.rocks().unwrap().db.latest_sequence_number();
        let before = sequence(&store);
        for _ in 0..10 {
            assert_eq!(v.get(&mut store), Some(5));
            assert_eq!(m.get(&mut store, &1), Some(1));
            assert_eq!(m.entries(&mut store).len(), 1);
        }
        assert_eq!(sequence(&store), before, "reads wrote to RocksDB");
        v.set(&mut store, 6);
        assert!(sequence(&store) > before);
        assert_eq!(m.remove(&mut store, &1), Some(1));
        assert_eq!(store.entries("m"), 0, "an emptied map drops the key");
        assert_eq!(v.get(&mut store), Some(6));
    }

    #[test]
    fn local_dir_holds_the_database_until_the_store_drops() {
        let parent = tempfile::tempdir().unwrap();
        let backend = StateBackend::from_config(
            "RocksDB",
            false,
            Some(parent.path().join("nested").to_str().unwrap()),
        )
        .unwrap();
        let mut store = KeyedStateStore::<u32>::open(&backend, 128, "op/uid 3").unwrap();
        let dir = store.local_dir().unwrap().to_path_buf();
        assert!(
            dir.starts_with(parent.path().join("nested")),
            "{}",
            dir.display()
        );
        assert!(
            dir.join("CURRENT").exists(),
            "a RocksDB lives in {}",
            dir.display()
        );
        store.set_current_key(1);
        ValueState::<u8>::new("v").set(&mut store, 1);
        assert!(store.local_size_bytes().unwrap() > 0);
        assert_eq!(store.backend_name(), "rocksdb");
        drop(store);
        assert!(!dir.exists(), "{} is removed with the store", dir.display());
    }

    #[test]
    fn bad_bytes_in_the_database_are_errors() {
        let mut tables = RocksTables::open(&RocksDbOptions::default(), 128, "corrupt").unwrap();
        let ttl = crate::StateTtl::new(Duration::from_secs(1));
        let t = tables.create_table("v", "u64", Some(ttl)).unwrap();
        let cf = tables.cf(t).unwrap();
        tables
            .db
            .put_cf(cf, [0u8, 1, 2], [255u8, 255, 255])
            .unwrap();
        tables.db.put_cf(cf, [9u8], [0u8]).unwrap();
        assert!(matches!(
            tables.get::<u64>(t, &[0, 1, 2]),
            Err(StateError::Corrupt(_))
        ));
        let mut groups = BTreeMap::new();
        assert!(tables.snapshot::<u32>(0, 128, &mut groups).is_err());
        tables.purge_expired(1_000_000).unwrap();
        assert!(tables.load::<u32, u64>(t, b"junk").is_err());

        // Through the store: a value of the wrong shape is reported, not panicked on.
        let mut store = rocks_store::<u32>();
        let v = ValueState::<String>::new("s");
        store.set_current_key(1);
        v.set(&mut store, "ok".into());
        let db = store.rocks().unwrap();
        let key = db.encode_key(&1u32).unwrap();
        let cf = db.cf(db.table_index("s").unwrap()).unwrap();
        db.db.put_cf(cf, &key, [0u8, 200]).unwrap();
        assert_eq!(v.get(&mut store), None);
        assert!(matches!(store.take_failure(), Some(StateError::Corrupt(_))));
    }

    #[test]
    fn a_million_keys_snapshot_and_restore() {
        const KEYS: u64 = 1_000_000;
        const MAX: usize = 128;
        let v = ValueState::<u64>::new("v");
        let mut store = KeyedStateStore::<u64>::open(&rocksdb(), MAX, "million").unwrap();
        let started = Instant::now();
        for k in 0..KEYS {
            store.set_current_key(k);
            v.set(&mut store, k * 3 + 1);
        }
        let write = started.elapsed();
        let size = store.local_size_bytes().unwrap();

        let started = Instant::now();
        let groups = store.snapshot(MAX).unwrap();
        let snapshot = started.elapsed();
        let snapshot_bytes: usize = groups.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(groups.len(), MAX, "every key group holds keys");

        let started = Instant::now();
        let mut restored = KeyedStateStore::<u64>::open(&rocksdb(), MAX, "million-2").unwrap();
        for (kg, blob) in &groups {
            restored.restore(*kg, blob).unwrap();
        }
        drop(groups);
        restored.set_current_key(0);
        assert_eq!(v.get(&mut restored), Some(1));
        let restore = started.elapsed();
        let restored_size = restored.local_size_bytes().unwrap();
        assert_eq!(restored.take_failure().map(|e| e.to_string()), None);
        assert_eq!(restored.entries("v"), KEYS as usize);
        let mut k = 17u64;
        for _ in 0..10_000 {
            k = k
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                % KEYS;
            restored.set_current_key(k);
            assert_eq!(v.get(&mut restored), Some(k * 3 + 1), "key {k}");
        }
        restored.set_current_key(KEYS);
        assert_eq!(v.get(&mut restored), None);
        println!(
            "rocksdb, {KEYS} keys: write {write:?}, db size {:.1} MiB; snapshot {snapshot:?} \
             ({:.1} MiB in {MAX} key groups); restore into a fresh store {restore:?} \
             (db size {:.1} MiB)",
            size as f64 / (1 << 20) as f64,
            snapshot_bytes as f64 / (1 << 20) as f64,
            restored_size as f64 / (1 << 20) as f64,
        );
    }
}
