//! Typed building blocks of a running subtask.
//!
//! The runtime decides where subtasks run; this module knows how a typed
//! subtask is assembled: the batches that travel between tasks, the
//! partitioners that pick a receiver, the watermark valve that merges the
//! watermarks of many input channels, and the task heads that feed a chain
//! from its inputs. They live next to the API because only code that knows the
//! record types can instantiate them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointContext, CheckpointId, OperatorState, RestoredOperator, SnapshotBuffer,
};
use crate::element::{Data, Output, Signal};
use crate::error::{Error, Result};
use crate::source::{Source, SourceOutput, SourcePoll};
use crate::time::{Timestamp, MAX_WATERMARK, MIN_WATERMARK};

/// Records per batch between tasks.
pub const BATCH_SIZE: usize = 1024;
/// Batches buffered per input channel before senders block (backpressure).
pub const CHANNEL_CAPACITY: usize = 16;

/// The first error raised inside a subtask; the task loop checks it.
#[derive(Clone, Default)]
pub struct FailureSlot {
    flag: Arc<AtomicBool>,
    error: Arc<Mutex<Option<Error>>>,
}

impl FailureSlot {
    pub fn fail(&self, error: Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
        self.flag.store(true, Ordering::Release);
    }

    pub fn take(&self) -> Option<Error> {
        if !self.flag.load(Ordering::Acquire) {
            return None;
        }
        self.error.lock().ok().and_then(|mut e| e.take())
    }
}

/// Figures of one running task, counted where batches cross task
/// boundaries (never per record inside a chain) and read by the runtime for
/// metrics and the dashboard.
#[derive(Debug)]
pub struct TaskMetrics {
    /// Records taken from the task's input gates.
    pub records_in: AtomicU64,
    /// Records handed to downstream tasks (once per receiver).
    pub records_out: AtomicU64,
    /// Nanoseconds the task waited for room in a full downstream channel.
    pub backpressured_ns: AtomicU64,
    /// Latest combined input watermark (`i64::MIN` until one arrives).
    pub watermark: AtomicI64,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            backpressured_ns: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
        }
    }
}

impl TaskMetrics {
    fn count_in<T>(&self, events: &[Event<T>]) {
        let n = events
            .iter()
            .filter(|e| matches!(e, Event::Record(..)))
            .count();
        if n > 0 {
            self.records_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn watermark(&self, wm: Timestamp) {
        self.watermark.store(wm, Ordering::Relaxed);
    }
}

/// Who a subtask is.
#[derive(Clone)]
pub struct SubtaskInfo {
    pub task_name: String,
    pub uid: String,
    pub index: usize,
    pub parallelism: usize,
    pub max_parallelism: usize,
    pub failure: FailureSlot,
    pub checkpoint: CheckpointContext,
    /// The figures of the task this subtask runs in.
    pub metrics: Arc<TaskMetrics>,
}

impl SubtaskInfo {
    /// The key groups this subtask owns.
    pub fn key_groups(&self) -> Result<rill_state::KeyGroupRange> {
        Ok(rill_state::KeyGroupRange::for_subtask(
            self.max_parallelism,
            self.parallelism,
            self.index,
        )?)
    }

    /// The restored state of this operator (by uid), if any.
    pub fn restored(&self) -> Option<&RestoredOperator> {
        self.checkpoint.operator(&self.uid)
    }

    /// Keyed state blobs of this operator for the key groups it now owns.
    pub fn restored_key_groups(&self) -> Result<Vec<(usize, &[u8])>> {
        Ok(crate::checkpoint::restored_key_groups(
            self.restored(),
            self.key_groups()?,
        ))
    }

    /// Operator state this subtask takes over (its own at equal parallelism).
    pub fn restored_operator_states(&self) -> Vec<&[u8]> {
        crate::checkpoint::restored_operator_states(self.restored(), self.index, self.parallelism)
    }

    /// Reports this operator's part of checkpoint state.
    pub fn put_snapshot(&self, checkpoint: CheckpointId, state: OperatorState) {
        self.checkpoint
            .snapshots
            .put(crate::checkpoint::Snapshotted::State {
                checkpoint,
                uid: self.uid.clone(),
                subtask: self.index,
                parallelism: self.parallelism,
                max_parallelism: self.max_parallelism,
                state,
            });
    }

    /// Reports the outcome of snapshotting for checkpoint `id`: the state,
    /// or a failure that declines the checkpoint (the job goes on).
    pub fn report_snapshot(&self, checkpoint: CheckpointId, state: Result<OperatorState>) {
        match state {
            Ok(state) => self.put_snapshot(checkpoint, state),
            Err(e) => self.checkpoint.snapshots.failed(checkpoint, e.to_string()),
        }
    }

    /// The same subtask under another uid (for helpers chained inside an
    /// operator, such as a source's watermark generator).
    pub fn with_uid(&self, uid: String) -> Self {
        Self {
            uid,
            ..self.clone()
        }
    }
}

/// What travels between tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event<T> {
    Record(T, Timestamp),
    Watermark(Timestamp),
    Idle(bool),
    /// A checkpoint barrier; everything before it belongs to the checkpoint.
    Barrier(CheckpointId),
    End,
}

/// A batch of events from one upstream channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch<T> {
    pub channel: u32,
    pub events: Vec<Event<T>>,
}

pub type Tx<T> = Sender<Batch<T>>;
pub type Rx<T> = Receiver<Batch<T>>;

/// How records are spread over the receivers of an exchange.
pub enum Partitioner<T> {
    /// One fixed receiver.
    Forward(usize),
    /// Round robin over a set of receivers (rebalance and rescale).
    RoundRobin { targets: Vec<usize>, next: usize },
    /// Every receiver gets every record.
    Broadcast,
    /// By key group of the record's key hash.
    Hash {
        key_hash: KeyHasher<T>,
        max_parallelism: usize,
        parallelism: usize,
    },
}

/// The stable hash of a record's key.
pub type KeyHasher<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// Writes a stream into the input channels of the receiving subtasks.
pub struct ExchangeOutput<T> {
    channel: u32,
    senders: Vec<Tx<T>>,
    buffers: Vec<Vec<Event<T>>>,
    /// Records in each buffer.
    records: Vec<u64>,
    partitioner: Partitioner<T>,
    metrics: Arc<TaskMetrics>,
}

impl<T: Data> ExchangeOutput<T> {
    pub fn new(
        channel: u32,
        senders: Vec<Tx<T>>,
        partitioner: Partitioner<T>,
        metrics: Arc<TaskMetrics>,
    ) -> Self {
        let buffers = senders
            .iter()
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        Self {
            channel,
            records: vec![0; senders.len()],
            senders,
            buffers,
            partitioner,
            metrics,
        }
    }

    fn send(&mut self, target: usize) {
        let events = std::mem::replace(&mut self.buffers[target], Vec::with_capacity(BATCH_SIZE));
        let records = std::mem::take(&mut self.records[target]);
        self.metrics
            .records_out
            .fetch_add(records, Ordering::Relaxed);
        let batch = Batch {
            channel: self.channel,
            events,
        };
        // A receiver that is gone belongs to a failed or cancelled job; the
        // runtime stops this task too, so the batch can be dropped.
        if let Err(TrySendError::Full(batch)) = self.senders[target].try_send(batch) {
            let blocked = Instant::now();
            let _ = self.senders[target].send(batch);
            self.metrics
                .backpressured_ns
                .fetch_add(blocked.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn push(&mut self, target: usize, event: Event<T>) {
        self.buffers[target].push(event);
        if self.buffers[target].len() >= BATCH_SIZE {
            self.send(target);
        }
    }

    fn push_all(&mut self, event: Event<T>) {
        for t in 0..self.buffers.len() {
            self.push(t, event.clone());
        }
    }

    fn flush(&mut self) {
        for t in 0..self.buffers.len() {
            if !self.buffers[t].is_empty() {
                self.send(t);
            }
        }
    }
}

impl<T: Data> Output<T> for ExchangeOutput<T> {
    #[inline]
    fn record(&mut self, value: T, timestamp: Timestamp) {
        let target = match &mut self.partitioner {
            Partitioner::Forward(t) => *t,
            Partitioner::RoundRobin { targets, next } => {
                *next = (*next + 1) % targets.len();
                targets[*next]
            }
            Partitioner::Broadcast => {
                for r in &mut self.records {
                    *r += 1;
                }
                return self.push_all(Event::Record(value, timestamp));
            }
            Partitioner::Hash {
                key_hash,
                max_parallelism,
                parallelism,
            } => rill_state::key_group::operator_index_for_hash(
                key_hash(&value),
                *max_parallelism,
                *parallelism,
            ),
        };
        self.records[target] += 1;
        self.push(target, Event::Record(value, timestamp));
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watermark(wm) => self.push_all(Event::Watermark(wm)),
            Signal::Idle(idle) => self.push_all(Event::Idle(idle)),
            Signal::Flush => self.flush(),
            Signal::EndOfInput => {
                self.push_all(Event::End);
                self.flush();
            }
            Signal::Barrier(id) => {
                self.push_all(Event::Barrier(id));
                self.flush();
            }
            Signal::ProcessingTime(_) | Signal::CheckpointComplete(_) => {}
        }
    }
}

/// Combines the watermarks of many input channels: the task's watermark is
/// the minimum over active channels; idle channels do not hold it back; the
/// task is idle when all its channels are.
#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<ChannelState>,
    current: Timestamp,
    idle: bool,
}

#[derive(Debug, Clone, Copy)]
struct ChannelState {
    watermark: Timestamp,
    idle: bool,
    ended: bool,
}

/// What a valve update means downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValveOutput {
    pub watermark: Option<Timestamp>,
    pub idle: Option<bool>,
}

impl WatermarkValve {
    pub fn new(channels: usize) -> Self {
        Self {
            channels: vec![
                ChannelState {
                    watermark: MIN_WATERMARK,
                    idle: false,
                    ended: false,
                };
                channels
            ],
            current: MIN_WATERMARK,
            idle: false,
        }
    }

    pub fn watermark(&mut self, channel: usize, wm: Timestamp) -> ValveOutput {
        let mut out = ValveOutput::default();
        if let Some(c) = self.channels.get_mut(channel) {
            if c.idle {
                c.idle = false;
                if self.idle {
                    self.idle = false;
                    out.idle = Some(false);
                }
            }
            c.watermark = c.watermark.max(wm);
        }
        out.watermark = self.advance();
        out
    }

    pub fn idle(&mut self, channel: usize, idle: bool) -> ValveOutput {
        let mut out = ValveOutput::default();
        if let Some(c) = self.channels.get_mut(channel) {
            c.idle = idle;
        }
        let all_idle = self.channels.iter().all(|c| c.idle || c.ended);
        if all_idle != self.idle {
            self.idle = all_idle;
            out.idle = Some(all_idle);
        }
        if !all_idle {
            out.watermark = self.advance();
        }
        out
    }

    /// The channel ended; returns whether every channel has ended.
    pub fn end(&mut self, channel: usize) -> (ValveOutput, bool) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.ended = true;
        }
        let out = ValveOutput {
            watermark: self.advance(),
            idle: None,
        };
        (out, self.channels.iter().all(|c| c.ended))
    }

    fn advance(&mut self) -> Option<Timestamp> {
        let min = self
            .channels
            .iter()
            .filter(|c| !c.idle && !c.ended)
            .map(|c| c.watermark)
            .min()
            .unwrap_or(if self.channels.iter().all(|c| c.ended) {
                MAX_WATERMARK
            } else {
                self.current
            });
        (min > self.current).then(|| {
            self.current = min;
            min
        })
    }
}

/// Progress of one poll of a task's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Input was processed; poll again.
    Busy,
    /// Nothing arrived within the timeout.
    Idle,
    /// Every input ended and the chain has seen the end of input.
    Finished,
}

/// The input side of a running subtask: what the task loop drives.
pub trait TaskInput: Send {
    /// Processes available input, waiting at most `timeout` for some.
    fn poll(&mut self, timeout: Duration) -> Result<Progress>;
    /// Passes a task-level signal (ticks, flush, checkpoint completion) into
    /// the chain.
    fn signal(&mut self, signal: Signal);
    /// Starts checkpoint `id` here: only sources can (they snapshot their
    /// position and emit the barrier); returns whether this task did.
    fn trigger_checkpoint(&mut self, _id: CheckpointId) -> Result<bool> {
        Ok(false)
    }
}

/// Barrier alignment (exactly-once): once a channel has delivered barrier
/// `n`, its later events wait until every other open channel has delivered
/// `n` as well, so the snapshot taken at `n` reflects exactly the records
/// before the barrier on every channel. Ended channels count as aligned.
#[derive(Debug, Clone)]
pub struct BarrierAligner {
    received: Vec<bool>,
    ended: Vec<bool>,
    pending: Option<CheckpointId>,
}

impl BarrierAligner {
    pub fn new(channels: usize) -> Self {
        Self {
            received: vec![false; channels],
            ended: vec![false; channels],
            pending: None,
        }
    }

    /// Whether events of `channel` must wait (it is ahead of the others).
    #[inline]
    pub fn is_blocked(&self, channel: usize) -> bool {
        self.pending.is_some() && self.received.get(channel).copied().unwrap_or(false)
    }

    /// A barrier arrived on `channel`; returns the checkpoint whose barriers
    /// are now aligned, if any.
    pub fn barrier(&mut self, channel: usize, id: CheckpointId) -> Result<Option<CheckpointId>> {
        match self.pending {
            None => {
                self.pending = Some(id);
                self.received.iter_mut().for_each(|r| *r = false);
            }
            Some(pending) if pending == id => {}
            Some(pending) => {
                return Err(Error::Checkpoint(format!(
                    "barrier {id} arrived on channel {channel} while aligning barrier {pending}"
                )))
            }
        }
        if let Some(r) = self.received.get_mut(channel) {
            *r = true;
        }
        Ok(self.try_complete())
    }

    /// `channel` ended; returns a checkpoint this completes, if any.
    pub fn end(&mut self, channel: usize) -> Option<CheckpointId> {
        if let Some(e) = self.ended.get_mut(channel) {
            *e = true;
        }
        self.try_complete()
    }

    fn try_complete(&mut self) -> Option<CheckpointId> {
        let pending = self.pending?;
        let aligned = self
            .received
            .iter()
            .zip(&self.ended)
            .all(|(received, ended)| *received || *ended);
        aligned.then(|| {
            self.pending = None;
            self.received.iter_mut().for_each(|r| *r = false);
            pending
        })
    }
}

fn apply_valve<T>(chain: &mut dyn Output<T>, out: ValveOutput) {
    if let Some(idle) = out.idle {
        chain.signal(Signal::Idle(idle));
    }
    if let Some(wm) = out.watermark {
        chain.signal(Signal::Watermark(wm));
    }
}

/// Feeds a chain from one input gate.
pub struct OneInputHead<T> {
    rx: Rx<T>,
    valve: WatermarkValve,
    aligner: BarrierAligner,
    /// Events of blocked channels, in arrival order.
    stash: Vec<VecDeque<Event<T>>>,
    chain: Box<dyn Output<T>>,
    snapshots: SnapshotBuffer,
    metrics: Arc<TaskMetrics>,
}

impl<T: Data> OneInputHead<T> {
    pub fn new(
        rx: Rx<T>,
        channels: usize,
        chain: Box<dyn Output<T>>,
        snapshots: SnapshotBuffer,
        metrics: Arc<TaskMetrics>,
    ) -> Self {
        Self {
            rx,
            valve: WatermarkValve::new(channels),
            aligner: BarrierAligner::new(channels),
            stash: (0..channels).map(|_| VecDeque::new()).collect(),
            chain,
            snapshots,
            metrics,
        }
    }

    fn process(&mut self, batch: Batch<T>) -> Result<Progress> {
        self.metrics.count_in(&batch.events);
        let channel = batch.channel as usize;
        for event in batch.events {
            if self.handle(channel, event)? == Progress::Finished {
                return Ok(Progress::Finished);
            }
        }
        Ok(Progress::Busy)
    }

    fn handle(&mut self, channel: usize, event: Event<T>) -> Result<Progress> {
        if self.aligner.is_blocked(channel) {
            if let Some(stash) = self.stash.get_mut(channel) {
                stash.push_back(event);
            }
            return Ok(Progress::Busy);
        }
        match event {
            Event::Record(v, ts) => self.chain.record(v, ts),
            Event::Watermark(wm) => {
                let out = self.valve.watermark(channel, wm);
                if let Some(wm) = out.watermark {
                    self.metrics.watermark(wm);
                }
                apply_valve(&mut *self.chain, out);
            }
            Event::Idle(idle) => {
                let out = self.valve.idle(channel, idle);
                apply_valve(&mut *self.chain, out);
            }
            Event::Barrier(id) => {
                if let Some(id) = self.aligner.barrier(channel, id)? {
                    return self.aligned(id);
                }
            }
            Event::End => {
                let (out, all_ended) = self.valve.end(channel);
                if let Some(id) = self.aligner.end(channel) {
                    if self.aligned(id)? == Progress::Finished {
                        return Ok(Progress::Finished);
                    }
                }
                apply_valve(&mut *self.chain, out);
                if all_ended {
                    self.chain.signal(Signal::EndOfInput);
                    return Ok(Progress::Finished);
                }
            }
        }
        Ok(Progress::Busy)
    }

    /// Every channel delivered barrier `id`: snapshot the chain, then replay
    /// what the blocked channels delivered meanwhile.
    fn aligned(&mut self, id: CheckpointId) -> Result<Progress> {
        self.chain.signal(Signal::Barrier(id));
        self.snapshots.done(id);
        for channel in 0..self.stash.len() {
            for event in std::mem::take(&mut self.stash[channel]) {
                if self.handle(channel, event)? == Progress::Finished {
                    return Ok(Progress::Finished);
                }
            }
        }
        Ok(Progress::Busy)
    }
}

fn disconnected(what: &str) -> Error {
    Error::Task {
        task: what.to_string(),
        message: "an upstream task stopped without finishing its stream".into(),
    }
}

impl<T: Data> TaskInput for OneInputHead<T> {
    fn poll(&mut self, timeout: Duration) -> Result<Progress> {
        match self.rx.recv_timeout(timeout) {
            Ok(batch) => self.process(batch),
            Err(RecvTimeoutError::Timeout) => Ok(Progress::Idle),
            Err(RecvTimeoutError::Disconnected) => Err(disconnected("input")),
        }
    }

    fn signal(&mut self, signal: Signal) {
        self.chain.signal(signal);
    }
}

/// An operator with two inputs of different types (e.g. a stream connected
/// with a broadcast stream). Watermarks and barriers arrive already combined.
pub trait TwoInputOperator<A, B>: Send {
    fn record1(&mut self, value: A, timestamp: Timestamp);
    fn record2(&mut self, value: B, timestamp: Timestamp);
    fn signal(&mut self, signal: Signal);
}

/// Feeds a two-input operator from two gates. Channels of the second gate
/// follow those of the first in the valve and the aligner.
pub struct TwoInputHead<A, B> {
    rx1: Rx<A>,
    rx2: Rx<B>,
    channels1: usize,
    ended: [bool; 2],
    valve: WatermarkValve,
    aligner: BarrierAligner,
    stash1: Vec<VecDeque<Event<A>>>,
    stash2: Vec<VecDeque<Event<B>>>,
    operator: Box<dyn TwoInputOperator<A, B>>,
    snapshots: SnapshotBuffer,
    metrics: Arc<TaskMetrics>,
}

enum Control {
    Watermark(Timestamp),
    Idle(bool),
    Barrier(CheckpointId),
    End,
}

impl<A: Data, B: Data> TwoInputHead<A, B> {
    pub fn new(
        rx1: Rx<A>,
        channels1: usize,
        rx2: Rx<B>,
        channels2: usize,
        operator: Box<dyn TwoInputOperator<A, B>>,
        snapshots: SnapshotBuffer,
        metrics: Arc<TaskMetrics>,
    ) -> Self {
        Self {
            metrics,
            rx1,
            rx2,
            channels1,
            ended: [false; 2],
            valve: WatermarkValve::new(channels1 + channels2),
            aligner: BarrierAligner::new(channels1 + channels2),
            stash1: (0..channels1).map(|_| VecDeque::new()).collect(),
            stash2: (0..channels2).map(|_| VecDeque::new()).collect(),
            operator,
            snapshots,
        }
    }

    fn handle1(&mut self, channel: usize, event: Event<A>) -> Result<Progress> {
        if self.aligner.is_blocked(channel) {
            if let Some(stash) = self.stash1.get_mut(channel) {
                stash.push_back(event);
            }
            return Ok(Progress::Busy);
        }
        let control = match event {
            Event::Record(v, ts) => {
                self.operator.record1(v, ts);
                return Ok(Progress::Busy);
            }
            Event::Watermark(wm) => Control::Watermark(wm),
            Event::Idle(idle) => Control::Idle(idle),
            Event::Barrier(id) => Control::Barrier(id),
            Event::End => Control::End,
        };
        self.control(channel, control)
    }

    fn handle2(&mut self, channel: usize, event: Event<B>) -> Result<Progress> {
        let global = self.channels1 + channel;
        if self.aligner.is_blocked(global) {
            if let Some(stash) = self.stash2.get_mut(channel) {
                stash.push_back(event);
            }
            return Ok(Progress::Busy);
        }
        let control = match event {
            Event::Record(v, ts) => {
                self.operator.record2(v, ts);
                return Ok(Progress::Busy);
            }
            Event::Watermark(wm) => Control::Watermark(wm),
            Event::Idle(idle) => Control::Idle(idle),
            Event::Barrier(id) => Control::Barrier(id),
            Event::End => Control::End,
        };
        self.control(global, control)
    }

    fn control(&mut self, channel: usize, event: Control) -> Result<Progress> {
        let out = match event {
            Control::Watermark(wm) => {
                let out = self.valve.watermark(channel, wm);
                if let Some(wm) = out.watermark {
                    self.metrics.watermark(wm);
                }
                out
            }
            Control::Idle(idle) => self.valve.idle(channel, idle),
            Control::Barrier(id) => {
                return match self.aligner.barrier(channel, id)? {
                    Some(id) => self.aligned(id),
                    None => Ok(Progress::Busy),
                };
            }
            Control::End => {
                let (out, all) = self.valve.end(channel);
                if let Some(id) = self.aligner.end(channel) {
                    if self.aligned(id)? == Progress::Finished {
                        return Ok(Progress::Finished);
                    }
                }
                if all {
                    self.apply(out);
                    self.operator.signal(Signal::EndOfInput);
                    return Ok(Progress::Finished);
                }
                out
            }
        };
        self.apply(out);
        Ok(Progress::Busy)
    }

    fn aligned(&mut self, id: CheckpointId) -> Result<Progress> {
        self.operator.signal(Signal::Barrier(id));
        self.snapshots.done(id);
        for channel in 0..self.stash1.len() {
            for event in std::mem::take(&mut self.stash1[channel]) {
                if self.handle1(channel, event)? == Progress::Finished {
                    return Ok(Progress::Finished);
                }
            }
        }
        for channel in 0..self.stash2.len() {
            for event in std::mem::take(&mut self.stash2[channel]) {
                if self.handle2(channel, event)? == Progress::Finished {
                    return Ok(Progress::Finished);
                }
            }
        }
        Ok(Progress::Busy)
    }

    fn apply(&mut self, out: ValveOutput) {
        if let Some(idle) = out.idle {
            self.operator.signal(Signal::Idle(idle));
        }
        if let Some(wm) = out.watermark {
            self.operator.signal(Signal::Watermark(wm));
        }
    }
}

impl<A: Data, B: Data> TaskInput for TwoInputHead<A, B> {
    fn poll(&mut self, timeout: Duration) -> Result<Progress> {
        let mut select = Select::new();
        let i1 = (!self.ended[0]).then(|| select.recv(&self.rx1));
        let i2 = (!self.ended[1]).then(|| select.recv(&self.rx2));
        let op = match select.select_timeout(timeout) {
            Ok(op) => op,
            Err(_) => return Ok(Progress::Idle),
        };
        let index = op.index();
        if Some(index) == i1 {
            let batch = op.recv(&self.rx1).map_err(|_| disconnected("input 1"))?;
            self.metrics.count_in(&batch.events);
            let channel = batch.channel as usize;
            for event in batch.events {
                if self.handle1(channel, event)? == Progress::Finished {
                    return Ok(Progress::Finished);
                }
            }
        } else if Some(index) == i2 {
            let batch = op.recv(&self.rx2).map_err(|_| disconnected("input 2"))?;
            self.metrics.count_in(&batch.events);
            let channel = batch.channel as usize;
            for event in batch.events {
                if self.handle2(channel, event)? == Progress::Finished {
                    return Ok(Progress::Finished);
                }
            }
        }
        let channels1 = self.channels1;
        self.ended[0] = self.valve.channels[..channels1].iter().all(|c| c.ended);
        self.ended[1] = self.valve.channels[channels1..].iter().all(|c| c.ended);
        Ok(Progress::Busy)
    }

    fn signal(&mut self, signal: Signal) {
        self.operator.signal(signal);
    }
}

/// Polls a source into its chain.
pub struct SourceHead<T> {
    info: SubtaskInfo,
    name: String,
    source: Box<dyn Source<T>>,
    chain: Box<dyn Output<T>>,
    finished: bool,
}

impl<T: Send + 'static> SourceHead<T> {
    /// A source reader, positioned where the restored checkpoint (if any)
    /// left this subtask.
    pub fn new(
        info: SubtaskInfo,
        name: String,
        mut source: Box<dyn Source<T>>,
        chain: Box<dyn Output<T>>,
    ) -> Result<Self> {
        if let Some(restored) = info.restored() {
            if restored.parallelism != info.parallelism && !restored.operator.is_empty() {
                return Err(Error::Checkpoint(format!(
                    "source '{name}' was checkpointed with parallelism {} and cannot resume its \
                     positions with parallelism {}",
                    restored.parallelism, info.parallelism
                )));
            }
            if let Some(position) = restored.operator.get(&info.index) {
                source.restore(position).map_err(|e| {
                    Error::Checkpoint(format!(
                        "source '{name}' cannot resume from its checkpointed position: {e}"
                    ))
                })?;
            }
        }
        Ok(Self {
            info,
            name,
            source,
            chain,
            finished: false,
        })
    }
}

impl<T: Send + 'static> TaskInput for SourceHead<T> {
    fn poll(&mut self, timeout: Duration) -> Result<Progress> {
        if self.finished {
            return Ok(Progress::Finished);
        }
        let mut out = SourceOutput::new(&mut *self.chain);
        let poll = self.source.poll(&mut out).map_err(|e| match e {
            e @ Error::Source { .. } => e,
            other => Error::Source {
                name: self.name.clone(),
                message: other.to_string(),
            },
        })?;
        match poll {
            SourcePoll::Ready => Ok(Progress::Busy),
            SourcePoll::Pending(wait) => {
                std::thread::sleep(wait.min(timeout));
                Ok(Progress::Idle)
            }
            SourcePoll::Finished => {
                self.finished = true;
                self.chain.signal(Signal::Watermark(MAX_WATERMARK));
                self.chain.signal(Signal::EndOfInput);
                Ok(Progress::Finished)
            }
        }
    }

    fn signal(&mut self, signal: Signal) {
        self.chain.signal(signal);
    }

    fn trigger_checkpoint(&mut self, id: CheckpointId) -> Result<bool> {
        if self.finished {
            return Ok(false);
        }
        let position = self.source.snapshot()?;
        self.info.put_snapshot(
            id,
            OperatorState {
                keyed: Vec::new(),
                operator: position,
            },
        );
        self.chain.signal(Signal::Barrier(id));
        self.info.checkpoint.snapshots.done(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valve_takes_minimum_over_active_channels() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.watermark(0, 10).watermark, None, "channel 1 still at MIN");
        assert_eq!(v.watermark(1, 5).watermark, Some(5));
        assert_eq!(v.watermark(1, 20).watermark, Some(10));
        assert_eq!(
            v.watermark(1, 3).watermark,
            None,
            "watermarks never go back"
        );
    }

    #[test]
    fn idle_channels_do_not_hold_back_watermarks() {
        let mut v = WatermarkValve::new(2);
        v.watermark(0, 10);
        let out = v.idle(1, true);
        assert_eq!(out.watermark, Some(10));
        assert_eq!(out.idle, None, "one channel is still active");
        assert_eq!(v.idle(0, true).idle, Some(true));
        let out = v.watermark(1, 30);
        assert_eq!(out.idle, Some(false));
        assert_eq!(out.watermark, Some(30), "channel 0 is idle, so 30 passes");
    }

    #[test]
    fn ended_channels_release_the_watermark() {
        let mut v = WatermarkValve::new(2);
        v.watermark(0, 7);
        let (out, all) = v.end(1);
        assert_eq!((out.watermark, all), (Some(7), false));
        let (out, all) = v.end(0);
        assert_eq!((out.watermark, all), (Some(MAX_WATERMARK), true));
    }

    #[test]
    fn barriers_align_over_open_channels() {
        let mut a = BarrierAligner::new(3);
        assert_eq!(a.barrier(0, 1).unwrap(), None);
        assert!(a.is_blocked(0) && !a.is_blocked(1));
        assert_eq!(a.barrier(2, 1).unwrap(), None);
        assert_eq!(a.barrier(1, 1).unwrap(), Some(1));
        assert!(!a.is_blocked(0), "alignment releases every channel");
        // An ended channel no longer holds alignment back.
        assert_eq!(a.barrier(1, 2).unwrap(), None);
        assert_eq!(a.end(0), None);
        assert_eq!(a.barrier(2, 2).unwrap(), Some(2));
        // A newer barrier while one is pending is a protocol error.
        assert_eq!(a.barrier(1, 3).unwrap(), None);
        assert!(a.barrier(2, 4).is_err());
    }

    #[test]
    fn blocked_channels_are_replayed_after_alignment() {
        let (tx, rx) = crossbeam_channel::unbounded();
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<String>>>);
        impl Output<u32> for Log {
            fn record(&mut self, value: u32, _: Timestamp) {
                self.0.lock().unwrap().push(value.to_string());
            }
            fn signal(&mut self, signal: Signal) {
                if let Signal::Barrier(id) = signal {
                    self.0.lock().unwrap().push(format!("barrier {id}"));
                }
            }
        }
        let log = Log::default();
        let snapshots = SnapshotBuffer::default();
        let mut head = OneInputHead::new(
            rx,
            2,
            Box::new(log.clone()),
            snapshots.clone(),
            Arc::default(),
        );
        let send = |channel: u32, events: Vec<Event<u32>>| {
            tx.send(Batch { channel, events }).unwrap();
        };
        send(
            0,
            vec![Event::Record(1, 0), Event::Barrier(7), Event::Record(2, 0)],
        );
        send(1, vec![Event::Record(10, 0)]);
        send(1, vec![Event::Barrier(7), Event::Record(11, 0)]);
        for _ in 0..3 {
            head.poll(Duration::ZERO).unwrap();
        }
        assert_eq!(
            *log.0.lock().unwrap(),
            vec!["1", "10", "barrier 7", "2", "11"],
            "record 2 waits for the barrier of channel 1"
        );
        assert!(matches!(
            snapshots.drain().as_slice(),
            [crate::checkpoint::Snapshotted::BarrierDone(7)]
        ));
    }

    #[test]
    fn hash_exchange_routes_by_key_group() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| crossbeam_channel::unbounded()).unzip();
        let hasher: KeyHasher<u64> = Arc::new(rill_state::hash_key::<u64>);
        let mut ex = ExchangeOutput::new(
            0,
            txs,
            Partitioner::Hash {
                key_hash: hasher.clone(),
                max_parallelism: 128,
                parallelism: 3,
            },
            Arc::default(),
        );
        for v in 0..100u64 {
            ex.record(v, 0);
        }
        ex.signal(Signal::EndOfInput);
        let mut total = 0;
        for (index, rx) in rxs.iter().enumerate() {
            let range = rill_state::KeyGroupRange::for_subtask(128, 3, index).unwrap();
            for batch in rx.try_iter() {
                for e in batch.events {
                    if let Event::Record(v, _) = e {
                        let kg = rill_state::key_group::key_group_for_hash(hasher(&v), 128);
                        assert!(range.contains(kg));
                        total += 1;
                    }
                }
            }
        }
        assert_eq!(total, 100);
    }
}
