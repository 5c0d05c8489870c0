//! A short in-memory history of each running job's throughput and
//! backpressure, for the dashboard's charts.
//!
//! Flink's dashboard only plots what it polled since the page was opened,
//! so a page opened late shows nothing of what just happened. Here the REST
//! server samples [`Dispatcher::sample`] for every job that is not terminal
//! at a fixed interval (one second by default) and keeps the last
//! `capacity` points per job; `GET /jobs/:id/history` serves them. Rates are
//! derived from consecutive totals, so the dispatcher only reports totals.
//! Jobs the dispatcher no longer lists are forgotten; a finished job keeps
//! its history until then.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::dispatch::{Dispatcher, JobSample};

/// Default number of points kept per job (ten minutes at one per second).
pub const DEFAULT_CAPACITY: usize = 600;
/// Default time between two samples.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// One vertex at one point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VertexPoint {
    pub id: String,
    pub read_records: u64,
    pub write_records: u64,
    /// Since the previous point; `None` on a job's first point (and for a
    /// vertex the previous point did not have).
    pub read_records_per_second: Option<f64>,
    pub write_records_per_second: Option<f64>,
    pub backpressure: f64,
    pub watermark: Option<i64>,
}

/// All vertices of a job at one point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HistoryPoint {
    /// Unix epoch milliseconds.
    pub timestamp: u64,
    pub vertices: Vec<VertexPoint>,
}

/// `GET /jobs/:id/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobHistory {
    pub jid: String,
    pub interval_ms: u64,
    pub capacity: usize,
    /// Oldest first.
    pub samples: Vec<HistoryPoint>,
}

/// The points of every job, bounded per job.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    interval: Duration,
    jobs: Mutex<HashMap<String, VecDeque<HistoryPoint>>>,
}

impl History {
    /// Keeps at most `capacity` points per job (at least one), sampled
    /// every `interval`.
    pub fn new(capacity: usize, interval: Duration) -> Self {
        History {
            capacity: capacity.max(1),
            interval,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Appends a point for `job_id`, deriving rates from its previous one.
    pub fn record(&self, job_id: &str, timestamp_ms: u64, sample: &JobSample) {
        let mut jobs = self.lock();
        let points = jobs.entry(job_id.to_owned()).or_default();
        let previous = points.back();
        let elapsed_s = previous
            .map(|p| timestamp_ms.saturating_sub(p.timestamp) as f64 / 1000.0)
            .unwrap_or(0.0);
        let vertices = sample
            .vertices
            .iter()
            .map(|(id, metrics)| {
                let before = previous.and_then(|p| p.vertices.iter().find(|v| &v.id == id));
                let (read_rate, write_rate) = match before {
                    Some(before) if elapsed_s > 0.0 => (
                        Some(rate(before.read_records, metrics.read_records, elapsed_s)),
                        Some(rate(before.write_records, metrics.write_records, elapsed_s)),
                    ),
                    _ => (None, None),
                };
                VertexPoint {
                    id: id.clone(),
                    read_records: metrics.read_records,
                    write_records: metrics.write_records,
                    read_records_per_second: read_rate,
                    write_records_per_second: write_rate,
                    backpressure: if metrics.backpressure.is_finite() {
                        metrics.backpressure
                    } else {
                        0.0
                    },
                    watermark: metrics.watermark,
                }
            })
            .collect();
        points.push_back(HistoryPoint {
            timestamp: timestamp_ms,
            vertices,
        });
        while points.len() > self.capacity {
            points.pop_front();
        }
    }

    /// The points of a job, or `None` if none were recorded.
    pub fn get(&self, job_id: &str) -> Option<JobHistory> {
        let jobs = self.lock();
        let points = jobs.get(job_id)?;
        Some(self.response(job_id, points.iter().cloned().collect()))
    }

    /// An empty history for a job known to the dispatcher but not sampled
    /// yet.
    pub fn empty(&self, job_id: &str) -> JobHistory {
        self.response(job_id, Vec::new())
    }

    /// One sampling round: samples every non-terminal job and forgets jobs
    /// the dispatcher no longer lists.
    pub fn sample_once(&self, dispatcher: &dyn Dispatcher) {
        let jobs = dispatcher.jobs();
        let now = now_ms();
        for job in jobs.iter().filter(|job| !job.state.is_terminal()) {
            if let Some(sample) = dispatcher.sample(&job.jid) {
                self.record(&job.jid, now, &sample);
            }
        }
        self.lock()
            .retain(|id, _| jobs.iter().any(|job| &job.jid == id));
    }

    fn response(&self, job_id: &str, samples: Vec<HistoryPoint>) -> JobHistory {
        JobHistory {
            jid: job_id.to_owned(),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            capacity: self.capacity,
            samples,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<HistoryPoint>>> {
        // Points are appended whole; a poisoned lock still holds valid data.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Samples forever at the history's interval; runs on the REST server's
/// runtime and ends with it. Dispatcher calls may block, so each round runs
/// on the blocking pool.
pub async fn run_sampler(history: Arc<History>, dispatcher: Arc<dyn Dispatcher>) {
    let mut ticker = tokio::time::interval(history.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let history = Arc::clone(&history);
        let dispatcher = Arc::clone(&dispatcher);
        let round = tokio::task::spawn_blocking(move || history.sample_once(&*dispatcher));
        if let Err(error) = round.await {
            tracing::warn!(%error, "sampling the job history failed");
        }
    }
}

fn rate(before: u64, now: u64, elapsed_s: f64) -> f64 {
    // A smaller total means the job restarted and counts from zero again.
    let delta = if now >= before { now - before } else { now };
    delta as f64 / elapsed_s
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::dispatch::VertexMetrics;

    fn sample(read: u64, write: u64) -> JobSample {
        JobSample {
            vertices: vec![(
                "v1".to_owned(),
                VertexMetrics {
                    read_records: read,
                    write_records: write,
                    backpressure: 0.5,
                    watermark: None,
                },
            )],
        }
    }

    #[test]
    fn rates_come_from_consecutive_points_and_capacity_bounds() {
        let history = History::new(2, Duration::from_secs(1));
        history.record("j", 1_000, &sample(0, 0));
        history.record("j", 3_000, &sample(400, 100));
        history.record("j", 4_000, &sample(500, 300));
        let job = history.get("j").expect("recorded");
        assert_eq!(job.samples.len(), 2);
        assert_eq!(
            job.samples[0].vertices[0].read_records_per_second,
            Some(200.0)
        );
        assert_eq!(
            job.samples[1].vertices[0].read_records_per_second,
            Some(100.0)
        );
        assert_eq!(
            job.samples[1].vertices[0].write_records_per_second,
            Some(200.0)
        );
        // A job's first point has no rate yet.
        history.record("k", 1_000, &sample(10, 10));
        let first = history.get("k").expect("recorded");
        assert_eq!(first.samples[0].vertices[0].read_records_per_second, None);
        assert!(history.get("other").is_none());
    }
}
