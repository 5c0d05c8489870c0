//! Talking to a JobManager's REST API, and turning its answers into status.
//!
//! The operator never trusts its own bookkeeping for what a job is doing:
//! job state, restarts and checkpoints come from the JobManager
//! (`/jobs/overview`, `/jobs/:id`, `/jobs/:id/checkpoints`). A JobManager
//! that does not answer yet (starting, failing over) is normal and yields
//! `None`, not an error that would crash-loop the reconciler. The mapping
//! from answers to status is pure ([`observe`]) and unit-tested.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rill_runtime::cluster::dispatch::{
    CheckpointHistory, JobDetails, JobStatus, JobSummary, SubmitRequest,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::crd::{CheckpointStatus, LifecycleState};
use crate::{Error, Result};

/// A JobManager REST endpoint.
#[derive(Clone, Debug)]
pub struct RestClient {
    base: String,
    http: reqwest::Client,
}

/// State of a savepoint request (Flink's asynchronous operation result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointOutcome {
    InProgress,
    Completed(String),
    Failed(String),
}

#[derive(Deserialize)]
struct JobsOverview {
    jobs: Vec<JobSummary>,
}

impl RestClient {
    /// `base` like `http://wsum-rest.jobs:8081` (no trailing slash needed).
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| Error::Rest {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(RestClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn err(&self, path: &str, message: impl ToString) -> Error {
        Error::Rest {
            url: format!("{}{path}", self.base),
            message: message.to_string(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T> {
        let resp = req.send().await.map_err(|e| self.err(path, e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.err(path, e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(self.err(path, format!("HTTP {status}: {text}")));
        }
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        serde_json::from_slice(body).map_err(|e| self.err(path, e))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req, path).await
    }

    async fn with_body<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req, path).await
    }

    /// `GET /jobs/overview`.
    pub async fn jobs(&self) -> Result<Vec<JobSummary>> {
        Ok(self.get::<JobsOverview>("/jobs/overview").await?.jobs)
    }

    /// `GET /jobs/:id`.
    pub async fn job(&self, id: &str) -> Result<JobDetails> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// `GET /jobs/:id/checkpoints`.
    pub async fn checkpoints(&self, id: &str) -> Result<CheckpointHistory> {
        self.get(&format!("/jobs/{id}/checkpoints")).await
    }

    /// `POST /jobs`; returns the job id.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<String> {
        #[derive(Deserialize)]
        struct Submitted {
            jobid: String,
        }
        let body = serde_json::to_value(request)?;
        let s: Submitted = self
            .with_body(reqwest::Method::POST, "/jobs", &body)
            .await?;
        Ok(s.jobid)
    }

    /// `PATCH /jobs/:id?mode=cancel`.
    pub async fn cancel(&self, id: &str) -> Result<()> {
        let _: serde_json::Value = self
            .with_body(
                reqwest::Method::PATCH,
                &format!("/jobs/{id}?mode=cancel"),
                &json!({}),
            )
            .await?;
        Ok(())
    }

    /// `POST /jobs/:id/savepoints`; returns the request id.
    pub async fn trigger_savepoint(
        &self,
        id: &str,
        target_directory: Option<&str>,
        cancel_job: bool,
    ) -> Result<String> {
        #[derive(Deserialize)]
        struct Triggered {
            #[serde(rename = "request-id")]
            request_id: String,
        }
        let body = json!({"target-directory": target_directory, "cancel-job": cancel_job});
        let t: Triggered = self
            .with_body(
                reqwest::Method::POST,
                &format!("/jobs/{id}/savepoints"),
                &body,
            )
            .await?;
        Ok(t.request_id)
    }

    /// `GET /jobs/:id/savepoints/:request`.
    pub async fn savepoint(&self, id: &str, request: &str) -> Result<SavepointOutcome> {
        let v: serde_json::Value = self
            .get(&format!("/jobs/{id}/savepoints/{request}"))
            .await?;
        Ok(savepoint_outcome(&v))
    }
}

/// Reads Flink's asynchronous operation result.
pub fn savepoint_outcome(v: &serde_json::Value) -> SavepointOutcome {
    if v["status"]["id"].as_str() != Some("COMPLETED") {
        return SavepointOutcome::InProgress;
    }
    let op = &v["operation"];
    if let Some(loc) = op["location"].as_str() {
        return SavepointOutcome::Completed(loc.to_string());
    }
    let cause = &op["failure-cause"];
    let text = cause["stack-trace"]
        .as_str()
        .or_else(|| cause["class"].as_str())
        .unwrap_or("savepoint failed");
    SavepointOutcome::Failed(text.to_string())
}

/// What the JobManager says about the job the resource runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedJob {
    pub job_id: Option<String>,
    pub job_state: Option<JobStatus>,
    pub restarts: Option<u32>,
    pub last_checkpoint: Option<CheckpointStatus>,
    pub failure: Option<String>,
}

/// Picks the resource's job from `/jobs/overview`: `wanted` when the id is
/// known, else the newest job that is not terminal, else the newest.
pub fn pick_job<'a>(jobs: &'a [JobSummary], wanted: Option<&str>) -> Option<&'a JobSummary> {
    if let Some(id) = wanted {
        if let Some(j) = jobs.iter().find(|j| j.jid == id) {
            return Some(j);
        }
    }
    jobs.iter()
        .filter(|j| !j.state.is_terminal())
        .max_by_key(|j| j.start_time)
        .or_else(|| jobs.iter().max_by_key(|j| j.start_time))
}

fn rfc3339_ms(ms: u64) -> Option<String> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?)
        .ok()
        .map(|t| t.to_string())
}

/// Status fields from the JobManager's answers (pure).
pub fn observe(
    job: Option<&JobSummary>,
    details: Option<&JobDetails>,
    checkpoints: Option<&CheckpointHistory>,
) -> ObservedJob {
    let Some(job) = job else {
        return ObservedJob::default();
    };
    let last_checkpoint = checkpoints.and_then(|h| {
        // A completed checkpoint or savepoint, whichever is newer.
        let mut best = h.latest.completed.as_ref();
        if let Some(sp) = &h.latest.savepoint {
            let newer = match best {
                Some(c) => sp.id > c.id,
                None => true,
            };
            if newer {
                best = Some(sp);
            }
        }
        best.map(|c| CheckpointStatus {
            id: c.id,
            path: c.external_path.clone(),
            time: rfc3339_ms(c.latest_ack_timestamp),
        })
    });
    ObservedJob {
        job_id: Some(job.jid.clone()),
        job_state: Some(job.state),
        restarts: details.map(|d| d.restarts),
        last_checkpoint,
        failure: details.and_then(|d| d.failure.clone()),
    }
}

/// The name Flink gives a job status (`RUNNING`).
pub fn job_state_name(s: JobStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}").to_uppercase())
}

/// Lifecycle of a deployed resource from its job's status: running is
/// stable, a terminal failure is failed, anything else is still deploying.
pub fn lifecycle_for(job_state: Option<JobStatus>) -> LifecycleState {
    match job_state {
        Some(JobStatus::Running) => LifecycleState::Stable,
        Some(JobStatus::Failed) => LifecycleState::Failed,
        _ => LifecycleState::Deployed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_runtime::cluster::dispatch::{CheckpointInfo, LatestCheckpoints};

    fn summary(jid: &str, state: JobStatus, start: u64) -> JobSummary {
        serde_json::from_value(json!({
            "jid": jid, "name": "windowed-sum", "state": state,
            "start-time": start, "end-time": -1, "duration": 5,
            "last-modification": start, "tasks": 2
        }))
        .unwrap_or_else(|e| panic!("summary: {e}"))
    }

    fn checkpoint(id: u64, savepoint: bool, path: &str) -> CheckpointInfo {
        CheckpointInfo {
            id,
            status: "COMPLETED".into(),
            is_savepoint: savepoint,
            trigger_timestamp: 1_700_000_000_000,
            latest_ack_timestamp: 1_700_000_001_000,
            state_size: 10,
            end_to_end_duration: 1,
            external_path: Some(path.into()),
            failure_message: None,
        }
    }

    #[test]
    fn the_running_job_is_preferred_over_finished_ones() {
        let jobs = vec![
            summary("a", JobStatus::Canceled, 300),
            summary("b", JobStatus::Running, 200),
            summary("c", JobStatus::Failed, 100),
        ];
        assert_eq!(pick_job(&jobs, None).map(|j| j.jid.as_str()), Some("b"));
        assert_eq!(
            pick_job(&jobs, Some("c")).map(|j| j.jid.as_str()),
            Some("c")
        );
        assert_eq!(
            pick_job(&jobs, Some("zz")).map(|j| j.jid.as_str()),
            Some("b")
        );
        let done = vec![
            summary("a", JobStatus::Canceled, 300),
            summary("c", JobStatus::Failed, 100),
        ];
        assert_eq!(pick_job(&done, None).map(|j| j.jid.as_str()), Some("a"));
        assert!(pick_job(&[], None).is_none());
    }

    #[test]
    fn status_comes_from_the_rest_answers() {
        let job = summary("j1", JobStatus::Running, 100);
        let history = CheckpointHistory {
            latest: LatestCheckpoints {
                completed: Some(checkpoint(7, false, "file:///c/j1/chk-7")),
                savepoint: Some(checkpoint(5, true, "file:///c/savepoints/savepoint-5")),
                ..Default::default()
            },
            ..Default::default()
        };
        let o = observe(Some(&job), None, Some(&history));
        assert_eq!(o.job_id.as_deref(), Some("j1"));
        assert_eq!(o.job_state, Some(JobStatus::Running));
        let cp = o.last_checkpoint.expect("checkpoint");
        assert_eq!(cp.id, 7);
        assert_eq!(cp.path.as_deref(), Some("file:///c/j1/chk-7"));
        assert_eq!(cp.time.as_deref(), Some("2023-11-14T22:13:21Z"));
        assert_eq!(lifecycle_for(o.job_state), LifecycleState::Stable);
        assert_eq!(job_state_name(JobStatus::Restarting), "RESTARTING");
        assert_eq!(
            lifecycle_for(Some(JobStatus::Failed)),
            LifecycleState::Failed
        );
        assert_eq!(
            lifecycle_for(Some(JobStatus::Restarting)),
            LifecycleState::Deployed
        );
        assert_eq!(lifecycle_for(None), LifecycleState::Deployed);
        assert_eq!(observe(None, None, None), ObservedJob::default());
    }

    #[test]
    fn savepoint_results_are_read_like_flink() {
        assert_eq!(
            savepoint_outcome(&json!({"status": {"id": "IN_PROGRESS"}})),
            SavepointOutcome::InProgress
        );
        assert_eq!(
            savepoint_outcome(&json!({"status": {"id": "COMPLETED"},
                "operation": {"location": "file:///s/savepoint-1"}})),
            SavepointOutcome::Completed("file:///s/savepoint-1".into())
        );
        assert_eq!(
            savepoint_outcome(&json!({"status": {"id": "COMPLETED"},
                "operation": {"failure-cause": {"class": "x", "stack-trace": "disk full"}}})),
            SavepointOutcome::Failed("disk full".into())
        );
    }
}
