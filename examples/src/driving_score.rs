//! Real-time driving scores (the T-map driving-score service idea).
//!
//! `rill run driving-score [--input FILE] [--output FILE] [--gap-ms MS]
//!   [--allowed-lateness-ms MS] [--out-of-orderness-ms MS]`
//!
//! Phones send GPS/speed samples `driver,time_ms,speed_kmh,accel_ms2,end`
//! (`end` = 1 on the explicit end-of-trip event). A trip is a per-driver
//! session window. The [`EndOfTripTrigger`] scores a trip as soon as its end
//! marker arrives, even if stragglers are still on their way (mobile data is
//! late and out of order); each straggler that arrives later, also after the
//! window's end within the allowed lateness, re-scores the trip. Trips with no
//! end marker are scored when the watermark passes their end.
//!
//! Output: `driver,trip_start,trip_end,events,score` per scoring.

use rill::api::Result;
use rill::prelude::*;
use serde::{Deserialize, Serialize};

/// One sample from a driver's phone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveEvent {
    pub driver: String,
    pub time: i64,
    pub speed_kmh: f64,
    pub accel_ms2: f64,
    pub end_of_trip: bool,
}

impl DriveEvent {
    pub fn parse(line: &str, _: u64) -> std::result::Result<Option<DriveEvent>, String> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [driver, time, speed, accel, end] = f.as_slice() else {
            return Err(format!(
                "expected driver,time_ms,speed_kmh,accel_ms2,end but got '{line}'"
            ));
        };
        let bad = |what: &str| format!("{what} is not a number in '{line}'");
        Ok(Some(DriveEvent {
            driver: driver.to_string(),
            time: time.parse().map_err(|_| bad("time"))?,
            speed_kmh: speed.parse().map_err(|_| bad("speed"))?,
            accel_ms2: accel.parse().map_err(|_| bad("acceleration"))?,
            end_of_trip: match *end {
                "1" | "true" => true,
                "0" | "false" | "" => false,
                other => return Err(format!("end marker '{other}' is not 0/1")),
            },
        }))
    }

    /// Penalty points of one sample: speeding, harsh braking, harsh acceleration.
    pub fn penalty(&self) -> u32 {
        let mut p = 0;
        if self.speed_kmh > 110.0 {
            p += 2;
        }
        if self.accel_ms2 < -3.0 {
            p += 3;
        }
        if self.accel_ms2 > 3.0 {
            p += 1;
        }
        p
    }
}

/// Running score of a trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TripAcc {
    pub events: u64,
    pub penalty: u64,
}

/// Counts samples and penalty points; merges when sessions merge.
#[derive(Debug, Clone, Copy)]
pub struct Score;

impl AggregateFunction<DriveEvent> for Score {
    type Acc = TripAcc;
    type Out = TripAcc;
    fn create_accumulator(&self) -> TripAcc {
        TripAcc::default()
    }
    fn add(&self, e: DriveEvent, acc: &mut TripAcc) {
        acc.events += 1;
        acc.penalty += e.penalty() as u64;
    }
    fn result(&self, acc: &TripAcc) -> TripAcc {
        *acc
    }
    fn merge(&self, acc: &mut TripAcc, o: TripAcc) {
        acc.events += o.events;
        acc.penalty += o.penalty;
    }
}

/// What the trigger remembers per trip.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TripState {
    /// The end marker has been seen.
    pub ended: bool,
    /// Samples arrived since the last scoring.
    pub dirty: bool,
}

/// Fires on the end-of-trip marker, on every sample after it, on late samples,
/// and at the session's end if anything is unscored.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndOfTripTrigger;

impl Trigger<DriveEvent, TimeWindow> for EndOfTripTrigger {
    type State = TripState;

    fn on_element(
        &self,
        e: &DriveEvent,
        _: Timestamp,
        w: &TimeWindow,
        ctx: &mut TriggerContext<'_, TripState>,
    ) -> TriggerResult {
        if e.end_of_trip {
            ctx.state.ended = true;
        }
        let late = w.max_timestamp() <= ctx.current_watermark();
        if ctx.state.ended || late {
            ctx.state.dirty = false;
            return TriggerResult::Fire;
        }
        ctx.state.dirty = true;
        ctx.register_event_time_timer(w.max_timestamp());
        TriggerResult::Continue
    }

    fn on_event_time(
        &self,
        time: Timestamp,
        w: &TimeWindow,
        ctx: &mut TriggerContext<'_, TripState>,
    ) -> TriggerResult {
        if time == w.max_timestamp() && ctx.state.dirty {
            ctx.state.dirty = false;
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn on_merge(
        &self,
        w: &TimeWindow,
        merged: Vec<TripState>,
        ctx: &mut TriggerContext<'_, TripState>,
    ) {
        ctx.state.ended = merged.iter().any(|s| s.ended);
        ctx.state.dirty = merged.iter().any(|s| s.dirty);
        if w.max_timestamp() > ctx.current_watermark() {
            ctx.register_event_time_timer(w.max_timestamp());
        }
    }

    fn clear(&self, w: &TimeWindow, ctx: &mut TriggerContext<'_, TripState>) {
        ctx.delete_event_time_timer(w.max_timestamp());
    }
}

/// Three drivers' trips; one sample of each trip reaches us only after the
/// trip's end marker.
pub fn sample_events() -> Vec<DriveEvent> {
    let mut on_time = Vec::new();
    let mut stragglers = Vec::new();
    for (n, driver) in ["kim", "lee", "park"].iter().enumerate() {
        let start = n as i64 * 7_000;
        for i in 0..20i64 {
            let event = DriveEvent {
                driver: driver.to_string(),
                time: start + i * 5_000,
                speed_kmh: 60.0 + ((i * 37 + n as i64 * 11) % 70) as f64,
                accel_ms2: if i % 7 == 3 {
                    -4.5
                } else if i % 9 == 4 {
                    3.5
                } else {
                    0.5
                },
                end_of_trip: i == 19,
            };
            if i == 17 {
                stragglers.push(event);
            } else {
                on_time.push(event);
            }
        }
    }
    on_time.sort_by_key(|e| e.time);
    on_time.extend(stragglers);
    on_time
}

pub fn driving_score(env: &mut StreamEnv, args: &JobArgs) -> Result<()> {
    crate::only_known(
        args,
        &[
            "input",
            "output",
            "gap-ms",
            "allowed-lateness-ms",
            "out-of-orderness-ms",
        ],
    )?;
    let gap: i64 = args.parse_or("gap-ms", 300_000)?;
    let lateness: i64 = args.parse_or("allowed-lateness-ms", 60_000)?;
    let out_of_orderness: i64 = args.parse_or("out-of-orderness-ms", 10_000)?;
    let strategy = WatermarkStrategy::bounded_out_of_orderness(out_of_orderness)
        .with_timestamp_assigner(|e: &DriveEvent, _| e.time)
        .per_record();
    let events = match args.get("input") {
        Some(path) => env.from_source(
            TextFileSource::parsed(path, DriveEvent::parse),
            strategy,
            "phones",
        ),
        None => env.from_source(
            rill::api::source::CollectionSource::new(sample_events()),
            strategy,
            "phones",
        ),
    }
    .set_parallelism(1)
    .uid("phones");
    let scores = events
        .key_by(|e: &DriveEvent| e.driver.clone())
        .window(EventTimeSessionWindows::with_gap(gap))
        .trigger(EndOfTripTrigger)
        .allowed_lateness(lateness)
        .aggregate_with(
            Score,
            |driver: &String, w: &TimeWindow, trip: TripAcc, out| {
                let score = 100u64.saturating_sub(trip.penalty);
                out.emit(format!(
                    "{driver},{},{},{},{score}",
                    w.start, w.end, trip.events
                ))
            },
        )
        .uid("trip-scores");
    match args.get("output") {
        Some(path) => scores
            .sink_to(TextFileSink::new(path, String::clone), "output")
            .set_parallelism(1),
        None => scores.sink_to(PrintSink::with_format(String::clone), "print"),
    };
    Ok(())
}
