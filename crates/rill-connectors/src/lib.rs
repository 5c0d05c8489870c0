//! Sources and sinks for Rill.
//!
//! * [`DataGen`]: a sequence generator (benchmarks, demos), optionally paced;
//! * [`TextFileSource`]: the lines of a text file, optionally parsed and paced;
//! * [`SocketTextSource`]: lines from a TCP server (`nc -lk 9999`);
//! * [`PrintSink`], [`TextFileSink`], [`DiscardSink`].

mod datagen;
mod file;
mod print;
mod socket;

pub use datagen::DataGen;
pub use file::{TextFileSink, TextFileSource};
pub use print::{DiscardSink, PrintSink};
pub use socket::SocketTextSource;

use std::time::{Duration, Instant};

/// Paces a source to a number of records per second.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    per_second: f64,
    started: Option<Instant>,
    emitted: u64,
}

impl Pacer {
    pub(crate) fn new(per_second: f64) -> Self {
        Self {
            per_second,
            started: None,
            emitted: 0,
        }
    }

    /// How many records may go out now (capped), or how long to wait.
    pub(crate) fn budget(&mut self, cap: usize) -> Result<usize, Duration> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = (started.elapsed().as_secs_f64() * self.per_second) as u64 + 1;
        if due > self.emitted {
            Ok(((due - self.emitted) as usize).min(cap))
        } else {
            let next = (self.emitted as f64) / self.per_second;
            let wait = Duration::from_secs_f64(next).saturating_sub(started.elapsed());
            Err(wait.max(Duration::from_micros(100)))
        }
    }

    pub(crate) fn emitted(&mut self, n: usize) {
        self.emitted += n as u64;
    }
}
