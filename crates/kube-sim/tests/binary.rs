//! The `kube-sim up` command: serves, writes its kubeconfig, stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kubectl_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

#[test]
fn up_serves_until_sigterm_and_keeps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kc");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["up", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kube-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read banner");
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(text.contains("server: http://127.0.0.1:"), "{text}");

    if let Some(kubectl) = kubectl_binary() {
        let out = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["get", "namespaces", "-o", "name", "--request-timeout=10s"])
            .output()
            .expect("run kubectl");
        let names = String::from_utf8_lossy(&out.stdout);
        assert!(names.contains("namespace/default"), "{names}");
    } else {
        eprintln!("SKIP kubectl part of up_serves_until_sigterm: kubectl not found on PATH");
    }

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kube-sim did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let saved = std::fs::read_to_string(dir.path().join("state").join(kube_sim::SNAPSHOT_FILE))
        .expect("state saved on stop");
    assert!(saved.contains("kube-system"), "{saved}");
}
