//! The Helm chart, linted and rendered by real Helm (the `helm-python-sdk`
//! package bundles Helm's Go library; `tests/helm_chart.py` installs it with
//! pip when missing), and the plain manifests kept equal to its render.
//!
//! Regenerate `manifests/` after changing the chart with
//! `RILL_UPDATE_MANIFESTS=1 cargo test -p rill-operator --test helm`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("repo root")
        .to_path_buf()
}

fn render() -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm_chart.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "helm_chart.py failed (exit {:?}); helm-python-sdk must be installable with pip:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("helm_chart.py prints JSON")
}

fn objects<'a>(v: &'a Value, case: &str) -> &'a Vec<Value> {
    v["renders"][case].as_array().expect("render case")
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect()
}

fn verbs_for(objs: &[Value], kind: &str, group: &str, resource: &str) -> BTreeSet<String> {
    objs.iter()
        .filter(|o| o["kind"] == kind)
        .flat_map(|o| o["doc"]["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x == group))
                && r["resources"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|x| x == resource))
        })
        .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_chart_lints_and_renders_least_privilege_rbac() {
    let v = render();
    let errors = v["lint"]["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "helm lint --strict: {errors:?}");
    let severe: Vec<_> = v["lint"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
        .collect();
    assert!(severe.is_empty(), "lint warnings: {severe:?}");

    // Cluster-wide install.
    let all = objects(&v, "default");
    assert_eq!(
        kinds(all),
        set(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ServiceAccount"
        ])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "rill.dev", "flinkjobs"),
        set(&["get", "list", "watch", "patch", "update"])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "rill.dev", "flinkjobs/status"),
        set(&["get", "patch", "update"])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "rill.dev", "flinkjobs/finalizers"),
        set(&["update"])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "coordination.k8s.io", "leases"),
        set(&["get", "list", "watch", "create", "update", "patch"])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "", "pods"),
        set(&[
            "get",
            "list",
            "watch",
            "create",
            "delete",
            "deletecollection"
        ])
    );
    assert_eq!(
        verbs_for(all, "ClusterRole", "", "secrets"),
        BTreeSet::new(),
        "no secrets"
    );
    for o in all {
        for r in o["doc"]["rules"].as_array().cloned().unwrap_or_default() {
            for key in ["verbs", "resources", "apiGroups"] {
                assert!(
                    !r[key]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "*")),
                    "wildcard {key} in {r}"
                );
            }
        }
    }
    let deployment = all
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("deployment");
    let container = &deployment["doc"]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "operator");
    assert!(args.contains(&"0.0.0.0:9090"), "{args:?}");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(deployment["namespace"], "rill-system");

    // Namespaced install: Roles in the watched namespaces, none cluster-wide.
    let ns = objects(&v, "namespaced");
    assert!(!kinds(ns).contains("ClusterRole"));
    let role_namespaces: BTreeSet<String> = ns
        .iter()
        .filter(|o| o["kind"] == "Role")
        .filter_map(|o| o["namespace"].as_str().map(String::from))
        .collect();
    assert_eq!(role_namespaces, set(&["etl", "jobs", "rill-system"]));
    let d = ns
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("deployment");
    let args = d["doc"]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("jobs,etl"), "{args}");
}

#[test]
fn manifests_match_the_chart_and_the_crds() {
    let root = repo_root();
    let v = render();
    let operator = format!(
        "# Generated from charts/rill-operator (release rill-operator, namespace rill-system); do not edit.\n{}",
        v["manifest"].as_str().expect("manifest")
    );
    let mut crds = String::from("# Generated from crds/; do not edit.\n");
    for (file, yaml) in rill_operator::crd::generated_crds().expect("crds") {
        crds.push_str(&format!("---\n# Source: crds/{file}\n{yaml}"));
    }
    let files = [("01-crds.yaml", crds), ("02-operator.yaml", operator)];
    let dir = root.join("manifests");
    if std::env::var_os("RILL_UPDATE_MANIFESTS").is_some() {
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).expect("write manifest");
        }
    }
    for (name, text) in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            on_disk == *text,
            "manifests/{name} drifted from the chart/CRDs; run RILL_UPDATE_MANIFESTS=1 cargo test -p rill-operator --test helm"
        );
    }
    assert!(dir.join("00-namespace.yaml").exists());
}
