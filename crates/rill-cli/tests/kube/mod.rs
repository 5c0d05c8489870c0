//! What the end-to-end tests on Kubernetes share: a kube-sim cluster whose
//! process kubelet runs the `rill` binary for every image, the real
//! `kubectl`, the operator installed from `manifests/` as a pod, and the
//! `windowed-sum` job with its failure-free reference output.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_sim::{ImageMap, KubeSim, KubeletOptions, NetworkMode, Options};
use serde_json::{json, Value};

use crate::support::write_input;

/// The job every test runs.
pub const JOB: &str = "windowed-sum";
/// The operator's namespace and Deployment in `manifests/`.
pub const OPERATOR_NS: &str = "rill-system";
pub const OPERATOR: &str = "rill-operator";

fn kubectl_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

fn netns_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/sys/class/net").exists()
}

/// A kube-sim cluster and `kubectl` pointed at it.
pub struct Kube {
    pub rt: tokio::runtime::Runtime,
    sim: Option<KubeSim>,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    pub dir: PathBuf,
    started: Instant,
    /// Everything the test waits for together stays under this.
    budget: Duration,
}

impl Kube {
    /// Starts kube-sim (namespace network mode when root) with images
    /// `rill:*` and `ghcr.io/rill-dev/rill:*` mapped to the `rill` binary.
    pub fn start(dir: &Path, budget: Duration) -> Kube {
        let kubectl =
            kubectl_binary().expect("these tests drive the real kubectl, which is not on PATH");
        let network = if netns_usable() {
            NetworkMode::Namespace
        } else {
            NetworkMode::Loopback
        };
        eprintln!("network mode: {network:?}");
        rill::cli::init_logging(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let rill = env!("CARGO_BIN_EXE_rill");
        let sim = rt
            .block_on(KubeSim::start(Options {
                kubeconfig: Some(dir.join("kubeconfig")),
                kubelet: Some(KubeletOptions {
                    network,
                    images: ImageMap::new()
                        .with("rill:*", rill)
                        .with("ghcr.io/rill-dev/rill:*", rill),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .expect("start kube-sim");
        Kube {
            kubeconfig: sim.kubeconfig().to_path_buf(),
            sim: Some(sim),
            rt,
            kubectl,
            dir: dir.to_path_buf(),
            started: Instant::now(),
            budget,
        }
    }

    pub fn sim(&self) -> &KubeSim {
        self.sim.as_ref().expect("kube-sim runs")
    }

    /// Runs `helm <action> --wait` (install or uninstall) of
    /// `charts/rill-operator` against this cluster through Helm's library
    /// (see `crates/rill-operator/tests/helm_chart.py`); `Ok` carries the
    /// release summary, `Err` Helm's error.
    pub fn helm(&self, action: &str, values: &Value) -> Result<Value, String> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rill-operator/tests/helm_chart.py"
        );
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&python)
            .arg(script)
            .arg(action)
            .arg(&self.kubeconfig)
            .arg(values.to_string())
            .output()
            .unwrap_or_else(|e| panic!("running {python} {script}: {e}"));
        match out.status.code() {
            Some(0) => Ok(serde_json::from_slice(&out.stdout).expect("helm_chart.py prints JSON")),
            Some(1) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            code => panic!(
                "helm_chart.py {action} exited {code:?}; helm-python-sdk must be installable with pip:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kcache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", &self.dir);
        c
    }

    /// Runs kubectl; `Err` carries stderr.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.command(args).output().expect("run kubectl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}\n{}", self.diagnostics()))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl json")
    }

    /// One object as JSON, `Null` when it cannot be read.
    pub fn get(&self, kind: &str, name: &str) -> Value {
        self.try_run(&["get", kind, name, "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    /// Applies a manifest given as JSON.
    pub fn apply(&self, manifest: &Value) {
        let path = self.dir.join(format!(
            "{}-{}.json",
            manifest["kind"].as_str().unwrap_or("object"),
            manifest["metadata"]["name"].as_str().unwrap_or("unnamed")
        ));
        std::fs::write(&path, manifest.to_string()).expect("write manifest");
        self.ok(&["apply", "-f", &path.display().to_string()]);
    }

    /// Applies a manifest that should be refused; returns kubectl's error.
    pub fn apply_refused(&self, manifest: &Value) -> String {
        let path = self.dir.join("refused.json");
        std::fs::write(&path, manifest.to_string()).expect("write manifest");
        match self.try_run(&["apply", "-f", &path.display().to_string()]) {
            Ok(out) => panic!("{manifest} was accepted: {out}"),
            Err(e) => e,
        }
    }

    pub fn pods(&self, selector: &str) -> Vec<Value> {
        self.pods_in("default", selector)
    }

    pub fn pods_in(&self, namespace: &str, selector: &str) -> Vec<Value> {
        self.try_run(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Ready pods of a cluster's component (`jobmanager`, `taskmanager`).
    pub fn ready(&self, app: &str, component: &str) -> Vec<Value> {
        self.pods(&format!("app={app},component={component}"))
            .into_iter()
            .filter(is_ready)
            .collect()
    }

    /// What a failure message shows: pods, the operator's and JobManagers'
    /// logs, the custom resources.
    pub fn diagnostics(&self) -> String {
        let run = |args: &[&str]| self.try_run(args).unwrap_or_else(|e| e);
        format!(
            "--- kubectl get fj,fs\n{}\n--- status\n{}\n--- kubectl get pods -A -o wide\n{}\n--- operator logs (previous container)\n{}\n--- operator logs\n{}\n--- JobManager logs\n{}\n--- TaskManager logs\n{}",
            run(&["get", "fj,fs"]),
            run(&[
                "get",
                "fj,fs",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}"
            ]),
            run(&["get", "pods", "-A", "-o", "wide"]),
            run(&[
                "logs",
                "-n",
                OPERATOR_NS,
                "-l",
                "app.kubernetes.io/name=rill-operator",
                "--previous",
                "--tail=100"
            ]),
            run(&[
                "logs",
                "-n",
                OPERATOR_NS,
                "-l",
                "app.kubernetes.io/name=rill-operator",
                "--tail=100"
            ]),
            run(&["logs", "-l", "component=jobmanager", "--tail=60"]),
            run(&["logs", "-l", "component=taskmanager", "--tail=20"]),
        )
    }

    /// Polls `f` until it returns Some; fails after `limit` (or the test's
    /// whole budget) with the diagnostics.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit || self.started.elapsed() > self.budget {
                panic!(
                    "timed out after {:?} waiting for {what}\n{}",
                    start.elapsed(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Installs the operator as a user would: `kubectl apply -f` of
    /// `manifests/` (namespace, CRDs, Deployment, RBAC), with the timing
    /// values a test wants instead of the defaults. Waits for the operator
    /// pod to be Ready and returns its name.
    pub fn install_operator(&self, timing: &[(&str, &str)]) -> String {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../manifests");
        let dst = self.dir.join("manifests");
        std::fs::create_dir_all(&dst).expect("manifests dir");
        let mut set = vec![false; timing.len()];
        for e in std::fs::read_dir(src).expect("manifests").flatten() {
            let mut text = std::fs::read_to_string(e.path()).expect("read manifest");
            for ((flag, value), set) in timing.iter().zip(&mut set) {
                if let Some(at) = text.find(&format!("- {flag}=")) {
                    let end = at + text[at..].find('\n').expect("line end");
                    text.replace_range(at..end, &format!("- {flag}={value}"));
                    *set = true;
                }
            }
            std::fs::write(dst.join(e.file_name()), text).expect("write manifest");
        }
        for ((flag, _), set) in timing.iter().zip(set) {
            assert!(
                set,
                "{flag} is not among the operator's arguments in manifests/"
            );
        }
        // Twice: the first pass may create the CRDs and namespace only
        // after kubectl has mapped the later objects.
        let dst = dst.display().to_string();
        if self.try_run(&["apply", "-f", &dst]).is_err() {
            self.ok(&["apply", "-f", &dst]);
        }
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "crd/flinkjobs.rill.dev",
            "crd/flinksessions.rill.dev",
            "--timeout=30s",
        ]);
        self.operator_ready(Duration::from_secs(60))
    }

    /// The Ready operator pod holding the Lease (its name).
    pub fn operator_ready(&self, limit: Duration) -> String {
        self.wait("the operator pod Ready and leading", limit, || {
            let lease = self
                .try_run(&[
                    "get",
                    "lease",
                    "-n",
                    OPERATOR_NS,
                    "rill-operator-leader",
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ])
                .ok()?;
            self.pods_in(OPERATOR_NS, "app.kubernetes.io/name=rill-operator")
                .into_iter()
                .find(|p| is_ready(p) && name_of(p) == lease.trim())
                .map(|p| name_of(&p))
        })
    }

    pub fn crash(&self, namespace: &str, pod: &str) {
        self.sim().crash(namespace, pod, None).expect("crash pod");
    }

    /// Stops kube-sim: every pod's processes, the network, the server.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Kube {
    /// Also when a test fails, so no pod processes outlive it.
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            self.rt.block_on(sim.stop());
        }
    }
}

pub fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }) && p["metadata"]["deletionTimestamp"].is_null()
}

pub fn name_of(p: &Value) -> String {
    p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn restart_count(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// One HTTP/1.0 request returning the JSON body.
pub fn http(addr: &str, method: &str, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

pub fn http_json(addr: &str, path: &str) -> Option<Value> {
    http(addr, "GET", path)
}

/// The REST Service of a cluster as `clusterIP:8081`.
pub fn rest_address(kube: &Kube, cluster: &str) -> String {
    let ip = kube.wait("the REST Service", Duration::from_secs(30), || {
        kube.get("svc", &format!("{cluster}-rest"))["spec"]["clusterIP"]
            .as_str()
            .map(String::from)
    });
    format!("{ip}:8081")
}

/// Completed checkpoints of a job under a checkpoint directory.
pub fn complete_checkpoints(root: &Path, job: &str) -> usize {
    std::fs::read_dir(root.join(job))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("_metadata").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Sorted `(windows, late)` lines written to an output directory.
pub fn output(dir: &Path) -> (Vec<String>, Vec<String>) {
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines
    };
    (read("windows.csv"), read("late.csv"))
}

pub fn committed_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("windows.csv"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// `windowed-sum` over a deterministic input, with the output of an
/// uninterrupted local run to compare against.
pub struct WindowedSum {
    pub input: PathBuf,
    pub expected: (Vec<String>, Vec<String>),
}

const WINDOW_ARGS: [&str; 6] = [
    "--window",
    "sliding:2000:500",
    "--out-of-orderness",
    "300",
    "--allowed-lateness",
    "200",
];

impl WindowedSum {
    pub fn prepare(dir: &Path, records: u64, seed: u64) -> WindowedSum {
        let input = dir.join(format!("in-{seed}.csv"));
        write_input(&input, records, seed);
        let reference = dir.join(format!("reference-{seed}"));
        let o = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["run", JOB, "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&reference)
            .args(WINDOW_ARGS)
            .args(["--parallelism", "2"])
            .output()
            .expect("reference run");
        assert!(
            o.status.success(),
            "reference run failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let expected = output(&reference);
        assert!(!expected.0.is_empty(), "the reference run wrote windows");
        WindowedSum { input, expected }
    }

    /// The job's arguments: read at `rate` records/s, write to `out`.
    pub fn args(&self, out: &Path, rate: u32) -> Vec<String> {
        let mut a = vec![
            "--input".to_string(),
            self.input.display().to_string(),
            "--output".to_string(),
            out.display().to_string(),
        ];
        a.extend(WINDOW_ARGS.iter().map(|s| s.to_string()));
        a.extend(["--rate".to_string(), rate.to_string()]);
        a
    }
}

/// An application-mode FlinkJob running `windowed-sum`, checkpointing to
/// `checkpoints` every 300 ms, one slot per TaskManager; `extra` is merged
/// into the spec.
pub fn flinkjob(
    name: &str,
    args: &[String],
    parallelism: u32,
    checkpoints: &Path,
    extra: Value,
) -> Value {
    let mut spec = json!({
        "image": "rill:test",
        "job": {"entry": JOB, "args": args, "parallelism": parallelism},
        "checkpointing": {
            "interval": "300ms",
            "storage": format!("file://{}", checkpoints.display()),
            "retained": 3,
        },
        "restartStrategy": {"type": "fixed-delay", "attempts": 20, "delay": "200ms"},
        "taskManager": {"slots": 1},
        "flinkConfiguration": {"heartbeat.interval": "1s", "heartbeat.timeout": "5s"},
    });
    merge(&mut spec, extra);
    json!({
        "apiVersion": "rill.dev/v1alpha1",
        "kind": "FlinkJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

/// JSON merge: objects merge key by key, anything else replaces.
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Resident memory (MB) of this test's `rill` processes whose command
/// line contains `role` (`operator`, `jobmanager`, `taskmanager`).
pub fn rss_mb(role: &str) -> Vec<f64> {
    rill_processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == role.as_bytes()))
                .unwrap_or(false)
        })
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb / 1024.0)
        })
        .collect()
}

/// The test's `rill` processes (children of kube-sim's kubelet, which runs
/// in this process).
pub fn rill_processes() -> Vec<i32> {
    let me = std::process::id() as i32;
    let bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_rill")).expect("rill binary");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if exe != bin {
            continue;
        }
        // Only ours: an ancestor is this test process.
        let mut p = pid;
        for _ in 0..8 {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok())
                .unwrap_or(0);
            if ppid == me {
                out.push(pid);
                break;
            }
            if ppid <= 1 {
                break;
            }
            p = ppid;
        }
    }
    out
}

/// Deletes a cluster's custom resource and waits until nothing of it is
/// left: no pods, Deployments, Services or ConfigMaps (HA ones included).
pub fn delete_and_check_cleanup(kube: &Kube, kind: &str, name: &str) {
    kube.ok(&["delete", kind, name, "--timeout=60s"]);
    kube.wait(
        "the cluster's objects to be gone",
        Duration::from_secs(60),
        || {
            let left = kube
                .try_run(&[
                    "get",
                    "deployments,replicasets,pods,services,configmaps",
                    "-l",
                    &format!("app={name}"),
                    "-o",
                    "name",
                ])
                .ok()?;
            let cms = kube.try_run(&["get", "configmaps", "-o", "name"]).ok()?;
            let ha_left = cms.lines().any(|l| l.contains(name));
            (left.trim().is_empty() && !ha_left).then_some(())
        },
    );
    assert!(
        kube.try_run(&["get", kind, name]).is_err(),
        "the {kind} is gone"
    );
}
