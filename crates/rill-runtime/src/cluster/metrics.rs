//! Prometheus metrics of a Rill cluster, and a `/metrics`-only HTTP server.
//!
//! Operators of a cluster watch it through Prometheus and Grafana, not
//! through the dashboard, so the figures the JobManager already collects
//! (TaskManager heartbeats carry per-subtask totals every second) are also
//! exposed as metric families. Everything lives in one [`ClusterMetrics`]
//! value owning a `prometheus-client` registry; the JobManager shares it
//! with the REST server (which serves it at `GET /metrics`), and a
//! TaskManager can serve its own through [`MetricsServer`] on Flink's
//! Prometheus reporter port ([`DEFAULT_PROMETHEUS_PORT`], configured by
//! [`PROMETHEUS_PORT_KEY`]).
//!
//! # Updating
//!
//! Callers report *totals*, never increments: the metrics layer keeps the
//! previous totals of each subtask, turns the difference into counter
//! increments and per-second rates, and copes with totals that start again
//! from zero after a restart (the counters stay monotonic).
//!
//! ```
//! use std::time::Duration;
//! use rill_runtime::cluster::metrics::{ClusterMetrics, SubtaskTotals};
//!
//! let metrics = ClusterMetrics::new();
//! metrics.set_taskmanagers(2);
//! metrics.set_slots(8, 3);
//!
//! let job = metrics.job("a5e0edd8e66b53f1b89c2041f91b8fd2", "word-count");
//! // From every heartbeat, for every subtask it reports:
//! job.report_subtask(
//!     "Source: words",
//!     0,
//!     &SubtaskTotals { records_in: 0, records_out: 1200, backpressure: 0.1, watermark: None },
//! );
//! job.checkpoint_completed(Duration::from_millis(250), 4096);
//! job.set_uptime(Duration::from_secs(42));
//!
//! let text = metrics.encode();
//! assert!(text.contains("rill_vertex_records_out_total{"));
//!
//! // When the job is gone, drop its series so they stop being scraped.
//! metrics.remove_job("a5e0edd8e66b53f1b89c2041f91b8fd2");
//! ```
//!
//! # Families
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `rill_taskmanagers` | gauge | |
//! | `rill_slots_total`, `rill_slots_free` | gauge | |
//! | `rill_vertex_records_in_total`, `rill_vertex_records_out_total` | counter | job_id, job_name, vertex |
//! | `rill_vertex_records_in_per_second`, `rill_vertex_records_out_per_second` | gauge | job_id, job_name, vertex |
//! | `rill_vertex_backpressure_ratio` (max over subtasks) | gauge | job_id, job_name, vertex |
//! | `rill_subtask_backpressure_ratio` | gauge | job_id, job_name, vertex, subtask |
//! | `rill_subtask_watermark_lag_milliseconds` | gauge | job_id, job_name, vertex, subtask |
//! | `rill_checkpoint_last_duration_seconds`, `rill_checkpoint_last_size_bytes` | gauge | job_id, job_name |
//! | `rill_checkpoints_completed_total`, `rill_checkpoints_failed_total` | counter | job_id, job_name |
//! | `rill_job_restarts_total` | counter | job_id, job_name |
//! | `rill_job_uptime_seconds` | gauge | job_id, job_name |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::rest::HttpServer;
use crate::RuntimeError;

/// Flink's key for the Prometheus reporter's port.
pub const PROMETHEUS_PORT_KEY: &str = "metrics.reporter.prom.port";
/// Flink's default port for the Prometheus reporter.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9249;
/// Content type of [`ClusterMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job_id: String,
    job_name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VertexLabels {
    job_id: String,
    job_name: String,
    vertex: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubtaskLabels {
    job_id: String,
    job_name: String,
    vertex: String,
    subtask: u32,
}

/// What a subtask has done since its attempt started, as a heartbeat
/// reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SubtaskTotals {
    pub records_in: u64,
    pub records_out: u64,
    /// Share of the last interval the subtask was blocked by downstream
    /// (0.0–1.0).
    pub backpressure: f64,
    /// Event time (ms) of the subtask's current input watermark, if any.
    pub watermark: Option<i64>,
}

/// The previous report of one subtask, to derive increments and rates.
#[derive(Debug, Clone, Copy)]
struct SubtaskState {
    totals: SubtaskTotals,
    at: Instant,
    in_rate: f64,
    out_rate: f64,
}

#[derive(Debug, Default)]
struct JobState {
    name: String,
    /// vertex → subtask index → last report.
    vertices: HashMap<String, HashMap<u32, SubtaskState>>,
}

/// Every metric family of a cluster process, in one registry.
#[derive(Debug)]
pub struct ClusterMetrics {
    registry: Registry,
    taskmanagers: Gauge,
    slots_total: Gauge,
    slots_free: Gauge,
    records_in: Family<VertexLabels, Counter>,
    records_out: Family<VertexLabels, Counter>,
    records_in_rate: Family<VertexLabels, FloatGauge>,
    records_out_rate: Family<VertexLabels, FloatGauge>,
    vertex_backpressure: Family<VertexLabels, FloatGauge>,
    subtask_backpressure: Family<SubtaskLabels, FloatGauge>,
    watermark_lag: Family<SubtaskLabels, Gauge>,
    checkpoint_duration: Family<JobLabels, FloatGauge>,
    checkpoint_size: Family<JobLabels, Gauge>,
    checkpoints_completed: Family<JobLabels, Counter>,
    checkpoints_failed: Family<JobLabels, Counter>,
    restarts: Family<JobLabels, Counter>,
    uptime: Family<JobLabels, FloatGauge>,
    jobs: Mutex<HashMap<String, JobState>>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterMetrics {
    /// A registry with every `rill_*` family registered and no series yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let taskmanagers = Gauge::default();
        registry.register(
            "rill_taskmanagers",
            "TaskManagers registered with the resource manager",
            taskmanagers.clone(),
        );
        let slots_total = Gauge::default();
        registry.register(
            "rill_slots_total",
            "Task slots offered by all TaskManagers",
            slots_total.clone(),
        );
        let slots_free = Gauge::default();
        registry.register(
            "rill_slots_free",
            "Task slots not running a subtask",
            slots_free.clone(),
        );
        let records_in = Family::default();
        registry.register(
            "rill_vertex_records_in",
            "Records received by a vertex's subtasks",
            records_in.clone(),
        );
        let records_out = Family::default();
        registry.register(
            "rill_vertex_records_out",
            "Records emitted by a vertex's subtasks",
            records_out.clone(),
        );
        let records_in_rate = Family::default();
        registry.register(
            "rill_vertex_records_in_per_second",
            "Records received per second by a vertex (sum over subtasks)",
            records_in_rate.clone(),
        );
        let records_out_rate = Family::default();
        registry.register(
            "rill_vertex_records_out_per_second",
            "Records emitted per second by a vertex (sum over subtasks)",
            records_out_rate.clone(),
        );
        let vertex_backpressure = Family::default();
        registry.register(
            "rill_vertex_backpressure_ratio",
            "Highest share of time a subtask of the vertex was blocked by downstream",
            vertex_backpressure.clone(),
        );
        let subtask_backpressure = Family::default();
        registry.register(
            "rill_subtask_backpressure_ratio",
            "Share of time the subtask was blocked by downstream",
            subtask_backpressure.clone(),
        );
        let watermark_lag = Family::default();
        registry.register_with_unit(
            "rill_subtask_watermark_lag",
            "Wall-clock time minus the subtask's current input watermark",
            Unit::Other("milliseconds".to_owned()),
            watermark_lag.clone(),
        );
        let checkpoint_duration = Family::default();
        registry.register_with_unit(
            "rill_checkpoint_last_duration",
            "End-to-end duration of the latest completed checkpoint",
            Unit::Seconds,
            checkpoint_duration.clone(),
        );
        let checkpoint_size = Family::default();
        registry.register_with_unit(
            "rill_checkpoint_last_size",
            "State size of the latest completed checkpoint",
            Unit::Bytes,
            checkpoint_size.clone(),
        );
        let checkpoints_completed = Family::default();
        registry.register(
            "rill_checkpoints_completed",
            "Checkpoints completed",
            checkpoints_completed.clone(),
        );
        let checkpoints_failed = Family::default();
        registry.register(
            "rill_checkpoints_failed",
            "Checkpoints failed or declined",
            checkpoints_failed.clone(),
        );
        let restarts = Family::default();
        registry.register(
            "rill_job_restarts",
            "Times the job was restarted after a failure",
            restarts.clone(),
        );
        let uptime = Family::default();
        registry.register_with_unit(
            "rill_job_uptime",
            "Time since the job's current attempt started running",
            Unit::Seconds,
            uptime.clone(),
        );
        ClusterMetrics {
            registry,
            taskmanagers,
            slots_total,
            slots_free,
            records_in,
            records_out,
            records_in_rate,
            records_out_rate,
            vertex_backpressure,
            subtask_backpressure,
            watermark_lag,
            checkpoint_duration,
            checkpoint_size,
            checkpoints_completed,
            checkpoints_failed,
            restarts,
            uptime,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// The registry, to encode it elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_taskmanagers(&self, count: usize) {
        self.taskmanagers.set(to_i64(count));
    }

    pub fn set_slots(&self, total: usize, free: usize) {
        self.slots_total.set(to_i64(total));
        self.slots_free.set(to_i64(free));
    }

    /// The handle through which a job's figures are reported.
    pub fn job<'a>(&'a self, job_id: &str, job_name: &str) -> JobMetrics<'a> {
        let mut jobs = self.lock_jobs();
        let state = jobs.entry(job_id.to_owned()).or_default();
        state.name = job_name.to_owned();
        JobMetrics {
            metrics: self,
            labels: JobLabels {
                job_id: job_id.to_owned(),
                job_name: job_name.to_owned(),
            },
        }
    }

    /// Drops every series of a job (when it is no longer shown by the
    /// cluster), so its last values stop being scraped.
    pub fn remove_job(&self, job_id: &str) {
        let Some(state) = self.lock_jobs().remove(job_id) else {
            return;
        };
        let job = JobLabels {
            job_id: job_id.to_owned(),
            job_name: state.name,
        };
        for (vertex, subtasks) in &state.vertices {
            let labels = vertex_labels(&job, vertex);
            self.records_in.remove(&labels);
            self.records_out.remove(&labels);
            self.records_in_rate.remove(&labels);
            self.records_out_rate.remove(&labels);
            self.vertex_backpressure.remove(&labels);
            for subtask in subtasks.keys() {
                let labels = subtask_labels(&job, vertex, *subtask);
                self.subtask_backpressure.remove(&labels);
                self.watermark_lag.remove(&labels);
            }
        }
        self.checkpoint_duration.remove(&job);
        self.checkpoint_size.remove(&job);
        self.checkpoints_completed.remove(&job);
        self.checkpoints_failed.remove(&job);
        self.restarts.remove(&job);
        self.uptime.remove(&job);
    }

    /// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would only
        // cut the exposition short, which a scraper reports.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }

    fn lock_jobs(&self) -> MutexGuard<'_, HashMap<String, JobState>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it
        // half-updated in a way that matters, so a poisoned lock is used.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One job's view of [`ClusterMetrics`]; cheap to create per update.
#[derive(Debug)]
pub struct JobMetrics<'a> {
    metrics: &'a ClusterMetrics,
    labels: JobLabels,
}

impl JobMetrics<'_> {
    /// Takes the totals of one subtask (from a heartbeat) and updates the
    /// vertex's counters, rates and backpressure and the subtask's
    /// watermark lag.
    pub fn report_subtask(&self, vertex: &str, subtask: u32, totals: &SubtaskTotals) {
        self.report_subtask_at(vertex, subtask, totals, Instant::now(), now_ms());
    }

    /// [`JobMetrics::report_subtask`] with the clocks given: `at` for rates,
    /// `now_ms` (Unix epoch ms) for the watermark lag.
    pub fn report_subtask_at(
        &self,
        vertex: &str,
        subtask: u32,
        totals: &SubtaskTotals,
        at: Instant,
        now_ms: i64,
    ) {
        let m = self.metrics;
        let vertex_labels = vertex_labels(&self.labels, vertex);
        let subtask_labels = subtask_labels(&self.labels, vertex, subtask);

        let mut jobs = m.lock_jobs();
        let job = jobs.entry(self.labels.job_id.clone()).or_default();
        job.name.clone_from(&self.labels.job_name);
        let subtasks = job.vertices.entry(vertex.to_owned()).or_default();

        let (delta_in, delta_out, in_rate, out_rate) = match subtasks.get(&subtask) {
            None => (totals.records_in, totals.records_out, 0.0, 0.0),
            Some(previous) => {
                let delta_in = increment(previous.totals.records_in, totals.records_in);
                let delta_out = increment(previous.totals.records_out, totals.records_out);
                let elapsed = at.saturating_duration_since(previous.at).as_secs_f64();
                if elapsed >= 0.001 {
                    (
                        delta_in,
                        delta_out,
                        delta_in as f64 / elapsed,
                        delta_out as f64 / elapsed,
                    )
                } else {
                    // Two reports at once: keep the last rates rather than
                    // dividing by (almost) zero.
                    (delta_in, delta_out, previous.in_rate, previous.out_rate)
                }
            }
        };
        subtasks.insert(
            subtask,
            SubtaskState {
                totals: *totals,
                at,
                in_rate,
                out_rate,
            },
        );

        m.records_in.get_or_create(&vertex_labels).inc_by(delta_in);
        m.records_out
            .get_or_create(&vertex_labels)
            .inc_by(delta_out);
        let (sum_in, sum_out, max_backpressure) =
            subtasks
                .values()
                .fold((0.0, 0.0, 0.0_f64), |(sum_in, sum_out, max_bp), state| {
                    (
                        sum_in + state.in_rate,
                        sum_out + state.out_rate,
                        max_bp.max(state.totals.backpressure),
                    )
                });
        drop(jobs);

        m.records_in_rate.get_or_create(&vertex_labels).set(sum_in);
        m.records_out_rate
            .get_or_create(&vertex_labels)
            .set(sum_out);
        m.vertex_backpressure
            .get_or_create(&vertex_labels)
            .set(clamp_ratio(max_backpressure));
        m.subtask_backpressure
            .get_or_create(&subtask_labels)
            .set(clamp_ratio(totals.backpressure));
        match totals.watermark.filter(|w| *w != i64::MIN) {
            Some(watermark) => {
                let lag = now_ms.saturating_sub(watermark).max(0);
                m.watermark_lag.get_or_create(&subtask_labels).set(lag);
            }
            None => {
                m.watermark_lag.remove(&subtask_labels);
            }
        }
    }

    /// A checkpoint of the job completed.
    pub fn checkpoint_completed(&self, duration: Duration, size_bytes: u64) {
        let m = self.metrics;
        m.checkpoints_completed.get_or_create(&self.labels).inc();
        m.checkpoint_duration
            .get_or_create(&self.labels)
            .set(duration.as_secs_f64());
        m.checkpoint_size
            .get_or_create(&self.labels)
            .set(i64::try_from(size_bytes).unwrap_or(i64::MAX));
    }

    /// A checkpoint of the job failed or was declined.
    pub fn checkpoint_failed(&self) {
        self.metrics
            .checkpoints_failed
            .get_or_create(&self.labels)
            .inc();
    }

    /// The job was restarted after a failure.
    pub fn restarted(&self) {
        self.metrics.restarts.get_or_create(&self.labels).inc();
    }

    /// Time since the job's current attempt started running.
    pub fn set_uptime(&self, uptime: Duration) {
        self.metrics
            .uptime
            .get_or_create(&self.labels)
            .set(uptime.as_secs_f64());
    }
}

/// A `/metrics`-only HTTP server, for processes without the REST API
/// (TaskManagers).
#[derive(Debug)]
pub struct MetricsServer;

impl MetricsServer {
    /// Serves `GET /metrics` from `metrics` on `addr` (port 0 picks one)
    /// from a thread of its own; stop it with [`HttpServer::shutdown`].
    pub fn start(
        addr: SocketAddr,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<HttpServer, RuntimeError> {
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(metrics);
        HttpServer::start(addr, "rill-metrics", app, Vec::new())
    }
}

async fn serve_metrics(
    axum::extract::State(metrics): axum::extract::State<Arc<ClusterMetrics>>,
) -> Response {
    metrics_response(&metrics)
}

/// `GET /metrics` for a registry (shared by the REST API).
pub(crate) fn metrics_response(metrics: &ClusterMetrics) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
}

fn vertex_labels(job: &JobLabels, vertex: &str) -> VertexLabels {
    VertexLabels {
        job_id: job.job_id.clone(),
        job_name: job.job_name.clone(),
        vertex: vertex.to_owned(),
    }
}

fn subtask_labels(job: &JobLabels, vertex: &str, subtask: u32) -> SubtaskLabels {
    SubtaskLabels {
        job_id: job.job_id.clone(),
        job_name: job.job_name.clone(),
        vertex: vertex.to_owned(),
        subtask,
    }
}

/// How much a total grew; a smaller total means the subtask started again
/// (restart), so all of it is new.
fn increment(previous: u64, current: u64) -> u64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

fn clamp_ratio(ratio: f64) -> f64 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(records_in: u64, records_out: u64) -> SubtaskTotals {
        SubtaskTotals {
            records_in,
            records_out,
            backpressure: 0.25,
            watermark: Some(1_000),
        }
    }

    fn series_value(text: &str, prefix: &str) -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no series {prefix} in\n{text}"));
        let value = line.rsplit(' ').next().unwrap_or_default();
        value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"))
    }

    #[test]
    fn totals_become_monotonic_counters_and_rates() {
        let metrics = ClusterMetrics::new();
        let job = metrics.job("j1", "wc");
        let t0 = Instant::now();
        job.report_subtask_at("map", 0, &totals(100, 50), t0, 5_000);
        job.report_subtask_at("map", 1, &totals(10, 5), t0, 5_000);
        job.report_subtask_at(
            "map",
            0,
            &totals(300, 150),
            t0 + Duration::from_secs(2),
            5_000,
        );
        // Subtask 1 restarted: its totals start again.
        job.report_subtask_at("map", 1, &totals(4, 2), t0 + Duration::from_secs(2), 5_000);
        let text = metrics.encode();
        let labels = r#"{job_id="j1",job_name="wc",vertex="map"}"#;
        assert_eq!(
            series_value(&text, &format!("rill_vertex_records_in_total{labels}")),
            100.0 + 10.0 + 200.0 + 4.0
        );
        assert_eq!(
            series_value(&text, &format!("rill_vertex_records_out_total{labels}")),
            50.0 + 5.0 + 100.0 + 2.0
        );
        // 200 records in 2 s on subtask 0, 4 records in 2 s on subtask 1.
        assert_eq!(
            series_value(&text, &format!("rill_vertex_records_in_per_second{labels}")),
            102.0
        );
        assert_eq!(
            series_value(
                &text,
                r#"rill_subtask_watermark_lag_milliseconds{job_id="j1",job_name="wc",vertex="map",subtask="0"}"#
            ),
            4_000.0
        );
        metrics.remove_job("j1");
        assert!(!metrics.encode().contains("job_id=\"j1\""));
    }
}
