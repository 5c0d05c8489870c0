//! `rill bench window`: the reference windowed workload, also run on Apache
//! Flink by `shared/anchors/run-flink.sh` for comparison.
//!
//! `seq` in `1..=N`, event time `seq` ms, key `seq % K`, price a
//! pseudo-random `1..=1000`; watermarks one second behind the highest
//! timestamp; per key, tumbling 10 s event-time windows computing COUNT and
//! SUM; results into a discarding sink.
//!
//! `rill bench state`: keyed state of many keys (one counter per key) under
//! periodic checkpoints, reporting each checkpoint's size and duration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use rill_api::window::TumblingEventTimeWindows;
use rill_api::{
    AggregateFunction, Configuration, KeyedContext, KeyedProcessFunction, Source, SourceOutput,
    SourcePoll, StreamEnv, ValueState, WatermarkStrategy,
};
use rill_connectors::{DataGen, DiscardSink};
use rill_runtime::{LocalExecutor, SnapshotStats};

use crate::Error;

/// One generated bid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Bid {
    pub seq: u64,
    pub key: u64,
    pub price: i64,
}

/// A fixed pseudo-random price for a sequence number (splitmix64).
pub fn price_of(seq: u64) -> i64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 1000) as i64 + 1
}

/// COUNT(*) and SUM(price).
#[derive(Debug, Clone, Copy)]
pub struct CountSum;

impl AggregateFunction<Bid> for CountSum {
    type Acc = (u64, i64);
    type Out = (u64, i64);
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    #[inline]
    fn add(&self, b: Bid, acc: &mut (u64, i64)) {
        acc.0 += 1;
        acc.1 += b.price;
    }
    fn result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
    fn merge(&self, acc: &mut (u64, i64), o: (u64, i64)) {
        acc.0 += o.0;
        acc.1 += o.1;
    }
}

/// Figures of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub events: u64,
    pub seconds: f64,
    /// Checkpoints taken during the run.
    pub snapshots: Vec<SnapshotStats>,
}

impl BenchResult {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Builds the windowed workload into `env`.
pub fn window_job(env: &StreamEnv, events: u64, keys: u64) {
    let keys = keys.max(1);
    let bids = env.from_source(
        DataGen::sequence(1, events, move |seq| Bid {
            seq,
            key: seq % keys,
            price: price_of(seq),
        }),
        WatermarkStrategy::bounded_out_of_orderness(1000)
            .with_timestamp_assigner(|b: &Bid, _| b.seq as i64),
        "bids",
    );
    bids.key_by(|b: &Bid| b.key)
        .window(TumblingEventTimeWindows::of(10_000))
        .aggregate_with(
            CountSum,
            |key: &u64, w: &rill_api::window::TimeWindow, (count, sum), out| {
                out.emit((*key, w.start, count, sum))
            },
        )
        .sink_to(DiscardSink, "blackhole");
}

/// Periodic checkpoints during a benchmark.
#[derive(Debug, Clone)]
pub struct BenchCheckpoints {
    pub dir: String,
    pub interval: Duration,
}

fn configuration(
    parallelism: usize,
    checkpoints: Option<&BenchCheckpoints>,
) -> Result<Configuration, Error> {
    let mut config = Configuration::new();
    config.set("parallelism.default", parallelism.max(1).to_string())?;
    if let Some(c) = checkpoints {
        config.set("state.checkpoints.dir", c.dir.clone())?;
        config.set(
            "execution.checkpointing.interval",
            format!("{} ms", c.interval.as_millis()),
        )?;
        config.set("restart-strategy.type", "none")?;
    }
    Ok(config)
}

/// Runs the windowed workload and measures it.
pub fn run_window(
    events: u64,
    keys: u64,
    parallelism: usize,
    checkpoints: Option<&BenchCheckpoints>,
) -> Result<BenchResult, Error> {
    let config = configuration(parallelism, checkpoints)?;
    let env = StreamEnv::new("bench-window", config.clone())?;
    window_job(&env, events, keys);
    let graph = env.graph();
    let options = crate::job_options(&config, "bench-window")?;
    let executor = LocalExecutor::new();
    let started = Instant::now();
    executor.run_with(&graph, &options)?;
    Ok(BenchResult {
        events,
        seconds: started.elapsed().as_secs_f64(),
        snapshots: executor.control().completed_snapshots(),
    })
}

/// Emits every key once, then stays open (so checkpoints keep running).
struct KeysThenIdle {
    next: u64,
    end: u64,
}

impl Source<u64> for KeysThenIdle {
    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> rill_api::Result<SourcePoll> {
        if self.next >= self.end {
            return Ok(SourcePoll::Pending(Duration::from_millis(20)));
        }
        let stop = self.end.min(self.next + 4096);
        for key in self.next..stop {
            out.collect(key);
        }
        self.next = stop;
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self) -> rill_api::Result<Option<Vec<u8>>> {
        Ok(Some(rill_api::checkpoint::encode_state(
            "keys", &self.next,
        )?))
    }
}

struct KeysFactory(u64);

impl rill_api::SourceFactory<u64> for KeysFactory {
    fn create(&self, subtask: usize, parallelism: usize) -> rill_api::Result<Box<dyn Source<u64>>> {
        let p = parallelism.max(1) as u64;
        let i = subtask as u64;
        Ok(Box::new(KeysThenIdle {
            next: self.0 * i / p,
            end: self.0 * (i + 1) / p,
        }))
    }
}

/// One counter per key.
#[derive(Clone)]
struct CountPerKey {
    count: ValueState<u64>,
    seen: Arc<AtomicU64>,
}

impl KeyedProcessFunction<u64, u64, u64> for CountPerKey {
    fn process_element(&mut self, _: u64, ctx: &mut KeyedContext<'_, u64, u64>) {
        let n = self.count.get(ctx).unwrap_or(0) + 1;
        self.count.set(ctx, n);
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

/// Figures of `rill bench state`.
#[derive(Debug, Clone)]
pub struct StateBenchResult {
    pub keys: u64,
    /// Time to load every key into state.
    pub load_seconds: f64,
    /// Checkpoints taken once every key was in state.
    pub snapshots: Vec<SnapshotStats>,
}

/// Loads `keys` keys into keyed state, then takes `count` checkpoints
/// (every `interval`) of it.
pub fn run_state(
    keys: u64,
    parallelism: usize,
    count: usize,
    checkpoints: &BenchCheckpoints,
) -> Result<StateBenchResult, Error> {
    let config = configuration(parallelism, Some(checkpoints))?;
    let env = StreamEnv::new("bench-state", config.clone())?;
    let seen = Arc::new(AtomicU64::new(0));
    env.from_source(
        KeysFactory(keys),
        WatermarkStrategy::no_watermarks(),
        "keys",
    )
    .key_by(|k: &u64| *k)
    .process(CountPerKey {
        count: ValueState::new("count"),
        seen: seen.clone(),
    })
    .sink_to(DiscardSink, "blackhole");
    let graph = env.graph();
    let options = crate::job_options(&config, "bench-state")?;
    let executor = LocalExecutor::new();
    let control = executor.control();
    let started = Instant::now();
    let runner = std::thread::spawn(move || executor.run_with(&graph, &options));
    while seen.load(Ordering::Relaxed) < keys {
        if runner.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let load_seconds = started.elapsed().as_secs_f64();
    // Skip checkpoints that may have started before loading ended.
    let skip = control.completed_snapshots().len() + 1;
    let deadline = Instant::now() + checkpoints.interval * (count as u32 + 2) * 4;
    while control.completed_snapshots().len() < skip + count
        && !runner.is_finished()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    control.cancel();
    match runner.join() {
        Ok(Err(rill_runtime::RuntimeError::Cancelled)) | Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(rill_api::Error::Task {
                task: "bench-state".into(),
                message: "the job thread panicked".into(),
            }
            .into())
        }
    }
    let snapshots: Vec<SnapshotStats> = control
        .completed_snapshots()
        .into_iter()
        .skip(skip)
        .take(count)
        .collect();
    Ok(StateBenchResult {
        keys,
        load_seconds,
        snapshots,
    })
}
