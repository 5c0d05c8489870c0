//! DataStream API features end to end: union, broadcast state, side outputs,
//! partitioning, triggers, idleness.

use std::time::Duration;

use rill::api::broadcast::{BroadcastProcessFunction, KeyedBroadcastProcessFunction};
use rill::prelude::*;
use rill_tests::{collect, env, execute};

fn timestamped(items: Vec<(u32, i64)>) -> rill::api::source::CollectionSource<(u32, i64)> {
    rill::api::source::CollectionSource::new(items)
}

#[test]
fn union_of_streams_with_different_parallelism() {
    let env = env(3);
    let a = env.from_collection((0..100u64).collect());
    let b = env
        .from_collection((100..250u64).collect())
        .map(|v| v)
        .set_parallelism(2);
    let all = a.union(&[b]).map(|v| v * 2);
    let seen = collect(&all);
    execute(&env).unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..250u64).map(|v| v * 2).collect::<Vec<_>>());
}

#[test]
fn broadcast_partitioning_copies_every_record_to_every_subtask() {
    let env = env(3);
    let copies = env
        .from_collection((0..50u32).collect())
        .broadcast()
        .map(|v| v);
    let seen = collect(&copies);
    execute(&env).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 150);
}

#[test]
fn rebalance_spreads_and_keeps_everything() {
    let env = env(4);
    let spread = env
        .from_collection((0..1000u32).collect())
        .rebalance()
        .filter(|v| v % 3 != 0);
    let seen = collect(&spread);
    execute(&env).unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..1000u32).filter(|v| v % 3 != 0).collect::<Vec<_>>());
}

#[derive(Clone)]
struct Split {
    odd: OutputTag<u64>,
}
impl ProcessFunction<u64, String> for Split {
    fn process_element(&mut self, v: u64, ctx: &mut Context<'_, String>) {
        if v % 2 == 1 {
            ctx.side(&self.odd, v);
        } else {
            ctx.emit(format!("even {v}"));
        }
    }
}

#[test]
fn side_outputs_carry_their_own_type() {
    let env = env(2);
    let odd = OutputTag::<u64>::new("odd");
    let main = env
        .from_collection((0..20u64).collect())
        .process(Split { odd: odd.clone() });
    let odds = main.side_output(&odd).map(|v| v * 10);
    let (main_seen, odd_seen) = (collect(&main), collect(&odds));
    execute(&env).unwrap();
    assert_eq!(main_seen.lock().unwrap().len(), 10);
    let mut o = odd_seen.lock().unwrap().clone();
    o.sort();
    assert_eq!(
        o,
        (0..20u64)
            .filter(|v| v % 2 == 1)
            .map(|v| v * 10)
            .collect::<Vec<_>>()
    );
}

/// Rules: a threshold per key name, broadcast; events pass when above it.
#[derive(Clone)]
struct Threshold;
impl BroadcastProcessFunction<(String, i64), (String, i64), String> for Threshold {
    type State = std::collections::HashMap<String, i64>;
    fn process_element(
        &mut self,
        (k, v): (String, i64),
        rules: &Self::State,
        ctx: &mut Context<'_, String>,
    ) {
        if let Some(limit) = rules.get(&k) {
            if v > *limit {
                ctx.emit(format!("{k}:{v}"));
            }
        }
    }
    fn process_broadcast_element(
        &mut self,
        (k, limit): (String, i64),
        rules: &mut Self::State,
        _: &mut Context<'_, String>,
    ) {
        rules.insert(k, limit);
    }
}

#[test]
fn connect_with_broadcast_state() {
    let env = env(3);
    let rules = env.from_collection(vec![("a".to_string(), 5i64), ("b".to_string(), 50)]);
    // Events are held back until the rules are surely in (a slow source).
    let events = env
        .from_source(
            DataGen::sequence(0, 99, |i| {
                (if i % 2 == 0 { "a" } else { "b" }.to_string(), i as i64)
            })
            .rows_per_second(2000.0),
            WatermarkStrategy::no_watermarks(),
            "events",
        )
        .set_parallelism(1)
        .rebalance();
    let passed = events.connect(&rules.broadcast_stream()).process(Threshold);
    let seen = collect(&passed);
    execute(&env).unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    let mut expected: Vec<String> = (0..100i64)
        .filter(|i| if i % 2 == 0 { *i > 5 } else { *i > 50 })
        .map(|i| format!("{}:{i}", if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}

/// Counts events per key, reporting the count with the current rule's label.
#[derive(Clone)]
struct Labelled {
    count: ValueState<u64>,
}
impl KeyedBroadcastProcessFunction<u32, u32, String, String> for Labelled {
    type State = Option<String>;
    fn process_element(
        &mut self,
        _: u32,
        label: &Option<String>,
        ctx: &mut KeyedContext<'_, u32, String>,
    ) {
        let n = self.count.get(ctx).unwrap_or(0) + 1;
        self.count.set(ctx, n);
        if let Some(label) = label {
            let key = *ctx.key();
            ctx.emit(format!("{label}-{key}-{n}"));
        }
    }
    fn process_broadcast_element(
        &mut self,
        v: String,
        label: &mut Option<String>,
        _: &mut Context<'_, String>,
    ) {
        *label = Some(v);
    }
}

#[test]
fn keyed_connect_with_broadcast_state_has_keyed_state_too() {
    let env = env(2);
    let labels = env.from_collection(vec!["n".to_string()]);
    let events = env
        .from_source(
            DataGen::sequence(0, 59, |i| (i % 3) as u32).rows_per_second(3000.0),
            WatermarkStrategy::no_watermarks(),
            "events",
        )
        .set_parallelism(1);
    let out = events
        .key_by(|v: &u32| *v)
        .connect(&labels.broadcast_stream())
        .process_keyed(Labelled {
            count: ValueState::new("count"),
        });
    let seen = collect(&out);
    execute(&env).unwrap();
    let got = seen.lock().unwrap().clone();
    for k in 0..3 {
        assert!(
            got.contains(&format!("n-{k}-20")),
            "final count of key {k} in {got:?}"
        );
    }
}

#[test]
fn count_trigger_with_purging_fires_every_n() {
    let env = env(2);
    let sums = env
        .from_collection((0..30u32).map(|i| (i % 2, i as i64)).collect())
        .key_by(|r: &(u32, i64)| r.0)
        .window(GlobalWindows::create())
        .trigger(PurgingTrigger::of(CountTrigger::of(5)))
        .reduce(|a, b| (a.0, a.1 + b.1));
    let seen = collect(&sums);
    execute(&env).unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    let mut expected: Vec<(u32, i64)> = (0..30i64)
        .collect::<Vec<_>>()
        .chunks(10)
        .flat_map(|c| {
            [
                (0u32, c.iter().filter(|v| *v % 2 == 0).sum()),
                (1u32, c.iter().filter(|v| *v % 2 == 1).sum()),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected, "3 firings per key of 5 elements each");
}

#[test]
fn continuous_trigger_fires_early_and_at_the_end() {
    let env = env(1);
    let items: Vec<(u32, i64)> = (0..100).map(|t| (7, t)).collect();
    let counts = env
        .from_source(
            timestamped(items),
            WatermarkStrategy::monotonous()
                .with_timestamp_assigner(|r: &(u32, i64), _| r.1)
                .per_record(),
            "ticks",
        )
        .key_by(|r: &(u32, i64)| r.0)
        .window(TumblingEventTimeWindows::of(100))
        .trigger(ContinuousEventTimeTrigger::of(25))
        .process(
            |_: &u32, _: &TimeWindow, items: &[(u32, i64)], out: &mut WindowOutput<'_, usize>| {
                out.emit(items.len())
            },
        );
    let seen = collect(&counts);
    execute(&env).unwrap();
    // Early firings at 25, 50, 75: the watermark (ts - 1) reaches 25 after
    // the record at 26, so 27 records are in; then the window end.
    assert_eq!(*seen.lock().unwrap(), vec![27, 52, 77, 100]);
}

#[test]
fn an_idle_input_does_not_hold_back_the_watermark() {
    let env = env(1);
    let busy = env
        .from_source(
            DataGen::sequence(0, 399, |i| (1u32, i as i64 * 10)).rows_per_second(2000.0),
            WatermarkStrategy::monotonous()
                .with_timestamp_assigner(|r: &(u32, i64), _| r.1)
                .periodic(10),
            "busy",
        )
        .set_parallelism(1);
    // Emits one record, then stays silent (but open) for a while.
    let quiet = env
        .from_source(
            DataGen::sequence(0, 1, |_| (2u32, 0i64)).rows_per_second(2.0),
            WatermarkStrategy::monotonous()
                .with_timestamp_assigner(|r: &(u32, i64), _| r.1)
                .with_idleness(Duration::from_millis(50)),
            "quiet",
        )
        .set_parallelism(1);
    let windows = busy
        .union(&[quiet])
        .key_by(|r: &(u32, i64)| r.0)
        .window(TumblingEventTimeWindows::of(500))
        .process(
            |k: &u32,
             w: &TimeWindow,
             items: &[(u32, i64)],
             out: &mut WindowOutput<'_, (u32, i64, usize, i64)>| {
                out.emit((*k, w.start, items.len(), rill::api::time::now_ms()))
            },
        );
    let seen = collect(&windows);
    let started = rill::api::time::now_ms();
    execute(&env).unwrap();
    let finished = rill::api::time::now_ms();
    let seen = seen.lock().unwrap();
    let first_busy = seen
        .iter()
        .find(|r| r.0 == 1 && r.1 == 0)
        .expect("first busy window");
    assert_eq!(first_busy.2, 50);
    // The first window closed while the quiet source was still open
    // (it sends its second record only after ~500 ms).
    assert!(
        first_busy.3 < finished - 100,
        "window [0,500) fired at {} ms, job ended at {} ms",
        first_busy.3 - started,
        finished - started
    );
}

#[test]
fn processing_time_windows_count_everything_once() {
    let env = env(2);
    let counts = env
        .from_source(
            DataGen::sequence(1, 60, |i| (i % 2, 1u64)).rows_per_second(300.0),
            WatermarkStrategy::no_watermarks(),
            "paced",
        )
        .set_parallelism(1)
        .key_by(|r: &(u64, u64)| r.0)
        .window(TumblingProcessingTimeWindows::of(50))
        .reduce(|a, b| (a.0, a.1 + b.1));
    let seen = collect(&counts);
    execute(&env).unwrap();
    let seen = seen.lock().unwrap();
    // Windows close on the wall clock while the source runs (~200 ms); the
    // last open windows are dropped at the end of input, as in Flink, so
    // at least most records are counted, each at most once.
    let total: u64 = seen.iter().map(|r| r.1).sum();
    assert!(seen.len() >= 4, "several windows fired: {seen:?}");
    assert!((40..=60).contains(&total), "counted {total} of 60");
}
