//! Session mode on Kubernetes: a FlinkSession whose JobManager scales its
//! TaskManager pods with the jobs it runs, driven with the real `kubectl`
//! against kube-sim, the operator installed from `manifests/` as a pod and
//! the `rill` binary in every pod.
//!
//! The session starts with its minimum of TaskManagers. Two FlinkJobs with
//! `sessionRef` run `windowed-sum` on inputs of their own; the operator
//! submits each exactly once and the JobManager scales TaskManager pods up
//! to cover both jobs' slots. Deleting one FlinkJob mid-stream cancels its
//! job; the TaskManagers it used go idle and are released, while the other
//! job keeps running untouched on its own and finishes with exactly the
//! output of an uninterrupted run. The cancelled job committed only records
//! of its reference output, none twice. Deleting the FlinkSession removes
//! everything.

mod kube;
mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::*;
use serde_json::{json, Value};
use support::assert_same;

const SESSION: &str = "shared";
/// Runs to the end.
const KEPT: &str = "sum-kept";
/// Deleted mid-stream.
const CANCELLED: &str = "sum-cancelled";
const PARALLELISM: usize = 2;
const SLOTS_PER_TM: usize = 1;
const MIN_TMS: usize = 1;
const MAX_TMS: usize = 4;

/// TaskManagers for jobs holding `slots` slots, as the session is sized.
fn taskmanagers_for(slots: usize) -> usize {
    slots.div_ceil(SLOTS_PER_TM).clamp(MIN_TMS, MAX_TMS)
}

fn session(checkpoints: &Path) -> Value {
    json!({
        "apiVersion": "rill.dev/v1alpha1",
        "kind": "FlinkSession",
        "metadata": {"name": SESSION, "namespace": "default"},
        "spec": {
            "image": "rill:test",
            "taskManager": {
                "slots": SLOTS_PER_TM,
                "minTaskManagers": MIN_TMS,
                "maxTaskManagers": MAX_TMS,
            },
            "checkpointing": {
                "interval": "300ms",
                "storage": format!("file://{}", checkpoints.display()),
                "retained": 3,
            },
            "restartStrategy": {"type": "fixed-delay", "attempts": 20, "delay": "200ms"},
            "flinkConfiguration": {
                "heartbeat.interval": "1s",
                "heartbeat.timeout": "5s",
                "resourcemanager.taskmanager-timeout": "2s",
                "kubernetes.taskmanager.resync-interval": "1s",
            },
        },
    })
}

/// A FlinkJob in the session. Checkpointing, restarts, TaskManagers and
/// configuration belong to the session's cluster, so the job carries only
/// the image, the job and the reference.
fn session_job(name: &str, args: &[String], checkpoints: &Path) -> Value {
    let mut fj = flinkjob(
        name,
        args,
        PARALLELISM as u32,
        checkpoints,
        json!({"sessionRef": {"name": SESSION}}),
    );
    let spec = fj["spec"].as_object_mut().expect("spec");
    for cluster_field in [
        "checkpointing",
        "restartStrategy",
        "taskManager",
        "flinkConfiguration",
    ] {
        spec.remove(cluster_field);
    }
    fj
}

/// The session's TaskManager pods that are not being deleted: (all,
/// Ready); `None` when kubectl cannot tell.
fn tm_pods(kube: &Kube) -> Option<(usize, usize)> {
    let out = kube
        .try_run(&[
            "get",
            "pods",
            "-l",
            &format!("app={SESSION},component=taskmanager"),
            "-o",
            "json",
        ])
        .ok()?;
    let pods: Value = serde_json::from_str(&out).ok()?;
    let live: Vec<&Value> = pods["items"]
        .as_array()?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    Some((live.len(), ready))
}

fn job_state(kube: &Kube, name: &str) -> Option<String> {
    kube.get("fj", name)["status"]["jobState"]
        .as_str()
        .map(String::from)
}

/// Lines of `actual` missing from `reference` or more often in `actual`.
fn not_in_reference(actual: &[String], reference: &[String]) -> Vec<String> {
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for l in reference {
        *left.entry(l).or_default() += 1;
    }
    let mut extra = Vec::new();
    for l in actual {
        match left.get_mut(l.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => extra.push(l.clone()),
        }
    }
    extra
}

#[test]
fn session_taskmanagers_scale_with_the_jobs_and_a_deleted_flinkjob_is_cancelled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let kept = WindowedSum::prepare(dir, 60_000, 7);
    let cancelled = WindowedSum::prepare(dir, 50_000, 8);
    let kept_out = dir.join("out-kept");
    let cancelled_out = dir.join("out-cancelled");
    let checkpoints = dir.join("checkpoints");
    let kube = Kube::start(dir, Duration::from_secs(180));
    kube.install_operator(&[
        ("--lease-duration", "3s"),
        ("--renew-deadline", "2s"),
        ("--retry-period", "500ms"),
        ("--status-refresh", "1s"),
        ("--poll-interval", "300ms"),
    ]);

    // The most TaskManager pods seen at once, whenever they are counted.
    let peak = Cell::new(0usize);
    let count = || {
        let c = tm_pods(&kube);
        if let Some((all, _)) = c {
            peak.set(peak.get().max(all));
        }
        c
    };

    // 1. The session: a JobManager and its minimum of TaskManagers.
    let applied = Instant::now();
    kube.apply(&session(&checkpoints));
    let rest = rest_address(&kube, SESSION);
    kube.wait(
        "the session JobManager Ready",
        Duration::from_secs(60),
        || (kube.ready(SESSION, "jobmanager").len() == 1).then_some(()),
    );
    kube.wait(
        "minTaskManagers TaskManager pods Ready and registered",
        Duration::from_secs(60),
        || {
            let registered = http_json(&rest, "/taskmanagers")?["taskmanagers"]
                .as_array()?
                .len();
            (count()? == (MIN_TMS, MIN_TMS) && registered == MIN_TMS).then_some(())
        },
    );
    let status = kube.wait(
        "the session STABLE with its TaskManagers in status",
        Duration::from_secs(30),
        || {
            let s = kube.get("fs", SESSION)["status"].clone();
            (s["lifecycleState"] == "STABLE"
                && s["taskManagers"] == json!({"ready": MIN_TMS, "desired": MIN_TMS}))
            .then_some(s)
        },
    );
    assert_eq!(status["jobsRunning"], 0, "{status}");
    eprintln!(
        "figure: kubectl apply FlinkSession -> JobManager and {MIN_TMS} TaskManager Ready: {:.1} s",
        applied.elapsed().as_secs_f64()
    );

    // 2. Two FlinkJobs in the session: TaskManagers scale up to both jobs'
    // slots.
    let submitted = Instant::now();
    kube.apply(&session_job(
        KEPT,
        &kept.args(&kept_out, 2000),
        &checkpoints,
    ));
    kube.apply(&session_job(
        CANCELLED,
        &cancelled.args(&cancelled_out, 2000),
        &checkpoints,
    ));
    let (kept_id, cancelled_id) =
        kube.wait("both FlinkJobs RUNNING", Duration::from_secs(90), || {
            count();
            let ids = |name: &str| {
                let s = kube.get("fj", name)["status"].clone();
                (s["jobState"] == "RUNNING")
                    .then(|| s["jobId"].as_str().map(String::from))
                    .flatten()
            };
            Some((ids(KEPT)?, ids(CANCELLED)?))
        });
    eprintln!(
        "figure: kubectl apply of both FlinkJobs -> both RUNNING: {:.1} s",
        submitted.elapsed().as_secs_f64()
    );
    assert_ne!(kept_id, cancelled_id, "each FlinkJob has a job of its own");
    let both = taskmanagers_for(2 * PARALLELISM);
    kube.wait(
        "TaskManager pods scaled up for both jobs",
        Duration::from_secs(60),
        || {
            let registered = http_json(&rest, "/taskmanagers")?["taskmanagers"]
                .as_array()?
                .len();
            (count()? == (both, both) && registered == both).then_some(())
        },
    );
    eprintln!(
        "figure: TaskManager pods with both jobs: {both} (slots per TaskManager {SLOTS_PER_TM}, min {MIN_TMS}, max {MAX_TMS}), reached {:.1} s after apply",
        submitted.elapsed().as_secs_f64()
    );
    let jobs = http_json(&rest, "/jobs/overview").expect("jobs overview");
    let mut ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["jid"].as_str())
        .collect();
    ids.sort();
    let mut want = vec![kept_id.as_str(), cancelled_id.as_str()];
    want.sort();
    assert_eq!(
        ids, want,
        "each FlinkJob was submitted exactly once: {jobs}"
    );
    for (id, input) in [(&kept_id, &kept.input), (&cancelled_id, &cancelled.input)] {
        let details = http_json(&rest, &format!("/jobs/{id}")).expect("job details");
        assert_eq!(details["state"], "RUNNING", "{details}");
        assert_eq!(details["parallelism"], PARALLELISM, "{details}");
        let args = details["args"].to_string();
        assert!(
            args.contains(&input.display().to_string()),
            "job {id} reads its own input: {args}"
        );
    }
    kube.wait(
        "completed checkpoints of both jobs",
        Duration::from_secs(30),
        || {
            (complete_checkpoints(&checkpoints, &kept_id) >= 2
                && complete_checkpoints(&checkpoints, &cancelled_id) >= 2)
                .then_some(())
        },
    );
    kube.wait(
        "checkpoints in both FlinkJob statuses",
        Duration::from_secs(15),
        || {
            let cp = |name: &str| kube.get("fj", name)["status"]["lastCheckpoint"]["id"].as_u64();
            Some((cp(KEPT)?, cp(CANCELLED)?))
        },
    );
    kube.wait(
        "the session status with both jobs and the TaskManagers",
        Duration::from_secs(15),
        || {
            let s = kube.get("fs", SESSION)["status"].clone();
            (s["jobsRunning"] == 2 && s["taskManagers"] == json!({"ready": both, "desired": both}))
                .then_some(())
        },
    );
    eprintln!("{}", kube.ok(&["get", "fj,fs"]));

    // 3. Delete one FlinkJob mid-stream: its job is cancelled and the
    // TaskManagers it used are released once idle.
    kube.wait(
        "committed output of both jobs",
        Duration::from_secs(30),
        || (committed_bytes(&kept_out) > 0 && committed_bytes(&cancelled_out) > 0).then_some(()),
    );
    for id in [&kept_id, &cancelled_id] {
        let details = http_json(&rest, &format!("/jobs/{id}")).expect("job details");
        assert_eq!(
            details["restarts"], 0,
            "scaling up disturbed no running job: {details}"
        );
    }
    let partial = output(&cancelled_out);
    assert!(
        partial.0.len() < cancelled.expected.0.len(),
        "the FlinkJob is deleted mid-stream ({} of {} windows already committed)",
        partial.0.len(),
        cancelled.expected.0.len()
    );
    let deleted = Instant::now();
    kube.ok(&["delete", "fj", CANCELLED, "--timeout=60s"]);
    kube.wait(
        "the job CANCELED in the session",
        Duration::from_secs(30),
        || {
            let j = http_json(&rest, &format!("/jobs/{cancelled_id}"))?;
            (j["state"] == "CANCELED").then_some(())
        },
    );
    eprintln!(
        "figure: kubectl delete FlinkJob -> job CANCELED in the session: {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    let one = taskmanagers_for(PARALLELISM);
    kube.wait(
        "TaskManager pods scaled down to the remaining job",
        Duration::from_secs(60),
        || {
            let registered = http_json(&rest, "/taskmanagers")?["taskmanagers"]
                .as_array()?
                .len();
            (count()? == (one, one) && registered == one).then_some(())
        },
    );
    eprintln!(
        "figure: kubectl delete FlinkJob -> TaskManager pods {both} -> {one}: {:.1} s (idle timeout 2 s)",
        deleted.elapsed().as_secs_f64()
    );
    let details = http_json(&rest, &format!("/jobs/{kept_id}")).expect("job details");
    assert_eq!(details["state"], "RUNNING", "{details}");
    assert_eq!(
        details["restarts"], 0,
        "only idle TaskManagers were released: the remaining job never restarted: {details}"
    );
    kube.wait(
        "the session status after the scale-down",
        Duration::from_secs(15),
        || {
            let s = kube.get("fs", SESSION)["status"].clone();
            (s["jobsRunning"] == 1 && s["taskManagers"] == json!({"ready": one, "desired": one}))
                .then_some(())
        },
    );

    // 4. The remaining job finishes with exactly the uninterrupted output;
    // until then it keeps the TaskManagers it needs.
    let fewest = Cell::new(usize::MAX);
    kube.wait(
        "the remaining job FINISHED in the FlinkJob status",
        Duration::from_secs(90),
        || {
            let running = job_state(&kube, KEPT).as_deref() == Some("RUNNING");
            if let Some((all, _)) = count() {
                if running {
                    fewest.set(fewest.get().min(all));
                }
            }
            (job_state(&kube, KEPT).as_deref() == Some("FINISHED")).then_some(())
        },
    );
    eprintln!(
        "figure: kubectl apply of both FlinkJobs -> remaining job FINISHED: {:.1} s",
        submitted.elapsed().as_secs_f64()
    );
    assert!(
        fewest.get() >= one,
        "the running job kept its {one} TaskManagers (fewest seen: {})",
        fewest.get()
    );
    assert_same(
        &output(&kept_out),
        &kept.expected,
        "the job that ran beside a cancelled one",
    );
    let details = http_json(&rest, &format!("/jobs/{kept_id}")).expect("job details");
    assert_eq!(details["restarts"], 0, "{details}");

    let (windows, late) = output(&cancelled_out);
    assert!(
        windows.len() >= partial.0.len(),
        "committed output stays committed"
    );
    assert!(
        windows.len() < cancelled.expected.0.len(),
        "the cancelled job stopped early ({} of {} windows)",
        windows.len(),
        cancelled.expected.0.len()
    );
    let extra = not_in_reference(&windows, &cancelled.expected.0);
    assert!(
        extra.is_empty(),
        "the cancelled job's windows are all in its reference, none twice; {} are not: {:?}",
        extra.len(),
        &extra[..extra.len().min(10)]
    );
    let extra = not_in_reference(&late, &cancelled.expected.1);
    assert!(
        extra.is_empty(),
        "the cancelled job's late records are all in its reference, none twice: {extra:?}"
    );
    eprintln!(
        "figure: cancelled job committed {} of {} windows, {} of {} late records, no duplicates",
        windows.len(),
        cancelled.expected.0.len(),
        late.len(),
        cancelled.expected.1.len()
    );

    // With no job left the session keeps its minimum.
    let finished = Instant::now();
    kube.wait(
        "TaskManager pods back to minTaskManagers",
        Duration::from_secs(30),
        || (count()? == (MIN_TMS, MIN_TMS)).then_some(()),
    );
    eprintln!(
        "figure: remaining job FINISHED -> TaskManager pods {one} -> {MIN_TMS}: {:.1} s",
        finished.elapsed().as_secs_f64()
    );
    let jobs = http_json(&rest, "/jobs/overview").expect("jobs overview");
    let mut states: Vec<(String, String)> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["jid"].as_str().unwrap_or_default().to_string(),
                j["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    states.sort();
    let mut want = vec![
        (kept_id.clone(), "FINISHED".to_string()),
        (cancelled_id.clone(), "CANCELED".to_string()),
    ];
    want.sort();
    assert_eq!(states, want, "no job was submitted again: {jobs}");
    kube.wait(
        "the session status with no job and the minimum",
        Duration::from_secs(15),
        || {
            let s = kube.get("fs", SESSION)["status"].clone();
            (s["jobsRunning"] == 0
                && s["taskManagers"] == json!({"ready": MIN_TMS, "desired": MIN_TMS}))
            .then_some(())
        },
    );
    assert!(
        peak.get() <= MAX_TMS,
        "never more than maxTaskManagers pods (peak {})",
        peak.get()
    );
    eprintln!(
        "figure: TaskManager pods: {MIN_TMS} idle session -> {both} with two jobs -> {one} with one -> {MIN_TMS} (peak {})",
        peak.get()
    );

    // 5. Delete the remaining FlinkJob, then the session.
    kube.ok(&["delete", "fj", KEPT, "--timeout=60s"]);
    delete_and_check_cleanup(&kube, "fs", SESSION);
    kube.wait(
        "no JobManager or TaskManager processes left",
        Duration::from_secs(30),
        || (rss_mb("jobmanager").is_empty() && rss_mb("taskmanager").is_empty()).then_some(()),
    );
    eprintln!(
        "figure: whole session scenario: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    kube.stop();
}
