//! Broadcast state: one low-volume stream (rules, thresholds, reference data)
//! replicated to every subtask of a high-volume stream.
//!
//! Each subtask keeps its own copy of the broadcast state, a value of the
//! function's choosing. Only the broadcast side may change it, so every copy
//! evolves identically and stays consistent (Flink's rule).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::checkpoint::{decode_state, encode_state, CheckpointId, OperatorState};
use crate::element::{Data, Key, KeySelector, Output, Signal};
use crate::error::Result;
use crate::exec::{SubtaskInfo, TaskInput, TwoInputHead, TwoInputOperator};
use crate::function::{Context, SideOutputs};
use crate::graph::{BuildTwoInput, Erased, NodeKind, Port, TypeOf};
use crate::keyed::{KeyedContext, TimeDomain, TimerService};
use crate::stream::DataStream;
use crate::time::{Timestamp, MIN_WATERMARK};
use rill_state::KeyedStateStore;

/// A stream prepared to be connected as the broadcast side.
pub struct BroadcastStream<B> {
    pub(crate) stream: DataStream<B>,
}

/// A (possibly keyed) stream connected with a broadcast stream.
pub struct BroadcastConnectedStream<T, B, K = ()> {
    pub(crate) main: DataStream<T>,
    pub(crate) broadcast: DataStream<B>,
    pub(crate) key_of: Option<KeySelector<T, K>>,
}

/// Processes a non-keyed stream with read-only access to broadcast state.
pub trait BroadcastProcessFunction<I, B, O>: Clone + Send + Sync + 'static {
    type State: Default + Clone + Send + Serialize + DeserializeOwned + 'static;

    fn process_element(&mut self, value: I, state: &Self::State, ctx: &mut Context<'_, O>);
    fn process_broadcast_element(
        &mut self,
        value: B,
        state: &mut Self::State,
        ctx: &mut Context<'_, O>,
    );
}

/// Processes a keyed stream with keyed state, timers and read-only access to
/// broadcast state.
pub trait KeyedBroadcastProcessFunction<K, I, B, O>: Clone + Send + Sync + 'static {
    type State: Default + Clone + Send + Serialize + DeserializeOwned + 'static;

    fn process_element(&mut self, value: I, state: &Self::State, ctx: &mut KeyedContext<'_, K, O>);
    fn process_broadcast_element(
        &mut self,
        value: B,
        state: &mut Self::State,
        ctx: &mut Context<'_, O>,
    );
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        _state: &Self::State,
        _ctx: &mut KeyedContext<'_, K, O>,
    ) {
    }
}

impl<T: Data, B: Data, K: 'static> BroadcastConnectedStream<T, B, K> {
    fn two_input<O: Data>(&self, name: &str, build: Arc<dyn BuildTwoInput>) -> DataStream<O> {
        self.main.add_two_input(
            name,
            &self.broadcast,
            Port {
                tag: None,
                ty: TypeOf::<O>::arc(),
            },
            NodeKind::TwoInput(build),
        )
    }
}

impl<T: Data, B: Data> BroadcastConnectedStream<T, B, ()> {
    pub fn process<O: Data, F: BroadcastProcessFunction<T, B, O>>(&self, f: F) -> DataStream<O> {
        self.two_input(
            "BroadcastProcess",
            Arc::new(Builder::<T, B, O, _>::new(
                move |info: &SubtaskInfo, out, side| {
                    let (watermark, state) = restored_broadcast(info)?;
                    Ok(Box::new(BroadcastOperator {
                        f: f.clone(),
                        state,
                        out,
                        side,
                        watermark,
                        info: info.clone(),
                    }) as Box<dyn TwoInputOperator<T, B>>)
                },
            )),
        )
    }
}

impl<T: Data, B: Data, K: Key> BroadcastConnectedStream<T, B, K> {
    pub fn process_keyed<O: Data, F: KeyedBroadcastProcessFunction<K, T, B, O>>(
        &self,
        f: F,
    ) -> DataStream<O> {
        let key_of = self
            .key_of
            .clone()
            .expect("a keyed broadcast connection carries its key selector");
        self.two_input(
            "KeyedBroadcastProcess",
            Arc::new(Builder::<T, B, O, _>::new(
                move |info: &SubtaskInfo, out, side| {
                    let now = crate::time::now_ms();
                    let (watermark, state) = restored_broadcast(info)?;
                    let mut store = crate::keyed::open_store(info)?;
                    let mut timers = TimerService::default();
                    crate::keyed::restore_keyed(&mut store, &mut timers, info)?;
                    Ok(Box::new(KeyedBroadcastOperator {
                        f: f.clone(),
                        key_of: key_of.clone(),
                        state,
                        store,
                        timers,
                        out,
                        side,
                        watermark,
                        processing_time: now,
                        info: info.clone(),
                    }) as Box<dyn TwoInputOperator<T, B>>)
                },
            )),
        )
    }
}

struct Builder<T, B, O, F> {
    make: F,
    _t: PhantomData<fn(T, B) -> O>,
}

impl<T, B, O, F> Builder<T, B, O, F> {
    fn new(make: F) -> Self {
        Self {
            make,
            _t: PhantomData,
        }
    }
}

impl<T: Data, B: Data, O: Data, F> BuildTwoInput for Builder<T, B, O, F>
where
    F: Fn(&SubtaskInfo, Box<dyn Output<O>>, SideOutputs) -> Result<Box<dyn TwoInputOperator<T, B>>>
        + Send
        + Sync,
{
    fn build(
        &self,
        info: &SubtaskInfo,
        rx1: Erased,
        channels1: usize,
        rx2: Erased,
        channels2: usize,
        main: Erased,
        side: SideOutputs,
    ) -> Result<Box<dyn TaskInput>> {
        let wiring = || crate::Error::Graph(format!("type mismatch wiring '{}'", info.task_name));
        let main = *main
            .downcast::<Box<dyn Output<O>>>()
            .map_err(|_| wiring())?;
        let rx1 = *rx1.downcast::<crate::exec::Rx<T>>().map_err(|_| wiring())?;
        let rx2 = *rx2.downcast::<crate::exec::Rx<B>>().map_err(|_| wiring())?;
        let op = (self.make)(info, main, side)?;
        Ok(Box::new(TwoInputHead::new(
            rx1,
            channels1,
            rx2,
            channels2,
            op,
            info.checkpoint.snapshots.clone(),
            info.metrics.clone(),
        )))
    }
}

/// Every subtask holds the same broadcast state, so a restore (at any
/// parallelism) takes the copy of the first old subtask, and the lowest
/// watermark of all.
fn restored_broadcast<S: DeserializeOwned + Default>(info: &SubtaskInfo) -> Result<(Timestamp, S)> {
    let Some(restored) = info.restored() else {
        return Ok((MIN_WATERMARK, S::default()));
    };
    let mut watermark: Option<Timestamp> = None;
    let mut state = None;
    for blob in restored.operator.values() {
        let (wm, s): (Timestamp, S) = decode_state(&info.uid, blob)?;
        watermark = Some(watermark.map_or(wm, |w| w.min(wm)));
        state.get_or_insert(s);
    }
    Ok((
        watermark.unwrap_or(MIN_WATERMARK),
        state.unwrap_or_default(),
    ))
}

/// Snapshots broadcast state (with the watermark) and, for keyed
/// operators, keyed state and timers.
fn snapshot_broadcast<S: Serialize>(
    info: &SubtaskInfo,
    id: CheckpointId,
    watermark: Timestamp,
    state: &S,
    keyed: impl FnOnce() -> Result<Vec<(usize, Vec<u8>)>>,
) {
    let snapshot = (|| {
        Ok::<_, crate::Error>(OperatorState {
            keyed: keyed()?,
            operator: Some(encode_state(&info.uid, &(watermark, state))?),
        })
    })();
    info.report_snapshot(id, snapshot);
}

struct BroadcastOperator<F: BroadcastProcessFunction<T, B, O>, T, B, O> {
    f: F,
    state: F::State,
    out: Box<dyn Output<O>>,
    side: SideOutputs,
    watermark: Timestamp,
    info: SubtaskInfo,
}

impl<F, T, B, O> TwoInputOperator<T, B> for BroadcastOperator<F, T, B, O>
where
    F: BroadcastProcessFunction<T, B, O>,
    T: Data,
    B: Data,
    O: Data,
{
    fn record1(&mut self, value: T, timestamp: Timestamp) {
        let mut ctx = Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark);
        self.f.process_element(value, &self.state, &mut ctx);
    }
    fn record2(&mut self, value: B, timestamp: Timestamp) {
        let mut ctx = Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark);
        self.f
            .process_broadcast_element(value, &mut self.state, &mut ctx);
    }
    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watermark(wm) => self.watermark = wm,
            Signal::Barrier(id) if self.info.checkpoint.enabled => {
                snapshot_broadcast(&self.info, id, self.watermark, &self.state, || {
                    Ok(Vec::new())
                })
            }
            _ => {}
        }
        self.out.signal(signal);
        self.side.signal(signal);
    }
}

struct KeyedBroadcastOperator<F: KeyedBroadcastProcessFunction<K, T, B, O>, K, T, B, O> {
    f: F,
    key_of: KeySelector<T, K>,
    state: F::State,
    store: KeyedStateStore<K>,
    timers: TimerService<K>,
    out: Box<dyn Output<O>>,
    side: SideOutputs,
    watermark: Timestamp,
    processing_time: Timestamp,
    info: SubtaskInfo,
}

impl<F, K, T, B, O> KeyedBroadcastOperator<F, K, T, B, O>
where
    F: KeyedBroadcastProcessFunction<K, T, B, O>,
    K: Key,
    T: Data,
    B: Data,
    O: Data,
{
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
            self.f.on_timer(time, domain, &self.state, &mut ctx);
        }
    }
}

impl<F, K, T, B, O> TwoInputOperator<T, B> for KeyedBroadcastOperator<F, K, T, B, O>
where
    F: KeyedBroadcastProcessFunction<K, T, B, O>,
    K: Key,
    T: Data,
    B: Data,
    O: Data,
{
    fn record1(&mut self, value: T, timestamp: Timestamp) {
        self.store.set_current_key((self.key_of)(&value));
        let mut ctx = KeyedContext {
            base: Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark),
            store: &mut self.store,
            timers: &mut self.timers,
            processing_time: self.processing_time,
        };
        self.f.process_element(value, &self.state, &mut ctx);
        if let Some(err) = self.store.take_failure() {
            panic!("{err}");
        }
    }
    fn record2(&mut self, value: B, timestamp: Timestamp) {
        let mut ctx = Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark);
        self.f
            .process_broadcast_element(value, &mut self.state, &mut ctx);
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
            Signal::Barrier(id) if self.info.checkpoint.enabled => {
                let (store, timers, info) = (&mut self.store, &self.timers, &self.info);
                snapshot_broadcast(info, id, self.watermark, &self.state, || {
                    crate::keyed::snapshot_keyed(store, timers, info, id)
                })
            }
            _ => {}
        }
        self.out.signal(signal);
        self.side.signal(signal);
    }
}
