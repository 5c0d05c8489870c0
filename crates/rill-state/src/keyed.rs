//! Keyed state handles and the store behind them (heap or RocksDB tables).
//!
//! A function declares its state as named handles when it is constructed, for
//! example `ValueState::<u64>::new("count")`. The runtime keeps one
//! [`KeyedStateStore`] per keyed operator subtask and points it at the key of
//! the record (or timer) being processed; a handle reads and writes the value
//! of that current key. Handles bind to their table lazily by name on first
//! use, so restored tables can wait for the handle that knows their type.
//!
//! TTL follows Flink's defaults: the clock is processing time, the timestamp is
//! refreshed on create and write (optionally on read), and expired values are
//! never returned. Expired entries are dropped on access and by a periodic
//! sweep ([`KeyedStateStore::advance_time`]).

use std::any::Any;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Serialize};

use crate::key_group::{hash_key, key_group_for_hash};
use crate::rocks::RocksTables;
use crate::{codec, AggregateFunction, StateBackend, StateError};

/// What a state value must be: owned, sendable and serialisable (snapshots).
pub trait StateValue: Send + Serialize + DeserializeOwned + 'static {}
impl<T: Send + Serialize + DeserializeOwned + 'static> StateValue for T {}

/// When a TTL'd value's clock is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlUpdate {
    /// Flink's `OnCreateAndWrite` (the default).
    OnCreateAndWrite,
    /// Flink's `OnReadAndWrite`.
    OnReadAndWrite,
}

/// Time-to-live for a state handle, in processing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    pub ttl_ms: i64,
    pub update: TtlUpdate,
}

impl StateTtl {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: ttl.as_millis().min(i64::MAX as u128) as i64,
            update: TtlUpdate::OnCreateAndWrite,
        }
    }

    pub fn refresh_on_read(mut self) -> Self {
        self.update = TtlUpdate::OnReadAndWrite;
        self
    }
}

struct Stamped<S> {
    value: S,
    touched: i64,
}

/// One named table: current-key → state value of type `S`.
struct Table<K, S> {
    map: FxHashMap<K, Stamped<S>>,
    ttl: Option<StateTtl>,
}

trait ErasedTable<K>: Send {
    /// Live entries grouped by key group, each group encoded.
    fn snapshot(
        &self,
        now: i64,
        max_parallelism: usize,
    ) -> Result<Vec<(usize, Vec<u8>)>, StateError>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn type_name(&self) -> &'static str;
    fn purge_expired(&mut self, now: i64);
    fn remove_key(&mut self, key: &K);
    fn len(&self) -> usize;
}

impl<K: StateKey, S: StateValue> Table<K, S> {
    fn restore(&mut self, encoded: &[u8]) -> Result<(), StateError> {
        let entries: Vec<(K, S, i64)> = codec::decode(encoded)?;
        for (k, value, touched) in entries {
            self.map.insert(k, Stamped { value, touched });
        }
        Ok(())
    }
}

impl<K: StateKey, S: StateValue> ErasedTable<K> for Table<K, S> {
    fn snapshot(
        &self,
        now: i64,
        max_parallelism: usize,
    ) -> Result<Vec<(usize, Vec<u8>)>, StateError> {
        let mut groups: std::collections::BTreeMap<usize, Vec<(&K, &S, i64)>> = Default::default();
        for (k, e) in &self.map {
            if let Some(ttl) = self.ttl {
                if now.saturating_sub(e.touched) >= ttl.ttl_ms {
                    continue; // expired values are not carried into snapshots
                }
            }
            let kg = key_group_for_hash(hash_key(k), max_parallelism);
            groups.entry(kg).or_default().push((k, &e.value, e.touched));
        }
        groups
            .into_iter()
            .map(|(kg, entries)| Ok((kg, codec::encode(&entries)?)))
            .collect()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<S>()
    }
    fn purge_expired(&mut self, now: i64) {
        if let Some(ttl) = self.ttl {
            self.map
                .retain(|_, v| now.saturating_sub(v.touched) < ttl.ttl_ms);
        }
    }
    fn remove_key(&mut self, key: &K) {
        self.map.remove(key);
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Where a store's tables live.
enum Backend<K> {
    Heap {
        tables: Vec<Box<dyn ErasedTable<K>>>,
        by_name: HashMap<String, usize>,
    },
    Rocks(Box<RocksTables>),
}

/// A native snapshot of a RocksDB store (see [`KeyedStateStore::native_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeSnapshotParts {
    /// An encoded [`LocalSnapshot`](crate::native::LocalSnapshot), for the uploader.
    pub handle: Vec<u8>,
    /// Restored state not yet in the database, by key group.
    pub pending: Vec<(usize, Vec<u8>)>,
}

/// The keyed state of one operator subtask, on the heap or in RocksDB.
pub struct KeyedStateStore<K> {
    backend: Backend<K>,
    /// Restored tables no handle has asked for yet: name → (key group, entries).
    pending: HashMap<String, Vec<(usize, Vec<u8>)>>,
    current_key: Option<K>,
    /// The current key as a RocksDB key (key-group prefix + encoding),
    /// computed on first use after the key changes.
    current_db_key: Option<Vec<u8>>,
    now: i64,
    last_sweep: i64,
    failure: Option<StateError>,
}

impl<K: StateKey> Default for KeyedStateStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

fn note(failure: &mut Option<StateError>, error: StateError) {
    failure.get_or_insert(error);
}

impl<K: StateKey> KeyedStateStore<K> {
    /// A store on the heap.
    pub fn new() -> Self {
        Self::with(Backend::Heap {
            tables: Vec::new(),
            by_name: HashMap::new(),
        })
    }

    /// A store on `backend` for a subtask whose keys fall into
    /// `max_parallelism` key groups; `label` names its local directory
    /// (RocksDB), which is removed when the store is dropped.
    pub fn open(
        backend: &StateBackend,
        max_parallelism: usize,
        label: &str,
    ) -> Result<Self, StateError> {
        Ok(match backend {
            StateBackend::HashMap => Self::new(),
            StateBackend::RocksDb(options) => Self::with(Backend::Rocks(Box::new(
                RocksTables::open(options, max_parallelism, label)?,
            ))),
        })
    }

    fn with(backend: Backend<K>) -> Self {
        Self {
            backend,
            pending: HashMap::new(),
            current_key: None,
            current_db_key: None,
            now: 0,
            last_sweep: 0,
            failure: None,
        }
    }

    /// The backend's configuration name (`hashmap` or `rocksdb`).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Heap { .. } => "hashmap",
            Backend::Rocks(_) => "rocksdb",
        }
    }

    /// The local directory of a RocksDB store.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Heap { .. } => None,
            Backend::Rocks(db) => Some(db.path()),
        }
    }

    /// Bytes the store occupies on local disk (RocksDB; 0 on the heap),
    /// after writing its memtables out.
    pub fn local_size_bytes(&self) -> Result<u64, StateError> {
        match &self.backend {
            Backend::Heap { .. } => Ok(0),
            Backend::Rocks(db) => {
                db.flush()?;
                Ok(crate::rocks::directory_size(db.path()))
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn rocks(&self) -> Option<&RocksTables> {
        match &self.backend {
            Backend::Rocks(db) => Some(db),
            Backend::Heap { .. } => None,
        }
    }

    /// Points every handle at `key` until the next call.
    pub fn set_current_key(&mut self, key: K) {
        self.current_key = Some(key);
        self.current_db_key = None;
    }

    pub fn current_key(&self) -> Option<&K> {
        self.current_key.as_ref()
    }

    /// Moves the TTL clock (processing time, ms) and sweeps expired entries
    /// at most once per second.
    pub fn advance_time(&mut self, now_ms: i64) {
        self.now = now_ms;
        if now_ms - self.last_sweep >= 1000 {
            self.last_sweep = now_ms;
            match &mut self.backend {
                Backend::Heap { tables, .. } => {
                    for t in tables {
                        t.purge_expired(now_ms);
                    }
                }
                Backend::Rocks(db) => {
                    if let Err(e) = db.purge_expired(now_ms) {
                        note(&mut self.failure, e);
                    }
                }
            }
        }
    }

    /// Number of stored entries in the named table (for tests and metrics).
    pub fn entries(&self, name: &str) -> usize {
        match &self.backend {
            Backend::Heap { tables, by_name } => by_name.get(name).map_or(0, |&i| tables[i].len()),
            Backend::Rocks(db) => db
                .table_index(name)
                .and_then(|i| db.count(i).ok())
                .unwrap_or(0),
        }
    }

    /// The first misuse recorded by a handle (a name used with two types)
    /// or the first storage failure. The operator turns it into a task failure.
    pub fn take_failure(&mut self) -> Option<StateError> {
        self.failure.take()
    }

    /// The store's state, one encoded blob per key group (for redistribution).
    /// Both backends write the same format.
    pub fn snapshot(&self, max_parallelism: usize) -> Result<Vec<(usize, Vec<u8>)>, StateError> {
        let mut groups: std::collections::BTreeMap<usize, Vec<(&str, Vec<u8>)>> =
            Default::default();
        match &self.backend {
            Backend::Heap { tables, by_name } => {
                for (name, &i) in by_name {
                    for (kg, bytes) in tables[i].snapshot(self.now, max_parallelism)? {
                        groups.entry(kg).or_default().push((name, bytes));
                    }
                }
            }
            Backend::Rocks(db) => db.snapshot::<K>(self.now, max_parallelism, &mut groups)?,
        }
        for (name, parts) in &self.pending {
            for (kg, bytes) in parts {
                groups.entry(*kg).or_default().push((name, bytes.clone()));
            }
        }
        groups
            .into_iter()
            .map(|(kg, tables)| Ok((kg, codec::encode(&tables)?)))
            .collect()
    }

    /// Takes a native snapshot for checkpoint `checkpoint` of a RocksDB store
    /// owning `key_groups` (see [`crate::native`]); `None` on the heap.
    /// Restored key-group state that no handle has claimed yet cannot go into
    /// the database without its type, so it is returned alongside in the
    /// key-group format.
    pub fn native_snapshot(
        &mut self,
        checkpoint: u64,
        key_groups: crate::KeyGroupRange,
    ) -> Result<Option<NativeSnapshotParts>, StateError> {
        let Backend::Rocks(db) = &mut self.backend else {
            return Ok(None);
        };
        let local = db.native_snapshot(checkpoint, key_groups)?;
        let mut groups: std::collections::BTreeMap<usize, Vec<(&str, Vec<u8>)>> =
            Default::default();
        for (name, parts) in &self.pending {
            for (kg, bytes) in parts {
                groups.entry(*kg).or_default().push((name, bytes.clone()));
            }
        }
        let pending = groups
            .into_iter()
            .map(|(kg, tables)| Ok((kg, codec::encode(&tables)?)))
            .collect::<Result<_, StateError>>()?;
        Ok(Some(NativeSnapshotParts {
            handle: local.encode()?,
            pending,
        }))
    }

    /// Restores the key groups `key_groups` from native snapshots (encoded
    /// [`RestoredSnapshot`](crate::native::RestoredSnapshot)s of any old
    /// subtasks; those that do not overlap are skipped). A RocksDB store opens
    /// them directly; a heap store reads them in the key-group format.
    pub fn restore_native(
        &mut self,
        snapshots: &[&[u8]],
        key_groups: crate::KeyGroupRange,
    ) -> Result<(), StateError> {
        let decoded = snapshots
            .iter()
            .map(|b| crate::native::RestoredSnapshot::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        match &mut self.backend {
            Backend::Rocks(db) => db.restore_native(decoded, key_groups),
            Backend::Heap { .. } => {
                for snapshot in &decoded {
                    for (kg, blob) in crate::rocks::restored_key_group_blobs(snapshot, key_groups)?
                    {
                        self.restore(kg, &blob)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn is_bound(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Heap { by_name, .. } => by_name.contains_key(name),
            Backend::Rocks(db) => db
                .table_index(name)
                .and_then(|i| db.table(i))
                .is_some_and(|t| t.bound),
        }
    }

    /// Adds a key group's blob from a snapshot. Tables are decoded when a
    /// handle first asks for them (only the handle knows the value type).
    pub fn restore(&mut self, key_group: usize, blob: &[u8]) -> Result<(), StateError> {
        let tables: Vec<(String, Vec<u8>)> = codec::decode(blob)?;
        for (name, bytes) in tables {
            if self.is_bound(&name) {
                return Err(StateError::Corrupt(format!(
                    "state '{name}' restored after it was first used"
                )));
            }
            self.pending
                .entry(name)
                .or_default()
                .push((key_group, bytes));
        }
        Ok(())
    }

    fn table<S: StateValue>(
        &mut self,
        name: &str,
        slot: &AtomicUsize,
        ttl: Option<StateTtl>,
    ) -> Option<&mut Table<K, S>> {
        let Backend::Heap { tables, by_name } = &mut self.backend else {
            return None;
        };
        let index = match slot.load(Ordering::Relaxed) {
            i if i < tables.len() => i,
            _ => {
                let i = match by_name.get(name) {
                    Some(&i) => i,
                    None => {
                        let mut table = Table::<K, S> {
                            map: FxHashMap::default(),
                            ttl,
                        };
                        for (_, bytes) in self.pending.remove(name).unwrap_or_default() {
                            if let Err(e) = table.restore(&bytes) {
                                self.failure.get_or_insert(StateError::Corrupt(format!(
                                    "state '{name}': {e}"
                                )));
                            }
                        }
                        tables.push(Box::new(table));
                        by_name.insert(name.to_string(), tables.len() - 1);
                        tables.len() - 1
                    }
                };
                slot.store(i, Ordering::Relaxed);
                i
            }
        };
        let table = &mut tables[index];
        let existing = table.type_name();
        match table.as_any_mut().downcast_mut::<Table<K, S>>() {
            Some(t) => Some(t),
            None => {
                self.failure.get_or_insert(StateError::TypeMismatch {
                    name: name.to_string(),
                    existing,
                    requested: std::any::type_name::<S>(),
                });
                None
            }
        }
    }

    /// The RocksDB table of a handle, created (and filled from restored
    /// state) on first use, after checking the value type.
    fn rocks_table<S: StateValue>(&mut self, handle: &Handle) -> Option<usize> {
        let Backend::Rocks(db) = &mut self.backend else {
            return None;
        };
        let name = handle.name;
        let cached = handle.slot.load(Ordering::Relaxed);
        let index = match db.table(cached) {
            Some(t) if t.name == name && t.bound => cached,
            _ => {
                let i = match db.table_index(name) {
                    Some(i) if db.table(i).is_some_and(|t| t.bound) => i,
                    _ => {
                        let i = match db.create_table(name, std::any::type_name::<S>(), handle.ttl)
                        {
                            Ok(i) => i,
                            Err(e) => {
                                note(&mut self.failure, e);
                                return None;
                            }
                        };
                        for (_, bytes) in self.pending.remove(name).unwrap_or_default() {
                            if let Err(e) = db.load::<K, S>(i, &bytes) {
                                note(
                                    &mut self.failure,
                                    StateError::Corrupt(format!("state '{name}': {e}")),
                                );
                            }
                        }
                        i
                    }
                };
                handle.slot.store(i, Ordering::Relaxed);
                i
            }
        };
        let existing = db.table(index)?.type_name;
        if existing != std::any::type_name::<S>() {
            note(
                &mut self.failure,
                StateError::TypeMismatch {
                    name: name.to_string(),
                    existing,
                    requested: std::any::type_name::<S>(),
                },
            );
            return None;
        }
        Some(index)
    }

    /// Makes sure the current key's RocksDB key is computed; false when
    /// there is no current key (or it cannot be encoded).
    fn ensure_db_key(&mut self) -> bool {
        if self.current_db_key.is_some() {
            return true;
        }
        let (Backend::Rocks(db), Some(key)) = (&self.backend, self.current_key.as_ref()) else {
            return false;
        };
        match db.encode_key(key) {
            Ok(k) => {
                self.current_db_key = Some(k);
                true
            }
            Err(e) => {
                note(&mut self.failure, e);
                false
            }
        }
    }

    /// Runs `f` on the current key's entry of a table, if it is live,
    /// without changing it (a TTL refreshed on read is still written).
    fn read<S: StateValue, R>(&mut self, handle: &Handle, f: impl FnOnce(&S) -> R) -> Option<R> {
        self.access(handle, false, |s: &mut S| f(s))
    }

    /// Runs `f` on the current key's live entry, which `f` may change.
    fn modify<S: StateValue, R>(
        &mut self,
        handle: &Handle,
        f: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        self.access(handle, true, f)
    }

    fn access<S: StateValue, R>(
        &mut self,
        handle: &Handle,
        mutates: bool,
        f: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        let now = self.now;
        if let Backend::Rocks(_) = self.backend {
            let index = self.rocks_table::<S>(handle)?;
            if !self.ensure_db_key() {
                return None;
            }
            let (Backend::Rocks(db), Some(key)) = (&self.backend, self.current_db_key.as_deref())
            else {
                return None;
            };
            let ttl = db.table(index)?.ttl;
            let (mut value, touched) = match db.get::<S>(index, key) {
                Ok(Some(entry)) => entry,
                Ok(None) => return None,
                Err(e) => {
                    note(&mut self.failure, e);
                    return None;
                }
            };
            if crate::rocks::expired(ttl, touched, now) {
                if let Err(e) = db.delete(index, key) {
                    note(&mut self.failure, e);
                }
                return None;
            }
            let refresh = matches!(ttl, Some(t) if t.update == TtlUpdate::OnReadAndWrite);
            let result = f(&mut value);
            if mutates || refresh {
                let touched = if refresh { now } else { touched };
                if let Err(e) = db.put(index, key, &value, touched) {
                    note(&mut self.failure, e);
                }
            }
            return Some(result);
        }
        let key = self.current_key.clone()?;
        let table = self.table::<S>(handle.name, &handle.slot, handle.ttl)?;
        let ttl = table.ttl;
        let expired = match (table.map.get_mut(&key), ttl) {
            (None, _) => return None,
            (Some(e), Some(ttl)) if now.saturating_sub(e.touched) >= ttl.ttl_ms => true,
            (Some(e), ttl) => {
                if matches!(ttl, Some(t) if t.update == TtlUpdate::OnReadAndWrite) {
                    e.touched = now;
                }
                return Some(f(&mut e.value));
            }
        };
        if expired {
            table.map.remove(&key);
        }
        None
    }

    /// Runs `f` on the current key's entry, creating it with `init` when absent
    /// or expired, and refreshes its TTL clock.
    fn write<S: StateValue, R>(
        &mut self,
        handle: &Handle,
        init: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        let now = self.now;
        if let Backend::Rocks(_) = self.backend {
            let index = self.rocks_table::<S>(handle)?;
            if !self.ensure_db_key() {
                return None;
            }
            let (Backend::Rocks(db), Some(key)) = (&self.backend, self.current_db_key.as_deref())
            else {
                return None;
            };
            let ttl = db.table(index)?.ttl;
            let mut value = match db.get::<S>(index, key) {
                Ok(Some((value, touched))) if !crate::rocks::expired(ttl, touched, now) => value,
                Ok(_) => init(),
                Err(e) => {
                    note(&mut self.failure, e);
                    return None;
                }
            };
            let result = f(&mut value);
            if let Err(e) = db.put(index, key, &value, now) {
                note(&mut self.failure, e);
            }
            return Some(result);
        }
        let key = self.current_key.clone()?;
        let table = self.table::<S>(handle.name, &handle.slot, handle.ttl)?;
        let ttl = table.ttl;
        let mut init = Some(init);
        let entry = table.map.entry(key).or_insert_with(|| Stamped {
            value: (init.take().expect("called once"))(),
            touched: now,
        });
        if let (Some(ttl), Some(init)) = (ttl, init) {
            if now.saturating_sub(entry.touched) >= ttl.ttl_ms {
                entry.value = init();
            }
        }
        entry.touched = now;
        Some(f(&mut entry.value))
    }

    fn clear(&mut self, handle: &Handle) {
        match &mut self.backend {
            Backend::Heap { tables, by_name } => {
                if let (Some(key), Some(&i)) = (self.current_key.as_ref(), by_name.get(handle.name))
                {
                    tables[i].remove_key(key);
                }
            }
            Backend::Rocks(db) => {
                let Some(index) = db.table_index(handle.name) else {
                    return;
                };
                if !self.ensure_db_key() {
                    return;
                }
                if let (Backend::Rocks(db), Some(key)) =
                    (&self.backend, self.current_db_key.as_deref())
                {
                    if let Err(e) = db.delete(index, key) {
                        note(&mut self.failure, e);
                    }
                }
            }
        }
    }
}

/// The name, TTL and cached table slot every handle carries.
struct Handle {
    name: &'static str,
    ttl: Option<StateTtl>,
    /// Index of the bound table in the store (`usize::MAX`: not bound yet).
    slot: AtomicUsize,
}

impl Handle {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ttl: None,
            slot: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Clone for Handle {
    // A cloned function instance runs on another subtask with its own store,
    // so the cached slot must not travel with it.
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            ttl: self.ttl,
            slot: AtomicUsize::new(usize::MAX),
        }
    }
}

/// Anything that can reach the keyed state store of the current subtask:
/// the store itself, or the context a keyed function is called with.
pub trait StateAccess<K> {
    fn state_store(&mut self) -> &mut KeyedStateStore<K>;
}

impl<K> StateAccess<K> for KeyedStateStore<K> {
    fn state_store(&mut self) -> &mut KeyedStateStore<K> {
        self
    }
}

/// Bounds every key type satisfies.
pub trait StateKey: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static> StateKey for T {}

macro_rules! handle_basics {
    () => {
        /// Expire values that were not written for the TTL (processing time).
        pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
            self.handle.ttl = Some(ttl);
            self
        }

        pub fn name(&self) -> &'static str {
            self.handle.name
        }

        /// Removes the current key's value.
        pub fn clear<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) {
            ctx.state_store().clear(&self.handle);
        }
    };
}

/// A single value per key (Flink's `ValueState`).
#[derive(Clone)]
pub struct ValueState<V> {
    handle: Handle,
    _v: PhantomData<fn() -> V>,
}

impl<V: Clone + StateValue> ValueState<V> {
    pub fn new(name: &'static str) -> Self {
        Self {
            handle: Handle::new(name),
            _v: PhantomData,
        }
    }
    handle_basics!();

    pub fn get<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) -> Option<V> {
        ctx.state_store().read::<V, _>(&self.handle, |v| v.clone())
    }

    pub fn set<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, value: V) {
        let cell = std::cell::RefCell::new(Some(value));
        ctx.state_store().write::<V, _>(
            &self.handle,
            || cell.borrow_mut().take().expect("initialised once"),
            |slot| {
                if let Some(v) = cell.borrow_mut().take() {
                    *slot = v;
                }
            },
        );
    }
}

/// A list of values per key (Flink's `ListState`).
#[derive(Clone)]
pub struct ListState<V> {
    handle: Handle,
    _v: PhantomData<fn() -> V>,
}

impl<V: Clone + StateValue> ListState<V> {
    pub fn new(name: &'static str) -> Self {
        Self {
            handle: Handle::new(name),
            _v: PhantomData,
        }
    }
    handle_basics!();

    pub fn get<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) -> Vec<V> {
        ctx.state_store()
            .read::<Vec<V>, _>(&self.handle, |v| v.clone())
            .unwrap_or_default()
    }

    pub fn add<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, value: V) {
        ctx.state_store()
            .write::<Vec<V>, _>(&self.handle, Vec::new, |list| list.push(value));
    }

    pub fn update<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, values: Vec<V>) {
        if values.is_empty() {
            return self.clear(ctx);
        }
        ctx.state_store()
            .write::<Vec<V>, _>(&self.handle, Vec::new, |list| *list = values);
    }
}

/// A map per key (Flink's `MapState`).
#[derive(Clone)]
pub struct MapState<MK, MV> {
    handle: Handle,
    _v: PhantomData<fn() -> (MK, MV)>,
}

impl<MK: StateKey, MV: Clone + StateValue> MapState<MK, MV> {
    pub fn new(name: &'static str) -> Self {
        Self {
            handle: Handle::new(name),
            _v: PhantomData,
        }
    }
    handle_basics!();

    pub fn get<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, key: &MK) -> Option<MV> {
        ctx.state_store()
            .read::<FxHashMap<MK, MV>, _>(&self.handle, |m| m.get(key).cloned())
            .flatten()
    }

    pub fn put<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, key: MK, value: MV) {
        ctx.state_store()
            .write::<FxHashMap<MK, MV>, _>(&self.handle, FxHashMap::default, |m| {
                m.insert(key, value);
            });
    }

    pub fn remove<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, key: &MK) -> Option<MV> {
        let store = ctx.state_store();
        let (removed, now_empty) = store
            .modify::<FxHashMap<MK, MV>, _>(&self.handle, |m| (m.remove(key), m.is_empty()))?;
        if now_empty {
            store.clear(&self.handle);
        }
        removed
    }

    pub fn contains<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, key: &MK) -> bool {
        self.get(ctx, key).is_some()
    }

    /// All entries of the current key, in no particular order.
    pub fn entries<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) -> Vec<(MK, MV)> {
        ctx.state_store()
            .read::<FxHashMap<MK, MV>, _>(&self.handle, |m| {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            })
            .unwrap_or_default()
    }
}

/// A value per key folded with a reduce function (Flink's `ReducingState`).
#[derive(Clone)]
pub struct ReducingState<V, F> {
    handle: Handle,
    reduce: F,
    _v: PhantomData<fn() -> V>,
}

impl<V: Clone + StateValue, F: Fn(&V, &V) -> V> ReducingState<V, F> {
    pub fn new(name: &'static str, reduce: F) -> Self {
        Self {
            handle: Handle::new(name),
            reduce,
            _v: PhantomData,
        }
    }
    handle_basics!();

    pub fn get<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) -> Option<V> {
        ctx.state_store().read::<V, _>(&self.handle, |v| v.clone())
    }

    pub fn add<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, value: V) {
        let cell = std::cell::RefCell::new(Some(value));
        let reduce = &self.reduce;
        ctx.state_store().write::<V, _>(
            &self.handle,
            || cell.borrow_mut().take().expect("initialised once"),
            |acc| {
                if let Some(v) = cell.borrow_mut().take() {
                    *acc = reduce(acc, &v);
                }
            },
        );
    }
}

/// An accumulator per key driven by an [`AggregateFunction`]
/// (Flink's `AggregatingState`).
pub struct AggregatingState<In, A> {
    handle: Handle,
    agg: A,
    _v: PhantomData<fn() -> In>,
}

impl<In, A: Clone> Clone for AggregatingState<In, A> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            agg: self.agg.clone(),
            _v: PhantomData,
        }
    }
}

impl<In, A: AggregateFunction<In>> AggregatingState<In, A> {
    pub fn new(name: &'static str, agg: A) -> Self {
        Self {
            handle: Handle::new(name),
            agg,
            _v: PhantomData,
        }
    }
    handle_basics!();

    pub fn get<K: StateKey>(&self, ctx: &mut impl StateAccess<K>) -> Option<A::Out> {
        ctx.state_store()
            .read::<A::Acc, _>(&self.handle, |acc| self.agg.result(acc))
    }

    pub fn add<K: StateKey>(&self, ctx: &mut impl StateAccess<K>, value: In) {
        ctx.state_store().write::<A::Acc, _>(
            &self.handle,
            || self.agg.create_accumulator(),
            |acc| self.agg.add(value, acc),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every test runs on each backend.
    fn backends() -> [StateBackend; 2] {
        [
            StateBackend::HashMap,
            StateBackend::RocksDb(Default::default()),
        ]
    }

    fn fresh<K: StateKey>(backend: &StateBackend) -> KeyedStateStore<K> {
        KeyedStateStore::open(backend, 128, "keyed-test").unwrap()
    }

    #[derive(Clone)]
    struct Avg;
    impl AggregateFunction<i64> for Avg {
        type Acc = (i64, i64);
        type Out = f64;
        fn create_accumulator(&self) -> (i64, i64) {
            (0, 0)
        }
        fn add(&self, v: i64, acc: &mut (i64, i64)) {
            acc.0 += v;
            acc.1 += 1;
        }
        fn result(&self, acc: &(i64, i64)) -> f64 {
            acc.0 as f64 / acc.1 as f64
        }
        fn merge(&self, acc: &mut (i64, i64), o: (i64, i64)) {
            acc.0 += o.0;
            acc.1 += o.1;
        }
    }

    #[test]
    fn value_state_is_per_key() {
        for b in &backends() {
            value_state_is_per_key_on(b);
        }
    }

    fn value_state_is_per_key_on(b: &StateBackend) {
        let mut store = fresh::<String>(b);
        let count = ValueState::<u64>::new("count");
        store.set_current_key("a".into());
        assert_eq!(count.get(&mut store), None);
        count.set(&mut store, 1);
        store.set_current_key("b".into());
        count.set(&mut store, 7);
        store.set_current_key("a".into());
        assert_eq!(count.get(&mut store), Some(1));
        count.clear(&mut store);
        assert_eq!(count.get(&mut store), None);
        store.set_current_key("b".into());
        assert_eq!(count.get(&mut store), Some(7));
        assert_eq!(store.entries("count"), 1);
    }

    #[test]
    fn list_map_reducing_aggregating() {
        for b in &backends() {
            list_map_reducing_aggregating_on(b);
        }
    }

    fn list_map_reducing_aggregating_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        store.set_current_key(1);
        let list = ListState::<i32>::new("l");
        list.add(&mut store, 1);
        list.add(&mut store, 2);
        assert_eq!(list.get(&mut store), vec![1, 2]);
        list.update(&mut store, vec![]);
        assert!(list.get(&mut store).is_empty());

        let map = MapState::<String, i32>::new("m");
        map.put(&mut store, "x".into(), 1);
        map.put(&mut store, "y".into(), 2);
        assert_eq!(map.get(&mut store, &"y".into()), Some(2));
        let mut entries = map.entries(&mut store);
        entries.sort();
        assert_eq!(entries, vec![("x".into(), 1), ("y".into(), 2)]);
        assert_eq!(map.remove(&mut store, &"x".into()), Some(1));
        assert_eq!(map.remove(&mut store, &"y".into()), Some(2));
        assert_eq!(store.entries("m"), 0, "an emptied map drops the key");

        let max = ReducingState::new("max", |a: &i32, b: &i32| *a.max(b));
        for v in [3, 9, 4] {
            max.add(&mut store, v);
        }
        assert_eq!(max.get(&mut store), Some(9));

        let avg = AggregatingState::new("avg", Avg);
        for v in [2, 4, 9] {
            avg.add(&mut store, v);
        }
        assert_eq!(avg.get(&mut store), Some(5.0));
    }

    #[test]
    fn ttl_expires_and_sweeps() {
        for b in &backends() {
            ttl_expires_and_sweeps_on(b);
        }
    }

    fn ttl_expires_and_sweeps_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        let v = ValueState::<u8>::new("v").with_ttl(StateTtl::new(Duration::from_millis(100)));
        store.advance_time(1_000);
        store.set_current_key(1);
        v.set(&mut store, 1);
        store.set_current_key(2);
        v.set(&mut store, 2);
        store.advance_time(1_050);
        assert_eq!(v.get(&mut store), Some(2), "not yet expired");
        v.set(&mut store, 3); // refreshes key 2
        store.advance_time(1_120);
        store.set_current_key(1);
        assert_eq!(v.get(&mut store), None, "key 1 expired");
        store.set_current_key(2);
        assert_eq!(v.get(&mut store), Some(3), "key 2 was refreshed at 1050");
        store.advance_time(5_000);
        assert_eq!(store.entries("v"), 0, "the sweep drops expired entries");
    }

    #[test]
    fn expired_value_is_replaced_on_write() {
        for b in &backends() {
            expired_value_is_replaced_on_write_on(b);
        }
    }

    fn expired_value_is_replaced_on_write_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        let list = ListState::<u8>::new("l").with_ttl(StateTtl::new(Duration::from_millis(10)));
        store.set_current_key(1);
        list.add(&mut store, 1);
        store.advance_time(20);
        list.add(&mut store, 2);
        assert_eq!(list.get(&mut store), vec![2]);
    }

    #[test]
    fn read_refresh_keeps_values_alive() {
        for b in &backends() {
            read_refresh_keeps_values_alive_on(b);
        }
    }

    fn read_refresh_keeps_values_alive_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        let v = ValueState::<u8>::new("v")
            .with_ttl(StateTtl::new(Duration::from_millis(100)).refresh_on_read());
        store.set_current_key(1);
        v.set(&mut store, 1);
        for t in [50, 100, 150, 200] {
            store.advance_time(t);
            assert_eq!(v.get(&mut store), Some(1));
        }
    }

    #[test]
    fn snapshot_by_key_group_restores_into_any_split() {
        for b in &backends() {
            snapshot_by_key_group_restores_into_any_split_on(b);
        }
    }

    fn snapshot_by_key_group_restores_into_any_split_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        let count = ValueState::<u64>::new("count");
        let names = MapState::<String, u8>::new("names");
        for k in 0..200u32 {
            store.set_current_key(k);
            count.set(&mut store, k as u64 * 3);
            names.put(&mut store, format!("n{k}"), (k % 7) as u8);
        }
        let groups = store.snapshot(16).unwrap();
        assert!(groups.len() > 1 && groups.iter().all(|(kg, _)| *kg < 16));
        // Split the key groups over two new stores, as a rescale to 2 would.
        let mut halves = [fresh::<u32>(b), fresh::<u32>(b)];
        for (kg, blob) in &groups {
            halves[kg * 2 / 16].restore(*kg, blob).unwrap();
        }
        for k in 0..200u32 {
            let kg = crate::key_group::key_group_for_hash(hash_key(&k), 16);
            let store = &mut halves[kg * 2 / 16];
            store.set_current_key(k);
            assert_eq!(count.clone().get(store), Some(k as u64 * 3));
            assert_eq!(
                names.clone().get(store, &format!("n{k}")),
                Some((k % 7) as u8)
            );
        }
        // Restored state that nobody read yet is carried into the next snapshot.
        let mut untouched = fresh::<u32>(b);
        for (kg, blob) in &groups {
            untouched.restore(*kg, blob).unwrap();
        }
        assert_eq!(untouched.snapshot(16).unwrap().len(), groups.len());
    }

    #[test]
    fn corrupt_state_is_reported_not_panicked() {
        for b in &backends() {
            corrupt_state_is_reported_not_panicked_on(b);
        }
    }

    fn corrupt_state_is_reported_not_panicked_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        assert!(store.restore(0, b"garbage").is_err());
        let blob = crate::codec::encode(&vec![("v".to_string(), vec![1u8, 2, 3])]).unwrap();
        store.restore(0, &blob).unwrap();
        store.set_current_key(1);
        assert_eq!(ValueState::<u64>::new("v").get(&mut store), None);
        assert!(matches!(store.take_failure(), Some(StateError::Corrupt(_))));
    }

    #[test]
    fn one_name_two_types_is_reported() {
        for b in &backends() {
            one_name_two_types_is_reported_on(b);
        }
    }

    fn one_name_two_types_is_reported_on(b: &StateBackend) {
        let mut store = fresh::<u32>(b);
        store.set_current_key(1);
        ValueState::<u8>::new("x").set(&mut store, 1);
        assert_eq!(ValueState::<String>::new("x").get(&mut store), None);
        assert!(matches!(
            store.take_failure(),
            Some(StateError::TypeMismatch { .. })
        ));
    }
}
