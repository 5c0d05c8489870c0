//! The window operator: per key, a small set of open windows, each with its
//! accumulator, its trigger state and the timers registered for it.
//!
//! Timers live in two time-ordered queues shared by all keys. Each window also
//! remembers which of its timers are live, which makes registration
//! idempotent and deletion cheap (a deleted timer is skipped when popped).
//! Merging windows (sessions) are re-keyed under the merged window: the
//! accumulators merge, the trigger states are merged by the trigger, and the
//! old windows' timers go stale with them.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::assigner::{Window, WindowAssigner};
use super::function::{WindowFunction, WindowOutput};
use super::trigger::{TimerRequest, Trigger, TriggerContext};
use crate::checkpoint::{decode_state, encode_state, CheckpointId, OperatorState};
use crate::element::{Data, Key, Output, Signal};
use crate::error::Result;
use crate::exec::SubtaskInfo;
use crate::function::{OutputTag, SideOutputs};
use crate::keyed::TimeDomain;
use crate::time::{Timestamp, MAX_WATERMARK, MIN_WATERMARK};

struct Slot<W, Acc, S> {
    window: W,
    acc: Option<Acc>,
    trigger: S,
    event_timers: SmallVec<[Timestamp; 2]>,
    processing_timers: SmallVec<[Timestamp; 2]>,
}

impl<W, Acc, S: Default> Slot<W, Acc, S> {
    fn new(window: W) -> Self {
        Self {
            window,
            acc: None,
            trigger: S::default(),
            event_timers: SmallVec::new(),
            processing_timers: SmallVec::new(),
        }
    }
}

type Queue<K, W> = BTreeMap<Timestamp, Vec<(K, W)>>;
type WindowMap<T, A, Tr, F, K> =
    FxHashMap<(K, <A as WindowAssigner<T>>::W), SlotOf<T, A, Tr, F, K>>;
type SlotOf<T, A, Tr, F, K> = Slot<
    <A as WindowAssigner<T>>::W,
    <F as WindowFunction<K, T, <A as WindowAssigner<T>>::W>>::Acc,
    <Tr as Trigger<T, <A as WindowAssigner<T>>::W>>::State,
>;

/// Keyed windows with a trigger, allowed lateness and late-data side output.
pub struct WindowOperator<K, T, A, Tr, F, KS>
where
    A: WindowAssigner<T>,
    Tr: Trigger<T, A::W>,
    F: WindowFunction<K, T, A::W>,
{
    assigner: A,
    trigger: Tr,
    function: F,
    key_of: KS,
    allowed_lateness: i64,
    late: Option<OutputTag<T>>,
    /// Open windows by (key, window).
    windows: WindowMap<T, A, Tr, F, K>,
    /// The open windows of each key, kept for merging assigners only.
    sessions: FxHashMap<K, SmallVec<[A::W; 2]>>,
    event_timers: Queue<K, A::W>,
    processing_timers: Queue<K, A::W>,
    out: Box<dyn Output<F::Out>>,
    side: SideOutputs,
    watermark: Timestamp,
    processing_time: Timestamp,
    requests: SmallVec<[TimerRequest; 4]>,
    checkpoint: Option<SubtaskInfo>,
    _t: PhantomData<fn(T)>,
}

type SnapshotOf<K, T, A, Tr, F> = WindowSnapshot<
    K,
    <A as WindowAssigner<T>>::W,
    <F as WindowFunction<K, T, <A as WindowAssigner<T>>::W>>::Acc,
    <Tr as Trigger<T, <A as WindowAssigner<T>>::W>>::State,
>;
type SnapshotGroup<'a, K, T, A, Tr, F> = Vec<
    WindowSnapshot<
        &'a K,
        &'a <A as WindowAssigner<T>>::W,
        &'a <F as WindowFunction<K, T, <A as WindowAssigner<T>>::W>>::Acc,
        &'a <Tr as Trigger<T, <A as WindowAssigner<T>>::W>>::State,
    >,
>;

/// One open window in a checkpoint: its contents, trigger state and timers.
#[derive(Serialize, Deserialize)]
struct WindowSnapshot<K, W, Acc, S> {
    key: K,
    window: W,
    acc: Option<Acc>,
    trigger: S,
    event_timers: Vec<Timestamp>,
    processing_timers: Vec<Timestamp>,
}

/// Applies a trigger's timer requests to one window and the shared queues.
fn apply_requests<K: Clone, W: Clone, Acc, S>(
    requests: &mut SmallVec<[TimerRequest; 4]>,
    key: &K,
    slot: &mut Slot<W, Acc, S>,
    event: &mut Queue<K, W>,
    processing: &mut Queue<K, W>,
) {
    for request in requests.drain(..) {
        let (domain, time, register) = match request {
            TimerRequest::Register(d, t) => (d, t, true),
            TimerRequest::Delete(d, t) => (d, t, false),
        };
        let (live, queue) = match domain {
            TimeDomain::EventTime => (&mut slot.event_timers, &mut *event),
            TimeDomain::ProcessingTime => (&mut slot.processing_timers, &mut *processing),
        };
        if !register {
            live.retain(|x| *x != time);
        } else if !live.contains(&time) {
            live.push(time);
            queue
                .entry(time)
                .or_default()
                .push((key.clone(), slot.window.clone()));
        }
    }
}

fn pop_due<K, W>(queue: &mut Queue<K, W>, up_to: Timestamp) -> Option<(Timestamp, K, W)> {
    loop {
        let mut first = queue.first_entry()?;
        let time = *first.key();
        if time > up_to {
            return None;
        }
        let item = first.get_mut().pop();
        if first.get().is_empty() {
            first.remove();
        }
        if let Some((k, w)) = item {
            return Some((time, k, w));
        }
    }
}

impl<K, T, A, Tr, F, KS> WindowOperator<K, T, A, Tr, F, KS>
where
    K: Key,
    T: Data,
    A: WindowAssigner<T>,
    Tr: Trigger<T, A::W>,
    F: WindowFunction<K, T, A::W>,
    KS: Fn(&T) -> K + Send + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        assigner: A,
        trigger: Tr,
        function: F,
        key_of: KS,
        allowed_lateness: i64,
        late: Option<OutputTag<T>>,
        out: Box<dyn Output<F::Out>>,
        side: SideOutputs,
    ) -> Self {
        Self {
            assigner,
            trigger,
            function,
            key_of,
            allowed_lateness: allowed_lateness.max(0),
            late,
            windows: FxHashMap::default(),
            sessions: FxHashMap::default(),
            event_timers: BTreeMap::new(),
            processing_timers: BTreeMap::new(),
            out,
            side,
            watermark: MIN_WATERMARK,
            processing_time: crate::time::now_ms(),
            requests: SmallVec::new(),
            checkpoint: None,
            _t: PhantomData,
        }
    }

    /// Takes part in checkpoints as subtask `info`, starting from the open
    /// windows (with their timers) of the key groups it owns.
    pub fn checkpointed(mut self, info: &SubtaskInfo) -> Result<Self> {
        for (_, blob) in info.restored_key_groups()? {
            let windows: Vec<SnapshotOf<K, T, A, Tr, F>> = decode_state(&info.uid, blob)?;
            for w in windows {
                let mut slot = Slot::new(w.window.clone());
                slot.acc = w.acc;
                slot.trigger = w.trigger;
                for t in w.event_timers {
                    slot.event_timers.push(t);
                    let entry = self.event_timers.entry(t).or_default();
                    entry.push((w.key.clone(), w.window.clone()));
                }
                for t in w.processing_timers {
                    slot.processing_timers.push(t);
                    let entry = self.processing_timers.entry(t).or_default();
                    entry.push((w.key.clone(), w.window.clone()));
                }
                if self.assigner.is_merging() {
                    let open = self.sessions.entry(w.key.clone()).or_default();
                    open.push(w.window.clone());
                    open.sort();
                }
                self.windows.insert((w.key, w.window), slot);
            }
        }
        if let Some(wm) = crate::keyed::restored_watermark(info)? {
            self.watermark = wm;
        }
        self.checkpoint = Some(info.clone());
        Ok(self)
    }

    fn snapshot(&self, info: &SubtaskInfo) -> Result<OperatorState> {
        let max = info.max_parallelism;
        let mut groups: BTreeMap<usize, SnapshotGroup<'_, K, T, A, Tr, F>> = BTreeMap::new();
        for ((key, window), slot) in &self.windows {
            groups
                .entry(crate::keyed::key_group_of(key, max))
                .or_default()
                .push(WindowSnapshot {
                    key,
                    window,
                    acc: slot.acc.as_ref(),
                    trigger: &slot.trigger,
                    event_timers: slot.event_timers.to_vec(),
                    processing_timers: slot.processing_timers.to_vec(),
                });
        }
        let keyed = groups
            .into_iter()
            .map(|(kg, windows)| Ok((kg, encode_state(&info.uid, &windows)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OperatorState {
            keyed,
            operator: Some(encode_state(&info.uid, &self.watermark)?),
        })
    }

    fn on_barrier(&mut self, id: CheckpointId) {
        if let Some(info) = &self.checkpoint {
            info.report_snapshot(id, self.snapshot(info));
        }
    }

    /// Number of open (key, window) pairs; for tests and metrics.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    fn cleanup_time(&self, w: &A::W) -> Timestamp {
        if self.assigner.is_event_time() {
            w.max_timestamp().saturating_add(self.allowed_lateness)
        } else {
            w.max_timestamp()
        }
    }

    fn is_window_late(&self, w: &A::W) -> bool {
        self.assigner.is_event_time() && self.cleanup_time(w) <= self.watermark
    }

    fn is_element_late(&self, ts: Timestamp) -> bool {
        self.assigner.is_event_time() && ts.saturating_add(self.allowed_lateness) <= self.watermark
    }

    fn cleanup_request(&self, w: &A::W) -> Option<TimerRequest> {
        let t = self.cleanup_time(w);
        let domain = if self.assigner.is_event_time() {
            TimeDomain::EventTime
        } else {
            TimeDomain::ProcessingTime
        };
        (t != MAX_WATERMARK).then_some(TimerRequest::Register(domain, t))
    }

    fn late_element(&mut self, value: T, ts: Timestamp) {
        if self.is_element_late(ts) {
            if let Some(tag) = &self.late {
                self.side.emit(tag, value, ts);
            }
        }
    }

    /// Adds `value` to the window `window` of `key` and acts on the trigger.
    fn add_to_window(&mut self, key: K, window: A::W, value: T, ts: Timestamp) {
        let cleanup = self.cleanup_request(&window);
        let Self {
            windows,
            trigger,
            function,
            requests,
            event_timers,
            processing_timers,
            out,
            watermark,
            processing_time,
            ..
        } = self;
        let entry = windows.entry((key, window));
        let (key, _) = entry.key();
        let key = key.clone();
        let slot = entry.or_insert_with_key(|(_, w)| Slot::new(w.clone()));
        // A trigger never sees window contents, so asking it before adding the
        // element gives Flink's result without cloning the element.
        let result = trigger.on_element(
            &value,
            ts,
            &slot.window,
            &mut TriggerContext {
                state: &mut slot.trigger,
                watermark: *watermark,
                processing_time: *processing_time,
                timers: requests,
            },
        );
        let acc = slot.acc.get_or_insert_with(|| function.create());
        function.add(acc, value);
        if result.is_fire() {
            let mut output = WindowOutput {
                out: &mut **out,
                timestamp: slot.window.max_timestamp(),
            };
            function.emit(&key, &slot.window, acc, &mut output);
        }
        if result.is_purge() {
            slot.acc = None;
        }
        requests.extend(cleanup);
        apply_requests(requests, &key, slot, event_timers, processing_timers);
    }

    fn process_non_merging(
        &mut self,
        key: K,
        value: T,
        ts: Timestamp,
        windows: SmallVec<[A::W; 4]>,
    ) {
        let mut live: SmallVec<[A::W; 4]> = windows
            .into_iter()
            .filter(|w| !self.is_window_late(w))
            .collect();
        let Some(last) = live.pop() else {
            return self.late_element(value, ts);
        };
        for w in live {
            self.add_to_window(key.clone(), w, value.clone(), ts);
        }
        self.add_to_window(key, last, value, ts);
    }

    fn process_merging(&mut self, key: K, value: T, ts: Timestamp, new_window: A::W) {
        let mut open = self.sessions.remove(&key).unwrap_or_default();
        let mut all: Vec<A::W> = open.to_vec();
        if !all.contains(&new_window) {
            all.push(new_window.clone());
        }
        let mut actual = new_window.clone();
        for (result, mut members) in self.assigner.merge_windows(&all) {
            if let Some(pos) = members.iter().position(|m| *m == new_window) {
                members.remove(pos);
                actual = result.clone();
            }
            if members.is_empty() || (members.len() == 1 && members[0] == result) {
                continue; // nothing merged, or the new window lies inside an existing one
            }
            let mut merged_acc: Option<F::Acc> = None;
            let mut states = Vec::with_capacity(members.len());
            for m in &members {
                open.retain(|w| w != m);
                let Some(mut old) = self.windows.remove(&(key.clone(), m.clone())) else {
                    continue;
                };
                self.trigger.clear(
                    &old.window,
                    &mut TriggerContext {
                        state: &mut old.trigger,
                        watermark: self.watermark,
                        processing_time: self.processing_time,
                        timers: &mut self.requests,
                    },
                );
                self.requests.clear(); // the old window's timers go stale with it
                states.push(old.trigger);
                if let Some(acc) = old.acc {
                    match merged_acc.as_mut() {
                        Some(into) => self.function.merge(into, acc),
                        None => merged_acc = Some(acc),
                    }
                }
            }
            let mut slot = Slot::new(result.clone());
            slot.acc = merged_acc;
            self.trigger.on_merge(
                &result,
                states,
                &mut TriggerContext {
                    state: &mut slot.trigger,
                    watermark: self.watermark,
                    processing_time: self.processing_time,
                    timers: &mut self.requests,
                },
            );
            apply_requests(
                &mut self.requests,
                &key,
                &mut slot,
                &mut self.event_timers,
                &mut self.processing_timers,
            );
            self.windows.insert((key.clone(), result.clone()), slot);
            open.push(result);
        }
        if self.is_window_late(&actual) {
            // Only a brand-new window can be late (merging with a live window
            // yields a live one); nothing is stored for it.
            if !open.is_empty() {
                self.sessions.insert(key, open);
            }
            return self.late_element(value, ts);
        }
        if !open.contains(&actual) {
            open.push(actual.clone());
        }
        self.sessions.insert(key.clone(), open);
        self.add_to_window(key, actual, value, ts);
    }

    fn fire_timers(&mut self, domain: TimeDomain, up_to: Timestamp) {
        loop {
            let queue = match domain {
                TimeDomain::EventTime => &mut self.event_timers,
                TimeDomain::ProcessingTime => &mut self.processing_timers,
            };
            let Some((time, key, window)) = pop_due(queue, up_to) else {
                break;
            };
            self.on_timer(domain, time, key, window);
        }
    }

    fn on_timer(&mut self, domain: TimeDomain, time: Timestamp, key: K, window: A::W) {
        let is_cleanup = match domain {
            TimeDomain::EventTime => self.assigner.is_event_time(),
            TimeDomain::ProcessingTime => !self.assigner.is_event_time(),
        } && self.cleanup_time(&window) == time;
        let id = (key, window);
        let Self {
            windows,
            sessions,
            trigger,
            function,
            requests,
            event_timers,
            processing_timers,
            out,
            watermark,
            processing_time,
            ..
        } = self;
        let Some(slot) = windows.get_mut(&id) else {
            return;
        };
        let timers = match domain {
            TimeDomain::EventTime => &mut slot.event_timers,
            TimeDomain::ProcessingTime => &mut slot.processing_timers,
        };
        let Some(pos) = timers.iter().position(|t| *t == time) else {
            return; // deleted or superseded
        };
        timers.swap_remove(pos);
        let mut ctx = TriggerContext {
            state: &mut slot.trigger,
            watermark: *watermark,
            processing_time: *processing_time,
            timers: requests,
        };
        let result = match domain {
            TimeDomain::EventTime => trigger.on_event_time(time, &slot.window, &mut ctx),
            TimeDomain::ProcessingTime => trigger.on_processing_time(time, &slot.window, &mut ctx),
        };
        if result.is_fire() {
            if let Some(acc) = &slot.acc {
                let mut output = WindowOutput {
                    out: &mut **out,
                    timestamp: slot.window.max_timestamp(),
                };
                function.emit(&id.0, &slot.window, acc, &mut output);
            }
        }
        if result.is_purge() {
            slot.acc = None;
        }
        if is_cleanup {
            requests.clear();
            windows.remove(&id);
            if self.assigner.is_merging() {
                if let Some(open) = sessions.get_mut(&id.0) {
                    open.retain(|w| *w != id.1);
                    if open.is_empty() {
                        sessions.remove(&id.0);
                    }
                }
            }
        } else {
            apply_requests(requests, &id.0, slot, event_timers, processing_timers);
        }
    }
}

impl<K, T, A, Tr, F, KS> Output<T> for WindowOperator<K, T, A, Tr, F, KS>
where
    K: Key,
    T: Data,
    A: WindowAssigner<T>,
    Tr: Trigger<T, A::W>,
    F: WindowFunction<K, T, A::W>,
    KS: Fn(&T) -> K + Send + 'static,
{
    #[inline]
    fn record(&mut self, value: T, timestamp: Timestamp) {
        let key = (self.key_of)(&value);
        let mut windows = SmallVec::new();
        self.assigner
            .assign(&value, timestamp, self.processing_time, &mut windows);
        if self.assigner.is_merging() {
            for w in windows {
                // Session assigners yield exactly one window per element.
                self.process_merging(key.clone(), value.clone(), timestamp, w);
            }
        } else {
            self.process_non_merging(key, value, timestamp, windows);
        }
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watermark(wm) => {
                self.watermark = wm;
                self.fire_timers(TimeDomain::EventTime, wm);
            }
            Signal::ProcessingTime(now) => {
                self.processing_time = now;
                self.fire_timers(TimeDomain::ProcessingTime, now);
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
