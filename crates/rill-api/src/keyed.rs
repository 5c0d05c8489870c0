//! Keyed processing: per-key state and timers.
//!
//! A [`KeyedProcessFunction`] sees records of one key at a time. The operator
//! running it owns a [`KeyedStateStore`] (state handles read and write the
//! current key's values) and a [`TimerService`] (event-time timers fire when
//! the watermark passes them, processing-time timers on the wall clock; both
//! are deduplicated per key and timestamp, as in Flink).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rill_state::{KeyedStateStore, StateAccess};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{decode_state, encode_state, CheckpointId, OperatorState};
use crate::element::{Data, Key, Output, Signal};
use crate::error::Result;
use crate::exec::SubtaskInfo;
use crate::function::{Context, OutputTag, SideOutputs};
use crate::time::{Timestamp, MIN_WATERMARK};

/// Which clock a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

/// Timers of one clock: ordered by time, at most one per (key, time).
pub struct TimerQueue<K> {
    by_time: BTreeMap<Timestamp, Vec<K>>,
    live: FxHashSet<(Timestamp, K)>,
}

impl<K: Key> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            by_time: BTreeMap::new(),
            live: FxHashSet::default(),
        }
    }
}

impl<K: Key> TimerQueue<K> {
    pub fn register(&mut self, key: K, time: Timestamp) {
        if self.live.insert((time, key.clone())) {
            self.by_time.entry(time).or_default().push(key);
        }
    }

    pub fn delete(&mut self, key: &K, time: Timestamp) {
        // Lazily skipped when popped.
        self.live.remove(&(time, key.clone()));
    }

    /// The next live timer at or before `up_to`, removed from the queue.
    pub fn pop_due(&mut self, up_to: Timestamp) -> Option<(Timestamp, K)> {
        loop {
            let mut first = self.by_time.first_entry()?;
            let time = *first.key();
            if time > up_to {
                return None;
            }
            let key = first.get_mut().pop();
            if first.get().is_empty() {
                first.remove();
            }
            if let Some(key) = key {
                if self.live.remove(&(time, key.clone())) {
                    return Some((time, key));
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Live timers as (time, key), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(Timestamp, K)> {
        self.live.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Event-time and processing-time timers of a keyed operator.
pub struct TimerService<K> {
    pub(crate) event: TimerQueue<K>,
    pub(crate) processing: TimerQueue<K>,
}

impl<K: Key> Default for TimerService<K> {
    fn default() -> Self {
        Self {
            event: TimerQueue::default(),
            processing: TimerQueue::default(),
        }
    }
}

/// What a keyed function sees: the current key, its state, timers, outputs.
pub struct KeyedContext<'a, K, O> {
    pub(crate) base: Context<'a, O>,
    pub(crate) store: &'a mut KeyedStateStore<K>,
    pub(crate) timers: &'a mut TimerService<K>,
    pub(crate) processing_time: Timestamp,
}

impl<K: Key, O> KeyedContext<'_, K, O> {
    /// The key of the record or timer being processed.
    pub fn key(&self) -> &K {
        self.store
            .current_key()
            .expect("a keyed context always has a current key")
    }

    #[inline]
    pub fn emit(&mut self, value: O) {
        self.base.emit(value)
    }

    pub fn emit_at(&mut self, value: O, timestamp: Timestamp) {
        self.base.emit_at(value, timestamp)
    }

    pub fn side<T: 'static>(&mut self, tag: &OutputTag<T>, value: T) {
        self.base.side(tag, value)
    }

    pub fn timestamp(&self) -> Timestamp {
        self.base.timestamp
    }

    pub fn current_watermark(&self) -> Timestamp {
        self.base.watermark
    }

    pub fn current_processing_time(&self) -> Timestamp {
        self.processing_time
    }

    pub fn register_event_time_timer(&mut self, time: Timestamp) {
        let key = self.key().clone();
        self.timers.event.register(key, time);
    }

    pub fn delete_event_time_timer(&mut self, time: Timestamp) {
        let key = self.key().clone();
        self.timers.event.delete(&key, time);
    }

    pub fn register_processing_time_timer(&mut self, time: Timestamp) {
        let key = self.key().clone();
        self.timers.processing.register(key, time);
    }

    pub fn delete_processing_time_timer(&mut self, time: Timestamp) {
        let key = self.key().clone();
        self.timers.processing.delete(&key, time);
    }
}

impl<K, O> StateAccess<K> for KeyedContext<'_, K, O> {
    fn state_store(&mut self) -> &mut KeyedStateStore<K> {
        self.store
    }
}

/// Flink's `KeyedProcessFunction`: records and timers of one key at a time,
/// with keyed state declared as handle fields of the implementing type.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    fn process_element(&mut self, value: I, ctx: &mut KeyedContext<'_, K, O>);

    /// A timer registered for the current key fired.
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, K, O>,
    ) {
    }
}

/// Closures `(value, ctx)` are keyed process functions without timers.
impl<K, I, O, F> KeyedProcessFunction<K, I, O> for F
where
    F: FnMut(I, &mut KeyedContext<'_, K, O>) + Send + 'static,
{
    fn process_element(&mut self, value: I, ctx: &mut KeyedContext<'_, K, O>) {
        self(value, ctx)
    }
}

/// Runs a [`KeyedProcessFunction`] in a chain (after a key-group exchange).
pub struct KeyedProcessOperator<K, I, O, F, KS> {
    function: F,
    key_of: KS,
    store: KeyedStateStore<K>,
    timers: TimerService<K>,
    out: Box<dyn Output<O>>,
    side: SideOutputs,
    watermark: Timestamp,
    processing_time: Timestamp,
    checkpoint: Option<SubtaskInfo>,
    _i: PhantomData<fn(I)>,
}

/// A keyed operator's state of one key group in a checkpoint.
#[derive(Serialize, Deserialize)]
struct KeyGroupSnapshot<K> {
    state: Option<Vec<u8>>,
    event_timers: Vec<(Timestamp, K)>,
    processing_timers: Vec<(Timestamp, K)>,
}

impl<K> Default for KeyGroupSnapshot<K> {
    fn default() -> Self {
        Self {
            state: None,
            event_timers: Vec::new(),
            processing_timers: Vec::new(),
        }
    }
}

/// The key group of a key, as exchanges route it.
pub(crate) fn key_group_of<K: Key>(key: &K, max_parallelism: usize) -> usize {
    rill_state::key_group::key_group_for_hash(rill_state::hash_key(key), max_parallelism)
}

/// A keyed state store for subtask `info`, on the job's state backend.
pub(crate) fn open_store<K: Key>(info: &SubtaskInfo) -> Result<KeyedStateStore<K>> {
    let label = format!("{}-{}", info.uid, info.index);
    Ok(KeyedStateStore::open(
        &info.checkpoint.state_backend,
        info.max_parallelism,
        &label,
    )?)
}

/// Loads the keyed state and timers of the key groups `info` owns.
pub(crate) fn restore_keyed<K: Key>(
    store: &mut KeyedStateStore<K>,
    timers: &mut TimerService<K>,
    info: &SubtaskInfo,
) -> Result<()> {
    // A RocksDB store's own state travels under a companion uid: native
    // snapshots (checkpoints) or key groups (savepoints).
    if let Some(native) = info
        .checkpoint
        .operator(&rill_state::native::native_uid(&info.uid))
    {
        let range = info.key_groups()?;
        let snapshots: Vec<&[u8]> = native.operator.values().map(Vec::as_slice).collect();
        store.restore_native(&snapshots, range)?;
        for (key_group, blob) in crate::checkpoint::restored_key_groups(Some(native), range) {
            store.restore(key_group, blob)?;
        }
    }
    for (key_group, blob) in info.restored_key_groups()? {
        let group: KeyGroupSnapshot<K> = decode_state(&info.uid, blob)?;
        if let Some(state) = group.state {
            store.restore(key_group, &state)?;
        }
        for (time, key) in group.event_timers {
            timers.event.register(key, time);
        }
        for (time, key) in group.processing_timers {
            timers.processing.register(key, time);
        }
    }
    Ok(())
}

/// Keyed state and timers by key group, for checkpoint `id`. A RocksDB store
/// reports its native snapshot under a companion uid instead, leaving only
/// timers in the key groups.
pub(crate) fn snapshot_keyed<K: Key>(
    store: &mut KeyedStateStore<K>,
    timers: &TimerService<K>,
    info: &SubtaskInfo,
    id: CheckpointId,
) -> Result<Vec<(usize, Vec<u8>)>> {
    let max = info.max_parallelism;
    let mut groups: BTreeMap<usize, KeyGroupSnapshot<K>> = BTreeMap::new();
    match store.native_snapshot(id, info.key_groups()?)? {
        Some(native) => info
            .with_uid(rill_state::native::native_uid(&info.uid))
            .put_snapshot(
                id,
                OperatorState {
                    keyed: native.pending,
                    operator: Some(native.handle),
                },
            ),
        None => {
            for (key_group, blob) in store.snapshot(max)? {
                groups.entry(key_group).or_default().state = Some(blob);
            }
        }
    }
    for (time, key) in timers.event.iter() {
        let group = groups.entry(key_group_of(key, max)).or_default();
        group.event_timers.push((*time, key.clone()));
    }
    for (time, key) in timers.processing.iter() {
        let group = groups.entry(key_group_of(key, max)).or_default();
        group.processing_timers.push((*time, key.clone()));
    }
    groups
        .into_iter()
        .map(|(kg, group)| Ok((kg, encode_state(&info.uid, &group)?)))
        .collect()
}

/// Restores the watermark an operator had reached: the minimum over all its
/// old subtasks (after a rescale, a subtask's keys come from any of them, so
/// it must not be ahead of any).
pub(crate) fn restored_watermark(info: &SubtaskInfo) -> Result<Option<Timestamp>> {
    let mut min: Option<Timestamp> = None;
    let all = info
        .restored()
        .map(|r| r.operator.values().collect::<Vec<_>>());
    for blob in all.unwrap_or_default() {
        let wm: Timestamp = decode_state(&info.uid, blob)?;
        min = Some(min.map_or(wm, |m: Timestamp| m.min(wm)));
    }
    Ok(min)
}

impl<K, I, O, F, KS> KeyedProcessOperator<K, I, O, F, KS>
where
    K: Key,
    I: Data,
    O: Data,
    F: KeyedProcessFunction<K, I, O>,
    KS: Fn(&I) -> K + Send + 'static,
{
    pub fn new(function: F, key_of: KS, out: Box<dyn Output<O>>, side: SideOutputs) -> Self {
        let processing_time = crate::time::now_ms();
        let mut store = KeyedStateStore::new();
        store.advance_time(processing_time);
        Self {
            function,
            key_of,
            store,
            timers: TimerService::default(),
            out,
            side,
            watermark: MIN_WATERMARK,
            processing_time,
            checkpoint: None,
            _i: PhantomData,
        }
    }

    /// Takes part in checkpoints as subtask `info`, starting from its share
    /// of the restored state (state and timers of the key groups it owns).
    pub fn checkpointed(mut self, info: &SubtaskInfo) -> Result<Self> {
        self.store = open_store(info)?;
        self.store.advance_time(self.processing_time);
        restore_keyed(&mut self.store, &mut self.timers, info)?;
        if let Some(wm) = restored_watermark(info)? {
            self.watermark = wm;
        }
        self.checkpoint = Some(info.clone());
        Ok(self)
    }

    fn snapshot(&mut self, info: &SubtaskInfo, id: CheckpointId) -> Result<OperatorState> {
        let keyed = snapshot_keyed(&mut self.store, &self.timers, info, id)?;
        Ok(OperatorState {
            keyed,
            operator: Some(encode_state(&info.uid, &self.watermark)?),
        })
    }

    fn on_barrier(&mut self, id: CheckpointId) {
        if let Some(info) = self.checkpoint.clone() {
            let snapshot = self.snapshot(&info, id);
            info.report_snapshot(id, snapshot);
        }
    }

    fn check_state(&mut self) {
        if let Some(err) = self.store.take_failure() {
            // A programming error in the job (one state name, two types).
            panic!("{err}");
        }
    }

    fn fire(&mut self, domain: TimeDomain, up_to: Timestamp) {
        loop {
            let due = match domain {
                TimeDomain::EventTime => self.timers.event.pop_due(up_to),
                TimeDomain::ProcessingTime => self.timers.processing.pop_due(up_to),
            };
            let Some((time, key)) = due else { break };
            self.store.set_current_key(key);
            let mut ctx = KeyedContext {
                base: Context::new(&mut *self.out, &mut self.side, time, self.watermark),
                store: &mut self.store,
                timers: &mut self.timers,
                processing_time: self.processing_time,
            };
            self.function.on_timer(time, domain, &mut ctx);
        }
        self.check_state();
    }
}

impl<K, I, O, F, KS> Output<I> for KeyedProcessOperator<K, I, O, F, KS>
where
    K: Key,
    I: Data,
    O: Data,
    F: KeyedProcessFunction<K, I, O>,
    KS: Fn(&I) -> K + Send + 'static,
{
    #[inline]
    fn record(&mut self, value: I, timestamp: Timestamp) {
        self.store.set_current_key((self.key_of)(&value));
        let mut ctx = KeyedContext {
            base: Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark),
            store: &mut self.store,
            timers: &mut self.timers,
            processing_time: self.processing_time,
        };
        self.function.process_element(value, &mut ctx);
        self.check_state();
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watermark(wm) => {
                self.watermark = wm;
                self.fire(TimeDomain::EventTime, wm);
            }
            Signal::ProcessingTime(now) => {
                self.processing_time = now;
                self.store.advance_time(now);
                self.fire(TimeDomain::ProcessingTime, now);
            }
            Signal::Barrier(id) => self.on_barrier(id),
            Signal::Idle(_)
            | Signal::Flush
            | Signal::EndOfInput
            | Signal::CheckpointComplete(_) => {}
        }
        self.out.signal(signal);
        self.side.signal(signal);
    }
}

/// Flink's rolling `reduce` on a keyed stream: emits the running value.
#[derive(Clone)]
pub struct RollingReduce<T, F> {
    state: rill_state::ValueState<T>,
    reduce: F,
}

impl<T: Data, F> RollingReduce<T, F> {
    pub fn new(reduce: F) -> Self {
        Self {
            state: rill_state::ValueState::new("rolling-reduce"),
            reduce,
        }
    }
}

impl<K: Key, T: Data, F: FnMut(T, T) -> T + Send + 'static> KeyedProcessFunction<K, T, T>
    for RollingReduce<T, F>
{
    fn process_element(&mut self, value: T, ctx: &mut KeyedContext<'_, K, T>) {
        let next = match self.state.get(ctx) {
            Some(acc) => (self.reduce)(acc, value),
            None => value,
        };
        self.state.set(ctx, next.clone());
        ctx.emit(next);
    }
}

/// A rolling aggregation on a keyed stream: emits the current result per record.
pub struct RollingAggregate<I, A: rill_state::AggregateFunction<I>> {
    state: rill_state::AggregatingState<I, A>,
}

impl<I, A: rill_state::AggregateFunction<I>> Clone for RollingAggregate<I, A> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<I, A: rill_state::AggregateFunction<I>> RollingAggregate<I, A> {
    pub fn new(agg: A) -> Self {
        Self {
            state: rill_state::AggregatingState::new("rolling-aggregate", agg),
        }
    }
}

impl<K, I, A> KeyedProcessFunction<K, I, A::Out> for RollingAggregate<I, A>
where
    K: Key,
    I: Data,
    A: rill_state::AggregateFunction<I>,
    A::Out: Data,
{
    fn process_element(&mut self, value: I, ctx: &mut KeyedContext<'_, K, A::Out>) {
        self.state.add(ctx, value);
        if let Some(result) = self.state.get(ctx) {
            ctx.emit(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::SharedVec;
    use rill_state::ValueState;

    /// Counts per key and emits the count one event-time unit after the
    /// last element (a classic "session timeout" shape).
    struct CountWithTimeout {
        count: ValueState<u32>,
        last: ValueState<Timestamp>,
    }

    impl KeyedProcessFunction<String, (String, Timestamp), (String, u32)> for CountWithTimeout {
        fn process_element(
            &mut self,
            value: (String, Timestamp),
            ctx: &mut KeyedContext<'_, String, (String, u32)>,
        ) {
            let c = self.count.get(ctx).unwrap_or(0) + 1;
            self.count.set(ctx, c);
            self.last.set(ctx, value.1);
            ctx.register_event_time_timer(value.1 + 10);
        }

        fn on_timer(
            &mut self,
            ts: Timestamp,
            domain: TimeDomain,
            ctx: &mut KeyedContext<'_, String, (String, u32)>,
        ) {
            assert_eq!(domain, TimeDomain::EventTime);
            if self.last.get(ctx) == Some(ts - 10) {
                let key = ctx.key().clone();
                let c = self.count.get(ctx).unwrap_or(0);
                ctx.emit((key, c));
            }
        }
    }

    #[test]
    fn timers_fire_per_key_when_watermark_passes() {
        let out: SharedVec<(String, u32)> = Default::default();
        let mut op = KeyedProcessOperator::new(
            CountWithTimeout {
                count: ValueState::new("count"),
                last: ValueState::new("last"),
            },
            |v: &(String, Timestamp)| v.0.clone(),
            Box::new(out.clone()),
            SideOutputs::default(),
        );
        for (k, t) in [("a", 1), ("b", 2), ("a", 5), ("a", 5)] {
            op.record((k.to_string(), t), t);
        }
        op.signal(Signal::Watermark(12));
        assert_eq!(out.lock().unwrap().records, vec![(("b".into(), 1), 12)]);
        op.signal(Signal::Watermark(20));
        assert_eq!(out.lock().unwrap().records.len(), 2);
        assert_eq!(out.lock().unwrap().records[1], (("a".into(), 3), 15));
    }

    #[test]
    fn timer_queue_dedups_and_deletes() {
        let mut q = TimerQueue::<u8>::default();
        q.register(1, 10);
        q.register(1, 10);
        q.register(2, 10);
        q.register(1, 5);
        q.delete(&2, 10);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(100), Some((5, 1)));
        assert_eq!(q.pop_due(100), Some((10, 1)));
        assert_eq!(q.pop_due(100), None);
        q.register(2, 10);
        assert_eq!(q.pop_due(9), None);
        assert_eq!(q.pop_due(10), Some((10, 2)));
    }
}
