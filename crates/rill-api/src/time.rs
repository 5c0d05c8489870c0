//! Event time: timestamps and watermark strategies.
//!
//! A watermark `w` promises that no record with timestamp `<= w` is still to
//! come. Strategies follow Flink: bounded out-of-orderness emits
//! `max_timestamp - out_of_orderness - 1`; watermarks are emitted either
//! periodically (`pipeline.auto-watermark-interval`, 200 ms by default) or after
//! every record; a stream that sees no records for its idleness timeout is
//! marked idle so it does not hold back downstream watermarks.
//!
//! Periodic emission also happens every [`RECORDS_PER_PERIODIC_WATERMARK`]
//! records. A fast source can move event time thousands of times faster than
//! the wall clock; waiting 200 ms between watermarks would then keep hundreds
//! of windows per key open and make state (and latency) grow with throughput.
//! The watermark values are the same, they only reach the operators sooner.

use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{decode_state, encode_state};
use crate::element::{Output, Signal};
use crate::exec::SubtaskInfo;

/// Milliseconds since the epoch (event or processing time).
pub type Timestamp = i64;
/// The watermark before any record was seen.
pub const MIN_WATERMARK: Timestamp = i64::MIN;
/// The watermark at the end of input: every event-time timer fires.
pub const MAX_WATERMARK: Timestamp = i64::MAX;

/// Current wall-clock time in ms.
pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Periodic strategies also emit after this many records.
pub const RECORDS_PER_PERIODIC_WATERMARK: u32 = 4096;

/// When a strategy hands its watermark downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    /// After every record (deterministic; used to verify window semantics).
    PerRecord,
    /// Every so many ms of processing time.
    Periodic(i64),
}

/// Takes a record's event time from the record (and its arrival timestamp).
pub type TimestampAssigner<T> = Arc<dyn Fn(&T, Timestamp) -> Timestamp + Send + Sync>;

/// How a stream gets timestamps and watermarks.
pub struct WatermarkStrategy<T> {
    pub(crate) out_of_orderness: Option<i64>,
    pub(crate) timestamps: Option<TimestampAssigner<T>>,
    pub(crate) idleness: Option<Duration>,
    pub(crate) emission: Emission,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            out_of_orderness: self.out_of_orderness,
            timestamps: self.timestamps.clone(),
            idleness: self.idleness,
            emission: self.emission,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Watermark = highest timestamp seen − `out_of_orderness_ms` − 1.
    pub fn bounded_out_of_orderness(out_of_orderness_ms: i64) -> Self {
        Self {
            out_of_orderness: Some(out_of_orderness_ms.max(0)),
            timestamps: None,
            idleness: None,
            emission: Emission::Periodic(200),
        }
    }

    /// Timestamps only ever increase.
    pub fn monotonous() -> Self {
        Self::bounded_out_of_orderness(0)
    }

    /// Keep (or assign) timestamps but never emit watermarks.
    pub fn no_watermarks() -> Self {
        Self {
            out_of_orderness: None,
            timestamps: None,
            idleness: None,
            emission: Emission::Periodic(200),
        }
    }

    /// Takes each record's timestamp from the record (the second argument is
    /// the timestamp the record arrived with, if any).
    pub fn with_timestamp_assigner(
        mut self,
        f: impl Fn(&T, Timestamp) -> Timestamp + Send + Sync + 'static,
    ) -> Self {
        self.timestamps = Some(Arc::new(f));
        self
    }

    /// Mark the stream idle after this long without records.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// Emit after every record instead of periodically.
    pub fn per_record(mut self) -> Self {
        self.emission = Emission::PerRecord;
        self
    }

    /// Emit every `interval_ms` of processing time.
    pub fn periodic(mut self, interval_ms: i64) -> Self {
        self.emission = Emission::Periodic(interval_ms.max(1));
        self
    }
}

/// The operator that applies a [`WatermarkStrategy`]: assigns timestamps,
/// generates watermarks, tracks idleness. Upstream watermarks are replaced by
/// its own, except the final one that closes the stream.
pub struct TimestampsAndWatermarks<T> {
    strategy: WatermarkStrategy<T>,
    out: Box<dyn Output<T>>,
    max_seen: Timestamp,
    emitted: Timestamp,
    last_periodic: Timestamp,
    last_record_at: Timestamp,
    idle: bool,
    seen_since_tick: bool,
    since_emit: u32,
    checkpoint: Option<SubtaskInfo>,
}

/// What a watermark generator keeps in a checkpoint, so watermarks after a
/// restore are exactly those of a run without failure.
#[derive(serde::Serialize, serde::Deserialize)]
struct GeneratorSnapshot {
    max_seen: Timestamp,
    emitted: Timestamp,
    since_emit: u32,
}

impl<T: Send> TimestampsAndWatermarks<T> {
    pub fn new(strategy: WatermarkStrategy<T>, out: Box<dyn Output<T>>) -> Self {
        Self {
            strategy,
            out,
            max_seen: MIN_WATERMARK,
            emitted: MIN_WATERMARK,
            last_periodic: MIN_WATERMARK,
            last_record_at: now_ms(),
            idle: false,
            seen_since_tick: false,
            since_emit: 0,
            checkpoint: None,
        }
    }

    /// Takes part in checkpoints as `info` (whose uid names this generator),
    /// resuming from its restored progress.
    pub fn checkpointed(mut self, info: SubtaskInfo) -> crate::Result<Self> {
        let states = info.restored_operator_states();
        // Several merged generators resume from the least advanced one.
        for blob in states {
            let g: GeneratorSnapshot = decode_state(&info.uid, blob)?;
            if self.max_seen == MIN_WATERMARK || g.max_seen < self.max_seen {
                self.max_seen = g.max_seen;
                self.emitted = g.emitted;
                self.since_emit = g.since_emit;
            }
        }
        self.checkpoint = Some(info);
        Ok(self)
    }

    fn on_barrier(&mut self, id: crate::checkpoint::CheckpointId) {
        if let Some(info) = &self.checkpoint {
            let snapshot = GeneratorSnapshot {
                max_seen: self.max_seen,
                emitted: self.emitted,
                since_emit: self.since_emit,
            };
            match encode_state(&info.uid, &snapshot) {
                Ok(blob) => info.put_snapshot(
                    id,
                    crate::checkpoint::OperatorState {
                        keyed: Vec::new(),
                        operator: Some(blob),
                    },
                ),
                Err(e) => info.checkpoint.snapshots.failed(id, e.to_string()),
            }
        }
    }

    fn current(&self) -> Option<Timestamp> {
        let ooo = self.strategy.out_of_orderness?;
        (self.max_seen != MIN_WATERMARK)
            .then(|| self.max_seen.saturating_sub(ooo).saturating_sub(1))
    }

    fn emit_if_advanced(&mut self) {
        if let Some(wm) = self.current() {
            if wm > self.emitted {
                self.emitted = wm;
                self.out.signal(Signal::Watermark(wm));
            }
        }
    }
}

impl<T: Send> Output<T> for TimestampsAndWatermarks<T> {
    #[inline]
    fn record(&mut self, value: T, timestamp: Timestamp) {
        let ts = match &self.strategy.timestamps {
            Some(f) => f(&value, timestamp),
            None => timestamp,
        };
        if ts > self.max_seen {
            self.max_seen = ts;
        }
        self.seen_since_tick = true;
        if self.idle {
            self.idle = false;
            self.out.signal(Signal::Idle(false));
        }
        self.out.record(value, ts);
        match self.strategy.emission {
            Emission::PerRecord => self.emit_if_advanced(),
            Emission::Periodic(_) => {
                self.since_emit += 1;
                if self.since_emit >= RECORDS_PER_PERIODIC_WATERMARK {
                    self.since_emit = 0;
                    self.emit_if_advanced();
                }
            }
        }
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watermark(MAX_WATERMARK) => {
                self.emitted = MAX_WATERMARK;
                self.out.signal(signal);
            }
            Signal::Watermark(_) | Signal::Idle(_) => {}
            Signal::ProcessingTime(now) => {
                if self.seen_since_tick {
                    self.seen_since_tick = false;
                    self.last_record_at = now;
                }
                if let Emission::Periodic(every) = self.strategy.emission {
                    if now.saturating_sub(self.last_periodic) >= every {
                        self.last_periodic = now;
                        self.emit_if_advanced();
                    }
                }
                if let Some(idle) = self.strategy.idleness {
                    if !self.idle && now - self.last_record_at >= idle.as_millis() as i64 {
                        self.idle = true;
                        self.out.signal(Signal::Idle(true));
                    }
                }
                self.out.signal(signal);
            }
            Signal::EndOfInput => {
                if self.emitted != MAX_WATERMARK {
                    self.emit_if_advanced();
                }
                self.out.signal(signal);
            }
            Signal::Barrier(id) => {
                self.on_barrier(id);
                self.out.signal(signal);
            }
            Signal::Flush | Signal::CheckpointComplete(_) => self.out.signal(signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::SharedVec;

    #[test]
    fn bounded_out_of_orderness_per_record() {
        let seen: SharedVec<i64> = Default::default();
        let mut op = TimestampsAndWatermarks::new(
            WatermarkStrategy::bounded_out_of_orderness(10)
                .with_timestamp_assigner(|v: &i64, _| *v)
                .per_record(),
            Box::new(seen.clone()),
        );
        for ts in [100, 95, 120, 110] {
            op.record(ts, MIN_WATERMARK);
        }
        let out = seen.lock().unwrap();
        assert_eq!(
            out.signals,
            vec![Signal::Watermark(89), Signal::Watermark(109)],
            "only advancing watermarks are emitted"
        );
        assert_eq!(
            out.records.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![100, 95, 120, 110]
        );
    }

    #[test]
    fn periodic_and_idle() {
        let seen: SharedVec<i64> = Default::default();
        let mut op = TimestampsAndWatermarks::new(
            WatermarkStrategy::monotonous()
                .with_timestamp_assigner(|v: &i64, _| *v)
                .periodic(100)
                .with_idleness(Duration::from_millis(500)),
            Box::new(seen.clone()),
        );
        op.record(5, 0);
        op.signal(Signal::ProcessingTime(1_000));
        op.signal(Signal::ProcessingTime(1_050)); // too early for another emission
        op.signal(Signal::ProcessingTime(1_600)); // idle
        op.record(7, 0); // active again
        let out = seen.lock().unwrap();
        let control: Vec<_> = out
            .signals
            .iter()
            .filter(|s| !matches!(s, Signal::ProcessingTime(_)))
            .copied()
            .collect();
        assert_eq!(
            control,
            vec![
                Signal::Watermark(4),
                Signal::Idle(true),
                Signal::Idle(false)
            ]
        );
    }
}
