//! Keyed state and timers give the same per-key results at every parallelism,
//! on both state backends.

use std::collections::BTreeMap;

use rill::api::{Configuration, StreamEnv};
use rill::prelude::*;
use rill_tests::{collect, env};

/// Every scenario runs on each state backend.
const BACKENDS: [&str; 2] = ["hashmap", "rocksdb"];

/// Runs the graph built in `env` to completion with keyed state on `backend`.
fn execute(env: &StreamEnv, backend: &str) -> Result<(), String> {
    let mut config = Configuration::new();
    config
        .set("state.backend.type", backend)
        .map_err(|e| e.to_string())?;
    let options = rill::job_options(&config, "test").map_err(|e| e.to_string())?;
    rill::runtime::LocalExecutor::new()
        .run_with(&env.graph(), &options)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Per key: a count (value), the last three values (list), a histogram
/// (map), the maximum (reducing) and the mean (aggregating) — reported by an
/// event-time timer 100 ms after the key's latest record, and again by a
/// processing-time timer at the end.
#[derive(Clone)]
struct Summary {
    count: ValueState<u64>,
    recent: ListState<i64>,
    buckets: MapState<i64, u32>,
    max: ReducingState<i64, fn(&i64, &i64) -> i64>,
    mean: AggregatingState<i64, Mean>,
    last_ts: ValueState<i64>,
}

#[derive(Clone, Copy)]
struct Mean;
impl AggregateFunction<i64> for Mean {
    type Acc = (i64, i64);
    type Out = i64;
    fn create_accumulator(&self) -> (i64, i64) {
        (0, 0)
    }
    fn add(&self, v: i64, acc: &mut (i64, i64)) {
        acc.0 += v;
        acc.1 += 1;
    }
    fn result(&self, acc: &(i64, i64)) -> i64 {
        acc.0 / acc.1.max(1)
    }
    fn merge(&self, acc: &mut (i64, i64), o: (i64, i64)) {
        acc.0 += o.0;
        acc.1 += o.1;
    }
}

fn max_of(a: &i64, b: &i64) -> i64 {
    *a.max(b)
}

impl Summary {
    fn new() -> Self {
        Self {
            count: ValueState::new("count"),
            recent: ListState::new("recent"),
            buckets: MapState::new("buckets"),
            max: ReducingState::new("max", max_of as fn(&i64, &i64) -> i64),
            mean: AggregatingState::new("mean", Mean),
            last_ts: ValueState::new("last-ts"),
        }
    }
}

type Out = (u32, u64, Vec<i64>, usize, i64, i64);

impl KeyedProcessFunction<u32, (u32, i64, i64), Out> for Summary {
    fn process_element(
        &mut self,
        (_, ts, v): (u32, i64, i64),
        ctx: &mut KeyedContext<'_, u32, Out>,
    ) {
        let n = self.count.get(ctx).unwrap_or(0) + 1;
        self.count.set(ctx, n);
        let mut recent = self.recent.get(ctx);
        recent.push(v);
        if recent.len() > 3 {
            recent.remove(0);
        }
        self.recent.update(ctx, recent);
        let b = v.div_euclid(10);
        let c = self.buckets.get(ctx, &b).unwrap_or(0);
        self.buckets.put(ctx, b, c + 1);
        self.max.add(ctx, v);
        self.mean.add(ctx, v);
        if let Some(previous) = self.last_ts.get(ctx) {
            if previous < ts {
                ctx.delete_event_time_timer(previous + 100);
            }
        }
        let latest = self.last_ts.get(ctx).unwrap_or(i64::MIN).max(ts);
        self.last_ts.set(ctx, latest);
        ctx.register_event_time_timer(latest + 100);
    }

    fn on_timer(&mut self, _: Timestamp, domain: TimeDomain, ctx: &mut KeyedContext<'_, u32, Out>) {
        assert_eq!(domain, TimeDomain::EventTime);
        let key = *ctx.key();
        let out = (
            key,
            self.count.get(ctx).unwrap_or(0),
            self.recent.get(ctx),
            self.buckets.entries(ctx).len(),
            self.max.get(ctx).unwrap_or(i64::MIN),
            self.mean.get(ctx).unwrap_or(0),
        );
        ctx.emit(out);
    }
}

fn input() -> Vec<(u32, i64, i64)> {
    (0..3000i64)
        .map(|i| ((i * 7919 % 37) as u32, i, (i * 31) % 97 - 40))
        .collect()
}

fn expected() -> Vec<Out> {
    let mut per_key: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (k, _, v) in input() {
        per_key.entry(k).or_default().push(v);
    }
    per_key
        .into_iter()
        .map(|(k, vs)| {
            let buckets: std::collections::BTreeSet<i64> =
                vs.iter().map(|v| v.div_euclid(10)).collect();
            let recent = vs[vs.len().saturating_sub(3)..].to_vec();
            (
                k,
                vs.len() as u64,
                recent,
                buckets.len(),
                *vs.iter().max().unwrap(),
                vs.iter().sum::<i64>() / vs.len() as i64,
            )
        })
        .collect()
}

#[test]
fn keyed_state_and_timers_are_correct_at_parallelism_1_2_4() {
    for (backend, parallelism) in BACKENDS.iter().flat_map(|b| [1, 2, 4].map(|p| (*b, p))) {
        let env = env(parallelism);
        let source = env
            .from_source(
                rill::api::source::CollectionSource::new(input()),
                WatermarkStrategy::monotonous()
                    .with_timestamp_assigner(|r: &(u32, i64, i64), _| r.1),
                "input",
            )
            .set_parallelism(1);
        let summaries = source
            .key_by(|r: &(u32, i64, i64)| r.0)
            .process(Summary::new());
        let seen = collect(&summaries);
        execute(&env, backend).unwrap();
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        // Each key's single timer fires once, at the end of input.
        assert_eq!(got, expected(), "parallelism {parallelism}, {backend}");
    }
}

#[test]
fn rolling_reduce_is_per_key_at_any_parallelism() {
    for (backend, parallelism) in BACKENDS.iter().flat_map(|b| [1, 3].map(|p| (*b, p))) {
        let env = env(parallelism);
        let sums = env
            .from_collection((0..1000u64).collect())
            .rebalance()
            .map(|v| (v % 10, v))
            .key_by(|(k, _): &(u64, u64)| *k)
            .reduce(|(k, a), (_, b)| (k, a + b));
        let seen = collect(&sums);
        execute(&env, backend).unwrap();
        let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
        let mut updates = 0;
        for (k, s) in seen.lock().unwrap().iter() {
            let e = finals.entry(*k).or_default();
            *e = (*e).max(*s);
            updates += 1;
        }
        assert_eq!(updates, 1000, "one update per record ({backend})");
        for k in 0..10 {
            let expected: u64 = (0..1000).filter(|v| v % 10 == k).sum();
            assert_eq!(
                finals[&k], expected,
                "key {k} at parallelism {parallelism}, {backend}"
            );
        }
    }
}

#[derive(Clone)]
struct Delay;
impl KeyedProcessFunction<u8, u8, (u8, i64)> for Delay {
    fn process_element(&mut self, _: u8, ctx: &mut KeyedContext<'_, u8, (u8, i64)>) {
        let at = ctx.current_processing_time() + 30;
        ctx.register_processing_time_timer(at);
    }
    fn on_timer(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u8, (u8, i64)>,
    ) {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        let k = *ctx.key();
        ctx.emit((k, ts));
    }
}

#[test]
fn processing_time_timers_fire_on_the_wall_clock() {
    for backend in BACKENDS {
        processing_time_timers_fire_on(backend);
    }
}

fn processing_time_timers_fire_on(backend: &str) {
    // A slow source keeps the job alive while the timers fire.
    let env = env(2);
    let started = rill::api::time::now_ms();
    let fired = env
        .from_source(
            DataGen::sequence(0, 39, |s| (s % 4) as u8).rows_per_second(200.0),
            WatermarkStrategy::no_watermarks(),
            "slow",
        )
        .set_parallelism(1)
        .key_by(|v: &u8| *v)
        .process(Delay);
    let seen = collect(&fired);
    execute(&env, backend).unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        !seen.is_empty(),
        "timers fired before the source ended ({backend})"
    );
    for (_, ts) in seen.iter() {
        assert!(
            *ts >= started + 30,
            "a timer fired before its time ({backend})"
        );
    }
}

#[test]
fn state_backend_configuration_is_checked_at_job_start() {
    let options = |pairs: &[(&str, &str)]| {
        let mut config = Configuration::new();
        for (k, v) in pairs {
            config.set(k, *v).unwrap();
        }
        rill::job_options(&config, "test").map(|o| o.state_backend)
    };
    assert_eq!(options(&[]).unwrap().name(), "hashmap");
    assert_eq!(
        options(&[("state.backend.type", "RocksDB")])
            .unwrap()
            .name(),
        "rocksdb"
    );
    let err = options(&[("state.backend.type", "memory")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown state backend 'memory'"), "{err}");
    assert_eq!(
        options(&[
            ("state.backend.type", "rocksdb"),
            ("state.backend.incremental", "true"),
        ])
        .unwrap(),
        rill::state::StateBackend::RocksDb(rill::state::RocksDbOptions {
            local_dir: None,
            incremental: true,
        })
    );
    let err = options(&[("state.backend.incremental", "true")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("state.backend.incremental"), "{err}");
    assert!(err.contains("rocksdb"), "{err}");
}

#[test]
fn rocksdb_state_lives_under_the_configured_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("rocks");
    let mut config = Configuration::new();
    config.set("state.backend.type", "rocksdb").unwrap();
    config
        .set("state.backend.rocksdb.localdir", local.to_str().unwrap())
        .unwrap();
    let options = rill::job_options(&config, "test").unwrap();
    let env = env(2);
    let sums = env
        .from_collection((0..200u64).collect())
        .map(|v| (v % 7, v))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce(|(k, a), (_, b)| (k, a + b));
    let seen = collect(&sums);
    rill::runtime::LocalExecutor::new()
        .run_with(&env.graph(), &options)
        .unwrap();
    let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, s) in seen.lock().unwrap().iter() {
        let e = finals.entry(*k).or_default();
        *e = (*e).max(*s);
    }
    for k in 0..7 {
        let expected: u64 = (0..200).filter(|v| v % 7 == k).sum();
        assert_eq!(finals[&k], expected, "key {k}");
    }
    // The per-subtask databases were created there and removed at the end.
    assert!(local.is_dir(), "the local dir was created");
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
}
