//! The process kubelet, Services and crash injection, checked end to end
//! with real processes and the real `kubectl`.
//!
//! Every test starts its own kube-sim on a free loopback port with a
//! kubelet, polls for outcomes with deadlines, and stops the server (which
//! stops every pod's processes) at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_sim::{KubeletOptions, NetworkMode, Options};
use serde_json::Value;
use support::Kubectl;

mod support;

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Kubectl {
    /// A kube-sim with a process kubelet.
    async fn with_kubelet(network: NetworkMode) -> Kubectl {
        assert!(
            tool("python3"),
            "these tests run python3 programs in pods; put it on PATH"
        );
        Kubectl::start(Options {
            kubelet: Some(KubeletOptions {
                network,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    async fn apply(&self, yaml: &str) {
        let path = self.dir.path().join(format!("m{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.ok(&["apply", "-f", &path.display().to_string()]).await;
    }

    fn pods(&self, ns: &str) -> Vec<Value> {
        let t = self.sim.store().find_type("", "v1", "pods").expect("pods");
        let (pods, _) = self.sim.store().list(&t, Some(ns));
        pods.iter().map(|p| (**p).clone()).collect()
    }

    fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let t = self.sim.store().find_type("", "v1", plural).expect("type");
        self.sim.store().get(&t, ns, name).ok()
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Poll `f` until it returns Some, failing after `timeout`.
async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// One HTTP/1.0 GET; returns the whole response.
fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: python:3
        command: ["python3", "-u", "-m", "http.server", "--bind", "$(POD_IP)", "8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pod_runs_serves_crashes_restarts_and_is_collected() {
    let c = Kubectl::with_kubelet(NetworkMode::Loopback).await;
    c.apply(WEB).await;
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=web",
        "--timeout=60s",
    ])
    .await;
    let pod = wait_for("one ready pod", Duration::from_secs(10), || {
        c.pods("default").into_iter().find(is_ready)
    })
    .await;
    let name = pod["metadata"]["name"].as_str().expect("name").to_string();
    let pod_ip = pod["status"]["podIP"].as_str().expect("podIP").to_string();
    assert!(
        pod_ip.starts_with("127.") && pod_ip != "127.0.0.1",
        "{pod_ip}"
    );

    // The Service proxies to the ready pod.
    let cip = wait_for("ClusterIP", Duration::from_secs(10), || {
        c.get("services", "default", "web")
            .and_then(|s| s["spec"]["clusterIP"].as_str().map(String::from))
            .filter(|s| !s.is_empty())
    })
    .await;
    let eps = wait_for("endpoints", Duration::from_secs(10), || {
        c.get("endpoints", "default", "web")
            .filter(|e| e["subsets"][0]["addresses"][0]["ip"] == pod_ip.as_str())
    })
    .await;
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], 8080);
    let resp = wait_for("proxied response", Duration::from_secs(10), || {
        http_get(&format!("{cip}:80"))
            .ok()
            .filter(|r| r.contains(" 200 "))
    })
    .await;
    assert!(resp.contains("Directory listing"), "{resp}");
    let logs = c.ok(&["logs", &name]).await;
    assert!(logs.contains("\"GET / HTTP/1."), "{logs}");

    // Crash injection through the CLI: restartCount 1, exit code 137.
    let pid_before = c.sim.kubelet().expect("kubelet").container_pids();
    assert_eq!(pid_before.len(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["crash", &name, "-n", "default", "--kubeconfig"])
        .arg(c.sim.kubeconfig())
        .output()
        .expect("run kube-sim crash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = wait_for("restart after crash", Duration::from_secs(20), || {
        c.get("pods", "default", &name)
            .filter(|p| p["status"]["containerStatuses"][0]["restartCount"] == 1 && is_ready(p))
    })
    .await;
    let cs = &restarted["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137);
    assert!(cs["state"]["running"]["startedAt"].is_string());
    assert!(!pid_alive(pid_before[0]), "crashed process still alive");
    let previous = c.ok(&["logs", &name, "--previous"]).await;
    assert!(previous.contains("GET / HTTP/1."), "{previous}");

    // Deleting the pod stops it and the Deployment replaces it.
    let pid_second = c.sim.kubelet().expect("kubelet").container_pids();
    c.ok(&["delete", "pod", &name, "--timeout=30s"]).await;
    assert!(c.get("pods", "default", &name).is_none());
    assert!(pid_second.iter().all(|p| !pid_alive(*p)));
    let replacement = wait_for("replacement pod ready", Duration::from_secs(30), || {
        c.pods("default")
            .into_iter()
            .find(|p| p["metadata"]["name"] != name.as_str() && is_ready(p))
    })
    .await;
    assert_eq!(replacement["metadata"]["labels"]["app"], "web");

    // Deleting the Deployment collects its pods and their processes.
    let pids = c.sim.kubelet().expect("kubelet").container_pids();
    assert!(!pids.is_empty());
    c.ok(&["delete", "deployment", "web"]).await;
    wait_for("pods gone", Duration::from_secs(30), || {
        c.pods("default").is_empty().then_some(())
    })
    .await;
    wait_for("processes gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
    c.sim.stop().await;
}

const PROBE_POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello-from-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: inspect, labels: {tier: "front"}}
spec:
  restartPolicy: Never
  serviceAccountName: runner
  volumes:
  - {name: config, configMap: {name: cfg}}
  - {name: scratch, emptyDir: {}}
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c"]
    args:
    - |
      echo "name=$MY_NAME ns=$MY_NS ip=$MY_IP tier=$TIER sa=$SA node=$NODE"
      echo "pod_ip_env=$POD_IP password=$PASSWORD greeting_env=$GREETING"
      echo "file=$(cat /etc/config/greeting)"
      echo "hosts=$(getent hosts backend)"
      echo "host_fqdn=$(getent hosts backend.default.svc.cluster.local)"
      echo "sa_ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
      echo "api=$(kubectl get pod inspect -o jsonpath='{.metadata.name}')"
      echo "expanded=$(echo '$(MY_NAME)-x')"
    env:
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: TIER, valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    envFrom:
    - {configMapRef: {name: cfg}, prefix: X_}
    - {configMapRef: {name: cfg}}
    volumeMounts:
    - {name: config, mountPath: /etc/config}
    - {name: scratch, mountPath: /scratch}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sees_downward_api_volumes_hosts_and_the_api_server() {
    let c = Kubectl::with_kubelet(NetworkMode::Loopback).await;
    if !c.sim.kubelet().expect("kubelet").isolated() {
        eprintln!("SKIP pod_sees_downward_api: mount namespaces are not available");
        return;
    }
    c.apply(PROBE_POD).await;
    let pod = wait_for("pod to finish", Duration::from_secs(60), || {
        c.get("pods", "default", "inspect")
            .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
    })
    .await;
    let logs = c.ok(&["logs", "inspect"]).await;
    assert_eq!(pod["status"]["phase"], "Succeeded", "{logs}");
    let ip = pod["status"]["podIP"].as_str().expect("podIP");
    let cip = c
        .get("services", "default", "backend")
        .and_then(|s| s["spec"]["clusterIP"].as_str().map(String::from))
        .expect("ClusterIP");
    assert!(
        logs.contains(&format!(
            "name=inspect ns=default ip={ip} tier=front sa=runner node=kube-sim\n"
        )),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("pod_ip_env={ip} password=s3cret greeting_env=")),
        "{logs}"
    );
    assert!(logs.contains("file=hello-from-configmap\n"), "{logs}");
    assert!(logs.contains(&format!("hosts={cip}")), "{logs}");
    assert!(logs.contains(&format!("host_fqdn={cip}")), "{logs}");
    assert!(logs.contains("sa_ns=default\n"), "{logs}");
    assert!(logs.contains("api=inspect\n"), "{logs}");
    assert!(logs.contains("expanded=$(MY_NAME)-x\n"), "{logs}");
    // The mount stayed private to the pod.
    assert!(!Path::new("/etc/config/greeting").exists());
    c.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_liveness_and_graceful_namespace_deletion() {
    let c = Kubectl::with_kubelet(NetworkMode::Loopback).await;
    c.ok(&["create", "namespace", "work"]).await;
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: flaky, namespace: work}
spec:
  restartPolicy: OnFailure
  containers: [{name: c, image: busybox, command: ["sh", "-c", "echo run; exit 3"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: once, namespace: work}
spec:
  restartPolicy: Never
  containers: [{name: c, image: busybox, command: ["sh", "-c", "exit 4"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy, namespace: work}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sleep", "600"]
    livenessProbe: {tcpSocket: {port: 1}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: polite, namespace: work}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.1; done"]
"#,
    )
    .await;
    let flaky = wait_for("two restarts", Duration::from_secs(30), || {
        c.get("pods", "work", "flaky").filter(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .is_some_and(|n| n >= 2)
        })
    })
    .await;
    assert_eq!(
        flaky["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );
    let once = wait_for("Never pod to fail", Duration::from_secs(30), || {
        c.get("pods", "work", "once")
            .filter(|p| p["status"]["phase"] == "Failed")
    })
    .await;
    assert_eq!(
        once["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        4
    );
    assert_eq!(once["status"]["containerStatuses"][0]["restartCount"], 0);
    let unhealthy = wait_for("liveness restart", Duration::from_secs(30), || {
        c.get("pods", "work", "unhealthy").filter(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        })
    })
    .await;
    assert_eq!(
        unhealthy["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        143
    );
    wait_for("polite pod running", Duration::from_secs(30), || {
        c.get("pods", "work", "polite").filter(is_ready)
    })
    .await;
    let pids = c.sim.kubelet().expect("kubelet").container_pids();
    assert!(!pids.is_empty());
    // Follow the log while the namespace goes away: SIGTERM reaches the
    // process, which exits long before its 20 s grace period, and the
    // follow ends with it.
    let mut follow = c.command(&["logs", "-f", "polite", "-n", "work"]);
    follow.stdout(std::process::Stdio::piped());
    let mut child = follow.spawn().expect("kubectl logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let first_line = tokio::task::spawn_blocking(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).map(|_| (line, r))
    });
    let (line, mut rest) = tokio::time::timeout(Duration::from_secs(20), first_line)
        .await
        .expect("first followed line")
        .expect("join")
        .expect("read");
    assert_eq!(line, "started\n");
    let follower = tokio::task::spawn_blocking(move || {
        let mut tail = String::new();
        let _ = rest.read_to_string(&mut tail);
        (child.wait(), tail)
    });
    let started = Instant::now();
    c.ok(&["delete", "namespace", "work", "--wait=false"]).await;
    wait_for("namespace gone", Duration::from_secs(30), || {
        c.get("namespaces", "", "work").is_none().then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(c.pods("work").is_empty());
    wait_for("processes gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
    let (status, _tail) = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .expect("log follow ends")
        .expect("join");
    assert!(status.is_ok());
    c.sim.stop().await;
}

fn netns_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/sys/class/net").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_mode_pods_share_a_port_and_reach_the_api() {
    if !netns_usable() {
        eprintln!("SKIP namespace_mode: needs root and the ip tool");
        return;
    }
    let c = Kubectl::with_kubelet(NetworkMode::Namespace).await;
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: tm}
spec:
  replicas: 2
  selector: {matchLabels: {app: tm}}
  template:
    metadata: {labels: {app: tm}}
    spec:
      containers:
      - name: tm
        image: python:3
        command: ["python3", "-m", "http.server", "6122"]
        readinessProbe: {tcpSocket: {port: 6122}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: tm}
spec:
  selector: {app: tm}
  ports: [{port: 80, targetPort: 6122}]
"#,
    )
    .await;
    let ready = wait_for("two ready pods", Duration::from_secs(60), || {
        let pods: Vec<Value> = c.pods("default").into_iter().filter(is_ready).collect();
        (pods.len() == 2).then_some(pods)
    })
    .await;
    // The bridge's MAC address is its own, so pods joining (their veths
    // on the bridge) never change it under the ARP caches of others.
    let bridge = c
        .sim
        .bridge()
        .expect("namespace mode has a bridge")
        .to_string();
    let sys = |f: &str| {
        std::fs::read_to_string(Path::new("/sys/class/net").join(&bridge).join(f))
            .expect("bridge sysfs")
            .trim()
            .to_string()
    };
    assert_eq!(
        sys("addr_assign_type"),
        "3",
        "the bridge address is set, not inherited"
    );
    let mac = sys("address");
    let ips: Vec<String> = ready
        .iter()
        .map(|p| p["status"]["podIP"].as_str().expect("podIP").to_string())
        .collect();
    assert_ne!(ips[0], ips[1]);
    for ip in &ips {
        assert!(ip.starts_with("10."), "{ip}");
        let r = http_get(&format!("{ip}:6122")).expect("pod answers on its own IP");
        assert!(r.contains(" 200 "), "{r}");
    }
    let cip = c
        .get("services", "default", "tm")
        .and_then(|s| s["spec"]["clusterIP"].as_str().map(String::from))
        .expect("ClusterIP");
    let r = wait_for("service answers", Duration::from_secs(10), || {
        http_get(&format!("{cip}:80"))
            .ok()
            .filter(|r| r.contains(" 200 "))
    })
    .await;
    assert!(r.contains("Directory listing"));
    // A pod in its own namespace reaches the API server and the service by name.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "kubectl get pods -l app=tm -o name | wc -l; python3 -c \"import urllib.request as u; print(u.urlopen('http://tm/').status)\""]
"#,
    )
    .await;
    let done = wait_for("client pod finished", Duration::from_secs(60), || {
        c.get("pods", "default", "client")
            .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
    })
    .await;
    let logs = c.ok(&["logs", "client"]).await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{logs}");
    assert_eq!(logs.lines().collect::<Vec<_>>(), vec!["2", "200"], "{logs}");
    assert_eq!(
        sys("address"),
        mac,
        "the bridge address changed as a pod joined"
    );
    // This kube-sim's bridge (others may run in parallel).
    assert!(Path::new("/sys/class/net").join(&bridge).exists());
    let pids = c.sim.kubelet().expect("kubelet").container_pids();
    c.sim.stop().await;
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} left behind"
    );
    assert!(pids.iter().all(|p| !pid_alive(*p)));
}
