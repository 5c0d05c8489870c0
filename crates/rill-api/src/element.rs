//! Records, control signals, and the interface operators push into.
//!
//! Inside a chain, records move by value through [`Output::record`]: one
//! virtual call per operator and record, no serialisation, no queues. Anything
//! that is not a record (watermarks, idleness, processing-time ticks, flush
//! requests, end of input) travels as a [`Signal`] along the same path, so the
//! order of records and watermarks is kept exactly.

use serde::{de::DeserializeOwned, Serialize};

use crate::time::Timestamp;

/// What a stream can carry: owned, sendable between threads, serialisable
/// between processes and into checkpoints.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// What a stream can be keyed by.
pub trait Key: Data + std::hash::Hash + Eq + std::fmt::Debug {}
impl<T: Data + std::hash::Hash + Eq + std::fmt::Debug> Key for T {}

/// Extracts the key of a record (shared by exchanges and keyed operators).
pub type KeySelector<T, K> = std::sync::Arc<dyn Fn(&T) -> K + Send + Sync>;

/// Control flowing along a chain beside the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Event time has advanced to this point.
    Watermark(Timestamp),
    /// The stream became idle (`true`) or active again (`false`); idle inputs
    /// do not hold back the watermark downstream.
    Idle(bool),
    /// Wall-clock tick (ms since the epoch) for processing-time timers.
    ProcessingTime(Timestamp),
    /// Hand buffered records downstream now.
    Flush,
    /// No more input will arrive.
    EndOfInput,
    /// A checkpoint barrier: snapshot state now, then pass it on.
    Barrier(crate::checkpoint::CheckpointId),
    /// The checkpoint is complete everywhere: commit what it covers.
    CheckpointComplete(crate::checkpoint::CheckpointId),
}

/// The push interface between chained operators (and into exchanges).
pub trait Output<T>: Send {
    fn record(&mut self, value: T, timestamp: Timestamp);
    fn signal(&mut self, signal: Signal);
}

impl<T> Output<T> for Box<dyn Output<T>> {
    #[inline]
    fn record(&mut self, value: T, timestamp: Timestamp) {
        (**self).record(value, timestamp)
    }
    fn signal(&mut self, signal: Signal) {
        (**self).signal(signal)
    }
}

/// Where nothing consumes a stream.
pub struct Discard;

impl<T> Output<T> for Discard {
    fn record(&mut self, _: T, _: Timestamp) {}
    fn signal(&mut self, _: Signal) {}
}

/// One stream feeding several consumers.
pub struct FanOut<T> {
    pub targets: Vec<Box<dyn Output<T>>>,
}

impl<T: Clone + Send> Output<T> for FanOut<T> {
    fn record(&mut self, value: T, timestamp: Timestamp) {
        if let Some((last, rest)) = self.targets.split_last_mut() {
            for t in rest {
                t.record(value.clone(), timestamp);
            }
            last.record(value, timestamp);
        }
    }
    fn signal(&mut self, signal: Signal) {
        for t in &mut self.targets {
            t.signal(signal);
        }
    }
}

/// A collecting output for tests and small tools.
#[derive(Default)]
pub struct VecOutput<T> {
    pub records: Vec<(T, Timestamp)>,
    pub signals: Vec<Signal>,
}

impl<T: Send> Output<T> for VecOutput<T> {
    fn record(&mut self, value: T, timestamp: Timestamp) {
        self.records.push((value, timestamp));
    }
    fn signal(&mut self, signal: Signal) {
        self.signals.push(signal);
    }
}

/// Shares a [`VecOutput`] so a test can read what an operator emitted.
pub type SharedVec<T> = std::sync::Arc<std::sync::Mutex<VecOutput<T>>>;

impl<T: Send> Output<T> for SharedVec<T> {
    fn record(&mut self, value: T, timestamp: Timestamp) {
        if let Ok(mut v) = self.lock() {
            v.record(value, timestamp);
        }
    }
    fn signal(&mut self, signal: Signal) {
        if let Ok(mut v) = self.lock() {
            v.signal(signal);
        }
    }
}
