//! `rill bench window`: the reference windowed workload, also run on Apache
//! Flink by `shared/anchors/run-flink.sh` for comparison.
//!
//! `seq` in `1..=N`, event time `seq` ms, key `seq % K`, price a
//! pseudo-random `1..=1000`; watermarks one second behind the highest
//! timestamp; per key, tumbling 10 s event-time windows computing COUNT and
//! SUM; results into a discarding sink.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use rill_api::window::TumblingEventTimeWindows;
use rill_api::{AggregateFunction, Configuration, StreamEnv, WatermarkStrategy};
use rill_connectors::{DataGen, DiscardSink};
use rill_runtime::LocalExecutor;

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
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub events: u64,
    pub seconds: f64,
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

/// Runs the windowed workload and measures it.
pub fn run_window(events: u64, keys: u64, parallelism: usize) -> Result<BenchResult, Error> {
    let mut config = Configuration::new();
    config.set("parallelism.default", parallelism.max(1).to_string())?;
    let env = StreamEnv::new("bench-window", config)?;
    window_job(&env, events, keys);
    let graph = env.graph();
    let started = Instant::now();
    LocalExecutor::new().run(&graph)?;
    Ok(BenchResult {
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}
