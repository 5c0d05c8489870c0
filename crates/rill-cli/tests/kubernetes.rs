//! The first end-to-end run on Kubernetes: kube-sim with its process
//! kubelet runs the `rill` binary as the image, the operator runs in this
//! process, and the real `kubectl` drives everything.
//!
//! An application-mode FlinkJob runs `windowed-sum`; its JobManager creates
//! two TaskManager pods; one is deleted mid-stream; the job restarts from
//! the latest checkpoint on a replacement pod and finishes with exactly the
//! output of an uninterrupted run. Deleting the FlinkJob removes everything.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_sim::{ImageMap, KubeSim, KubeletOptions, NetworkMode, Options};
use rill_operator::controller::{ControllerOptions, REST_URL_ANNOTATION};
use rill_operator::election::ElectionTiming;
use rill_operator::{Operator, OperatorOptions};
use serde_json::Value;
use support::{assert_same, write_input};

const JOB: &str = "windowed-sum";
const NAME: &str = "wsum";
/// Everything the test waits for together stays under this.
const OVERALL: Duration = Duration::from_secs(180);

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

struct Env {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
    started: Instant,
}

impl Env {
    fn command(&self, args: &[&str]) -> Command {
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
    fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.command(args).output().expect("run kubectl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}\n{}", self.diagnostics()))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl json")
    }

    fn flinkjob(&self) -> Value {
        self.try_run(&["get", "fj", NAME, "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    fn pods(&self, selector: &str) -> Vec<Value> {
        self.json(&["get", "pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What a failure message shows: pods, the JobManager's log, the
    /// FlinkJob's status.
    fn diagnostics(&self) -> String {
        let pods = self
            .try_run(&["get", "pods", "-o", "wide"])
            .unwrap_or_else(|e| e);
        let jm_logs = self
            .try_run(&[
                "logs",
                "-l",
                &format!("app={NAME},component=jobmanager"),
                "--tail=60",
            ])
            .unwrap_or_else(|e| e);
        let tm_logs = self
            .try_run(&[
                "logs",
                "-l",
                &format!("app={NAME},component=taskmanager"),
                "--tail=20",
            ])
            .unwrap_or_else(|e| e);
        let fj = self.try_run(&["get", "fj"]).unwrap_or_else(|e| e);
        format!(
            "--- kubectl get pods -o wide\n{pods}\n--- JobManager logs\n{jm_logs}\n--- TaskManager logs\n{tm_logs}\n--- kubectl get fj\n{fj}\n--- FlinkJob status\n{:#}",
            self.flinkjob()["status"]
        )
    }

    /// Polls `f` until it returns Some; fails after `limit` (or the overall
    /// budget) with the diagnostics.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit || self.started.elapsed() > OVERALL {
                panic!(
                    "timed out after {:?} waiting for {what}\n{}",
                    start.elapsed(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }) && p["metadata"]["deletionTimestamp"].is_null()
}

fn name_of(p: &Value) -> String {
    p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One HTTP/1.0 GET returning the JSON body.
fn http_json(addr: &str, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

fn complete_checkpoints(root: &Path, job: &str) -> usize {
    std::fs::read_dir(root.join(job))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("_metadata").is_file())
                .count()
        })
        .unwrap_or(0)
}

fn output(dir: &Path) -> (Vec<String>, Vec<String>) {
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines
    };
    (read("windows.csv"), read("late.csv"))
}

fn committed_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("windows.csv"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The test's `rill` processes (children of kube-sim's kubelet, which runs
/// in this process).
fn rill_processes() -> Vec<i32> {
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

#[test]
fn a_flinkjob_survives_a_deleted_taskmanager_pod_with_exactly_once_output() {
    let kubectl =
        kubectl_binary().expect("this test drives the real kubectl, which is not on PATH");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let network = if netns_usable() {
        NetworkMode::Namespace
    } else {
        NetworkMode::Loopback
    };
    eprintln!("network mode: {network:?}");

    // The input and the failure-free reference.
    let input = dir.join("in.csv");
    write_input(&input, 60_000, 42);
    let out_dir = dir.join("out");
    let checkpoints = dir.join("checkpoints");
    let window_args = [
        "--window",
        "sliding:2000:500",
        "--out-of-orderness",
        "300",
        "--allowed-lateness",
        "200",
    ];
    let reference_dir = dir.join("reference");
    let o = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["run", JOB, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&reference_dir)
        .args(window_args)
        .args(["--parallelism", "2"])
        .output()
        .expect("reference run");
    assert!(
        o.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let expected = output(&reference_dir);
    assert!(!expected.0.is_empty(), "the reference run wrote windows");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = rt
        .block_on(KubeSim::start(Options {
            kubeconfig: Some(dir.join("kubeconfig")),
            kubelet: Some(KubeletOptions {
                network,
                images: ImageMap::new().with("rill*", env!("CARGO_BIN_EXE_rill")),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .expect("start kube-sim");
    let env = Env {
        kubectl,
        kubeconfig: sim.kubeconfig().to_path_buf(),
        dir: dir.clone(),
        started: Instant::now(),
    };

    // CRDs with the real kubectl, then the operator in this process.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds");
    env.ok(&["apply", "-f", crds]);
    env.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/flinkjobs.rill.dev",
        "--timeout=30s",
    ]);
    let config = rt.block_on(async {
        let kc = Kubeconfig::read_from(sim.kubeconfig()).expect("read kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config")
    });
    let operator = rt
        .block_on(Operator::new(OperatorOptions {
            namespaces: vec!["default".into()],
            identity: "test-operator".into(),
            lease_name: "rill-operator-leader".into(),
            lease_namespace: "default".into(),
            timing: ElectionTiming {
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry_period: Duration::from_millis(200),
            },
            metrics_addr: None,
            controller: ControllerOptions {
                rest_timeout: Duration::from_secs(2),
                rest_overrides: Default::default(),
                refresh: Duration::from_millis(500),
                poll: Duration::from_millis(300),
                cleanup_wait: Duration::from_secs(10),
            },
            kube_config: Some(config),
        }))
        .expect("operator");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator_task = rt.spawn(async move {
        operator
            .run(async move {
                let _ = stop_rx.await;
            })
            .await
    });

    // The FlinkJob.
    let job_args: Vec<String> = [
        "--input".to_string(),
        input.display().to_string(),
        "--output".to_string(),
        out_dir.display().to_string(),
    ]
    .into_iter()
    .chain(window_args.iter().map(|s| s.to_string()))
    .chain(["--rate".to_string(), "2500".to_string()])
    .collect();
    let manifest = serde_json::json!({
        "apiVersion": "rill.dev/v1alpha1",
        "kind": "FlinkJob",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "image": "rill:test",
            "job": {"entry": JOB, "args": job_args, "parallelism": 2},
            "checkpointing": {
                "interval": "300ms",
                "storage": format!("file://{}", checkpoints.display()),
                "retained": 3,
            },
            "restartStrategy": {"type": "fixed-delay", "attempts": 10, "delay": "200ms"},
            "taskManager": {"slots": 1},
            "flinkConfiguration": {"heartbeat.interval": "1s", "heartbeat.timeout": "5s"},
        }
    });
    let manifest_path = dir.join("flinkjob.json");
    std::fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
    let applied = Instant::now();
    env.ok(&["apply", "-f", &manifest_path.display().to_string()]);

    // The operator's children; the operator runs outside the cluster, so it
    // reaches the JobManager through the REST Service's ClusterIP.
    let rest_ip = env.wait("the REST Service", Duration::from_secs(30), || {
        let svc = env
            .try_run(&["get", "svc", &format!("{NAME}-rest"), "-o", "json"])
            .ok()?;
        let svc: Value = serde_json::from_str(&svc).ok()?;
        svc["spec"]["clusterIP"].as_str().map(String::from)
    });
    let rest = format!("{rest_ip}:8081");
    env.ok(&[
        "annotate",
        "fj",
        NAME,
        &format!("{REST_URL_ANNOTATION}=http://{rest}"),
    ]);

    // Two TaskManager pods created by the JobManager, Ready.
    let tm_selector = format!("app={NAME},component=taskmanager");
    let tms = env.wait("2 Ready TaskManager pods", Duration::from_secs(60), || {
        let ready: Vec<Value> = env
            .pods(&tm_selector)
            .into_iter()
            .filter(is_ready)
            .collect();
        (ready.len() == 2).then_some(ready)
    });
    for tm in &tms {
        let owners = &tm["metadata"]["ownerReferences"];
        assert_eq!(owners[0]["kind"], "Deployment", "{owners}");
        assert_eq!(owners[0]["name"], format!("{NAME}-jobmanager"), "{owners}");
    }
    env.wait(
        "job RUNNING in the FlinkJob status",
        Duration::from_secs(60),
        || (env.flinkjob()["status"]["jobState"] == "RUNNING").then_some(()),
    );
    eprintln!(
        "figure: kubectl apply -> job RUNNING: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    env.wait("2 completed checkpoints", Duration::from_secs(30), || {
        (complete_checkpoints(&checkpoints, JOB) >= 2).then_some(())
    });
    env.wait(
        "a checkpoint in the FlinkJob status",
        Duration::from_secs(15),
        || {
            let s = env.flinkjob()["status"].clone();
            s["lastCheckpoint"]["id"].as_u64().filter(|id| *id >= 1)
        },
    );
    let table = env.ok(&["get", "fj", NAME]);
    eprintln!("{table}");
    assert!(table.contains("RUNNING"), "{table}");

    // Delete a TaskManager pod that runs tasks mid-stream.
    let busy = http_json(&rest, "/taskmanagers")
        .and_then(|v| {
            v["taskmanagers"].as_array()?.iter().find_map(|t| {
                (t["freeSlots"].as_u64() < t["slotsNumber"].as_u64())
                    .then(|| t["id"].as_str().map(String::from))
                    .flatten()
            })
        })
        .unwrap_or_else(|| name_of(&tms[0]));
    let before_names: Vec<String> = tms.iter().map(name_of).collect();
    assert!(
        before_names.contains(&busy),
        "{busy} not in {before_names:?}"
    );
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < expected.0.len(),
        "the pod is deleted mid-stream ({} of {} windows already committed)",
        partial.0.len(),
        expected.0.len()
    );
    let bytes_at_kill = committed_bytes(&out_dir);
    let killed = Instant::now();
    env.ok(&["delete", "pod", &busy, "--wait=false"]);

    let replacement = env.wait(
        "a replacement TaskManager pod",
        Duration::from_secs(60),
        || {
            env.pods(&tm_selector)
                .into_iter()
                .find(|p| is_ready(p) && !before_names.contains(&name_of(p)))
                .map(|p| name_of(&p))
        },
    );
    eprintln!(
        "figure: TaskManager pod deleted -> replacement {replacement} Ready: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let restarts = |env: &Env| -> u64 {
        let from_status = env.flinkjob()["status"]["restarts"].as_u64().unwrap_or(0);
        let from_rest = http_json(&rest, &format!("/jobs/{JOB}"))
            .and_then(|j| j["restarts"].as_u64())
            .unwrap_or(0);
        from_status.max(from_rest)
    };
    let mut first_output = None;
    env.wait(
        "the job RUNNING again after a restart",
        Duration::from_secs(60),
        || {
            if first_output.is_none() && committed_bytes(&out_dir) > bytes_at_kill {
                first_output = Some(killed.elapsed());
            }
            let job = http_json(&rest, &format!("/jobs/{JOB}"))?;
            (job["restarts"].as_u64() >= Some(1)
                && matches!(job["state"].as_str(), Some("RUNNING" | "FINISHED")))
            .then_some(())
        },
    );
    eprintln!(
        "figure: TaskManager pod deleted -> job RUNNING again: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    env.wait("new committed output", Duration::from_secs(60), || {
        if first_output.is_none() && committed_bytes(&out_dir) > bytes_at_kill {
            first_output = Some(killed.elapsed());
        }
        first_output
    });
    eprintln!(
        "figure: TaskManager pod deleted -> first new committed output: {:.1} s",
        first_output.map_or(0.0, |d| d.as_secs_f64())
    );

    env.wait(
        "job FINISHED in the FlinkJob status",
        Duration::from_secs(90),
        || (env.flinkjob()["status"]["jobState"] == "FINISHED").then_some(()),
    );
    let n = restarts(&env);
    assert!(
        n >= 1,
        "the job restarted after the pod deletion ({n} restarts)\n{}",
        env.diagnostics()
    );
    eprintln!("{}", env.ok(&["get", "fj", NAME]));
    eprintln!(
        "figure: kubectl apply -> job FINISHED: {:.1} s ({n} restarts)",
        applied.elapsed().as_secs_f64()
    );
    assert_same(
        &output(&out_dir),
        &expected,
        "after deleting a TaskManager pod",
    );

    // Deleting the FlinkJob removes the cluster.
    env.ok(&["delete", "fj", NAME, "--timeout=60s"]);
    env.wait(
        "the cluster's objects to be gone",
        Duration::from_secs(60),
        || {
            let left = env
                .try_run(&[
                    "get",
                    "deployments,pods,services,configmaps",
                    "-l",
                    &format!("app={NAME}"),
                    "-o",
                    "name",
                ])
                .ok()?;
            let ha = env.try_run(&["get", "configmaps", "-o", "name"]).ok()?;
            let ha_left: Vec<&str> = ha.lines().filter(|l| l.contains(NAME)).collect();
            (left.trim().is_empty() && ha_left.is_empty()).then_some(())
        },
    );
    assert!(
        env.try_run(&["get", "fj", NAME]).is_err(),
        "the FlinkJob is gone"
    );
    env.wait("no rill processes left", Duration::from_secs(30), || {
        rill_processes().is_empty().then_some(())
    });

    let _ = stop_tx.send(());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), operator_task)
            .await
            .expect("operator stops")
            .expect("join")
            .expect("operator run")
    });
    rt.block_on(sim.stop());
}
