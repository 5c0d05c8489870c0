//! Recovery of the `rill` process as users drive it: killed with SIGKILL at
//! random points and restored from its checkpoints, stopped with a savepoint
//! and restored at other parallelisms, restored past a damaged checkpoint,
//! and checkpointing to S3. Every time, the committed output equals the
//! output of an uninterrupted run, record for record.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../rill-checkpoint/tests/support/s3s_fs.rs"]
mod s3s_fs;
mod support;

use support::{assert_same, write_input};

const JOB: &str = "windowed-sum";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(records: u64, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_input(&dir.path().join("in.csv"), records, seed);
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `rill run windowed-sum` writing to `out`, plus extra options.
    fn command(&self, out: &str, parallelism: usize, extra: &[String]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rill"));
        c.args(["run", JOB, "--input"])
            .arg(self.path("in.csv"))
            .arg("--output")
            .arg(self.path(out))
            .args(["--window", "sliding:2000:500", "--out-of-orderness", "300"])
            .args(["--allowed-lateness", "200", "--parallelism"])
            .arg(parallelism.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Sorted lines of the committed output files.
    fn output(&self, out: &str) -> (Vec<String>, Vec<String>) {
        let read = |name: &str| {
            let text = std::fs::read_to_string(self.path(out).join(name)).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            lines
        };
        (read("windows.csv"), read("late.csv"))
    }

    /// The output of a run without failures or checkpoints.
    fn reference(&self) -> (Vec<String>, Vec<String>) {
        let o = self.command("reference", 2, &[]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (windows, late) = self.output("reference");
        assert!(windows.len() > 1000, "a meaningful workload");
        (windows, late)
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Whether a complete checkpoint of the job exists under `root`.
fn has_checkpoint(root: &Path) -> bool {
    std::fs::read_dir(root.join(JOB))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("_metadata").is_file())
        })
        .unwrap_or(false)
}

/// Complete checkpoints, newest first.
fn checkpoints(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(root.join(JOB))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("_metadata").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("chk-")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("rill did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn killed_with_sigkill_many_times_then_restored_loses_and_duplicates_nothing() {
    let f = Fixture::new(80_000, 7);
    let expected = f.reference();
    let ck = f.path("checkpoints");
    let mut kills = 0;
    let mut restores = 0;
    let mut pause = 350;
    for round in 0.. {
        assert!(round < 30, "the job never completed");
        let mut extra = args(&["--rate", "40000", "--checkpoint-interval", "60"]);
        extra.push("--checkpoint-dir".into());
        extra.push(ck.to_str().unwrap().into());
        if has_checkpoint(&ck) {
            extra.push("--restore".into());
            extra.push(ck.join(JOB).to_str().unwrap().into());
            restores += 1;
        }
        let mut child = f.command("out", 2, &extra).spawn().unwrap();
        // Kill at varying points: the pauses cycle through 350..850 ms.
        pause = 350 + (pause * 7 + 130) % 500;
        std::thread::sleep(Duration::from_millis(pause));
        if child.try_wait().unwrap().is_none() && kills < 5 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            continue;
        }
        let o = wait_with_timeout(child, Duration::from_secs(60));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        break;
    }
    assert!(kills >= 3, "only {kills} kills");
    assert!(restores >= 3, "only {restores} restores");
    assert_same(&f.output("out"), &expected, "after SIGKILLs");
}

#[test]
fn savepoint_at_parallelism_2_restores_at_1_and_4() {
    let f = Fixture::new(60_000, 11);
    let expected = f.reference();
    let savepoints = f.path("savepoints");
    let mut extra = args(&[
        "--rate",
        "30000",
        "--savepoint-on-exit",
        "--checkpoint-interval",
        "100",
    ]);
    extra.push("--checkpoint-dir".into());
    extra.push(f.path("checkpoints").to_str().unwrap().into());
    extra.push("--savepoint-dir".into());
    extra.push(savepoints.to_str().unwrap().into());
    let child = f.command("out", 2, &extra).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(900));
    // SAFETY: signals a child process this test started and still owns.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM delivered");
    let o = wait_with_timeout(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let location = stdout
        .lines()
        .find_map(|l| l.strip_prefix("savepoint: "))
        .unwrap_or_else(|| panic!("no savepoint reported: {stdout}"))
        .to_string();
    let dir = location.strip_prefix("file://").unwrap_or(&location);
    assert!(Path::new(dir).join("_metadata").is_file(), "{location}");
    let (partial, _) = f.output("out");
    assert!(
        !partial.is_empty() && partial.len() < expected.0.len(),
        "the savepoint was taken mid-stream ({} of {} lines)",
        partial.len(),
        expected.0.len()
    );

    for parallelism in [1, 4] {
        let o = f
            .command("out", parallelism, &args(&["--restore", &location]))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same(
            &f.output("out"),
            &expected,
            &format!("restored at parallelism {parallelism}"),
        );
    }
}

/// Runs until at least three checkpoints are complete, then SIGKILLs.
fn run_and_kill(f: &Fixture, ck: &Path) {
    let mut extra = args(&["--rate", "30000", "--checkpoint-interval", "80"]);
    extra.extend(args(&[
        "-D",
        "state.checkpoints.num-retained=3",
        "--checkpoint-dir",
    ]));
    extra.push(ck.to_str().unwrap().into());
    let mut child = f.command("out", 2, &extra).spawn().unwrap();
    let started = Instant::now();
    while !has_checkpoint(ck) || checkpoints(ck).len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn damaged_latest_checkpoint_falls_back_to_the_previous_one() {
    let f = Fixture::new(60_000, 13);
    let expected = f.reference();
    for damage in ["flip a byte", "remove _metadata"] {
        let ck = f.path(&format!("checkpoints-{}", damage.replace(' ', "-")));
        run_and_kill(&f, &ck);
        let newest = checkpoints(&ck)[0].clone();
        if damage == "flip a byte" {
            let state = std::fs::read_dir(&newest)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "state"))
                .expect("a state file");
            let mut bytes = std::fs::read(&state).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&state, bytes).unwrap();
        } else {
            std::fs::remove_file(newest.join("_metadata")).unwrap();
        }
        let name = newest.file_name().unwrap().to_string_lossy().into_owned();
        let mut extra = args(&["--restore"]);
        extra.push(ck.join(JOB).to_str().unwrap().into());
        let o = f.command("out", 2, &extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        if damage == "flip a byte" {
            assert!(
                stderr.contains(&name) && stderr.contains("skipped"),
                "the fallback names the damaged checkpoint {name}: {stderr}"
            );
        }
        assert_same(&f.output("out"), &expected, damage);
    }
}

#[test]
fn checkpoints_to_s3_and_restores_from_there() {
    let bin = match s3s_fs::s3s_fs_binary() {
        Ok(bin) => bin,
        Err(reason) if !s3s_fs::required() => {
            eprintln!("skipping S3 test: s3s-fs is not available: {reason}");
            return;
        }
        Err(reason) => panic!("S3 test required but s3s-fs is unavailable: {reason}"),
    };
    let server = s3s_fs::Server::start(&bin, "rill");
    let f = Fixture::new(60_000, 17);
    let expected = f.reference();
    let s3 = [
        "-D".to_string(),
        format!("s3.endpoint={}", server.endpoint()),
        "-D".into(),
        format!("s3.access-key={}", s3s_fs::ACCESS_KEY),
        "-D".into(),
        format!("s3.secret-key={}", s3s_fs::SECRET_KEY),
        "-D".into(),
        "s3.region=us-east-1".into(),
    ];
    let mut extra = args(&["--rate", "30000", "--checkpoint-interval", "80"]);
    extra.extend(args(&["--checkpoint-dir", "s3://rill/checkpoints"]));
    extra.extend(s3.iter().cloned());
    let mut child = f.command("out", 2, &extra).spawn().unwrap();
    let on_server = server.data.path().join("rill/checkpoints").join(JOB);
    let started = Instant::now();
    while !has_checkpoint(&server.data.path().join("rill/checkpoints")) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no checkpoint reached the S3 server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(on_server.is_dir());

    let mut extra = args(&["--restore", "s3://rill/checkpoints/windowed-sum"]);
    extra.extend(s3.iter().cloned());
    let o = f.command("out", 2, &extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("restoring from checkpoint"), "{stderr}");
    assert_same(&f.output("out"), &expected, "restored from S3");
}

#[test]
fn restoring_from_nothing_or_from_damage_only_is_a_clear_error() {
    let f = Fixture::new(1_000, 19);
    let missing = f.path("no-such-checkpoints");
    let o = f
        .command("out", 1, &args(&["--restore", missing.to_str().unwrap()]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("no-such-checkpoints"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A checkpoint directory whose only checkpoint is damaged.
    let chk = f.path("ck").join(JOB).join("chk-1");
    std::fs::create_dir_all(&chk).unwrap();
    std::fs::write(chk.join("_metadata"), "{ not json").unwrap();
    let mut extra = args(&["--restore"]);
    extra.push(f.path("ck").join(JOB).to_str().unwrap().into());
    let o = f.command("out", 1, &extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("chk-1"),
        "the damaged checkpoint is named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn rill_savepoint_and_rill_stop_reach_a_running_local_job() {
    let f = Fixture::new(60_000, 23);
    let expected = f.reference();
    let control_dir = f.path("control");
    std::fs::create_dir_all(&control_dir).unwrap();
    let mut extra = args(&["--rate", "30000", "--job-id", "savepoint-cli-test"]);
    extra.extend(args(&["--checkpoint-interval", "100", "--checkpoint-dir"]));
    extra.push(f.path("checkpoints").to_str().unwrap().into());
    let child = f
        .command("out", 2, &extra)
        .env("RILL_CONTROL_DIR", &control_dir)
        .spawn()
        .unwrap();
    let cli = |what: &str| {
        Command::new(env!("CARGO_BIN_EXE_rill"))
            .args([what, "savepoint-cli-test"])
            .env("RILL_CONTROL_DIR", &control_dir)
            .output()
            .unwrap()
    };
    let started = Instant::now();
    let location = loop {
        std::thread::sleep(Duration::from_millis(200));
        let o = cli("savepoint");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if let Some(l) = stdout.lines().find_map(|l| l.strip_prefix("savepoint: ")) {
            break l.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no savepoint: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let dir = location.strip_prefix("file://").unwrap_or(&location);
    assert!(Path::new(dir).join("_metadata").is_file(), "{location}");
    let o = cli("stop");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = wait_with_timeout(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("savepoint: "));
    let o = cli("savepoint");
    assert!(!o.status.success(), "the job is gone");

    // The savepoint taken while the job kept running restores exactly.
    let o = f
        .command("out", 3, &args(&["--restore", &location]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(
        &f.output("out"),
        &expected,
        "restored from `rill savepoint`",
    );
}
