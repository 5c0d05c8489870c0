//! Stateful upgrades of a FlinkJob on kube-sim: the operator installed from
//! `manifests/` runs as a pod, the process kubelet runs the `rill` binary
//! for every image, and the real `kubectl` drives everything.
//!
//! An application-mode FlinkJob runs `windowed-sum` with
//! `upgradeMode: savepoint` and HA. Mid-stream its parallelism goes from 2
//! to 3 (stop with a savepoint, redeploy, restore the savepoint with the
//! window state rescaled over three subtasks), it is suspended (savepoint,
//! cluster removed) and resumed from that savepoint, and a `last-state`
//! upgrade takes it back to parallelism 2 from the latest checkpoint the HA
//! ConfigMap points at, without a savepoint. The job finishes with exactly
//! the output of an uninterrupted run, and deleting the FlinkJob removes
//! everything.

mod kube;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kube::*;
use serde_json::{json, Value};
use support::assert_same;

const NAME: &str = "wsum-upgrade";

fn patch(kube: &Kube, spec: Value) {
    kube.ok(&[
        "patch",
        "fj",
        NAME,
        "--type=merge",
        "-p",
        &json!({ "spec": spec }).to_string(),
    ]);
}

fn status(kube: &Kube) -> Value {
    kube.get("fj", NAME)["status"].clone()
}

/// `GET /jobs/:id/checkpoints` of the job.
fn checkpoints_of(rest: &str) -> Option<Value> {
    http_json(rest, &format!("/jobs/{JOB}/checkpoints"))
}

/// Uids of the cluster's pods of one component, whatever their phase
/// (TaskManager pod names are reused by a new cluster).
fn pod_uids(kube: &Kube, component: &str) -> Vec<String> {
    let mut uids: Vec<String> = kube
        .pods(&format!("app={NAME},component={component}"))
        .iter()
        .map(uid_of)
        .collect();
    uids.sort();
    uids
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Completed savepoints under the savepoint directory.
fn savepoints_on_disk(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("_metadata").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// The local directory of a `file://` URI.
fn local(uri: &str) -> &Path {
    Path::new(uri.strip_prefix("file://").unwrap_or(uri))
}

/// The job's vertices: the source keeps parallelism 1, the keyed window
/// vertex (fed by a HASH exchange) runs at `parallelism`.
fn assert_vertices(rest: &str, parallelism: u64) {
    let j = http_json(rest, &format!("/jobs/{JOB}")).expect("job details");
    let vertices = j["vertices"].as_array().cloned().unwrap_or_default();
    let summary: Vec<String> = vertices
        .iter()
        .map(|v| format!("{} x{}", v["name"], v["parallelism"]))
        .collect();
    let sources: Vec<&Value> = vertices
        .iter()
        .filter(|v| v["inputs"].as_array().is_some_and(|i| i.is_empty()))
        .collect();
    assert_eq!(sources.len(), 1, "one source: {summary:?}");
    assert_eq!(sources[0]["parallelism"], 1, "{summary:?}");
    let keyed: Vec<&Value> = vertices
        .iter()
        .filter(|v| {
            v["inputs"]
                .as_array()
                .is_some_and(|i| i.iter().any(|x| x["ship-strategy"] == "HASH"))
        })
        .collect();
    assert!(!keyed.is_empty(), "a keyed vertex: {summary:?}");
    for v in keyed {
        assert_eq!(v["parallelism"].as_u64(), Some(parallelism), "{summary:?}");
    }
}

/// Waits until a JobManager other than `old_jms` runs the job RUNNING at
/// `parallelism` on exactly `parallelism` Ready TaskManager pods (one slot
/// each), the FlinkJob status agrees, and the new job has completed a
/// checkpoint of its own. Prints when the new JobManager pod was Ready and
/// the job RUNNING, counted from `since` (the change). Returns the job's
/// `/checkpoints` answer.
fn wait_redeployed(
    kube: &Kube,
    rest: &str,
    old_jms: &[String],
    parallelism: u64,
    (what, since): (&str, Instant),
) -> Value {
    let mut jm_ready = None;
    kube.wait(
        &format!("a new JobManager running the job at parallelism {parallelism}"),
        Duration::from_secs(90),
        || {
            let jms = kube.ready(NAME, "jobmanager");
            if jms.len() != 1 || old_jms.contains(&uid_of(&jms[0])) {
                return None;
            }
            jm_ready.get_or_insert_with(|| since.elapsed());
            let j = http_json(rest, &format!("/jobs/{JOB}"))?;
            (j["state"] == "RUNNING" && j["parallelism"].as_u64() == Some(parallelism))
                .then_some(())
        },
    );
    eprintln!(
        "figure: {what} -> RUNNING again: {:.1} s (new JobManager pod Ready after {:.1} s)",
        since.elapsed().as_secs_f64(),
        jm_ready.unwrap_or_default().as_secs_f64()
    );
    kube.wait(
        &format!("{parallelism} Ready TaskManager pods"),
        Duration::from_secs(30),
        || (kube.ready(NAME, "taskmanager").len() as u64 == parallelism).then_some(()),
    );
    kube.wait(
        "the FlinkJob STABLE with the job RUNNING",
        Duration::from_secs(30),
        || {
            let s = status(kube);
            (s["lifecycleState"] == "STABLE"
                && s["jobState"] == "RUNNING"
                && s["pendingSavepoint"].is_null())
            .then_some(())
        },
    );
    kube.wait(
        "a checkpoint completed by the new job",
        Duration::from_secs(30),
        || {
            let c = checkpoints_of(rest)?;
            (c["counts"]["completed"].as_u64() >= Some(1)).then_some(c)
        },
    )
}

#[test]
fn a_flinkjob_keeps_its_state_through_rescale_suspend_resume_and_last_state_upgrades() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let job = WindowedSum::prepare(dir, 80_000, 7);
    let out_dir = dir.join("out");
    let checkpoints = dir.join("checkpoints");
    let savepoints = checkpoints.join("savepoints");
    let kube = Kube::start(dir, Duration::from_secs(240));
    kube.install_operator(&[
        ("--lease-duration", "3s"),
        ("--renew-deadline", "2s"),
        ("--retry-period", "500ms"),
        ("--status-refresh", "1s"),
        ("--poll-interval", "300ms"),
    ]);

    // 1. 80 000 records at 2 000/s, parallelism 2, upgrades by savepoint;
    // HA keeps the checkpoint pointers a last-state upgrade restores from.
    let applied = Instant::now();
    kube.apply(&flinkjob(
        NAME,
        &job.args(&out_dir, 2000),
        2,
        &checkpoints,
        json!({
            "job": {"upgradeMode": "savepoint"},
            "highAvailability": {"enabled": true},
            "flinkConfiguration": {
                "high-availability.kubernetes.leader-election.lease-duration": "3s",
                "high-availability.kubernetes.leader-election.renew-deadline": "2s",
                "high-availability.kubernetes.leader-election.retry-period": "500ms",
            },
        }),
    ));
    let rest = rest_address(&kube, NAME);
    kube.wait("2 Ready TaskManager pods", Duration::from_secs(60), || {
        (kube.ready(NAME, "taskmanager").len() == 2).then_some(())
    });
    kube.wait(
        "job RUNNING in the FlinkJob status",
        Duration::from_secs(60),
        || (status(&kube)["jobState"] == "RUNNING").then_some(()),
    );
    eprintln!(
        "figure: kubectl apply -> job RUNNING: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    kube.wait("2 completed checkpoints", Duration::from_secs(30), || {
        (complete_checkpoints(&checkpoints, JOB) >= 2).then_some(())
    });
    kube.wait(
        "a checkpoint in the FlinkJob status",
        Duration::from_secs(15),
        || status(&kube)["lastCheckpoint"]["id"].as_u64(),
    );
    let first = http_json(&rest, &format!("/jobs/{JOB}")).expect("job details");
    assert_eq!(first["parallelism"], 2, "{first}");
    assert_vertices(&rest, 2);
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));

    // 2. Parallelism 2 -> 3 with upgradeMode savepoint.
    let jms = pod_uids(&kube, "jobmanager");
    let tms = pod_uids(&kube, "taskmanager");
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "the upgrade happens mid-stream ({} of {} windows committed)",
        partial.0.len(),
        job.expected.0.len()
    );
    let patched = Instant::now();
    patch(&kube, json!({"job": {"parallelism": 3}}));
    let cps = wait_redeployed(&kube, &rest, &jms, 3, ("parallelism change", patched));
    assert_vertices(&rest, 3);
    let s = status(&kube);
    let savepoint = s["lastSavepoint"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("a savepoint in the status: {s}"))
        .to_string();
    assert!(
        local(&savepoint).join("_metadata").is_file(),
        "the savepoint {savepoint} is on disk"
    );
    assert!(
        local(&savepoint).starts_with(&savepoints),
        "{savepoint} is under {}",
        savepoints.display()
    );
    assert_eq!(s["restoreSavepoint"], savepoint.as_str(), "{s}");
    let restored = &cps["latest"]["restored"];
    assert_eq!(restored["is_savepoint"], true, "{cps}");
    assert_eq!(restored["external_path"], savepoint.as_str(), "{cps}");
    assert_eq!(cps["counts"]["restored"], 1, "{cps}");
    let new_tms = pod_uids(&kube, "taskmanager");
    assert!(
        new_tms.iter().all(|t| !tms.contains(t)),
        "new TaskManager pods: {tms:?} -> {new_tms:?}"
    );
    let config = kube.get("configmap", &format!("{NAME}-config"));
    let conf = config["data"]["config.yaml"].as_str().unwrap_or_default();
    assert!(
        conf.contains("parallelism.default: '3'") || conf.contains("parallelism.default: 3"),
        "{conf}"
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));

    // 3. Suspend: a savepoint, then no JobManager or TaskManager pods.
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "suspended mid-stream ({} of {} windows committed)",
        partial.0.len(),
        job.expected.0.len()
    );
    let suspended = Instant::now();
    patch(&kube, json!({"job": {"state": "suspended"}}));
    let s = kube.wait(
        "the FlinkJob SUSPENDED with a new savepoint",
        Duration::from_secs(60),
        || {
            let s = status(&kube);
            (s["lifecycleState"] == "SUSPENDED"
                && s["lastSavepoint"]["path"]
                    .as_str()
                    .is_some_and(|p| p != savepoint))
            .then_some(s)
        },
    );
    kube.wait("the cluster's pods gone", Duration::from_secs(60), || {
        (kube.pods(&format!("app={NAME}")).is_empty()).then_some(())
    });
    eprintln!(
        "figure: suspend -> pods gone: {:.1} s",
        suspended.elapsed().as_secs_f64()
    );
    assert!(kube
        .get("deployment", &format!("{NAME}-jobmanager"))
        .is_null());
    let suspend_savepoint = s["lastSavepoint"]["path"].as_str().unwrap().to_string();
    assert!(
        local(&suspend_savepoint).join("_metadata").is_file(),
        "the savepoint {suspend_savepoint} is on disk"
    );
    assert!(s["jobState"].is_null(), "{s}");
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));
    let at_suspend = output(&out_dir);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        output(&out_dir),
        at_suspend,
        "nothing is written while suspended"
    );

    // Resume from that savepoint.
    let resumed = Instant::now();
    patch(&kube, json!({"job": {"state": "running"}}));
    let cps = wait_redeployed(&kube, &rest, &[], 3, ("resume", resumed));
    assert_vertices(&rest, 3);
    let restored = &cps["latest"]["restored"];
    assert_eq!(restored["is_savepoint"], true, "{cps}");
    assert_eq!(
        restored["external_path"],
        suspend_savepoint.as_str(),
        "{cps}"
    );
    let s = status(&kube);
    assert_eq!(s["restoreSavepoint"], suspend_savepoint.as_str(), "{s}");

    // 4. last-state: back to parallelism 2 from the latest checkpoint the
    // HA ConfigMap points at; no savepoint.
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "the last-state upgrade happens mid-stream ({} of {} windows committed)",
        partial.0.len(),
        job.expected.0.len()
    );
    let jms = pod_uids(&kube, "jobmanager");
    let savepoints_before = savepoints_on_disk(&savepoints);
    let ha = kube.get("configmap", &format!("{NAME}-cluster-config-map"));
    let pointer: Value = ha["data"][format!("checkpoint-{JOB}")]
        .as_str()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| panic!("a checkpoint pointer in the HA ConfigMap: {ha}"));
    let latest_before = checkpoints_of(&rest)
        .and_then(|c| c["latest"]["completed"]["id"].as_u64())
        .expect("a completed checkpoint");
    let patched = Instant::now();
    patch(
        &kube,
        json!({"job": {"upgradeMode": "last-state", "parallelism": 2}}),
    );
    let cps = wait_redeployed(&kube, &rest, &jms, 2, ("last-state upgrade", patched));
    assert_vertices(&rest, 2);
    let restored = &cps["latest"]["restored"];
    assert_eq!(restored["is_savepoint"], false, "{cps}");
    assert!(
        restored["id"].as_u64() >= Some(latest_before),
        "restored checkpoint {} is at least the latest before the upgrade, {latest_before} (HA pointer then: {pointer})",
        restored["id"]
    );
    let path = restored["external_path"].as_str().unwrap_or_default();
    assert!(
        local(path).starts_with(checkpoints.join(JOB)),
        "restored from a checkpoint: {cps}"
    );
    let s = status(&kube);
    assert_eq!(
        s["lastSavepoint"]["path"],
        suspend_savepoint.as_str(),
        "no savepoint for last-state: {s}"
    );
    assert_eq!(
        savepoints_on_disk(&savepoints),
        savepoints_before,
        "no savepoint for last-state"
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));

    // 5. The job finishes with exactly the uninterrupted output.
    kube.wait(
        "job FINISHED in the FlinkJob status",
        Duration::from_secs(120),
        || (status(&kube)["jobState"] == "FINISHED").then_some(()),
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));
    eprintln!(
        "figure: kubectl apply -> job FINISHED after three upgrades: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    assert_same(
        &output(&out_dir),
        &job.expected,
        "after a rescale by savepoint, suspend/resume and a last-state upgrade",
    );

    delete_and_check_cleanup(&kube, "fj", NAME);
    kube.stop();
}
