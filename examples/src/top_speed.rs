//! Flink's TopSpeedWindowing: for every car, whenever it has driven another
//! 50 m since the last report, report its top speed over the last 10 s.
//!
//! `rill run top-speed [--cars N] [--seconds S] [--input FILE] [--output FILE]`
//!
//! Global windows per car with a delta trigger on the distance; the window
//! keeps only the last 10 s of events (Flink's `TimeEvictor`), and the result
//! is the fastest of them (the earliest on ties, like `maxBy`).

use std::collections::VecDeque;

use rill::api::Result;
use rill::prelude::*;
use serde::{Deserialize, Serialize};

/// Meters a car must cover between two reports.
pub const TRIGGER_METERS: f64 = 50.0;
/// Seconds of history a report covers.
pub const EVICTION_MS: i64 = 10_000;

/// A speed reading of one car.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CarEvent {
    pub car: u32,
    pub speed: u32,
    pub distance: f64,
    pub time: i64,
}

impl CarEvent {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.2},{}",
            self.car, self.speed, self.distance, self.time
        )
    }

    pub fn parse(line: &str, _: u64) -> std::result::Result<Option<CarEvent>, String> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [car, speed, distance, time] = f.as_slice() else {
            return Err(format!("expected car,speed,distance,time but got '{line}'"));
        };
        let bad = |what: &str| format!("{what} is not a number in '{line}'");
        Ok(Some(CarEvent {
            car: car.parse().map_err(|_| bad("car"))?,
            speed: speed.parse().map_err(|_| bad("speed"))?,
            distance: distance.parse().map_err(|_| bad("distance"))?,
            time: time.parse().map_err(|_| bad("time"))?,
        }))
    }
}

/// Deterministic car data: every car reports every 100 ms; speed drifts by
/// up to ±5 km/h within 0..=100, distance grows accordingly.
pub fn generate(cars: u32, seconds: u32) -> Vec<CarEvent> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut speed = vec![50u32; cars as usize];
    let mut distance = vec![0.0f64; cars as usize];
    let mut events = Vec::new();
    for step in 0..(seconds as i64 * 10) {
        for car in 0..cars as usize {
            let up = next() % 2 == 0;
            speed[car] = if up {
                (speed[car] + 5).min(100)
            } else {
                speed[car].saturating_sub(5)
            };
            distance[car] += speed[car] as f64 / 3.6 / 10.0;
            events.push(CarEvent {
                car: car as u32,
                speed: speed[car],
                distance: distance[car],
                time: step * 100,
            });
        }
    }
    events
}

/// The window contents after eviction: the last 10 s of events.
#[derive(Debug, Clone, Copy)]
pub struct LastTenSecondsMax;

impl AggregateFunction<CarEvent> for LastTenSecondsMax {
    type Acc = VecDeque<CarEvent>;
    type Out = Option<CarEvent>;

    fn create_accumulator(&self) -> VecDeque<CarEvent> {
        VecDeque::new()
    }
    fn add(&self, e: CarEvent, acc: &mut VecDeque<CarEvent>) {
        acc.push_back(e);
        let newest = acc.iter().map(|e| e.time).max().unwrap_or(e.time);
        acc.retain(|x| x.time > newest - EVICTION_MS);
    }
    fn result(&self, acc: &VecDeque<CarEvent>) -> Option<CarEvent> {
        acc.iter()
            .copied()
            .fold(None, |best: Option<CarEvent>, e| match best {
                Some(b) if b.speed >= e.speed => Some(b),
                _ => Some(e),
            })
    }
    fn merge(&self, acc: &mut VecDeque<CarEvent>, other: VecDeque<CarEvent>) {
        for e in other {
            self.add(e, acc);
        }
    }
}

pub fn top_speed(env: &mut StreamEnv, args: &JobArgs) -> Result<()> {
    crate::only_known(args, &["cars", "seconds", "input", "output"])?;
    let strategy =
        WatermarkStrategy::monotonous().with_timestamp_assigner(|e: &CarEvent, _| e.time);
    let cars = match args.get("input") {
        Some(path) => env.from_source(
            TextFileSource::parsed(path, CarEvent::parse),
            strategy,
            "cars",
        ),
        None => {
            let events = generate(args.parse_or("cars", 2)?, args.parse_or("seconds", 60)?);
            env.from_source(
                rill::api::source::CollectionSource::new(events),
                strategy,
                "cars",
            )
        }
    }
    .set_parallelism(1);
    let top = cars
        .key_by(|e: &CarEvent| e.car)
        .window(GlobalWindows::create())
        .trigger(DeltaTrigger::of(
            TRIGGER_METERS,
            |old: &CarEvent, new: &CarEvent| new.distance - old.distance,
        ))
        .aggregate_with(LastTenSecondsMax, |_: &u32, _: &GlobalWindow, top, out| {
            if let Some(e) = top {
                out.emit(e)
            }
        })
        .uid("top-speed");
    match args.get("output") {
        Some(path) => top
            .sink_to(TextFileSink::new(path, CarEvent::csv), "output")
            .set_parallelism(1),
        None => top.sink_to(PrintSink::with_format(CarEvent::csv), "print"),
    };
    Ok(())
}
