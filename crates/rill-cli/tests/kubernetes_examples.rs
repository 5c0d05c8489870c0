//! The FlinkJob and FlinkSession examples in `examples/k8s/` run as shipped.
//!
//! A newcomer copies these files first, so each is applied with `kubectl`
//! to an operator installed from `manifests/` on kube-sim and must reach a
//! healthy job: the application-mode `windowed-sum` commits window results,
//! the highly available `driving-score` runs under an elected JobManager
//! leader, and both session jobs finish in their shared cluster. Only what
//! points outside this machine is changed: checkpoint storage (S3 there)
//! and the output directory go to a temporary directory.

mod kube;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kube::*;
use serde_json::{json, Value};

/// The documents of an example file, as JSON.
fn example(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/k8s")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("read example");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml_ng::Value =
                serde::Deserialize::deserialize(doc).expect("example is YAML");
            serde_json::to_value(v).expect("example as JSON")
        })
        .collect()
}

/// Points a resource's checkpoint storage into `dir`.
fn local_storage(doc: &mut Value, dir: &Path) {
    if doc["spec"]["checkpointing"]["storage"].is_string() {
        let name = doc["metadata"]["name"].as_str().unwrap_or("job");
        doc["spec"]["checkpointing"]["storage"] = json!(format!(
            "file://{}",
            dir.join("checkpoints").join(name).display()
        ));
    }
}

fn status(kube: &Kube, kind: &str, name: &str) -> Value {
    kube.get(kind, name)["status"].clone()
}

fn job_state(kube: &Kube, name: &str) -> Option<String> {
    status(kube, "fj", name)["jobState"]
        .as_str()
        .map(String::from)
}

#[test]
fn every_kubernetes_example_runs_as_shipped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let kube = Kube::start(dir, Duration::from_secs(300));
    kube.install_operator(&[("--status-refresh", "1s"), ("--poll-interval", "300ms")]);

    // 1. Application mode: windowed-sum on its generated readings.
    let mut docs = example("flinkjob-application.yaml");
    assert_eq!(docs.len(), 1);
    let mut app = docs.remove(0);
    local_storage(&mut app, dir);
    let out = dir.join("windowed-sum-out");
    let args = app["spec"]["job"]["args"]
        .as_array_mut()
        .expect("windowed-sum has args");
    let at = args
        .iter()
        .position(|a| a == "--output")
        .expect("the example names its output directory");
    args[at + 1] = json!(out.display().to_string());
    let applied = Instant::now();
    kube.apply(&app);
    kube.wait("windowed-sum RUNNING", Duration::from_secs(60), || {
        (job_state(&kube, "windowed-sum").as_deref() == Some("RUNNING")).then_some(())
    });
    eprintln!(
        "figure: application example applied -> RUNNING: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    // Results are committed with the first checkpoint (every 10 s).
    let windows = kube.wait("committed windows", Duration::from_secs(60), || {
        let (windows, _) = output(&out);
        (!windows.is_empty()).then_some(windows)
    });
    for line in &windows {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "{line}");
        let (start, end): (i64, i64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!((start % 10_000, end - start), (0, 10_000), "{line}");
        assert!(f[3].parse::<u64>().unwrap() > 0, "{line}");
    }
    let s = kube.wait(
        "a checkpoint in the status",
        Duration::from_secs(30),
        || {
            let s = status(&kube, "fj", "windowed-sum");
            s["lastCheckpoint"]["id"].as_u64().map(|_| s)
        },
    );
    assert_eq!(s["lifecycleState"], "STABLE", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    delete_and_check_cleanup(&kube, "fj", "windowed-sum");

    // 2. HA: two JobManagers, one elected leader, driving-score to the end.
    let mut docs = example("flinkjob-ha.yaml");
    assert_eq!(docs.len(), 1);
    let mut ha = docs.remove(0);
    local_storage(&mut ha, dir);
    kube.apply(&ha);
    let s = kube.wait("driving-score FINISHED", Duration::from_secs(90), || {
        let s = status(&kube, "fj", "driving-score");
        (s["jobState"] == "FINISHED").then_some(s)
    });
    assert_eq!(s["restarts"], 0, "{s}");
    let leader = s["jobManagerLeader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let jms = kube.wait("2 Ready JobManagers", Duration::from_secs(30), || {
        let ready = kube.ready("driving-score", "jobmanager");
        (ready.len() == 2).then_some(ready)
    });
    assert!(
        jms.iter().any(|p| name_of(p) == leader),
        "the leader {leader:?} is one of the JobManager pods"
    );
    delete_and_check_cleanup(&kube, "fj", "driving-score");

    // 3. A session cluster and its two jobs.
    let docs = example("flinksession.yaml");
    assert_eq!(docs.len(), 3);
    let mut jobs = Vec::new();
    for mut doc in docs {
        local_storage(&mut doc, dir);
        if doc["kind"] == "FlinkJob" {
            jobs.push(doc["metadata"]["name"].as_str().unwrap().to_string());
        }
        kube.apply(&doc);
    }
    assert_eq!(jobs, ["wordcount", "top-speed"]);
    for job in &jobs {
        let s = kube.wait(&format!("{job} FINISHED"), Duration::from_secs(90), || {
            let s = status(&kube, "fj", job);
            (s["jobState"] == "FINISHED").then_some(s)
        });
        assert_eq!(s["restarts"], 0, "{job}: {s}");
    }
    // The session's own status follows at its next refresh: it may have
    // turned STABLE before its first TaskManager ran, and short jobs can
    // finish before the refresh after that.
    kube.wait(
        "the session STABLE with a ready TaskManager and no running job",
        Duration::from_secs(30),
        || {
            let s = status(&kube, "fs", "shared");
            (s["lifecycleState"] == "STABLE"
                && s["jobsRunning"] == 0
                && s["taskManagers"]["ready"].as_u64() >= Some(1))
            .then_some(())
        },
    );
    for job in &jobs {
        kube.ok(&["delete", "fj", job, "--timeout=60s"]);
    }
    delete_and_check_cleanup(&kube, "fs", "shared");
    kube.stop();
}
