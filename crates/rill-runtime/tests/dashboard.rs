//! The dashboard in a real browser: headless Chromium loads it from a REST
//! server backed by a fake dispatcher, and the test checks what the page's
//! JavaScript rendered from the API (job names, TaskManager ids, the job
//! graph and charts as SVG) and that the screenshot is a real picture.
//!
//! Chromium is required (`apt-get install -y chromium`); without it these
//! tests fail with that instruction rather than pass silently. Set
//! `RILL_CHROMIUM` to use another binary, and `RILL_DASHBOARD_SCREENSHOT`
//! to a path to keep the screenshot for a look.

mod rest_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rest_support::*;
use rill_runtime::cluster::dispatch::Dispatcher;
use rill_runtime::cluster::history::JobHistory;
use rill_runtime::cluster::metrics::ClusterMetrics;
use rill_runtime::cluster::rest::{RestOptions, RestServer};

/// Longest a single Chromium run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("RILL_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Chromium is needed for the dashboard tests but was not found on PATH; \
         install it with `apt-get install -y chromium` (or set RILL_CHROMIUM)"
    );
}

/// Runs headless Chromium with `args` and a throw-away profile, killing it
/// if it outlives [`BROWSER_TIMEOUT`].
fn run_chromium(args: &[String], profile: &Path) -> Output {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start chromium");
    // Drain both pipes on threads so a chatty browser cannot block on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

struct Cluster {
    server: Option<RestServer>,
    addr: SocketAddr,
}

impl Cluster {
    /// A REST server over the fake dispatcher whose history already holds
    /// a few samples, so charts have data on first load.
    fn start() -> Self {
        let server = RestServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(FakeDispatcher::new()) as Arc<dyn Dispatcher>,
            Arc::new(ClusterMetrics::new()),
            RestOptions {
                sample_interval: Duration::from_millis(50),
                ..RestOptions::default()
            },
        )
        .expect("start the REST server");
        let addr = server.local_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let history: JobHistory = get(addr, &format!("/jobs/{RUNNING_JOB}/history")).parse();
            if history.samples.len() >= 4 {
                break;
            }
            assert!(Instant::now() < deadline, "history was not sampled");
            std::thread::sleep(Duration::from_millis(25));
        }
        Cluster {
            server: Some(server),
            addr,
        }
    }

    fn url(&self, fragment: &str) -> String {
        format!("http://{}/{fragment}", self.addr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().expect("clean shutdown");
        }
    }
}

fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = run_chromium(
        &[
            "--virtual-time-budget=5000".to_owned(),
            "--dump-dom".to_owned(),
            url.to_owned(),
        ],
        profile.path(),
    );
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && !dom.is_empty(),
        "chromium --dump-dom failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The `<svg ...>` element with `id`, up to its closing tag.
fn svg_by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"<svg id="{id}""#))
        .unwrap_or_else(|| panic!("no <svg id=\"{id}\"> in the rendered page:\n{dom}"));
    let end = dom[start..]
        .find("</svg>")
        .unwrap_or_else(|| panic!("unclosed svg {id}"));
    &dom[start..start + end]
}

#[test]
fn overview_page_renders_jobs_and_taskmanagers_from_the_api() {
    let cluster = Cluster::start();
    let dom = dump_dom(&cluster.url("#/overview"));
    for name in [RUNNING_JOB_NAME, SECOND_JOB_NAME, FINISHED_JOB_NAME] {
        assert!(dom.contains(name), "job name {name} not rendered:\n{dom}");
    }
    for id in TM_IDS {
        assert!(dom.contains(id), "TaskManager {id} not rendered:\n{dom}");
    }
    assert!(dom.contains(&format!("#/jobs/{RUNNING_JOB}")), "job links");
    assert!(dom.contains(r#"class="badge RUNNING""#), "job states");
    assert!(!dom.contains("Loading…"), "the page left its loading state");
}

#[test]
fn job_page_renders_graph_charts_and_checkpoints() {
    let cluster = Cluster::start();
    let dom = dump_dom(&cluster.url(&format!("#/jobs/{RUNNING_JOB}")));
    assert!(dom.contains(RUNNING_JOB_NAME));

    let graph = svg_by_id(&dom, "job-graph");
    assert_eq!(
        graph.matches(r#"<g class="vertex"#).count(),
        3,
        "one box per vertex:\n{graph}"
    );
    for text in [
        "Source: clicks",
        "Session window",
        "Sink: sessions",
        "Parallelism: 4",
        "HASH",
        "FORWARD",
    ] {
        assert!(
            graph.contains(text),
            "{text} missing in the graph:\n{graph}"
        );
    }
    assert_eq!(graph.matches(r#"class="edge""#).count(), 2, "two edges");

    for chart in ["chart-in", "chart-out", "chart-bp"] {
        let svg = svg_by_id(&dom, chart);
        let lines = svg.matches("<polyline").count();
        assert_eq!(
            lines, 3,
            "{chart}: one line per vertex from the history:\n{svg}"
        );
        assert!(!svg.contains("No samples yet"), "{chart} has data");
    }

    assert!(dom.contains(r#"id="checkpoint-table""#), "checkpoint table");
    assert!(dom.contains("file:///checkpoints/chk-5"), "checkpoint path");
    assert_eq!(dom.matches(r#"<tr class="checkpoint""#).count(), 3);
}

#[test]
fn screenshot_is_a_real_picture() {
    let cluster = Cluster::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let shot = profile.path().join("dashboard.png");
    let started = Instant::now();
    let output = run_chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_owned(),
            "--virtual-time-budget=5000".to_owned(),
            cluster.url(&format!("#/jobs/{RUNNING_JOB}")),
        ],
        &profile.path().join("profile"),
    );
    assert!(
        output.status.success(),
        "chromium --screenshot failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(keep) = std::env::var_os("RILL_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, &keep).expect("copy the screenshot");
    }
    let file = std::fs::File::open(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot after {:?} ({e}): {}",
            started.elapsed(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let frame = reader.next_frame(&mut pixels).expect("decode the PNG");
    assert_eq!((frame.width, frame.height), (1280, 900));
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "a colour image, got {:?}", frame.color_type);
    let colours: HashSet<&[u8]> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|px| &px[..3])
        .collect();
    // Text, the dark top bar, badges, graph boxes and chart lines: far more
    // than a blank or error page has.
    assert!(
        colours.len() >= 50,
        "the screenshot looks blank: {} distinct colours",
        colours.len()
    );
    // The top bar is dark and the page background light.
    let pixel = |x: usize, y: usize| {
        let i = (y * frame.width as usize + x) * channels;
        [pixels[i], pixels[i + 1], pixels[i + 2]]
    };
    let bar = pixel(640, 10);
    let background = pixel(5, 880);
    assert!(bar.iter().all(|c| *c < 80), "dark top bar, got {bar:?}");
    assert!(
        background.iter().all(|c| *c > 200),
        "light background, got {background:?}"
    );
}
