//! The CRDs: generated files in sync with the types, admitted by kubectl,
//! printer columns, and schema validation at admission.
//!
//! Regenerate after changing the types with
//! `RILL_UPDATE_CRDS=1 cargo test -p rill-operator --test crds`
//! (or `rill crdgen`), which rewrites `crds/` and the chart's copy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Sim;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use rill_operator::crd::FlinkJob;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("repo root")
        .to_path_buf()
}

#[test]
fn generated_crds_match_the_checked_in_files() {
    let root = repo_root();
    let dirs = [root.join("crds"), root.join("charts/rill-operator/crds")];
    if std::env::var_os("RILL_UPDATE_CRDS").is_some() {
        for d in &dirs {
            rill_operator::run_crdgen(d).expect("crdgen");
        }
    }
    for d in &dirs {
        let drift = rill_operator::crd_drift(d).expect("drift");
        assert!(
            drift.is_empty(),
            "CRDs drifted from crates/rill-operator/src/crd.rs: {drift:?}; \
             run `RILL_UPDATE_CRDS=1 cargo test -p rill-operator --test crds` or `rill crdgen`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crds_and_lists_flinkjobs_with_columns() {
    let sim = Sim::start(Default::default()).await;
    let root = repo_root();
    let crds = root.join("crds");
    let example = root.join("examples/k8s/flinkjob-application.yaml");
    let result = tokio::task::spawn_blocking({
        let sim_kc = sim.kubeconfig();
        move || {
            let run = |args: &[&str]| {
                let out = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&sim_kc)
                    .args(args)
                    .output()
                    .expect("kubectl on PATH");
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            };
            let applied = run(&["apply", "-f", crds.to_str().expect("path")]);
            assert!(applied.0, "kubectl apply crds: {} {}", applied.1, applied.2);
            let waited = run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=20s",
                "crd/flinkjobs.rill.dev",
                "crd/flinksessions.rill.dev",
            ]);
            assert!(waited.0, "kubectl wait: {} {}", waited.1, waited.2);
            let job = run(&["apply", "-f", example.to_str().expect("path")]);
            assert!(job.0, "kubectl apply example: {} {}", job.1, job.2);
            let listed = run(&["get", "fj"]);
            assert!(listed.0, "kubectl get fj: {}", listed.2);
            let sessions = run(&["get", "flinksessions"]);
            assert!(sessions.0, "kubectl get flinksessions: {}", sessions.2);
            listed.1
        }
    })
    .await
    .expect("kubectl thread");
    let header = result.lines().next().unwrap_or_default().to_string();
    for col in [
        "NAME",
        "STATE",
        "JOB STATE",
        "PARALLELISM",
        "LAST CHECKPOINT",
        "RESTARTS",
        "AGE",
    ] {
        assert!(header.contains(col), "column {col} missing in {result}");
    }
    assert!(result.contains("windowed-sum"), "{result}");
    assert!(
        result.lines().nth(1).unwrap_or_default().contains('2'),
        "parallelism shown: {result}"
    );
    sim.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flinkjobs_are_rejected_at_admission() {
    let sim = Sim::start(Default::default()).await;
    sim.install_crds().await;
    let api: Api<FlinkJob> = Api::namespaced(sim.client(), "default");
    let base = serde_json::json!({
        "apiVersion": "rill.dev/v1alpha1", "kind": "FlinkJob",
        "metadata": {"name": "ok"},
        "spec": {"image": "rill:1", "job": {"entry": "windowed-sum", "parallelism": 2}}
    });
    let accepted: FlinkJob = serde_json::from_value(base.clone()).expect("parse");
    api.create(&PostParams::default(), &accepted)
        .await
        .expect("a valid job is accepted");

    let cases = [
        (
            "bad-mode",
            serde_json::json!({"job": {"entry": "e", "upgradeMode": "sometimes"}}),
        ),
        (
            "zero-parallelism",
            serde_json::json!({"job": {"entry": "e", "parallelism": 0}}),
        ),
        ("no-entry", serde_json::json!({"job": {"parallelism": 1}})),
        (
            "bad-backend",
            serde_json::json!({"job": {"entry": "e"}, "stateBackend": {"type": "leveldb"}}),
        ),
        (
            "bad-state",
            serde_json::json!({"job": {"entry": "e", "state": "paused"}}),
        ),
    ];
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        sim.client(),
        "default",
        &ApiResource::erase::<FlinkJob>(&()),
    );
    for (name, spec_patch) in cases {
        let mut obj = base.clone();
        obj["metadata"]["name"] = name.into();
        let job = obj["spec"]["job"].take();
        obj["spec"] = serde_json::json!({"image": "rill:1"});
        let _ = job;
        for (k, v) in spec_patch.as_object().expect("object") {
            obj["spec"][k] = v.clone();
        }
        // Sent untyped: the Rust types could not even express these.
        let raw: DynamicObject = serde_json::from_value(obj).expect("dynamic");
        let res = dynamic.create(&PostParams::default(), &raw).await;
        match res {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{name}: {s:?}"),
            other => panic!("{name}: expected 422 Invalid, got {other:?}"),
        }
    }
    sim.sim.stop().await;
}
