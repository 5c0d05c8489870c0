//! Exactly-once under injected task failures: a job with windows, keyed
//! state and timers, and two-phase-commit file sinks fails several times at
//! random points, restarts from its latest checkpoint each time, and its
//! committed output equals the failure-free output record for record, with
//! keyed state on either state backend (the failure-free reference always
//! runs on the heap backend, so RocksDB is also checked against it), with
//! full and incremental native RocksDB checkpoints.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use rill::api::{Configuration, StreamEnv};
use rill::prelude::*;
use rill_tests::sorted_lines;

/// Counts records per key and reports the count 500 ms (event time) after
/// the first record of each 1-second period: state plus event-time timers.
#[derive(Clone)]
struct PeriodCount {
    count: ValueState<u64>,
    injector: Option<Injector>,
}

impl KeyedProcessFunction<String, (String, i64, i64), String> for PeriodCount {
    fn process_element(
        &mut self,
        value: (String, i64, i64),
        ctx: &mut KeyedContext<'_, String, String>,
    ) {
        if let Some(i) = &self.injector {
            i.check();
        }
        let n = self.count.get(ctx).unwrap_or(0);
        if n == 0 {
            let period_end = value.1.div_euclid(1000) * 1000 + 1500;
            ctx.register_event_time_timer(period_end);
        }
        self.count.set(ctx, n + 1);
    }

    fn on_timer(
        &mut self,
        time: Timestamp,
        _: TimeDomain,
        ctx: &mut KeyedContext<'_, String, String>,
    ) {
        let n = self.count.get(ctx).unwrap_or(0);
        let line = format!("{},{time},{n}", ctx.key());
        self.count.clear(ctx);
        ctx.emit(line);
    }
}

/// Fails the task (a panic in user code) when the number of records seen
/// over all attempts reaches one of the thresholds.
#[derive(Clone)]
struct Injector {
    seen: Arc<AtomicU64>,
    thresholds: Arc<Mutex<Vec<u64>>>,
}

impl Injector {
    fn check(&self) {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut t = self.thresholds.lock().unwrap();
        if t.first() == Some(&n) {
            t.remove(0);
            drop(t);
            panic!("injected failure at record {n}");
        }
    }
}

fn write_input(path: &Path, records: usize, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut text = String::new();
    for i in 0..records as i64 {
        let key = rng.random_range(0..40);
        let ts = i * 5 + rng.random_range(-300..300);
        let value = rng.random_range(-1000..1000);
        text.push_str(&format!("k{key},{ts},{value}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn parse(line: &str, _: u64) -> Result<Option<(String, i64, i64)>, String> {
    let mut p = line.split(',');
    match (p.next(), p.next(), p.next()) {
        (Some(k), Some(t), Some(v)) => Ok(Some((
            k.to_string(),
            t.parse().map_err(|_| "ts")?,
            v.parse().map_err(|_| "value")?,
        ))),
        _ => Err(format!("bad line {line}")),
    }
}

/// Builds the job: file source (paced) → failure injector → tumbling
/// windows (sum) and a keyed process function (which injects failures too)
/// → two transactional sinks. The source side runs with parallelism 1 so
/// each keyed subtask has one input channel and the failure-free output is
/// deterministic at any parallelism.
fn build(env: &StreamEnv, input: &Path, out: &Path, injector: Option<Injector>, rate: f64) {
    let source = TextFileSource::parsed(input, parse).rate(rate);
    let records = env
        .from_source(
            source,
            WatermarkStrategy::bounded_out_of_orderness(400)
                .with_timestamp_assigner(|r: &(String, i64, i64), _| r.1)
                .per_record(),
            "input",
        )
        .set_parallelism(1)
        .uid("input")
        .map({
            let injector = injector.clone();
            move |r: (String, i64, i64)| {
                if let Some(i) = &injector {
                    i.check();
                }
                r
            }
        })
        .set_parallelism(1)
        .uid("injector");
    let keyed = records.key_by(|r: &(String, i64, i64)| r.0.clone());
    keyed
        .window(TumblingEventTimeWindows::of(700))
        .reduce(|a: &(String, i64, i64), b: &(String, i64, i64)| {
            (a.0.clone(), a.1.max(b.1), a.2 + b.2)
        })
        .uid("window-sum")
        .map(|(k, t, s): (String, i64, i64)| format!("{k},{t},{s}"))
        .uid("format")
        .sink_to(
            TextFileSink::new(out.join("sums.csv"), String::clone),
            "sums",
        )
        .uid("sums-sink");
    keyed
        .process(PeriodCount {
            count: ValueState::new("count"),
            injector,
        })
        .uid("period-count")
        .sink_to(
            TextFileSink::new(out.join("counts.csv"), String::clone),
            "counts",
        )
        .set_parallelism(1)
        .uid("counts-sink");
}

struct Run {
    sums: Vec<String>,
    counts: Vec<String>,
    restarts: u32,
    checkpoints: u64,
}

fn run(
    dir: &Path,
    parallelism: usize,
    injector: Option<Injector>,
    checkpoints: Option<&Path>,
    rate: f64,
    backend: &str,
) -> Run {
    let out = dir.join(if injector.is_some() {
        "failing"
    } else {
        "clean"
    });
    let mut config = Configuration::new();
    config
        .set("parallelism.default", parallelism.to_string())
        .unwrap();
    // `rocksdb-incremental`: RocksDB with incremental native checkpoints.
    let (kind, incremental) = match backend.strip_suffix("-incremental") {
        Some(kind) => (kind, true),
        None => (backend, false),
    };
    config.set("state.backend.type", kind).unwrap();
    config
        .set("state.backend.incremental", incremental.to_string())
        .unwrap();
    if let Some(ck) = checkpoints {
        config
            .set("state.checkpoints.dir", ck.to_str().unwrap())
            .unwrap();
        config
            .set("execution.checkpointing.interval", "25 ms")
            .unwrap();
        config.set("restart-strategy.type", "fixed-delay").unwrap();
        config
            .set("restart-strategy.fixed-delay.attempts", "20")
            .unwrap();
        config
            .set("restart-strategy.fixed-delay.delay", "10 ms")
            .unwrap();
    }
    let env = StreamEnv::new("fault-tolerance", config.clone()).unwrap();
    build(&env, &dir.join("in.csv"), &out, injector, rate);
    let options = rill::job_options(&config, "fault-tolerance").unwrap();
    let report = rill::runtime::LocalExecutor::new()
        .run_with(&env.graph(), &options)
        .expect("the job completes");
    let files = |name: &str| -> Vec<String> {
        if parallelism == 1 || name == "counts.csv" {
            sorted_lines(&out.join(name))
        } else {
            let mut all = Vec::new();
            for i in 0..parallelism {
                all.extend(sorted_lines(&out.join(format!("{name}.{i}"))));
            }
            all.sort();
            all
        }
    };
    Run {
        sums: files("sums.csv"),
        counts: files("counts.csv"),
        restarts: report.restarts,
        checkpoints: report.checkpoints,
    }
}

fn failures_match_the_clean_run(parallelism: usize, seed: u64, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let records = 60_000;
    write_input(&dir.path().join("in.csv"), records, seed);
    let clean = run(dir.path(), parallelism, None, None, 1e9, "hashmap");
    assert!(clean.sums.len() > 1000 && clean.counts.len() > 1000);

    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    // Every record is counted twice (injector map and keyed function). The
    // failures lie far enough apart that each one hits a fresh attempt (two
    // failures racing in one attempt cause one restart, as they should).
    let mut thresholds: Vec<u64> = Vec::new();
    while thresholds.len() < 4 {
        let t = rng.random_range(2_000..2 * records as u64);
        if thresholds.iter().all(|x| x.abs_diff(t) > 10_000) {
            thresholds.push(t);
        }
    }
    thresholds.sort();
    let failures = thresholds.len() as u32;
    let injector = Injector {
        seen: Arc::new(AtomicU64::new(0)),
        thresholds: Arc::new(Mutex::new(thresholds.clone())),
    };
    let checkpoints = dir.path().join("checkpoints");
    let failing = run(
        dir.path(),
        parallelism,
        Some(injector.clone()),
        Some(&checkpoints),
        60_000.0,
        backend,
    );
    assert!(
        injector.thresholds.lock().unwrap().is_empty(),
        "every failure was injected"
    );
    assert_eq!(failing.restarts, failures, "one restart per failure");
    assert!(
        failing.checkpoints >= 5,
        "{} checkpoints",
        failing.checkpoints
    );
    assert!(
        injector.seen.load(Ordering::SeqCst) > records as u64,
        "records after the last checkpoint were replayed"
    );
    let context = format!("seed {seed}, p={parallelism}, {backend}, failures at {thresholds:?}");
    assert_same("window sums", &failing.sums, &clean.sums, &context);
    assert_same("keyed counts", &failing.counts, &clean.counts, &context);
}

/// Record-for-record equality, reported as missing and duplicated lines.
fn assert_same(what: &str, actual: &[String], expected: &[String], context: &str) {
    if actual == expected {
        return;
    }
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let (mut a, mut e) = (actual.iter().peekable(), expected.iter().peekable());
    loop {
        match (a.peek(), e.peek()) {
            (Some(x), Some(y)) if x == y => {
                a.next();
                e.next();
            }
            (Some(x), Some(y)) if x < y => extra.push(a.next().unwrap().clone()),
            (Some(_), Some(_)) | (None, Some(_)) => missing.push(e.next().unwrap().clone()),
            (Some(_), None) => extra.push(a.next().unwrap().clone()),
            (None, None) => break,
        }
    }
    panic!(
        "{what} differ from the failure-free run ({context}): {} missing, {} extra; \
         first missing {:?}, first extra {:?}",
        missing.len(),
        extra.len(),
        &missing[..missing.len().min(5)],
        &extra[..extra.len().min(5)]
    );
}

#[test]
fn injected_failures_lose_and_duplicate_nothing_at_parallelism_1() {
    for seed in [1, 2] {
        for backend in ["hashmap", "rocksdb"] {
            failures_match_the_clean_run(1, seed, backend);
        }
    }
}

#[test]
fn injected_failures_lose_and_duplicate_nothing_at_parallelism_3() {
    for seed in [3, 4] {
        for backend in ["hashmap", "rocksdb", "rocksdb-incremental"] {
            failures_match_the_clean_run(3, seed, backend);
        }
    }
}
