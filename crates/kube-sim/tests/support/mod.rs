//! What the `kubectl` and kubelet tests share: a kube-sim on a free
//! loopback port, a kubeconfig in a temp dir, and the real `kubectl` run as
//! a subprocess against it. `kubectl` is a requirement of these tests (the
//! CI machine has it); without it they fail rather than pass unchecked.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kube_sim::{KubeSim, Options};
use serde_json::Value;

fn kubectl_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

/// A running kube-sim and `kubectl` pointed at it.
pub struct Kubectl {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub sim: KubeSim,
}

impl Kubectl {
    pub async fn start(opts: Options) -> Kubectl {
        let bin = kubectl_binary().expect("these tests drive the real kubectl; put it on PATH");
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = KubeSim::start(Options {
            kubeconfig: Some(dir.path().join("kubeconfig")),
            ..opts
        })
        .await
        .expect("start kube-sim");
        Kubectl { bin, dir, sim }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(self.sim.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", self.dir.path());
        c
    }

    /// Run kubectl to completion (off the async runtime).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl"))
            .await
            .expect("join")
    }

    /// Run and require success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.ok(&a).await;
        serde_json::from_str(&text).expect("kubectl printed JSON")
    }

    /// Writes a file into the test's directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        path_str(&p)
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
