//! kube-sim checked with the real `kubectl` client.
//!
//! Each test starts its own in-process server on a free loopback port,
//! writes a kubeconfig into a temp dir and runs `kubectl --kubeconfig` as a
//! subprocess (see `support`).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use kube_sim::Options;
use serde_json::Value;
use support::Kubectl;

mod support;

const CONFIGMAP_V1: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  mode: fast
  level: \"1\"
";

const CONFIGMAP_V2: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  mode: slow
";

const DEPLOYMENT_V1: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: web:1
        env:
        - {name: MODE, value: fast}
        - {name: LEVEL, value: \"1\"}
        ports:
        - containerPort: 8080
      - name: sidecar
        image: side:1
";

const DEPLOYMENT_V2: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: web:2
        env:
        - {name: MODE, value: slow}
        ports:
        - containerPort: 8080
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_then_applies_changes() {
    let k = Kubectl::start(Options::default()).await;
    let cm1 = k.write("cm1.yaml", CONFIGMAP_V1);
    let cm2 = k.write("cm2.yaml", CONFIGMAP_V2);
    let out = k.ok(&["apply", "-f", &cm1]).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = k.ok(&["apply", "-f", &cm2]).await;
    assert!(out.contains("configmap/settings configured"), "{out}");
    let cm = k.json(&["get", "configmap", "settings"]).await;
    assert_eq!(cm["data"]["mode"], "slow");
    assert!(
        cm["data"].get("level").is_none(),
        "removed key is pruned by the 3-way patch: {cm}"
    );

    let d1 = k.write("d1.yaml", DEPLOYMENT_V1);
    let d2 = k.write("d2.yaml", DEPLOYMENT_V2);
    k.ok(&["apply", "-f", &d1]).await;
    let d = k.json(&["get", "deployment", "web"]).await;
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let out = k.ok(&["apply", "-f", &d2]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = k.json(&["get", "deployment", "web"]).await;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(containers.len(), 1, "sidecar removed: {containers:?}");
    assert_eq!(containers[0]["image"], "web:2");
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "MODE", "value": "slow"}])
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["generation"], 2);
    // Re-applying the same manifest changes nothing.
    let out = k.ok(&["apply", "-f", &d2]).await;
    assert!(out.contains("unchanged"), "{out}");
    let rv = k.json(&["get", "cm", "settings"]).await["metadata"]["resourceVersion"].clone();
    let out = k.ok(&["apply", "-f", &cm2]).await;
    assert!(out.contains("unchanged"), "{out}");
    let cm = k.json(&["get", "cm", "settings"]).await;
    assert_eq!(cm["metadata"]["resourceVersion"], rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_json_yaml_and_selectors() {
    let k = Kubectl::start(Options::default()).await;
    let cm = k.write("cm.yaml", CONFIGMAP_V1);
    k.ok(&["apply", "-f", &cm]).await;
    let v = k.json(&["get", "cm", "settings"]).await;
    assert_eq!(v["kind"], "ConfigMap");
    assert_eq!(v["metadata"]["namespace"], "default");
    assert!(v["metadata"]["uid"].as_str().unwrap().len() == 36);
    let yaml = k.ok(&["get", "configmap", "settings", "-o", "yaml"]).await;
    let parsed: Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
    assert_eq!(parsed["data"]["mode"], "fast");
    let names = k
        .ok(&["get", "cm", "-l", "app in (demo,other)", "-o", "name"])
        .await;
    assert_eq!(names.trim(), "configmap/settings");
    let names = k.ok(&["get", "cm", "-l", "app!=demo", "-o", "name"]).await;
    assert_eq!(names.trim(), "");
    let names = k
        .ok(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=settings",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names.trim(), "configmap/settings");
    let ns = k.ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(ns.contains("namespace/kube-system"), "{ns}");
    let missing = k.run(&["get", "cm", "nope"]).await;
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_a_change() {
    let k = Kubectl::start(Options::default()).await;
    let cm = k.write("cm.yaml", CONFIGMAP_V1);
    k.ok(&["apply", "-f", &cm]).await;
    let mut child = k
        .command(&[
            "get",
            "cm",
            "settings",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // With -w, `-o json` prints one compact document per line; collect
        // lines until they parse, in case a version pretty-prints.
        let mut doc = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            doc.push_str(&line);
            doc.push('\n');
            if serde_json::from_str::<Value>(&doc).is_ok()
                && tx.send(std::mem::take(&mut doc)).is_err()
            {
                break;
            }
        }
    });
    let recv = |what: &str| {
        let doc = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {what} event from kubectl get -w"));
        serde_json::from_str::<Value>(&doc).expect("event json")
    };
    let first = tokio::task::block_in_place(|| recv("initial"));
    assert_eq!(first["type"], "ADDED");
    let cm2 = k.write("cm2.yaml", CONFIGMAP_V2);
    k.ok(&["apply", "-f", &cm2]).await;
    let second = tokio::task::block_in_place(|| recv("modified"));
    assert_eq!(second["type"], "MODIFIED");
    assert_eq!(second["object"]["data"]["mode"], "slow");
    k.ok(&["delete", "cm", "settings"]).await;
    let third = tokio::task::block_in_place(|| recv("deleted"));
    assert_eq!(third["type"], "DELETED");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_removes_objects() {
    let k = Kubectl::start(Options::default()).await;
    let d = k.write("d.yaml", DEPLOYMENT_V1);
    let cm = k.write("cm.yaml", CONFIGMAP_V1);
    k.ok(&["apply", "-f", &d, "-f", &cm]).await;
    let out = k.ok(&["delete", "-f", &d]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let out = k.ok(&["delete", "configmap", "settings"]).await;
    assert!(out.contains("deleted"), "{out}");
    let left = k.ok(&["get", "deploy,cm", "-o", "name"]).await;
    assert_eq!(left.trim(), "", "{left}");
    // Namespace deletion takes its contents with it.
    let ns = k.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n",
    );
    k.ok(&["apply", "-f", &ns]).await;
    k.ok(&["apply", "-n", "scratch", "-f", &cm]).await;
    k.ok(&["delete", "namespace", "scratch"]).await;
    let ns = k.ok(&["get", "ns", "-o", "name"]).await;
    assert!(!ns.contains("scratch"), "{ns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_changes_replicas() {
    let k = Kubectl::start(Options::default()).await;
    let d = k.write("d.yaml", DEPLOYMENT_V1);
    k.ok(&["apply", "-f", &d]).await;
    let out = k.ok(&["scale", "deployment", "web", "--replicas=3"]).await;
    assert!(out.contains("scaled"), "{out}");
    let table = k.ok(&["get", "deployments"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    let d = k.json(&["get", "deployment", "web"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);
    // A stale precondition is refused.
    let out = k
        .run(&[
            "scale",
            "deployment",
            "web",
            "--current-replicas=1",
            "--replicas=5",
        ])
        .await;
    assert!(!out.status.success());
    let d = k.json(&["get", "deployment", "web"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_server_side() {
    let k = Kubectl::start(Options::default()).await;
    let cm1 = k.write("cm1.yaml", CONFIGMAP_V1);
    let out = k.ok(&["apply", "--server-side", "-f", &cm1]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let cm2 = k.write("cm2.yaml", CONFIGMAP_V2);
    let out = k.ok(&["apply", "--server-side", "-f", &cm2]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let cm = k.json(&["get", "cm", "settings"]).await;
    assert_eq!(cm["data"]["mode"], "slow");
    assert!(
        cm["data"].get("level").is_none(),
        "field dropped from the manifest is removed: {cm}"
    );
    let managers = k
        .ok(&[
            "get",
            "cm",
            "settings",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert_eq!(managers, "kubectl");
    let d = k.write("d.yaml", DEPLOYMENT_V1);
    k.ok(&["apply", "--server-side", "-f", &d]).await;
    let dep = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Dropping the sidecar from the applied manifest removes it.
    let d2 = k.write("d2.yaml", DEPLOYMENT_V2);
    k.ok(&["apply", "--server-side", "-f", &d2]).await;
    let dep = k.json(&["get", "deploy", "web"]).await;
    let containers = dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["image"], "web:2");
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "MODE", "value": "slow"}])
    );
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
    shortNames: [gd]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_crd_then_custom_resource() {
    let k = Kubectl::start(Options::default()).await;
    // Warm kubectl's discovery cache before the CRD exists.
    k.ok(&["get", "cm"]).await;
    let crd = k.write("crd.yaml", CRD);
    let out = k.ok(&["create", "-f", &crd]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/gadgets.example.com created"),
        "{out}"
    );
    let g1 = k.write(
        "g1.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: 3\n",
    );
    let out = k.ok(&["apply", "-f", &g1]).await;
    assert!(out.contains("gadget.example.com/g1 created"), "{out}");
    let g1b = k.write(
        "g1b.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: 5\n",
    );
    k.ok(&["apply", "-f", &g1b]).await;
    let listed = k.ok(&["get", "gadgets"]).await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        vec!["NAME", "SIZE", "AGE"],
        "printer columns: {listed}"
    );
    assert_eq!(&lines[1][..2], &["g1", "5"], "{listed}");
    let g = k.json(&["get", "gd", "g1"]).await;
    assert_eq!(g["spec"]["size"], 5);
    assert_eq!(g["metadata"]["generation"], 2);
    let resources = k
        .ok(&["api-resources", "--api-group=example.com", "-o", "name"])
        .await;
    assert!(resources.contains("gadgets.example.com"), "{resources}");
    k.ok(&["delete", "crd", "gadgets.example.com"]).await;
    let out = k.run(&["get", "gadgets"]).await;
    assert!(!out.status.success(), "gadgets are gone with their CRD");
}

/// Poll `kubectl get pods -l app=web -o json` until `check` accepts the items.
async fn wait_pods(k: &Kubectl, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = k.json(&["get", "pods", "-l", "app=web"]).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if check(&items) {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_deployment_controller_keeps_replicas() {
    let opts = Options {
        mark_pods_ready: true,
        ..Default::default()
    };
    let k = Kubectl::start(opts).await;
    let d1 = k.write("d1.yaml", DEPLOYMENT_V1);
    k.ok(&["apply", "-f", &d1]).await;
    let out = k
        .ok(&[
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=20s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    k.ok(&["scale", "deployment", "web", "--replicas=3"]).await;
    let pods = wait_pods(&k, "3 pods", |p| p.len() == 3).await;
    let sets = k.json(&["get", "replicasets"]).await;
    let sets = sets["items"].as_array().expect("items").clone();
    assert_eq!(sets.len(), 1, "one ReplicaSet per template: {sets:?}");
    let first_set = sets[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert!(first_set.starts_with("web-"), "{first_set}");
    assert_eq!(
        sets[0]["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    for p in &pods {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["name"],
            first_set.as_str()
        );
        assert_eq!(p["status"]["phase"], "Running");
    }
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = k.ok(&["get", "rs"]).await;
    assert!(
        table.contains("DESIRED")
            && table.contains(&format!("{first_set}   3         3         3")),
        "{table}"
    );
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    k.ok(&["delete", "pod", &victim]).await;
    wait_pods(&k, "a replacement pod", |p| {
        p.len() == 3 && p.iter().all(|x| x["metadata"]["name"] != victim.as_str())
    })
    .await;
    let d = k.json(&["get", "deployment", "web"]).await;
    assert_eq!(d["status"]["readyReplicas"], 3, "{d}");
    // A template change replaces the pods.
    let d2 = k.write("d2.yaml", DEPLOYMENT_V2);
    k.ok(&["apply", "-f", &d2]).await;
    wait_pods(&k, "2 pods of web:2", |p| {
        p.len() == 2
            && p.iter()
                .all(|x| x["spec"]["containers"][0]["image"] == "web:2")
    })
    .await;
    // The old ReplicaSet stays, scaled to zero, as revision 1.
    let sets = k.json(&["get", "replicasets"]).await;
    let mut revisions: Vec<(String, i64)> = sets["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| {
            (
                s["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                s["spec"]["replicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions, vec![("1".into(), 0), ("2".into(), 2)]);
    let history = k.ok(&["rollout", "history", "deployment/web"]).await;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // Deleting the deployment collects its ReplicaSets and their pods.
    k.ok(&["delete", "deployment", "web"]).await;
    wait_pods(&k, "no pods", |p| p.is_empty()).await;
    let sets = k.ok(&["get", "replicasets", "-o", "name"]).await;
    assert!(sets.trim().is_empty(), "{sets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_returns_stored_text() {
    let k = Kubectl::start(Options::default()).await;
    let pod = k.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  containers:\n  - name: main\n    image: busybox\n",
    );
    k.ok(&["apply", "-f", &pod]).await;
    k.sim.append_pod_log("default", "p1", "started\nworking\n");
    let out = k.ok(&["logs", "p1"]).await;
    assert_eq!(out, "started\nworking\n");
    let out = k.ok(&["logs", "p1", "--tail=1"]).await;
    assert_eq!(out, "working\n");
    let phase = k
        .ok(&["get", "pod", "p1", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(phase, "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_send_protobuf() {
    let k = Kubectl::start(Options::default()).await;
    k.ok(&["create", "namespace", "team-a"]).await;
    k.ok(&[
        "create",
        "configmap",
        "conf",
        "-n",
        "team-a",
        "--from-literal=mode=fast",
    ])
    .await;
    k.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "team-a",
        "--from-literal=password=hunter2",
    ])
    .await;
    k.ok(&["create", "serviceaccount", "robot", "-n", "team-a"])
        .await;
    let cm = k.json(&["get", "cm", "conf", "-n", "team-a"]).await;
    assert_eq!(cm["data"]["mode"], "fast");
    let secret = k.json(&["get", "secret", "pw", "-n", "team-a"]).await;
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert_eq!(secret["type"], "Opaque");
    let sas = k.ok(&["get", "sa", "-n", "team-a", "-o", "name"]).await;
    assert!(
        sas.contains("serviceaccount/robot") && sas.contains("serviceaccount/default"),
        "{sas}"
    );
    let ns = k.json(&["get", "ns", "team-a"]).await;
    assert_eq!(ns["status"]["phase"], "Active");
}
