//! The window-semantics contract, checked from outside:
//!
//! `rill run windowed-sum (--input FILE | --generate N [--keys K]) --output DIR
//!   --window SPEC --out-of-orderness MS [--allowed-lateness MS]
//!   [--rate EVENTS_PER_SECOND] [--running-sums] [--parallelism P]`
//!
//! * FILE: lines `key,event_time_ms,value`, read by one source subtask in order;
//! * `--generate N`: instead of a file, N such lines made up from their
//!   sequence number ([`generated_reading`]), so a cluster needs no input
//!   file: K keys (default 100), event time 10 ms apart, up to 500 ms out
//!   of order; a restored run continues at the checkpointed number;
//! * the watermark after every record is `max_event_time - out_of_orderness - 1`,
//!   and `+inf` at end of input;
//! * SPEC: `tumbling:SIZE`, `sliding:SIZE:SLIDE`, `session:GAP` (ms, epoch-aligned);
//! * `DIR/windows.csv`: a line `key,window_start,window_end,count,sum` per firing;
//! * `DIR/late.csv`: input lines dropped as late for every window they belong to;
//! * `DIR/sums.csv` (with `--running-sums`): a line `key,count,sum` per input line,
//!   the running totals of its key. Window contents live on the heap whatever
//!   the state backend; these totals are keyed state, so with
//!   `state.backend.type=rocksdb` they exercise RocksDB and its native
//!   checkpoints.

use std::path::PathBuf;
use std::str::FromStr;

use rill::api::{Error, Result};
use rill::prelude::*;
use serde::{Deserialize, Serialize};

/// One input line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reading {
    pub key: String,
    pub ts: i64,
    pub value: i64,
    pub line: String,
}

/// Parses `key,event_time_ms,value`; blank lines are skipped.
pub fn parse_reading(line: &str, _: u64) -> std::result::Result<Option<Reading>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let mut parts = line.split(',');
    let (Some(key), Some(ts), Some(value), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("expected key,event_time_ms,value but got '{line}'"));
    };
    let ts = ts
        .trim()
        .parse()
        .map_err(|_| format!("event time '{ts}' is not an integer"))?;
    let value = value
        .trim()
        .parse()
        .map_err(|_| format!("value '{value}' is not an integer"))?;
    Ok(Some(Reading {
        key: key.to_string(),
        ts,
        value,
        line: line.to_string(),
    }))
}

/// How far generated readings run behind the newest event time, at most.
pub const GENERATED_DISORDER_MS: i64 = 500;

/// The reading number `seq` of `--generate`: deterministic, so a restored
/// run produces exactly the lines an uninterrupted one would.
pub fn generated_reading(seq: u64, keys: u64) -> Reading {
    // SplitMix64: well-spread bits from a counter.
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let key = format!("k{}", z % keys.max(1));
    let disorder = ((z >> 20) % GENERATED_DISORDER_MS as u64) as i64;
    let ts = (seq as i64)
        .saturating_mul(10)
        .saturating_sub(disorder)
        .max(0);
    let value = ((z >> 40) % 100) as i64;
    let line = format!("{key},{ts},{value}");
    Reading {
        key,
        ts,
        value,
        line,
    }
}

/// A window specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

impl FromStr for WindowSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Args(format!(
                "--window '{s}': expected tumbling:SIZE, sliding:SIZE:SLIDE or session:GAP"
            ))
        };
        let num = |v: &str| v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(bad);
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["tumbling", size] => Ok(WindowSpec::Tumbling(num(size)?)),
            ["sliding", size, slide] => Ok(WindowSpec::Sliding(num(size)?, num(slide)?)),
            ["session", gap] => Ok(WindowSpec::Session(num(gap)?)),
            _ => Err(bad()),
        }
    }
}

/// COUNT and SUM per window (the sum is exact, in 128 bits).
#[derive(Debug, Clone, Copy)]
pub struct CountSum;

impl AggregateFunction<Reading> for CountSum {
    type Acc = (u64, i128);
    type Out = (u64, i128);
    fn create_accumulator(&self) -> (u64, i128) {
        (0, 0)
    }
    fn add(&self, r: Reading, acc: &mut (u64, i128)) {
        acc.0 += 1;
        acc.1 += r.value as i128;
    }
    fn result(&self, acc: &(u64, i128)) -> (u64, i128) {
        *acc
    }
    fn merge(&self, acc: &mut (u64, i128), o: (u64, i128)) {
        acc.0 += o.0;
        acc.1 += o.1;
    }
}

fn count_sum<A>(
    windows: WindowedStream<String, Reading, A, A::DefaultTrigger>,
    lateness: i64,
    late: &OutputTag<Reading>,
) -> DataStream<String>
where
    A: WindowAssigner<Reading, W = TimeWindow>,
{
    windows
        .allowed_lateness(lateness)
        .side_output_late_data(late)
        .aggregate_with(
            CountSum,
            |key: &String, w: &TimeWindow, (count, sum), out| {
                out.emit(format!("{key},{},{},{count},{sum}", w.start, w.end))
            },
        )
        .uid("windows")
}

pub fn windowed_sum(env: &mut StreamEnv, args: &JobArgs) -> Result<()> {
    crate::only_known(
        args,
        &[
            "input",
            "generate",
            "keys",
            "output",
            "window",
            "out-of-orderness",
            "allowed-lateness",
            "rate",
            "running-sums",
        ],
    )?;
    let output = PathBuf::from(args.required("output")?);
    let spec: WindowSpec = args.required("window")?.parse()?;
    let out_of_orderness: i64 = args
        .parse_opt("out-of-orderness")?
        .ok_or_else(|| Error::Args("missing --out-of-orderness".into()))?;
    let lateness: i64 = args.parse_or("allowed-lateness", 0)?;
    if out_of_orderness < 0 || lateness < 0 {
        return Err(Error::Args("durations must not be negative".into()));
    }
    let rate = args.parse_opt::<f64>("rate")?;
    if rate.is_some_and(|r| r <= 0.0) {
        return Err(Error::Args("--rate must be positive".into()));
    }
    let watermarks = WatermarkStrategy::bounded_out_of_orderness(out_of_orderness)
        .with_timestamp_assigner(|r: &Reading, _| r.ts)
        .per_record();
    let readings = match (args.get("input"), args.parse_opt::<u64>("generate")?) {
        (Some(input), None) => {
            let mut source = TextFileSource::parsed(PathBuf::from(input), parse_reading);
            if let Some(rate) = rate {
                source = source.rate(rate);
            }
            env.from_source(source, watermarks, "readings")
        }
        (None, Some(n)) => {
            let keys: u64 = args.parse_or("keys", 100)?;
            if keys == 0 {
                return Err(Error::Args("--keys must be positive".into()));
            }
            let mut source = DataGen::sequence(0, n.saturating_sub(1), move |seq| {
                generated_reading(seq, keys)
            });
            if let Some(rate) = rate {
                source = source.rows_per_second(rate);
            }
            env.from_source(source, watermarks, "readings")
        }
        _ => {
            return Err(Error::Args(
                "give exactly one of --input FILE and --generate N".into(),
            ))
        }
    }
    .set_parallelism(1)
    .uid("readings");
    if args.flag("running-sums") {
        readings
            .map(|r: Reading| (r.key, 1u64, r.value))
            // Beside the source: records of a key must reach the sums in order.
            .set_parallelism(1)
            .key_by(|t: &(String, u64, i64)| t.0.clone())
            .reduce(|(key, count, sum), (_, c, s)| (key, count + c, sum + s))
            .uid("running-sums")
            .sink_to(
                TextFileSink::new(
                    output.join("sums.csv"),
                    |(key, count, sum): &(String, u64, i64)| format!("{key},{count},{sum}"),
                ),
                "sums.csv",
            )
            .set_parallelism(1)
            .uid("sums-sink");
    }
    let keyed = readings.key_by(|r: &Reading| r.key.clone());
    let late = OutputTag::<Reading>::new("late");
    let windows = match spec {
        WindowSpec::Tumbling(size) => count_sum(
            keyed.window(TumblingEventTimeWindows::of(size)),
            lateness,
            &late,
        ),
        WindowSpec::Sliding(size, slide) => count_sum(
            keyed.window(SlidingEventTimeWindows::of(size, slide)),
            lateness,
            &late,
        ),
        WindowSpec::Session(gap) => count_sum(
            keyed.window(EventTimeSessionWindows::with_gap(gap)),
            lateness,
            &late,
        ),
    };
    windows
        .sink_to(
            TextFileSink::new(output.join("windows.csv"), String::clone),
            "windows.csv",
        )
        .set_parallelism(1)
        .uid("windows-sink");
    windows
        .side_output(&late)
        .map(|r: Reading| r.line)
        .sink_to(
            TextFileSink::new(output.join("late.csv"), String::clone),
            "late.csv",
        )
        .set_parallelism(1)
        .uid("late-sink");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            "tumbling:10".parse::<WindowSpec>().unwrap(),
            WindowSpec::Tumbling(10)
        );
        assert_eq!(
            "sliding:10:5".parse::<WindowSpec>().unwrap(),
            WindowSpec::Sliding(10, 5)
        );
        assert_eq!(
            "session:3".parse::<WindowSpec>().unwrap(),
            WindowSpec::Session(3)
        );
        for bad in [
            "tumbling",
            "tumbling:0",
            "sliding:10",
            "hopping:1",
            "session:-1",
        ] {
            assert!(bad.parse::<WindowSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_readings_are_deterministic_and_within_their_disorder() {
        let a: Vec<String> = (0..1000).map(|i| generated_reading(i, 7).line).collect();
        let b: Vec<String> = (0..1000).map(|i| generated_reading(i, 7).line).collect();
        assert_eq!(a, b);
        let mut max_ts = 0;
        let mut keys = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let r = generated_reading(i, 7);
            assert!(r.ts <= i as i64 * 10 && r.ts >= max_ts - GENERATED_DISORDER_MS);
            assert!((0..100).contains(&r.value));
            assert_eq!(parse_reading(&r.line, 0).unwrap().unwrap().ts, r.ts);
            max_ts = max_ts.max(r.ts);
            keys.insert(r.key);
        }
        assert_eq!(keys.len(), 7);
    }

    #[test]
    fn lines_parse() {
        let r = parse_reading("a,10,-3", 1).unwrap().unwrap();
        assert_eq!((r.key.as_str(), r.ts, r.value), ("a", 10, -3));
        assert!(parse_reading("", 2).unwrap().is_none());
        assert!(parse_reading("a,10", 3).is_err());
        assert!(parse_reading("a,x,1", 3).is_err());
        assert!(parse_reading("a,1,2,3", 3).is_err());
    }
}
