//! The main end-to-end run on Kubernetes: the operator installed from
//! `manifests/` runs as a pod on kube-sim, whose process kubelet runs the
//! `rill` binary for every image, and the real `kubectl` drives everything.
//!
//! An application-mode FlinkJob runs `windowed-sum`; its JobManager creates
//! two TaskManager pods. Mid-stream a TaskManager pod is deleted (the job
//! restarts from the latest checkpoint on a replacement pod), malformed
//! specs are refused or reported while the operator stays healthy, and the
//! operator pod is deleted and then crashed (its successors adopt the
//! running cluster without touching it). The job finishes with exactly the
//! output of an uninterrupted run, and deleting the FlinkJob removes
//! everything.

mod kube;
mod support;

use std::time::{Duration, Instant};

use kube::*;
use serde_json::{json, Value};
use support::assert_same;

const NAME: &str = "wsum";

#[test]
fn a_flinkjob_survives_deleted_taskmanager_and_operator_pods_with_exactly_once_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let job = WindowedSum::prepare(dir, 60_000, 42);
    let out_dir = dir.join("out");
    let checkpoints = dir.join("checkpoints");
    let kube = Kube::start(dir, Duration::from_secs(240));

    // 1. Install: manifests, the operator as a pod.
    let installed = Instant::now();
    let first_operator = kube.install_operator(&[
        ("--lease-duration", "3s"),
        ("--renew-deadline", "2s"),
        ("--retry-period", "500ms"),
        ("--status-refresh", "1s"),
        ("--poll-interval", "300ms"),
    ]);
    eprintln!(
        "figure: kubectl apply -f manifests/ -> operator Ready and leading: {:.1} s",
        installed.elapsed().as_secs_f64()
    );

    // An application-mode FlinkJob: 60 000 records at 2 000/s; its
    // checkpoints go when the FlinkJob does.
    let applied = Instant::now();
    kube.apply(&flinkjob(
        NAME,
        &job.args(&out_dir, 2000),
        2,
        &checkpoints,
        json!({"flinkConfiguration": {
            "execution.checkpointing.externalized-checkpoint-retention": "DELETE_ON_CANCELLATION"
        }}),
    ));
    let rest = rest_address(&kube, NAME);
    let tms = kube.wait("2 Ready TaskManager pods", Duration::from_secs(60), || {
        let ready = kube.ready(NAME, "taskmanager");
        (ready.len() == 2).then_some(ready)
    });
    for tm in &tms {
        let owners = &tm["metadata"]["ownerReferences"];
        assert_eq!(owners[0]["kind"], "Deployment", "{owners}");
        assert_eq!(owners[0]["name"], format!("{NAME}-jobmanager"), "{owners}");
    }
    kube.wait(
        "job RUNNING in the FlinkJob status",
        Duration::from_secs(60),
        || (kube.get("fj", NAME)["status"]["jobState"] == "RUNNING").then_some(()),
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
        || kube.get("fj", NAME)["status"]["lastCheckpoint"]["id"].as_u64(),
    );
    let table = kube.ok(&["get", "fj", NAME]);
    eprintln!("{table}");
    assert!(table.contains("RUNNING"), "{table}");
    eprintln!(
        "figure: RSS under load: operator {:?} MB, JobManager {:?} MB, TaskManagers {:?} MB",
        rss_mb("operator"),
        rss_mb("jobmanager"),
        rss_mb("taskmanager")
    );

    // 2. Delete a TaskManager pod that runs tasks mid-stream.
    let busy = http_json(&rest, "/taskmanagers")
        .and_then(|v| {
            v["taskmanagers"].as_array()?.iter().find_map(|t| {
                (t["freeSlots"].as_u64() < t["slotsNumber"].as_u64())
                    .then(|| t["id"].as_str().map(String::from))
                    .flatten()
            })
        })
        .unwrap_or_else(|| name_of(&tms[0]));
    let before: Vec<String> = tms.iter().map(name_of).collect();
    assert!(before.contains(&busy), "{busy} not in {before:?}");
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "the pod is deleted mid-stream ({} of {} windows already committed)",
        partial.0.len(),
        job.expected.0.len()
    );
    let bytes_at_kill = committed_bytes(&out_dir);
    let killed = Instant::now();
    kube.ok(&["delete", "pod", &busy, "--wait=false"]);
    let replacement = kube.wait(
        "a replacement TaskManager pod",
        Duration::from_secs(60),
        || {
            kube.ready(NAME, "taskmanager")
                .into_iter()
                .map(|p| name_of(&p))
                .find(|n| !before.contains(n))
        },
    );
    eprintln!(
        "figure: TaskManager pod deleted -> replacement {replacement} Ready: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let mut first_output = None;
    let note_output = |first: &mut Option<Duration>| {
        if first.is_none() && committed_bytes(&out_dir) > bytes_at_kill {
            *first = Some(killed.elapsed());
        }
    };
    kube.wait(
        "the job RUNNING again after a restart",
        Duration::from_secs(60),
        || {
            note_output(&mut first_output);
            let j = http_json(&rest, &format!("/jobs/{JOB}"))?;
            (j["restarts"].as_u64() >= Some(1) && j["state"] == "RUNNING").then_some(())
        },
    );
    eprintln!(
        "figure: TaskManager pod deleted -> job RUNNING again: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    kube.wait("new committed output", Duration::from_secs(60), || {
        note_output(&mut first_output);
        first_output
    });
    eprintln!(
        "figure: TaskManager pod deleted -> first new committed output: {:.1} s",
        first_output.map_or(0.0, |d| d.as_secs_f64())
    );
    kube.wait(
        "the restart in the FlinkJob status",
        Duration::from_secs(15),
        || (kube.get("fj", NAME)["status"]["restarts"].as_u64() >= Some(1)).then_some(()),
    );

    // 3. Malformed specs: refused at admission, or reported in status and
    // an Event; the operator stays up.
    let refused = kube.apply_refused(&flinkjob(
        "bad-mode",
        &[],
        2,
        &checkpoints,
        json!({"job": {"upgradeMode": "sometimes"}}),
    ));
    assert!(refused.contains("upgradeMode"), "{refused}");
    let refused = kube.apply_refused(&flinkjob(
        "bad-parallelism",
        &[],
        2,
        &checkpoints,
        json!({"job": {"parallelism": 0}}),
    ));
    assert!(refused.contains("parallelism"), "{refused}");
    kube.apply(&flinkjob(
        "bad-interval",
        &[],
        2,
        &checkpoints,
        json!({"checkpointing": {"interval": "every now and then"}}),
    ));
    let bad = kube.wait(
        "status.error of bad-interval",
        Duration::from_secs(30),
        || {
            let s = kube.get("fj", "bad-interval")["status"].clone();
            s["error"].as_str().is_some().then_some(s)
        },
    );
    assert_eq!(bad["lifecycleState"], "FAILED", "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("checkpointing.interval")),
        "{bad}"
    );
    kube.wait(
        "the InvalidSpec Warning event",
        Duration::from_secs(15),
        || {
            // The operator records events.k8s.io/v1 Events.
            let events = kube
                .try_run(&["get", "events.events.k8s.io", "-o", "json"])
                .ok()?;
            let events: Value = serde_json::from_str(&events).ok()?;
            events["items"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["regarding"]["name"] == "bad-interval"
                        && e["type"] == "Warning"
                        && e["reason"] == "InvalidSpec"
                })
                .then_some(())
        },
    );
    assert!(
        kube.get("deployment", "bad-interval-jobmanager").is_null(),
        "nothing is deployed for a bad spec"
    );
    kube.ok(&["delete", "fj", "bad-interval", "--timeout=30s"]);
    let operator_pod = kube.pods_in(OPERATOR_NS, "app.kubernetes.io/name=rill-operator");
    assert_eq!(operator_pod.len(), 1, "{operator_pod:?}");
    assert!(is_ready(&operator_pod[0]), "the operator is Ready");
    assert_eq!(
        restart_count(&operator_pod[0]),
        0,
        "the operator never restarted"
    );

    // 4. Kill the operator: a graceful delete (a new pod takes the released
    // Lease), then a crash (the restarted container waits out the Lease).
    // The running cluster is adopted, not rebuilt.
    let snapshot = |kube: &Kube| {
        let deployment = kube.get("deployment", &format!("{NAME}-jobmanager"));
        let uid = deployment["metadata"]["uid"].as_str().map(String::from);
        let mut tms: Vec<String> = kube
            .pods(&format!("app={NAME},component=taskmanager"))
            .iter()
            .map(name_of)
            .collect();
        tms.sort();
        let jms: Vec<String> = kube
            .pods(&format!("app={NAME},component=jobmanager"))
            .iter()
            .map(name_of)
            .collect();
        (uid, tms, jms)
    };
    let restarts_before = http_json(&rest, &format!("/jobs/{JOB}"))
        .and_then(|j| j["restarts"].as_u64())
        .expect("job restarts");
    let cluster_before = snapshot(&kube);
    let checkpoint_before = kube.get("fj", NAME)["status"]["lastCheckpoint"]["id"]
        .as_u64()
        .unwrap_or(0);
    let deleted = Instant::now();
    kube.ok(&[
        "delete",
        "pod",
        "-n",
        OPERATOR_NS,
        &first_operator,
        "--wait=false",
    ]);
    let second_operator = kube.wait(
        "a new operator pod leading",
        Duration::from_secs(60),
        || {
            let leader = kube.operator_ready(Duration::from_secs(60));
            (leader != first_operator).then_some(leader)
        },
    );
    eprintln!(
        "figure: operator pod deleted -> successor leading: {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    kube.wait(
        "the FlinkJob status refreshed by the new operator",
        Duration::from_secs(30),
        || {
            let id = kube.get("fj", NAME)["status"]["lastCheckpoint"]["id"].as_u64()?;
            (id > checkpoint_before).then_some(())
        },
    );
    let crashed = Instant::now();
    kube.crash(OPERATOR_NS, &second_operator);
    kube.wait(
        "the crashed operator restarted and leading",
        Duration::from_secs(60),
        || {
            let pod = kube
                .pods_in(OPERATOR_NS, "app.kubernetes.io/name=rill-operator")
                .into_iter()
                .find(|p| name_of(p) == second_operator)?;
            (restart_count(&pod) >= 1
                && kube.operator_ready(Duration::from_secs(60)) == second_operator)
                .then_some(())
        },
    );
    eprintln!(
        "figure: operator crashed -> leading again: {:.1} s",
        crashed.elapsed().as_secs_f64()
    );
    let checkpoint_after_crash = kube.get("fj", NAME)["status"]["lastCheckpoint"]["id"]
        .as_u64()
        .unwrap_or(0);
    kube.wait(
        "the FlinkJob status refreshed after the crash",
        Duration::from_secs(30),
        || {
            let s = kube.get("fj", NAME)["status"].clone();
            let id = s["lastCheckpoint"]["id"].as_u64()?;
            (id > checkpoint_after_crash || s["jobState"] == "FINISHED").then_some(())
        },
    );
    assert_eq!(
        snapshot(&kube),
        cluster_before,
        "the new operators adopted the cluster: same Deployment, JobManager and TaskManager pods"
    );
    let deployments = kube.ok(&[
        "get",
        "deployments",
        "-l",
        &format!("app={NAME}"),
        "-o",
        "name",
    ]);
    assert_eq!(deployments.lines().count(), 1, "{deployments}");
    let restarts_after = http_json(&rest, &format!("/jobs/{JOB}"))
        .and_then(|j| j["restarts"].as_u64())
        .expect("job restarts");
    assert_eq!(
        restarts_after, restarts_before,
        "the job kept running while the operator was away"
    );

    // The job finishes with exactly the uninterrupted output.
    kube.wait(
        "job FINISHED in the FlinkJob status",
        Duration::from_secs(90),
        || (kube.get("fj", NAME)["status"]["jobState"] == "FINISHED").then_some(()),
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));
    eprintln!(
        "figure: kubectl apply -> job FINISHED: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    assert_same(
        &output(&out_dir),
        &job.expected,
        "after deleting a TaskManager pod and the operator",
    );

    // 7. Deleting the FlinkJob removes the cluster and, as configured, its
    // checkpoints.
    assert!(complete_checkpoints(&checkpoints, JOB) >= 1);
    delete_and_check_cleanup(&kube, "fj", NAME);
    let left: Vec<String> = std::fs::read_dir(checkpoints.join(JOB))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("chk-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "checkpoints left after DELETE_ON_CANCELLATION: {left:?}"
    );
    kube.wait(
        "no JobManager or TaskManager processes left",
        Duration::from_secs(30),
        || (rss_mb("jobmanager").is_empty() && rss_mb("taskmanager").is_empty()).then_some(()),
    );
    kube.stop();
}
