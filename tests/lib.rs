//! Helpers for Rill's end-to-end tests: running catalogue entries in-process
//! and a brute-force reference model of Flink's event-time window semantics.

use std::collections::BTreeMap;
use std::path::Path;

use rill::api::{Configuration, JobArgs};

/// Runs an entry of the example catalogue with `args` and `parallelism`.
pub fn run_entry(entry: &str, args: &[String], parallelism: usize) -> Result<(), String> {
    let catalog = rill_examples::catalog();
    let entry = catalog.get(entry).map_err(|e| e.to_string())?;
    let mut config = Configuration::new();
    config
        .set("parallelism.default", parallelism.to_string())
        .map_err(|e| e.to_string())?;
    rill::run_local(entry, &JobArgs::parse(args.to_vec()), config)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The lines of a file, sorted (firing order across keys is not specified).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    lines
}

/// One input record of the window contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: String,
    pub ts: i64,
    pub value: i64,
}

impl Rec {
    pub fn line(&self) -> String {
        format!("{},{},{}", self.key, self.ts, self.value)
    }
}

/// Window kinds of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

impl Spec {
    pub fn arg(&self) -> String {
        match self {
            Spec::Tumbling(s) => format!("tumbling:{s}"),
            Spec::Sliding(s, l) => format!("sliding:{s}:{l}"),
            Spec::Session(g) => format!("session:{g}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Win {
    start: i64,
    end: i64,
    count: u64,
    sum: i128,
    /// An event-time timer at the window's end is registered.
    pending: bool,
}

/// What the contract says `windowed-sum` must output, computed the slow,
/// obvious way: walk the records in order with the watermark after each.
///
/// Rules (Flink): a window is late when `end - 1 + lateness <= watermark`
/// and then takes no elements; an element late for all its windows is
/// reported late. An element added to a window whose end the watermark has
/// passed fires it at once; otherwise the window fires when the watermark
/// passes its end. A window is dropped when the watermark reaches
/// `end - 1 + lateness`. Sessions `[ts, ts + gap)` merge when they overlap
/// or touch.
pub fn reference(
    records: &[Rec],
    spec: Spec,
    ooo: i64,
    lateness: i64,
) -> (Vec<String>, Vec<String>) {
    let mut windows: BTreeMap<String, Vec<Win>> = BTreeMap::new();
    let mut fired = Vec::new();
    let mut late = Vec::new();
    let mut wm = i64::MIN;
    let mut max_ts = i64::MIN;
    let emit = |fired: &mut Vec<String>, key: &str, w: &Win| {
        fired.push(format!("{key},{},{},{},{}", w.start, w.end, w.count, w.sum));
    };
    for r in records {
        let wins = windows.entry(r.key.clone()).or_default();
        let is_late = |_start: i64, end: i64| (end - 1).saturating_add(lateness) <= wm;
        let mut targets: Vec<(i64, i64)> = Vec::new();
        match spec {
            Spec::Tumbling(size) => {
                let start = r.ts - r.ts.rem_euclid(size);
                targets.push((start, start + size));
            }
            Spec::Sliding(size, slide) => {
                let mut start = r.ts - r.ts.rem_euclid(slide);
                while start > r.ts - size {
                    targets.push((start, start + size));
                    start -= slide;
                }
            }
            Spec::Session(gap) => {
                // Merge the new session with every session it overlaps or touches.
                let (mut s, mut e) = (r.ts, r.ts + gap);
                let mut count = 0;
                let mut sum = 0;
                let mut pending = false;
                let mut merged_any = false;
                wins.retain(|w| {
                    if w.start <= e && w.end >= s {
                        s = s.min(w.start);
                        e = e.max(w.end);
                        count += w.count;
                        sum += w.sum;
                        pending |= w.pending;
                        merged_any = true;
                        false
                    } else {
                        true
                    }
                });
                if is_late(s, e) {
                    assert!(!merged_any, "merging with a live session cannot be late");
                    late.push(r.line());
                    continue;
                }
                wins.push(Win {
                    start: s,
                    end: e,
                    count,
                    sum,
                    pending: pending && e - 1 > wm,
                });
                targets.push((s, e));
            }
        }
        let live: Vec<(i64, i64)> = targets
            .into_iter()
            .filter(|&(s, e)| !is_late(s, e))
            .collect();
        if live.is_empty() && r.ts.saturating_add(lateness) <= wm {
            late.push(r.line());
        }
        for (s, e) in live {
            let w = match wins.iter_mut().find(|w| w.start == s && w.end == e) {
                Some(w) => w,
                None => {
                    wins.push(Win {
                        start: s,
                        end: e,
                        count: 0,
                        sum: 0,
                        pending: false,
                    });
                    wins.last_mut().expect("just pushed")
                }
            };
            w.count += 1;
            w.sum += r.value as i128;
            if e - 1 <= wm {
                emit(&mut fired, &r.key, w);
            } else {
                w.pending = true;
            }
        }
        max_ts = max_ts.max(r.ts);
        let next = max_ts - ooo - 1;
        if next > wm {
            wm = next;
            advance(&mut windows, wm, lateness, &mut fired, &emit);
        }
    }
    advance(&mut windows, i64::MAX, lateness, &mut fired, &emit);
    fired.sort();
    late.sort();
    (fired, late)
}

fn advance(
    windows: &mut BTreeMap<String, Vec<Win>>,
    wm: i64,
    lateness: i64,
    fired: &mut Vec<String>,
    emit: &impl Fn(&mut Vec<String>, &str, &Win),
) {
    for (key, wins) in windows.iter_mut() {
        for w in wins.iter_mut() {
            if w.pending && w.end - 1 <= wm {
                w.pending = false;
                emit(fired, key, w);
            }
        }
        wins.retain(|w| (w.end - 1).saturating_add(lateness) > wm);
    }
}

/// Writes records as the contract's input file.
pub fn write_input(path: &Path, records: &[Rec]) {
    let text: String = records.iter().map(|r| r.line() + "\n").collect();
    std::fs::write(path, text).expect("write input");
}

/// Runs `windowed-sum` on `records`; returns sorted (windows, late) lines.
pub fn run_windowed_sum(
    records: &[Rec],
    spec: Spec,
    ooo: i64,
    lateness: i64,
    parallelism: usize,
) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    let out = dir.path().join("out");
    write_input(&input, records);
    let args: Vec<String> = [
        "--input",
        input.to_str().expect("utf-8 path"),
        "--output",
        out.to_str().expect("utf-8 path"),
        "--window",
        &spec.arg(),
        "--out-of-orderness",
        &ooo.to_string(),
        "--allowed-lateness",
        &lateness.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_entry("windowed-sum", &args, parallelism).expect("windowed-sum runs");
    (
        sorted_lines(&out.join("windows.csv")),
        sorted_lines(&out.join("late.csv")),
    )
}

/// Collects a stream's records (for tests); read after the job finished.
pub fn collect<T: rill::api::Data + Sync>(
    stream: &rill::api::DataStream<T>,
) -> std::sync::Arc<std::sync::Mutex<Vec<T>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    stream.for_each(move |v, _| sink.lock().expect("collector lock").push(v));
    seen
}

/// Runs the graph built in `env` to completion.
pub fn execute(env: &rill::api::StreamEnv) -> Result<(), String> {
    rill::runtime::LocalExecutor::new()
        .run(&env.graph())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An environment with the given default parallelism.
pub fn env(parallelism: usize) -> rill::api::StreamEnv {
    let mut config = Configuration::new();
    config
        .set("parallelism.default", parallelism.to_string())
        .expect("known key");
    rill::api::StreamEnv::new("test", config).expect("valid config")
}
