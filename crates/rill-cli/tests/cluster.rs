//! A cluster of `rill` processes on loopback: a JobManager and TaskManagers
//! exchanging data over TCP. A TaskManager killed with SIGKILL mid-stream
//! is replaced and the job recovers from its latest checkpoint with output
//! equal to an uninterrupted run; a session cluster runs two jobs side by
//! side and cancels one without disturbing the other; the REST API refuses
//! bad requests with JSON errors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{assert_same, write_input};

const JOB: &str = "windowed-sum";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
struct Processes(Vec<Child>);

impl Processes {
    fn spawn(&mut self, command: &mut Command) -> usize {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.0.push(child);
        self.0.len() - 1
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    rpc: u16,
    rest: u16,
    processes: Processes,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            rpc: free_port(),
            rest: free_port(),
            processes: Processes::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rill(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rill"));
        c.arg("-D")
            .arg(format!("jobmanager.rpc.port={}", self.rpc))
            .arg("-D")
            .arg(format!("rest.port={}", self.rest))
            .args(["-D", "jobmanager.rpc.address=127.0.0.1"])
            .args(["-D", "taskmanager.numberOfTaskSlots=2"]);
        c
    }

    /// The arguments of `windowed-sum` reading `input` and writing `out`.
    fn job_args(&self, input: &str, out: &str) -> Vec<String> {
        let mut a: Vec<String> = vec!["--input".into(), self.path(input).to_string_lossy().into()];
        a.push("--output".into());
        a.push(self.path(out).to_string_lossy().into());
        for s in [
            "--window",
            "sliding:2000:500",
            "--out-of-orderness",
            "300",
            "--allowed-lateness",
            "200",
        ] {
            a.push(s.into());
        }
        a
    }

    fn start_taskmanager(&mut self, id: &str) -> usize {
        let mut c = self.rill();
        c.args([
            "-D",
            &format!("taskmanager.resource-id={id}"),
            "taskmanager",
        ]);
        self.processes.spawn(&mut c)
    }

    /// Sorted lines of the committed output.
    fn output(&self, out: &str) -> (Vec<String>, Vec<String>) {
        let read = |name: &str| {
            let text = std::fs::read_to_string(self.path(out).join(name)).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            lines
        };
        (read("windows.csv"), read("late.csv"))
    }

    /// Output of an uninterrupted local run.
    fn reference(&self, input: &str) -> (Vec<String>, Vec<String>) {
        let o = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["run", JOB])
            .args(self.job_args(input, "reference"))
            .args(["--parallelism", "2"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = self.output("reference");
        assert!(out.0.len() > 1000, "a meaningful workload");
        out
    }

    /// `(status, body)` of a REST call.
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.rest)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        // Chunked bodies: take the JSON between the first '{'/'[' and the last '}'/']'.
        let start = json.find(['{', '[']).unwrap_or(0);
        let end = json.rfind(['}', ']']).map_or(json.len(), |e| e + 1);
        let value = serde_json::from_str(&json[start..end]).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    fn wait_for_rest(&self) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.rest)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the REST API never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn job_state(&self, id: &str) -> String {
        let (_, job) = self.http("GET", &format!("/jobs/{id}"), None);
        job["state"].as_str().unwrap_or_default().to_string()
    }

    fn wait_for_state(&self, id: &str, states: &[&str], timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let state = self.job_state(id);
            if states.contains(&state.as_str()) {
                return state;
            }
            assert!(
                started.elapsed() < timeout,
                "job {id} is {state}, expected one of {states:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < timeout,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn a_taskmanager_killed_mid_stream_is_replaced_and_nothing_is_lost_or_duplicated() {
    let mut c = Cluster::new();
    write_input(&c.path("in.csv"), 60_000, 21);
    let expected = c.reference("in.csv");
    let ck = c.path("checkpoints");
    let mut jm = c.rill();
    jm.args(["jobmanager", "--job", JOB])
        .args(c.job_args("in.csv", "out"))
        .args([
            "--rate",
            "8000",
            "--parallelism",
            "4",
            "--checkpoint-interval",
            "100",
        ])
        .args(["-D", "state.checkpoints.num-retained=3"])
        .arg("--checkpoint-dir")
        .arg(&ck)
        .args(["-D", "restart-strategy.type=fixed-delay"])
        .args(["-D", "restart-strategy.fixed-delay.attempts=5"])
        .args(["-D", "restart-strategy.fixed-delay.delay=200 ms"]);
    let jm = c.processes.spawn(&mut jm);
    let tms: Vec<usize> = ["tm-1", "tm-2", "tm-3"]
        .iter()
        .map(|id| c.start_taskmanager(id))
        .collect();
    c.wait_for_rest();
    c.wait_for_state(JOB, &["RUNNING"], Duration::from_secs(30));

    // Kill a TaskManager that runs part of the job once checkpoints exist.
    let started = Instant::now();
    while complete_checkpoints(&ck, JOB) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, tm_list) = c.http("GET", "/taskmanagers", None);
    let busy = tm_list["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["freeSlots"].as_u64() < t["slotsNumber"].as_u64())
        .and_then(|t| t["id"].as_str())
        .expect("a TaskManager runs tasks")
        .to_string();
    let victim = tms[["tm-1", "tm-2", "tm-3"]
        .iter()
        .position(|id| *id == busy)
        .unwrap()];
    let (partial, _) = c.output("out");
    c.processes.0[victim].kill().unwrap(); // SIGKILL
    c.processes.0[victim].wait().unwrap();
    c.start_taskmanager("tm-4");

    // The job fails over, runs again and finishes; the JobManager of an
    // application cluster exits with it.
    let status = wait_exit(&mut c.processes.0[jm], Duration::from_secs(120));
    let log = stderr_of(&mut c.processes.0[jm]);
    assert!(status.success(), "the JobManager failed:\n{log}");
    assert!(
        log.contains("restarting"),
        "the job never failed over:\n{log}"
    );
    assert!(
        partial.len() < expected.0.len(),
        "the TaskManager was killed mid-stream"
    );
    assert_same(&c.output("out"), &expected, "after a TaskManager SIGKILL");
}

#[test]
fn a_session_cluster_runs_two_jobs_and_cancels_one_without_disturbing_the_other() {
    let mut c = Cluster::new();
    write_input(&c.path("a.csv"), 30_000, 5);
    write_input(&c.path("b.csv"), 30_000, 6);
    let expected = c.reference("a.csv");
    let mut jm = c.rill();
    jm.arg("jobmanager");
    c.processes.spawn(&mut jm);
    c.start_taskmanager("tm-a");
    c.start_taskmanager("tm-b");
    c.wait_for_rest();
    let url = format!("127.0.0.1:{}", c.rest);

    let submit = |out: &str, input: &str, extra: &[&str]| -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["submit", "--jobmanager", &url, JOB])
            .args(c.job_args(input, out))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let slow = submit("slow", "b.csv", &["--rate", "2000", "--parallelism", "2"]);
    let fast = submit("fast", "a.csv", &["--parallelism", "2"]);
    assert_ne!(slow, fast);
    c.wait_for_state(&slow, &["RUNNING"], Duration::from_secs(30));

    let listed = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["list", "--jobmanager", &url])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&slow) && listed.contains(&fast), "{listed}");

    let o = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["cancel", "--jobmanager", &url, &slow])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        c.wait_for_state(
            &slow,
            &["CANCELED", "FAILED", "FINISHED"],
            Duration::from_secs(30)
        ),
        "CANCELED"
    );
    assert_eq!(
        c.wait_for_state(
            &fast,
            &["CANCELED", "FAILED", "FINISHED"],
            Duration::from_secs(60)
        ),
        "FINISHED"
    );
    assert_same(
        &c.output("fast"),
        &expected,
        "the job beside a cancelled one",
    );
    let (slow_windows, _) = c.output("slow");
    let (b_windows, _) = {
        // What the cancelled job would have written uninterrupted.
        let o = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["run", JOB])
            .args(c.job_args("b.csv", "b-reference"))
            .output()
            .unwrap();
        assert!(o.status.success());
        c.output("b-reference")
    };
    assert!(
        slow_windows.len() < b_windows.len(),
        "the cancelled job stopped early ({} of {} lines)",
        slow_windows.len(),
        b_windows.len()
    );

    // Cancelling again is a conflict; the REST API answers bad requests
    // with JSON errors.
    let (status, body) = c.http("PATCH", &format!("/jobs/{slow}?mode=cancel"), None);
    assert_eq!(status, 409, "{body}");
    assert!(body["errors"][0].as_str().is_some(), "{body}");
    let (status, body) = c.http("POST", "/jobs", Some(r#"{"entry":"no-such-job"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("no-such-job"),
        "{body}"
    );
    let (status, _) = c.http("POST", "/jobs", Some("{not json"));
    assert_eq!(status, 400);
    let (status, _) = c.http("GET", "/jobs/ffffffffffffffffffffffffffffffff", None);
    assert_eq!(status, 404);
    let (status, overview) = c.http("GET", "/overview", None);
    assert_eq!(status, 200);
    assert_eq!(overview["taskmanagers"], 2, "{overview}");
    assert_eq!(overview["jobs-finished"], 1, "{overview}");
    assert_eq!(overview["jobs-cancelled"], 1, "{overview}");
}

/// Starts a TaskManager whose RocksDB lives in its own local directory and
/// whose log goes to a file (read after the run; a pipe nobody drains could
/// block it).
fn start_rocksdb_taskmanager(c: &mut Cluster, id: &str) -> (usize, PathBuf) {
    let local = c.path(&format!("{id}-rocksdb"));
    std::fs::create_dir_all(&local).unwrap();
    let log = c.path(&format!("{id}.log"));
    let mut command = c.rill();
    command
        .arg("-D")
        .arg(format!(
            "state.backend.rocksdb.localdir={}",
            local.display()
        ))
        .args([
            "-D",
            &format!("taskmanager.resource-id={id}"),
            "taskmanager",
        ])
        .env("RUST_LOG", "warn,rill_checkpoint=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    c.processes.0.push(command.spawn().unwrap());
    (c.processes.0.len() - 1, log)
}

/// Native RocksDB files `_metadata` of a complete checkpoint lists.
fn native_files_of_checkpoints(root: &Path, job: &str) -> usize {
    std::fs::read_dir(root.join(job))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("_metadata")).ok())
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .map(|meta| {
            meta["operators"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|op| op["files"].as_array().into_iter().flatten())
                .filter_map(|f| f["native"]["files"].as_array())
                .map(Vec::len)
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn rocksdb_state_checkpoints_natively_across_taskmanagers_and_survives_a_kill() {
    let mut c = Cluster::new();
    write_input(&c.path("in.csv"), 60_000, 33);
    // Running sums per key are keyed state, so they live in RocksDB.
    let mut args = c.job_args("in.csv", "reference");
    args.push("--running-sums".into());
    let o = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["run", JOB])
        .args(&args)
        .args(["--parallelism", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = c.output("reference");
    let sums = |c: &Cluster, out: &str| {
        let text = std::fs::read_to_string(c.path(out).join("sums.csv")).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines
    };
    let expected_sums = sums(&c, "reference");
    assert_eq!(expected_sums.len(), 60_000, "a running sum per input line");

    let ck = c.path("checkpoints");
    let mut args = c.job_args("in.csv", "out");
    args.push("--running-sums".into());
    let mut jm = c.rill();
    jm.args(["jobmanager", "--job", JOB])
        .args(&args)
        .args([
            "--rate",
            "8000",
            "--parallelism",
            "4",
            "--checkpoint-interval",
            "100",
        ])
        .args(["-D", "state.checkpoints.num-retained=3"])
        .args(["-D", "state.backend.type=rocksdb"])
        .args(["-D", "state.backend.incremental=true"])
        .arg("--checkpoint-dir")
        .arg(&ck)
        .args(["-D", "restart-strategy.type=fixed-delay"])
        .args(["-D", "restart-strategy.fixed-delay.attempts=5"])
        .args(["-D", "restart-strategy.fixed-delay.delay=200 ms"]);
    let jm = c.processes.spawn(&mut jm);
    let ids = ["tm-1", "tm-2", "tm-3"];
    let tms: Vec<(usize, PathBuf)> = ids
        .iter()
        .map(|id| start_rocksdb_taskmanager(&mut c, id))
        .collect();
    c.wait_for_rest();
    c.wait_for_state(JOB, &["RUNNING"], Duration::from_secs(30));

    let started = Instant::now();
    while complete_checkpoints(&ck, JOB) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The checkpoints hold RocksDB's own files, not key groups.
    assert!(
        native_files_of_checkpoints(&ck, JOB) > 0,
        "the checkpoints list no native RocksDB files"
    );
    let (_, tm_list) = c.http("GET", "/taskmanagers", None);
    let busy = tm_list["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["freeSlots"].as_u64() < t["slotsNumber"].as_u64())
        .and_then(|t| t["id"].as_str())
        .expect("a TaskManager runs tasks")
        .to_string();
    let victim = ids.iter().position(|id| *id == busy).unwrap();
    let partial = sums(&c, "out");
    c.processes.0[tms[victim].0].kill().unwrap(); // SIGKILL
    c.processes.0[tms[victim].0].wait().unwrap();
    let (_, replacement_log) = start_rocksdb_taskmanager(&mut c, "tm-4");

    let status = wait_exit(&mut c.processes.0[jm], Duration::from_secs(120));
    let log = stderr_of(&mut c.processes.0[jm]);
    assert!(status.success(), "the JobManager failed:\n{log}");
    assert!(
        log.contains("restarting"),
        "the job never failed over:\n{log}"
    );
    assert!(
        partial.len() < expected_sums.len(),
        "the TaskManager was killed mid-stream"
    );
    assert_same(&c.output("out"), &expected, "RocksDB state after a SIGKILL");
    let actual_sums = sums(&c, "out");
    if actual_sums != expected_sums {
        let missing = expected_sums
            .iter()
            .filter(|l| actual_sums.binary_search(l).is_err())
            .count();
        panic!(
            "sums.csv has {} lines, the uninterrupted run {}: {missing} missing",
            actual_sums.len(),
            expected_sums.len()
        );
    }
    // The TaskManagers uploaded the RocksDB files themselves.
    let staged = tms
        .iter()
        .map(|(_, log)| log)
        .chain([&replacement_log])
        .filter_map(|log| std::fs::read_to_string(log).ok())
        .filter(|text| text.contains("native snapshot staged"))
        .count();
    assert!(staged > 0, "no TaskManager staged a native snapshot");
}
