//! Exactly-once across the other shapes a job can have: two sources in a
//! union (barriers aligned over several channels), keyed broadcast state on
//! a two-input operator, and merging session windows — each failing at
//! random points and restarting from checkpoints, each compared record for
//! record with its failure-free run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rill::api::broadcast::KeyedBroadcastProcessFunction;
use rill::api::{Configuration, StreamEnv};
use rill::prelude::*;
use rill_tests::sorted_lines;

/// Panics once when the shared count of records reaches each threshold.
#[derive(Clone)]
struct Injector {
    seen: Arc<AtomicU64>,
    thresholds: Arc<Mutex<Vec<u64>>>,
}

impl Injector {
    fn new(thresholds: &[u64]) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            thresholds: Arc::new(Mutex::new(thresholds.to_vec())),
        }
    }

    fn check(&self) {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut t = self.thresholds.lock().unwrap();
        if t.first() == Some(&n) {
            t.remove(0);
            drop(t);
            panic!("injected failure at record {n}");
        }
    }

    fn exhausted(&self) -> bool {
        self.thresholds.lock().unwrap().is_empty()
    }
}

type Event = (String, i64, i64);

fn parse(line: &str, _: u64) -> Result<Option<Event>, String> {
    let mut p = line.split(',');
    match (p.next(), p.next(), p.next()) {
        (Some(k), Some(t), Some(v)) => Ok(Some((
            k.to_string(),
            t.parse().map_err(|_| format!("bad time in {line}"))?,
            v.parse().map_err(|_| format!("bad value in {line}"))?,
        ))),
        _ => Err(format!("bad line {line}")),
    }
}

/// Events with gaps, so sessions open, merge and close.
fn write_events(path: &Path, n: i64, salt: i64) {
    let mut text = String::new();
    let mut t = 0;
    for i in 0..n {
        t += if (i * 7 + salt) % 50 == 0 { 900 } else { 3 };
        let key = (i * 31 + salt) % 17;
        let jitter = (i * 13 + salt) % 40 - 20;
        text.push_str(&format!("k{key},{},{}\n", t + jitter, i % 100));
    }
    std::fs::write(path, text).unwrap();
}

/// Per key: the latest label from the broadcast rules and a running count.
#[derive(Clone)]
struct Labelled {
    count: ValueState<u64>,
}

impl KeyedBroadcastProcessFunction<String, Event, String, String> for Labelled {
    type State = BTreeMap<String, String>;

    fn process_element(
        &mut self,
        e: Event,
        labels: &Self::State,
        ctx: &mut KeyedContext<'_, String, String>,
    ) {
        let n = self.count.get(ctx).unwrap_or(0) + 1;
        self.count.set(ctx, n);
        if n.is_multiple_of(50) {
            let label = labels.get(&e.0).cloned().unwrap_or_default();
            ctx.emit(format!("{},{n},{label}", e.0));
        }
    }

    fn process_broadcast_element(
        &mut self,
        rule: String,
        labels: &mut Self::State,
        _: &mut Context<'_, String>,
    ) {
        if let Some((key, label)) = rule.split_once('=') {
            labels.insert(key.to_string(), label.to_string());
        }
    }
}

fn build(env: &StreamEnv, dir: &Path, out: &Path, injector: Option<Injector>) {
    let strategy = || {
        WatermarkStrategy::bounded_out_of_orderness(50)
            .with_timestamp_assigner(|e: &Event, _| e.1)
            .per_record()
    };
    let a = env
        .from_source(
            TextFileSource::parsed(dir.join("a.csv"), parse).rate(40_000.0),
            strategy(),
            "a",
        )
        .set_parallelism(1)
        .uid("a");
    let b = env
        .from_source(
            TextFileSource::parsed(dir.join("b.csv"), parse).rate(40_000.0),
            strategy(),
            "b",
        )
        .set_parallelism(1)
        .uid("b");
    let events = a
        .union(&[b])
        .map(move |e: Event| {
            if let Some(i) = &injector {
                i.check();
            }
            e
        })
        .set_parallelism(1)
        .uid("inject");

    // Session windows over the union.
    events
        .key_by(|e: &Event| e.0.clone())
        .window(EventTimeSessionWindows::with_gap(400))
        .reduce(|x: &Event, y: &Event| (x.0.clone(), x.1.max(y.1), x.2 + y.2))
        .uid("sessions")
        .map(|(k, t, v): Event| format!("{k},{t},{v}"))
        .uid("format-sessions")
        .sink_to(
            TextFileSink::new(out.join("sessions.csv"), String::clone),
            "sessions",
        )
        .set_parallelism(1)
        .uid("sessions-sink");

    // Keyed broadcast state: labels arrive on a slower third source.
    let rules = env
        .from_source(
            TextFileSource::lines(dir.join("rules.txt")).rate(200.0),
            WatermarkStrategy::no_watermarks(),
            "rules",
        )
        .set_parallelism(1)
        .uid("rules");
    events
        .key_by(|e: &Event| e.0.clone())
        .connect(&rules.broadcast_stream())
        .process_keyed(Labelled {
            count: ValueState::new("count"),
        })
        .uid("labelled")
        .sink_to(
            TextFileSink::new(out.join("labelled.csv"), String::clone),
            "labelled",
        )
        .set_parallelism(1)
        .uid("labelled-sink");
}

fn run(
    dir: &Path,
    name: &str,
    parallelism: usize,
    injector: Option<Injector>,
) -> (Vec<String>, Vec<String>, u32) {
    let out = dir.join(name);
    let mut config = Configuration::new();
    config
        .set("parallelism.default", parallelism.to_string())
        .unwrap();
    if injector.is_some() {
        config
            .set(
                "state.checkpoints.dir",
                dir.join(format!("ck-{name}")).to_str().unwrap(),
            )
            .unwrap();
        config
            .set("execution.checkpointing.interval", "30 ms")
            .unwrap();
        config.set("restart-strategy.type", "fixed-delay").unwrap();
        config
            .set("restart-strategy.fixed-delay.attempts", "10")
            .unwrap();
        config
            .set("restart-strategy.fixed-delay.delay", "10 ms")
            .unwrap();
    }
    let env = StreamEnv::new("shapes", config.clone()).unwrap();
    build(&env, dir, &out, injector);
    let options = rill::job_options(&config, "shapes").unwrap();
    let report = rill::runtime::LocalExecutor::new()
        .run_with(&env.graph(), &options)
        .expect("the job completes");
    (
        sorted_lines(&out.join("sessions.csv")),
        sorted_lines(&out.join("labelled.csv")),
        report.restarts,
    )
}

#[test]
fn unions_broadcast_state_and_sessions_recover_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("a.csv"), 20_000, 1);
    write_events(&dir.path().join("b.csv"), 20_000, 2);
    let rules: String = (0..200)
        .map(|i| format!("k{}=label-{i}\n", i % 17))
        .collect();
    std::fs::write(dir.path().join("rules.txt"), rules).unwrap();

    let (sessions, _, _) = run(dir.path(), "clean", 2, None);
    assert!(sessions.len() > 500, "{} sessions", sessions.len());

    let injector = Injector::new(&[9_000, 21_000, 33_000]);
    let (failing_sessions, failing_labelled, restarts) =
        run(dir.path(), "failing", 2, Some(injector.clone()));
    assert!(injector.exhausted());
    assert_eq!(restarts, 3);
    assert_eq!(failing_sessions, sessions, "session windows");
    // Which label a count sees depends on how the rules interleave with the
    // events (two sources), so labelled output is checked for its counts:
    // every key reaches every multiple of 50 exactly once.
    let counts = |lines: &[String]| -> Vec<String> {
        let mut c: Vec<String> = lines
            .iter()
            .map(|l| {
                l.rsplit_once(',')
                    .map_or(l.clone(), |(head, _)| head.to_string())
            })
            .collect();
        c.sort();
        c
    };
    let clean_labelled = sorted_lines(&dir.path().join("clean").join("labelled.csv"));
    assert_eq!(
        counts(&failing_labelled),
        counts(&clean_labelled),
        "keyed counts"
    );
    assert!(
        failing_labelled
            .iter()
            .filter(|l| l.contains("label-"))
            .count()
            > failing_labelled.len() / 2,
        "broadcast state survives restarts: most counts carry a label"
    );
}
