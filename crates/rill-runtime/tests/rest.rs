//! The JobManager's REST API against a fake dispatcher, over real HTTP on
//! 127.0.0.1: Flink's paths, field names and error bodies, request
//! validation, `/metrics` and the sampled job history.

mod rest_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rest_support::*;
use rill_runtime::cluster::dispatch::{
    CheckpointHistory, ClusterOverview, Dispatcher, JobDetails, JobStatus, JobSummary,
    TaskManagerInfo,
};
use rill_runtime::cluster::history::JobHistory;
use rill_runtime::cluster::metrics::{ClusterMetrics, MetricsServer, SubtaskTotals};
use rill_runtime::cluster::rest::{RestOptions, RestServer};
use rill_runtime::RuntimeError;
use serde_json::Value;

struct Harness {
    server: Option<RestServer>,
    addr: SocketAddr,
    dispatcher: Arc<FakeDispatcher>,
    metrics: Arc<ClusterMetrics>,
}

impl Harness {
    fn start() -> Self {
        Self::with_options(RestOptions {
            // Slow enough not to matter for tests that do not look at it.
            sample_interval: Duration::from_secs(3600),
            ..RestOptions::default()
        })
    }

    fn with_options(options: RestOptions) -> Self {
        let dispatcher = Arc::new(FakeDispatcher::new());
        let metrics = Arc::new(ClusterMetrics::new());
        let server = RestServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&dispatcher) as Arc<dyn Dispatcher>,
            Arc::clone(&metrics),
            options,
        )
        .expect("start the REST server");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0, "the bound port is reported");
        Harness {
            server: Some(server),
            addr,
            dispatcher,
            metrics,
        }
    }

    fn get(&self, path: &str) -> HttpResponse {
        get(self.addr, path)
    }

    fn send(&self, method: &str, path: &str, body: &str) -> HttpResponse {
        http(self.addr, method, path, Some(body.as_bytes()))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().expect("clean shutdown");
        }
    }
}

/// Asserts a Flink error body with a non-empty message, and returns it.
fn assert_error(response: &HttpResponse, status: u16) -> String {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "error bodies are JSON: {:?}",
        response.headers
    );
    let json = response.json();
    let errors = json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {json}"));
    assert_eq!(errors.len(), 1, "{json}");
    let message = errors[0].as_str().expect("message is a string").to_owned();
    assert!(!message.is_empty());
    message
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn overview_uses_flink_field_names() {
    let h = Harness::start();
    let response = h.get("/overview");
    assert_eq!(response.status, 200);
    let json = response.json();
    for key in [
        "taskmanagers",
        "slots-total",
        "slots-available",
        "jobs-running",
        "jobs-finished",
        "jobs-cancelled",
        "jobs-failed",
        "flink-version",
        "flink-commit",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    let overview: ClusterOverview = response.parse();
    assert_eq!(overview.taskmanagers, 2);
    assert_eq!(overview.jobs_running, 2);
    assert_eq!(overview.jobs_finished, 1);
    // Flink's versioned prefix serves the same.
    assert_eq!(h.get("/v1/overview").parse::<ClusterOverview>(), overview);
}

#[test]
fn dashboard_and_jobmanager_config() {
    let h = Harness::start();
    let config = h.get("/config").json();
    assert_eq!(
        keys(&config),
        [
            "features",
            "flink-revision",
            "flink-version",
            "refresh-interval",
            "timezone-name",
            "timezone-offset"
        ]
    );
    assert_eq!(config["refresh-interval"], 3000);
    assert_eq!(config["flink-version"], "1.20-rill");
    assert_eq!(config["features"]["web-submit"], false);

    let response = h.get("/jobmanager/config");
    assert_eq!(response.status, 200);
    let entries = response.json();
    assert_eq!(
        entries,
        serde_json::json!([
            {"key": "rest.port", "value": "8081"},
            {"key": "taskmanager.numberOfTaskSlots", "value": "4"},
        ])
    );
}

#[test]
fn job_lists() {
    let h = Harness::start();
    let jobs = h.get("/jobs").json();
    let list = jobs["jobs"].as_array().expect("jobs array");
    assert_eq!(list.len(), 3);
    assert!(list
        .iter()
        .any(|j| j["id"] == RUNNING_JOB && j["status"] == "RUNNING"));
    assert!(list
        .iter()
        .any(|j| j["id"] == FINISHED_JOB && j["status"] == "FINISHED"));
    assert_eq!(keys(&list[0]), ["id", "status"]);

    let overview = h.get("/jobs/overview");
    let raw = overview.json();
    let first = &raw["jobs"][0];
    for key in [
        "jid",
        "name",
        "state",
        "start-time",
        "end-time",
        "duration",
        "last-modification",
        "tasks",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    let summaries: Vec<JobSummary> =
        serde_json::from_value(raw["jobs"].clone()).expect("summaries");
    let running = summaries
        .iter()
        .find(|j| j.jid == RUNNING_JOB)
        .expect("running job listed");
    assert_eq!(running.name, RUNNING_JOB_NAME);
    assert_eq!(running.end_time, -1);
    assert_eq!(running.tasks, 10);
}

#[test]
fn job_details_and_unknown_job() {
    let h = Harness::start();
    let response = h.get(&format!("/jobs/{RUNNING_JOB}"));
    assert_eq!(response.status, 200);
    let raw = response.json();
    assert_eq!(raw["vertices"][1]["inputs"][0]["ship-strategy"], "HASH");
    assert_eq!(raw["vertices"][1]["max-parallelism"], 128);
    let details: JobDetails = response.parse();
    assert_eq!(details.state, JobStatus::Running);
    assert_eq!(details.vertices.len(), 3);
    assert_eq!(details.vertices[0].name, "Source: clicks");

    let message = assert_error(&h.get("/jobs/00000000000000000000000000000000"), 404);
    assert!(
        message.contains("00000000000000000000000000000000"),
        "{message}"
    );
    assert_error(
        &h.get("/jobs/00000000000000000000000000000000/checkpoints"),
        404,
    );
    assert_error(
        &h.get("/jobs/00000000000000000000000000000000/history"),
        404,
    );
}

#[test]
fn submit_validates_the_body() {
    let h = Harness::start();
    let ok = h.send(
        "POST",
        "/jobs",
        r#"{"entry":"sessionize","args":["--gap","10s"],"parallelism":3,"allowNonRestoredState":true}"#,
    );
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert_eq!(ok.json()["jobid"], "1234567890abcdef1234567890abcdef");
    {
        let submitted = h.dispatcher.submitted.lock().unwrap();
        assert_eq!(submitted.len(), 1);
        assert_eq!(submitted[0].args, ["--gap", "10s"]);
        assert_eq!(submitted[0].parallelism, Some(3));
        assert!(submitted[0].allow_non_restored_state);
    }
    let with_id = h.send(
        "POST",
        "/jobs",
        r#"{"entry":"sessionize","jobId":"00112233445566778899aabbccddeeff"}"#,
    );
    assert_eq!(with_id.status, 202);
    assert_eq!(with_id.json()["jobid"], "00112233445566778899aabbccddeeff");

    let cases = [
        ("malformed JSON", r#"{"entry": "sessionize""#),
        ("unknown field", r#"{"entry":"sessionize","jarId":"x"}"#),
        (
            "wrong type",
            r#"{"entry":"sessionize","parallelism":"four"}"#,
        ),
        (
            "args not a list",
            r#"{"entry":"sessionize","args":"--gap"}"#,
        ),
        ("empty entry", r#"{"entry":""}"#),
        ("blank entry", r#"{"entry":"   "}"#),
        ("missing entry", r#"{"args":[]}"#),
        ("empty body", ""),
        ("not an object", "[1,2]"),
        (
            "zero parallelism",
            r#"{"entry":"sessionize","parallelism":0}"#,
        ),
        ("bad job id", r#"{"entry":"sessionize","jobId":"not-hex"}"#),
        ("unknown entry", r#"{"entry":"no-such-entry"}"#),
    ];
    for (what, body) in cases {
        let response = h.send("POST", "/jobs", body);
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        let message = assert_error(&response, 400);
        assert!(!message.is_empty(), "{what}");
    }
    let unknown_field = assert_error(
        &h.send("POST", "/jobs", r#"{"entry":"x","jarId":"x"}"#),
        400,
    );
    assert!(unknown_field.contains("jarId"), "{unknown_field}");
    let unknown_entry = assert_error(
        &h.send("POST", "/jobs", r#"{"entry":"no-such-entry"}"#),
        400,
    );
    assert!(unknown_entry.contains("no-such-entry"), "{unknown_entry}");
    assert_eq!(h.dispatcher.submitted.lock().unwrap().len(), 2);
}

#[test]
fn cancel_running_then_conflict_on_terminal() {
    let h = Harness::start();
    let path = format!("/jobs/{RUNNING_JOB}");
    let stop = h.send("PATCH", &format!("{path}?mode=stop"), "");
    let message = assert_error(&stop, 400);
    assert!(message.contains("savepoint"), "{message}");
    assert_error(&h.send("PATCH", &format!("{path}?mode=explode"), ""), 400);

    let cancel = h.send("PATCH", &format!("{path}?mode=cancel"), "");
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    assert_eq!(cancel.json(), serde_json::json!({}));
    assert_eq!(
        h.get(&path).parse::<JobDetails>().state,
        JobStatus::Canceled
    );

    // Now terminal: cancelling again conflicts.
    assert_error(&h.send("PATCH", &path, ""), 409);
    assert_error(&h.send("PATCH", &format!("/jobs/{FINISHED_JOB}"), ""), 409);
    assert_error(
        &h.send("PATCH", "/jobs/00000000000000000000000000000000", ""),
        404,
    );
    // Without a mode, PATCH cancels too (Flink's default).
    let second = h.send("PATCH", &format!("/jobs/{SECOND_JOB}"), "");
    assert_eq!(second.status, 202);
}

#[test]
fn checkpoint_history() {
    let h = Harness::start();
    let response = h.get(&format!("/jobs/{RUNNING_JOB}/checkpoints"));
    assert_eq!(response.status, 200);
    let raw = response.json();
    assert_eq!(keys(&raw), ["counts", "history", "latest"]);
    assert_eq!(raw["counts"]["in_progress"], 0);
    assert_eq!(
        raw["latest"]["restored"]["external_path"],
        "file:///checkpoints/chk-3"
    );
    assert_eq!(raw["history"][0]["is_savepoint"], true);
    let history: CheckpointHistory = response.parse();
    assert_eq!(history.counts.completed, 6);
    assert_eq!(history.history.len(), 3);
    assert_eq!(history.history[1].status, "FAILED");
    assert_eq!(
        history.latest.completed.map(|c| c.id),
        Some(5),
        "latest completed checkpoint"
    );
}

#[test]
fn savepoints_trigger_and_status() {
    let h = Harness::start();
    let base = format!("/jobs/{RUNNING_JOB}/savepoints");

    let triggered = h.send(
        "POST",
        &base,
        r#"{"target-directory":"s3://bucket/sp","cancel-job":false}"#,
    );
    assert_eq!(triggered.status, 202, "{}", triggered.text());
    let request_id = triggered.json()["request-id"]
        .as_str()
        .expect("request-id")
        .to_owned();
    let status = h.get(&format!("{base}/{request_id}"));
    assert_eq!(status.status, 200);
    assert_eq!(
        status.json(),
        serde_json::json!({"status": {"id": "IN_PROGRESS"}})
    );

    // An empty body means Flink's defaults.
    assert_eq!(h.send("POST", &base, "").status, 202);

    let completed = h.get(&format!("{base}/{COMPLETED_TRIGGER}")).json();
    assert_eq!(completed["status"]["id"], "COMPLETED");
    assert_eq!(completed["operation"]["location"], SAVEPOINT_LOCATION);

    let failed = h.get(&format!("{base}/{FAILED_TRIGGER}")).json();
    assert_eq!(failed["status"]["id"], "COMPLETED");
    let cause = &failed["operation"]["failure-cause"];
    assert_eq!(
        keys(cause),
        ["class", "serialized-throwable", "stack-trace"]
    );
    assert!(cause["stack-trace"]
        .as_str()
        .is_some_and(|s| s.contains("checkpoint storage unreachable")));

    assert_error(&h.get(&format!("{base}/no-such-trigger")), 404);
    assert_error(&h.send("POST", &base, r#"{"cancel-job":"yes"}"#), 400);
    assert_error(
        &h.send("POST", &base, r#"{"cancel-job":false,"extra":1}"#),
        400,
    );
    assert_error(&h.send("POST", &base, r#"{"formatType":"FANCY"}"#), 400);
    assert_error(
        &h.send("POST", &format!("/jobs/{FINISHED_JOB}/savepoints"), "{}"),
        409,
    );
    assert_error(
        &h.send(
            "POST",
            "/jobs/00000000000000000000000000000000/savepoints",
            "{}",
        ),
        404,
    );

    // Stop with savepoint maps to a savepoint that cancels the job.
    let stop = h.send(
        "POST",
        &format!("/jobs/{RUNNING_JOB}/stop"),
        r#"{"targetDirectory":"s3://bucket/stop","drain":false}"#,
    );
    assert_eq!(stop.status, 202, "{}", stop.text());
    assert!(stop.json()["request-id"].is_string());
    let drain = h.send(
        "POST",
        &format!("/jobs/{RUNNING_JOB}/stop"),
        r#"{"drain":true}"#,
    );
    assert!(assert_error(&drain, 400).contains("drain"));

    let triggers = h.dispatcher.triggers.lock().unwrap().clone();
    assert_eq!(
        triggers,
        [
            TriggerCall {
                job: RUNNING_JOB.to_owned(),
                target_directory: Some("s3://bucket/sp".to_owned()),
                cancel_job: false,
            },
            TriggerCall {
                job: RUNNING_JOB.to_owned(),
                target_directory: None,
                cancel_job: false,
            },
            TriggerCall {
                job: RUNNING_JOB.to_owned(),
                target_directory: Some("s3://bucket/stop".to_owned()),
                cancel_job: true,
            },
        ]
    );
}

#[test]
fn taskmanagers_list() {
    let h = Harness::start();
    let response = h.get("/taskmanagers");
    assert_eq!(response.status, 200);
    let raw = response.json();
    let first = &raw["taskmanagers"][0];
    for key in [
        "id",
        "path",
        "dataPort",
        "timeSinceLastHeartbeat",
        "slotsNumber",
        "freeSlots",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    let tms: Vec<TaskManagerInfo> =
        serde_json::from_value(raw["taskmanagers"].clone()).expect("taskmanagers");
    let ids: Vec<&str> = tms.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, TM_IDS);
}

#[test]
fn unknown_paths_methods_and_large_bodies_are_json_errors() {
    let h = Harness::with_options(RestOptions {
        max_body_bytes: 1024,
        sample_interval: Duration::from_secs(3600),
        ..RestOptions::default()
    });
    let message = assert_error(&h.get("/no/such/path"), 404);
    assert!(message.contains("/no/such/path"), "{message}");
    assert_error(&h.get("/v1/jobs/x/y/z"), 404);

    let wrong_method = h.send("DELETE", "/overview", "");
    let message = assert_error(&wrong_method, 405);
    assert!(message.contains("DELETE"), "{message}");
    assert_error(&h.send("PUT", "/jobs", "{}"), 405);

    let big = format!(r#"{{"entry":"{}"}}"#, "x".repeat(4096));
    assert_error(&h.send("POST", "/jobs", &big), 413);
    // Still serving after all that.
    assert_eq!(h.get("/overview").status, 200);
}

#[test]
fn a_panicking_dispatcher_answers_500_and_the_server_survives() {
    let h = Harness::start();
    assert_error(&h.get(&format!("/jobs/{PANIC_JOB}")), 500);
    assert_eq!(h.get(&format!("/jobs/{RUNNING_JOB}")).status, 200);
}

#[test]
fn metrics_endpoint_exposes_families_after_updates() {
    let h = Harness::start();
    h.metrics.set_taskmanagers(2);
    h.metrics.set_slots(8, 2);
    let job = h.metrics.job(RUNNING_JOB, RUNNING_JOB_NAME);
    let t0 = Instant::now();
    let totals = |records_in, records_out| SubtaskTotals {
        records_in,
        records_out,
        backpressure: 0.4,
        watermark: Some(1_000),
    };
    job.report_subtask_at("Session window", 0, &totals(100, 10), t0, 3_000);
    job.report_subtask_at(
        "Session window",
        0,
        &totals(300, 30),
        t0 + Duration::from_secs(1),
        3_000,
    );
    job.checkpoint_completed(Duration::from_millis(1500), 2048);
    job.checkpoint_failed();
    job.restarted();
    job.set_uptime(Duration::from_secs(90));

    let response = h.get("/metrics");
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .is_some_and(|ct| ct.contains("openmetrics-text")));
    let text = response.text();
    let labels = format!(r#"job_id="{RUNNING_JOB}",job_name="{RUNNING_JOB_NAME}""#);
    for expected in [
        "rill_taskmanagers 2".to_owned(),
        "rill_slots_total 8".to_owned(),
        "rill_slots_free 2".to_owned(),
        format!(r#"rill_vertex_records_in_total{{{labels},vertex="Session window"}} 300"#),
        format!(r#"rill_vertex_records_out_total{{{labels},vertex="Session window"}} 30"#),
        format!(r#"rill_vertex_records_in_per_second{{{labels},vertex="Session window"}} 200.0"#),
        format!(r#"rill_vertex_backpressure_ratio{{{labels},vertex="Session window"}} 0.4"#),
        format!(
            r#"rill_subtask_backpressure_ratio{{{labels},vertex="Session window",subtask="0"}} 0.4"#
        ),
        format!(
            r#"rill_subtask_watermark_lag_milliseconds{{{labels},vertex="Session window",subtask="0"}} 2000"#
        ),
        format!(r#"rill_checkpoint_last_duration_seconds{{{labels}}} 1.5"#),
        format!(r#"rill_checkpoint_last_size_bytes{{{labels}}} 2048"#),
        format!(r#"rill_checkpoints_completed_total{{{labels}}} 1"#),
        format!(r#"rill_checkpoints_failed_total{{{labels}}} 1"#),
        format!(r#"rill_job_restarts_total{{{labels}}} 1"#),
        format!(r#"rill_job_uptime_seconds{{{labels}}} 90.0"#),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"));
}

#[test]
fn standalone_metrics_server() {
    let metrics = Arc::new(ClusterMetrics::new());
    metrics.set_taskmanagers(5);
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics))
        .expect("start the metrics server");
    let addr = server.local_addr();
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200);
    assert!(response.text().contains("rill_taskmanagers 5"));
    assert_eq!(get(addr, "/overview").status, 404);
    server.shutdown().expect("clean shutdown");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "nothing listens after shutdown"
    );
}

#[test]
fn history_endpoint_returns_samples_after_the_sampler_ran() {
    let h = Harness::with_options(RestOptions {
        sample_interval: Duration::from_millis(25),
        history_capacity: 5,
        ..RestOptions::default()
    });
    let path = format!("/jobs/{RUNNING_JOB}/history");
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let response = h.get(&path);
        assert_eq!(response.status, 200, "{}", response.text());
        let history: JobHistory = response.parse();
        if history.samples.len() >= 5 && h.dispatcher.sample_calls() >= 12 {
            break history;
        }
        assert!(
            Instant::now() < deadline,
            "sampler did not fill the history: {history:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(history.jid, RUNNING_JOB);
    assert_eq!(history.interval_ms, 25);
    assert_eq!(history.capacity, 5);
    assert_eq!(history.samples.len(), 5, "bounded by the capacity");
    let last = history.samples.last().expect("a sample");
    let ids: Vec<&str> = last.vertices.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["v-source", "v-window", "v-sink"]);
    assert!(
        last.vertices[1]
            .read_records_per_second
            .is_some_and(|r| r > 0.0),
        "rates derived from consecutive totals: {last:?}"
    );
    assert!(history
        .samples
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp));
    let raw = h.get(&path).json();
    assert!(raw["samples"][0]["vertices"][0]
        .get("write-records-per-second")
        .is_some());

    // The terminal job is not sampled, but it exists: an empty history.
    let finished: JobHistory = h.get(&format!("/jobs/{FINISHED_JOB}/history")).parse();
    assert!(finished.samples.is_empty());
}

#[test]
fn bind_errors_are_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let result = RestServer::start(
        addr,
        Arc::new(FakeDispatcher::new()),
        Arc::new(ClusterMetrics::new()),
        RestOptions::default(),
    );
    match result {
        Err(RuntimeError::Io { context, .. }) => {
            assert!(context.contains(&addr.to_string()), "{context}")
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[test]
fn dashboard_assets_are_served() {
    let h = Harness::start();
    let index = h.get("/");
    assert_eq!(index.status, 200);
    assert!(index
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("text/html")));
    let html = index.text();
    assert!(html.contains("assets/app.js") && html.contains("assets/app.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    let js = h.get("/assets/app.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|ct| ct.contains("javascript")));
    assert!(js.text().contains("jobs/overview"));
    assert_eq!(h.get("/assets/app.css").status, 200);
}
