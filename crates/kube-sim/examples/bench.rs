//! Figures for kube-sim: time from `kubectl apply` of a Deployment to its
//! pod Ready, API request latency while 100 objects change under open
//! watches, and kube-sim's resident memory with 50 running pods.
//!
//! Run: `cargo run --release -p kube-sim --example bench`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_sim::{KubeSim, KubeletOptions, Options};
use serde_json::Value;

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn ready_pods(sim: &KubeSim, label: &str) -> usize {
    let Some(t) = sim.store().find_type("", "v1", "pods") else {
        return 0;
    };
    let (pods, _) = sim.store().list(&t, Some("default"));
    pods.iter()
        .filter(|p| p["metadata"]["labels"]["app"] == label)
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

fn deployment(name: &str, replicas: u32, command: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},
"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"app":"{name}"}}}},
"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"terminationGracePeriodSeconds":1,
"containers":[{{"name":"c","image":"busybox","command":{command}}}]}}}}}}}}"#
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let sim = KubeSim::start(Options {
        kubeconfig: Some(dir.path().join("kubeconfig")),
        kubelet: Some(KubeletOptions::default()),
        ..Default::default()
    })
    .await?;
    let kubeconfig = sim.kubeconfig().to_path_buf();

    // 1. kubectl apply → pod Ready (readiness probe on a TCP port).
    let mut times = Vec::new();
    for i in 0..5 {
        let name = format!("ready{i}");
        let manifest = dir.path().join(format!("{name}.json"));
        let cmd = r#"["python3","-m","http.server","--bind","$(POD_IP)","8080"]"#;
        let mut d: Value = serde_json::from_str(&deployment(&name, 1, cmd))?;
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
            serde_json::json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
        std::fs::write(&manifest, d.to_string())?;
        let start = Instant::now();
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .env("HOME", dir.path())
            .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        while ready_pods(&sim, &name) < 1 {
            if start.elapsed() > Duration::from_secs(60) {
                return Err("pod did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "apply→Ready (kubectl apply + python http.server + tcp readiness probe, 5 runs): min {:?}, median {:?}, max {:?}",
        times[0], times[2], times[4]
    );

    // 2. API latency while 100 ConfigMaps change under 10 open watches.
    let addr = sim.addr();
    for i in 0..100 {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm{i}"}},"data":{{"n":"0"}}}}"#
        );
        request(
            addr,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            &body,
        )?;
    }
    let mut watchers = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(format!("GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        watchers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut total = 0usize;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        }));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut writes = 0u64;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let i = writes % 100;
            let body = format!(r#"{{"data":{{"n":"{writes}"}}}}"#);
            let _ = request(
                addr,
                "PATCH",
                &format!("/api/v1/namespaces/default/configmaps/cm{i}"),
                "application/merge-patch+json",
                &body,
            );
            writes += 1;
        }
        writes
    });
    let mut gets = Vec::new();
    let mut patches = Vec::new();
    let run_start = Instant::now();
    for n in 0..2000u32 {
        let t = Instant::now();
        let code = request(
            addr,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps/cm{}", n % 100),
            "application/json",
            "",
        )?;
        gets.push(t.elapsed());
        assert_eq!(code, 200);
        let t = Instant::now();
        let body = format!(r#"{{"metadata":{{"labels":{{"probe":"{n}"}}}}}}"#);
        let code = request(
            addr,
            "PATCH",
            &format!("/api/v1/namespaces/default/configmaps/cm{}", n % 100),
            "application/merge-patch+json",
            &body,
        )?;
        patches.push(t.elapsed());
        assert_eq!(code, 200);
    }
    let elapsed = run_start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let background_writes = writer.join().unwrap_or(0);
    gets.sort();
    patches.sort();
    println!(
        "API latency, 100 ConfigMaps under 10 watches, background writer {:.0} writes/s (new connection per request): GET p50 {:?} p99 {:?}; PATCH p50 {:?} p99 {:?}",
        background_writes as f64 / elapsed.as_secs_f64(),
        percentile(&gets, 0.5), percentile(&gets, 0.99),
        percentile(&patches, 0.5), percentile(&patches, 0.99)
    );

    // 3. RSS with 50 pods running.
    let before = rss_mb();
    let manifest = dir.path().join("sleepers.json");
    std::fs::write(&manifest, deployment("sleepers", 50, r#"["sleep","3600"]"#))?;
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("apply")
        .arg("-f")
        .arg(&manifest)
        .env("HOME", dir.path())
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    let start = Instant::now();
    while ready_pods(&sim, "sleepers") < 50 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("50 pods did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pods_ready = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "50 pods (sleep 3600) Ready after {pods_ready:?}; kube-sim RSS {:.1} MB (before: {before:.1} MB, process includes this harness)",
        rss_mb()
    );
    sim.stop().await;
    for w in watchers {
        let _ = w.join();
    }
    Ok(())
}
