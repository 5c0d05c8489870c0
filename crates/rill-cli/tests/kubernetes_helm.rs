//! `helm install` of `charts/rill-operator` on kube-sim, through Helm's own
//! library (helm-python-sdk, see `crates/rill-operator/tests/helm_chart.py`),
//! the way a platform engineer installs the operator.
//!
//! The release creates the namespace, the CRDs, the operator's RBAC and its
//! Deployment; the operator pod runs and leads; a FlinkJob applied with the
//! real `kubectl` runs to the end with exactly the output of a run outside
//! Kubernetes. A second install of the same release is refused by Helm, and
//! `helm uninstall` removes the operator while the CRDs (Helm never deletes
//! what it installed from `crds/`) and so the users' resources stay.
//!
//! Both run with `--wait` (Helm's status watcher), which reads the
//! Deployment's ReplicaSets and pods as it does on a real cluster: install
//! returns once the operator pod is ready, uninstall once its objects are
//! gone.

mod kube;
mod support;

use std::time::{Duration, Instant};

use kube::*;
use serde_json::json;
use support::assert_same;

const NAME: &str = "wsum-helm";

#[test]
fn the_helm_chart_installs_an_operator_that_runs_a_flinkjob_and_uninstalls_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let job = WindowedSum::prepare(dir, 60_000, 11);
    let out_dir = dir.join("out");
    let checkpoints = dir.join("checkpoints");
    let kube = Kube::start(dir, Duration::from_secs(240));
    let values = json!({
        "leaderElection": {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "500ms"},
        "statusRefresh": "1s",
        "pollInterval": "300ms",
    });

    // 1. helm install --wait: the release is deployed at revision 1 and
    // the operator's Deployment is available when it returns.
    let installed = Instant::now();
    let release = kube
        .helm("install", &values)
        .unwrap_or_else(|e| panic!("{e}\n{}", kube.diagnostics()));
    eprintln!(
        "figure: helm install --wait: {:.1} s",
        installed.elapsed().as_secs_f64()
    );
    let deployment = kube.json(&["get", "deployment", "-n", OPERATOR_NS, OPERATOR]);
    assert_eq!(
        deployment["status"]["readyReplicas"], 1,
        "helm install --wait returned before the operator was ready: {deployment}"
    );
    assert_eq!(release["name"], OPERATOR, "{release}");
    assert_eq!(release["namespace"], OPERATOR_NS, "{release}");
    assert_eq!(release["status"], "deployed", "{release}");
    assert_eq!(release["revision"], 1, "{release}");
    assert!(
        release["releases"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == OPERATOR)),
        "helm list shows the release: {release}"
    );
    kube.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/flinkjobs.rill.dev",
        "crd/flinksessions.rill.dev",
        "--timeout=30s",
    ]);
    let operator = kube.operator_ready(Duration::from_secs(60));
    eprintln!(
        "figure: helm install -> operator Ready and leading: {:.1} s",
        installed.elapsed().as_secs_f64()
    );
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
        "{deployment}"
    );
    assert_eq!(
        deployment["metadata"]["annotations"]["meta.helm.sh/release-name"], OPERATOR,
        "{deployment}"
    );
    let pod = kube.json(&["get", "pod", "-n", OPERATOR_NS, &operator]);
    let args = pod["spec"]["containers"][0]["args"].to_string();
    for flag in [
        "--lease-duration=3s",
        "--status-refresh=1s",
        "--poll-interval=300ms",
    ] {
        assert!(args.contains(flag), "values reach the operator: {args}");
    }

    // 2. Installing the same release again is refused; the first stays.
    let again = kube
        .helm("install", &values)
        .expect_err("a second install of the same release");
    assert!(
        again.contains("in use") || again.contains("exists"),
        "Helm says why: {again}"
    );
    assert_eq!(kube.operator_ready(Duration::from_secs(10)), operator);

    // 3. A FlinkJob (60 000 records at 2 000/s, so it is seen RUNNING)
    // runs to the end with the uninterrupted output.
    let applied = Instant::now();
    kube.apply(&flinkjob(
        NAME,
        &job.args(&out_dir, 2000),
        2,
        &checkpoints,
        json!({}),
    ));
    kube.wait(
        "job RUNNING in the FlinkJob status",
        Duration::from_secs(60),
        || (kube.get("fj", NAME)["status"]["jobState"] == "RUNNING").then_some(()),
    );
    eprintln!(
        "figure: kubectl apply -> job RUNNING: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    kube.wait(
        "job FINISHED in the FlinkJob status",
        Duration::from_secs(90),
        || (kube.get("fj", NAME)["status"]["jobState"] == "FINISHED").then_some(()),
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));
    assert_same(
        &output(&out_dir),
        &job.expected,
        "under the Helm-installed operator",
    );
    delete_and_check_cleanup(&kube, "fj", NAME);

    // 4. helm uninstall: the operator goes, the CRDs stay.
    let uninstalled = Instant::now();
    let release = kube
        .helm("uninstall", &json!({}))
        .unwrap_or_else(|e| panic!("{e}\n{}", kube.diagnostics()));
    assert_eq!(release["status"], "uninstalled", "{release}");
    assert!(
        release["releases"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["name"] != OPERATOR)),
        "helm list no longer shows the release: {release}"
    );
    kube.wait(
        "the operator's Deployment and pods gone",
        Duration::from_secs(60),
        || {
            let left = kube
                .try_run(&[
                    "get",
                    "deployments,replicasets,pods,serviceaccounts,services",
                    "-n",
                    OPERATOR_NS,
                    "-l",
                    "app.kubernetes.io/name=rill-operator",
                    "-o",
                    "name",
                ])
                .ok()?;
            left.trim().is_empty().then_some(())
        },
    );
    eprintln!(
        "figure: helm uninstall -> operator pods gone: {:.1} s",
        uninstalled.elapsed().as_secs_f64()
    );
    assert!(
        kube.try_run(&["get", "clusterrole", OPERATOR]).is_err(),
        "the operator's ClusterRole is gone"
    );
    for crd in ["flinkjobs.rill.dev", "flinksessions.rill.dev"] {
        assert!(
            kube.try_run(&["get", "crd", crd]).is_ok(),
            "helm uninstall keeps the CRD {crd}"
        );
    }
    kube.stop();
}
