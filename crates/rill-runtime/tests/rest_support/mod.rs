//! Shared by the REST and dashboard tests: a fake [`Dispatcher`] with a
//! small, fixed cluster, and a minimal HTTP/1.1 client (so the tests check
//! what goes over the wire, not what a client library makes of it).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rill_runtime::cluster::dispatch::{
    CheckpointCounts, CheckpointHistory, CheckpointInfo, ClusterOverview, DispatchError,
    Dispatcher, JobDetails, JobSample, JobStatus, JobSummary, LatestCheckpoints, RestoredInfo,
    SavepointStatus, SubmitRequest, TaskManagerInfo, VertexInfo, VertexInput, VertexMetrics,
};

pub const RUNNING_JOB: &str = "a5e0edd8e66b53f1b89c2041f91b8fd2";
pub const RUNNING_JOB_NAME: &str = "Clickstream Sessionizer";
pub const SECOND_JOB: &str = "0c1d2e3f405162738495a6b7c8d9eaf0";
pub const SECOND_JOB_NAME: &str = "Fraud Scoring";
pub const FINISHED_JOB: &str = "c9e7d88f3c0b4a6789e012345678abcd";
pub const FINISHED_JOB_NAME: &str = "Nightly Backfill";
/// A job id whose lookup panics inside the dispatcher.
pub const PANIC_JOB: &str = "ffffffffffffffffffffffffffffffff";
pub const TM_IDS: [&str; 2] = ["tm-alpha-7f3a", "tm-bravo-91c2"];
pub const IN_PROGRESS_TRIGGER: &str = "trigger-in-progress";
pub const COMPLETED_TRIGGER: &str = "trigger-completed";
pub const FAILED_TRIGGER: &str = "trigger-failed";
pub const SAVEPOINT_LOCATION: &str = "file:///savepoints/savepoint-a5e0ed-1";

/// A savepoint request as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerCall {
    pub job: String,
    pub target_directory: Option<String>,
    pub cancel_job: bool,
}

pub struct FakeDispatcher {
    jobs: Mutex<Vec<JobDetails>>,
    savepoints: Mutex<HashMap<(String, String), SavepointStatus>>,
    pub triggers: Mutex<Vec<TriggerCall>>,
    pub submitted: Mutex<Vec<SubmitRequest>>,
    samples: AtomicU64,
}

fn vertex(
    id: &str,
    name: &str,
    parallelism: usize,
    inputs: &[(&str, &str)],
    m: (u64, u64, f64),
) -> VertexInfo {
    VertexInfo {
        id: id.to_owned(),
        name: name.to_owned(),
        parallelism,
        max_parallelism: 128,
        inputs: inputs
            .iter()
            .map(|(id, ship)| VertexInput {
                id: (*id).to_owned(),
                ship_strategy: (*ship).to_owned(),
            })
            .collect(),
        metrics: VertexMetrics {
            read_records: m.0,
            write_records: m.1,
            backpressure: m.2,
            watermark: Some(1_700_000_000_000),
        },
    }
}

fn job(id: &str, name: &str, state: JobStatus, vertices: Vec<VertexInfo>) -> JobDetails {
    let terminal = state.is_terminal();
    JobDetails {
        jid: id.to_owned(),
        name: name.to_owned(),
        state,
        start_time: 1_700_000_000_000,
        end_time: if terminal { 1_700_000_360_000 } else { -1 },
        duration: 360_000,
        now: 1_700_000_360_000,
        entry: "sessionize".to_owned(),
        args: vec!["--gap".to_owned(), "30s".to_owned()],
        parallelism: 4,
        restarts: 1,
        failure: None,
        vertices,
    }
}

impl Default for FakeDispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDispatcher {
    pub fn new() -> Self {
        let running = job(
            RUNNING_JOB,
            RUNNING_JOB_NAME,
            JobStatus::Running,
            vec![
                vertex("v-source", "Source: clicks", 2, &[], (0, 52_000, 0.62)),
                vertex(
                    "v-window",
                    "Session window",
                    4,
                    &[("v-source", "HASH")],
                    (52_000, 8_100, 0.15),
                ),
                vertex(
                    "v-sink",
                    "Sink: sessions",
                    4,
                    &[("v-window", "FORWARD")],
                    (8_100, 0, 0.0),
                ),
            ],
        );
        let second = job(
            SECOND_JOB,
            SECOND_JOB_NAME,
            JobStatus::Running,
            vec![
                vertex("f-source", "Source: payments", 2, &[], (0, 900, 0.0)),
                vertex(
                    "f-score",
                    "Score",
                    2,
                    &[("f-source", "REBALANCE")],
                    (900, 900, 0.0),
                ),
            ],
        );
        let mut finished = job(
            FINISHED_JOB,
            FINISHED_JOB_NAME,
            JobStatus::Finished,
            vec![vertex("b-source", "Source: archive", 1, &[], (0, 10, 0.0))],
        );
        finished.failure = None;
        let mut savepoints = HashMap::new();
        savepoints.insert(
            (RUNNING_JOB.to_owned(), IN_PROGRESS_TRIGGER.to_owned()),
            SavepointStatus::InProgress,
        );
        savepoints.insert(
            (RUNNING_JOB.to_owned(), COMPLETED_TRIGGER.to_owned()),
            SavepointStatus::Completed {
                location: SAVEPOINT_LOCATION.to_owned(),
            },
        );
        savepoints.insert(
            (RUNNING_JOB.to_owned(), FAILED_TRIGGER.to_owned()),
            SavepointStatus::Failed {
                cause: "checkpoint storage unreachable".to_owned(),
            },
        );
        FakeDispatcher {
            jobs: Mutex::new(vec![running, second, finished]),
            savepoints: Mutex::new(savepoints),
            triggers: Mutex::new(Vec::new()),
            submitted: Mutex::new(Vec::new()),
            samples: AtomicU64::new(0),
        }
    }

    pub fn sample_calls(&self) -> u64 {
        self.samples.load(Ordering::SeqCst)
    }
}

fn checkpoint(id: u64, status: &str, savepoint: bool) -> CheckpointInfo {
    CheckpointInfo {
        id,
        status: status.to_owned(),
        is_savepoint: savepoint,
        trigger_timestamp: 1_700_000_000_000 + id * 10_000,
        latest_ack_timestamp: 1_700_000_000_400 + id * 10_000,
        state_size: 4096 * id,
        end_to_end_duration: 400,
        external_path: (status == "COMPLETED").then(|| format!("file:///checkpoints/chk-{id}")),
        failure_message: (status == "FAILED").then(|| "declined by subtask 3".to_owned()),
    }
}

impl Dispatcher for FakeDispatcher {
    fn overview(&self) -> ClusterOverview {
        let jobs = self.jobs.lock().unwrap();
        let count = |s: JobStatus| jobs.iter().filter(|j| j.state == s).count();
        ClusterOverview {
            taskmanagers: 2,
            slots_total: 8,
            slots_available: 2,
            jobs_running: count(JobStatus::Running),
            jobs_finished: count(JobStatus::Finished),
            jobs_cancelled: count(JobStatus::Canceled),
            jobs_failed: count(JobStatus::Failed),
            flink_version: "1.20-rill".to_owned(),
        }
    }

    fn jobs(&self) -> Vec<JobSummary> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .map(|j| JobSummary {
                jid: j.jid.clone(),
                name: j.name.clone(),
                state: j.state,
                start_time: j.start_time,
                end_time: j.end_time,
                duration: j.duration,
                last_modification: j.now,
                tasks: j.vertices.iter().map(|v| v.parallelism).sum(),
            })
            .collect()
    }

    fn job(&self, id: &str) -> Option<JobDetails> {
        if id == PANIC_JOB {
            panic!("the fake dispatcher panics for {PANIC_JOB}");
        }
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.jid == id)
            .cloned()
    }

    fn submit(&self, request: SubmitRequest) -> Result<String, DispatchError> {
        if request.entry != "sessionize" {
            return Err(DispatchError::BadRequest(format!(
                "unknown catalogue entry '{}'",
                request.entry
            )));
        }
        let id = request
            .job_id
            .clone()
            .unwrap_or_else(|| "1234567890abcdef1234567890abcdef".to_owned());
        let mut details = job(&id, "submitted", JobStatus::Created, Vec::new());
        details.entry = request.entry.clone();
        self.jobs.lock().unwrap().push(details);
        self.submitted.lock().unwrap().push(request);
        Ok(id)
    }

    fn cancel(&self, id: &str) -> Result<(), DispatchError> {
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs
            .iter_mut()
            .find(|j| j.jid == id)
            .ok_or_else(|| DispatchError::NotFound(format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(DispatchError::Conflict(format!("job {id} is terminal")));
        }
        job.state = JobStatus::Canceled;
        job.end_time = 1_700_000_400_000;
        Ok(())
    }

    fn checkpoints(&self, id: &str) -> Option<CheckpointHistory> {
        self.job(id)?;
        let history = vec![
            checkpoint(7, "COMPLETED", true),
            checkpoint(6, "FAILED", false),
            checkpoint(5, "COMPLETED", false),
        ];
        Some(CheckpointHistory {
            counts: CheckpointCounts {
                restored: 1,
                total: 7,
                in_progress: 0,
                completed: 6,
                failed: 1,
            },
            latest: LatestCheckpoints {
                completed: Some(history[2].clone()),
                savepoint: Some(history[0].clone()),
                failed: Some(history[1].clone()),
                restored: Some(RestoredInfo {
                    id: 3,
                    restore_timestamp: 1_700_000_001_000,
                    is_savepoint: false,
                    external_path: "file:///checkpoints/chk-3".to_owned(),
                }),
            },
            history,
        })
    }

    fn trigger_savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
        cancel_job: bool,
    ) -> Result<String, DispatchError> {
        let job = self
            .job(id)
            .ok_or_else(|| DispatchError::NotFound(format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(DispatchError::Conflict(format!("job {id} is terminal")));
        }
        let mut triggers = self.triggers.lock().unwrap();
        triggers.push(TriggerCall {
            job: id.to_owned(),
            target_directory,
            cancel_job,
        });
        let request = format!("sp-request-{}", triggers.len());
        self.savepoints.lock().unwrap().insert(
            (id.to_owned(), request.clone()),
            SavepointStatus::InProgress,
        );
        Ok(request)
    }

    fn savepoint_status(&self, id: &str, request: &str) -> Option<SavepointStatus> {
        self.savepoints
            .lock()
            .unwrap()
            .get(&(id.to_owned(), request.to_owned()))
            .cloned()
    }

    fn taskmanagers(&self) -> Vec<TaskManagerInfo> {
        TM_IDS
            .iter()
            .enumerate()
            .map(|(i, id)| TaskManagerInfo {
                id: (*id).to_owned(),
                path: format!("10.0.0.{}:6121", i + 10),
                data_port: 6121,
                time_since_last_heartbeat: 800,
                slots_number: 4,
                free_slots: 1,
            })
            .collect()
    }

    fn config(&self) -> Vec<(String, String)> {
        vec![
            ("rest.port".to_owned(), "8081".to_owned()),
            ("taskmanager.numberOfTaskSlots".to_owned(), "4".to_owned()),
        ]
    }

    fn sample(&self, id: &str) -> Option<JobSample> {
        let job = self.job(id)?;
        let n = self.samples.fetch_add(1, Ordering::SeqCst) + 1;
        Some(JobSample {
            vertices: job
                .vertices
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let base = 1_000 * (i as u64 + 1);
                    (
                        v.id.clone(),
                        VertexMetrics {
                            read_records: if v.inputs.is_empty() { 0 } else { base * n },
                            write_records: base * n * 2,
                            backpressure: ((n % 10) as f64) / 10.0,
                            watermark: Some(1_700_000_000_000 + n as i64 * 1000),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// A response as received.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body does not parse as {} ({e}): {}",
                self.status,
                std::any::type_name::<T>(),
                self.text()
            )
        })
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) before reading a large body and close.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            panic!("reading the response to {method} {path}: {e}");
        }
    }
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "malformed response to {method} {path}: {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, None)
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
