//! A real S3-protocol server for tests: `s3s-fs`, found in `$RILL_S3S_FS`,
//! on `PATH` or in `$RILL_TOOLS_DIR/bin` (default `~/.cache/rill-tools/bin`),
//! and installed there with `cargo install s3s-fs` when missing (a one-off
//! build of a few minutes; later runs reuse it). Shared by the storage tests
//! and the end-to-end recovery tests.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a test must fail (rather than skip) without the server.
pub fn required() -> bool {
    std::env::var("RILL_REQUIRE_S3_TEST").is_ok_and(|v| v == "1")
}

/// 0.14.1 is the newest s3s-fs that builds with the rustc 1.95 toolchain here.
const S3S_FS_VERSION: &str = "0.14.1";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub const ACCESS_KEY: &str = "rill-test-access";
pub const SECRET_KEY: &str = "rill-test-secret-key";

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RILL_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("rill-tools")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Locate `s3s-fs`, installing it into the tools directory if needed.
pub fn s3s_fs_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RILL_S3S_FS") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = find_on_path("s3s-fs") {
        return Ok(p);
    }
    let root = tools_dir();
    let bin = root.join("bin").join("s3s-fs");
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let log_path = root.join("s3s-fs-install.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    eprintln!(
        "installing s3s-fs {S3S_FS_VERSION} into {} (log: {}) ...",
        root.display(),
        log_path.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut child = Command::new(cargo)
        .args([
            "install",
            "s3s-fs",
            "--locked",
            "--features",
            "binary",
            "--version",
        ])
        .arg(S3S_FS_VERSION)
        .arg("--root")
        .arg(&root)
        // Our own target dir is locked by the running `cargo test`.
        .env("CARGO_TARGET_DIR", root.join("target"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > INSTALL_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "cargo install s3s-fs took over {INSTALL_TIMEOUT:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(format!("waiting for cargo install: {e}")),
        }
    };
    if !status.success() || !bin.is_file() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "cargo install s3s-fs failed ({status}):\n{}",
            tail.join("\n")
        ));
    }
    // Keep the binary, drop the build artefacts.
    let _ = std::fs::remove_dir_all(root.join("target"));
    Ok(bin)
}

/// A running s3s-fs; killed (and reaped) on drop, even when the test panics.
pub struct Server {
    child: Child,
    port: u16,
    pub data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server with one (empty) bucket.
    pub fn start(bin: &Path, bucket: &str) -> Server {
        let data = tempfile::tempdir().expect("server data dir");
        // s3s-fs maps each bucket to a directory under its root.
        std::fs::create_dir(data.path().join(bucket)).expect("bucket dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let (log_file, log_path) = log.keep().expect("keep log");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data.path().join(""))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start s3s-fs");
        let mut server = Server { child, port, data };
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            let exited = server.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > STARTUP_TIMEOUT {
                let mut log = String::new();
                let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut log));
                panic!("s3s-fs did not start on port {port} (exit: {exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&log_path);
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
