//! The `rill` command line, shared by every binary built with [`crate::main`].
//!
//! Options that belong to Rill (`-D key=value`, `--parallelism`, `-p`, and
//! the checkpoint options `--checkpoint-dir`, `--checkpoint-interval`,
//! `--restore`, `--allow-non-restored-state`, `--savepoint-on-exit`) are
//! accepted before and after the job entry; everything else after the entry
//! is the job's own arguments. The checkpoint options are shorthands for
//! Flink's keys (`state.checkpoints.dir`, `execution.checkpointing.interval`,
//! `execution.savepoint.path`, `execution.savepoint.ignore-unclaimed-state`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rill_api::{Catalog, Configuration, JobArgs};

use crate::cluster::{RestClient, ServicesFactory};

#[derive(Parser, Debug)]
#[command(name = "rill", version, about = "Stateful stream processing in Rust")]
struct Cli {
    /// Directory holding config.yaml.
    #[arg(long, global = true, env = "RILL_CONF_DIR")]
    config_dir: Option<PathBuf>,
    /// Configuration override, Flink style (repeatable).
    #[arg(short = 'D', global = true, value_name = "KEY=VALUE")]
    dynamic: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a job of this binary's catalogue in an embedded mini cluster.
    Run {
        /// Catalogue entry.
        entry: String,
        /// Job arguments (plus --parallelism P and -D key=value).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print a job's operators, parallelism and chaining without running it.
    Plan {
        entry: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the jobs compiled into this binary.
    Entries,
    /// Take a savepoint of a job, by job id: one running locally (`rill
    /// run`; the id is the entry name unless `--job-id` was given), or on a
    /// cluster with `--jobmanager`.
    Savepoint {
        job_id: String,
        /// The JobManager's REST address (host:port or URL).
        #[arg(long)]
        jobmanager: Option<String>,
    },
    /// Stop a job with a final savepoint (locally, or on a cluster with
    /// `--jobmanager`).
    Stop {
        job_id: String,
        #[arg(long)]
        jobmanager: Option<String>,
    },
    /// Start a JobManager: a session cluster, or with `--job` an application
    /// cluster that runs that entry and exits with it.
    Jobmanager {
        /// Catalogue entry to run (application mode).
        #[arg(long)]
        job: Option<String>,
        /// The job's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Start a TaskManager that offers its slots to the leading JobManager.
    Taskmanager,
    /// Submit a catalogue entry to a session cluster.
    Submit {
        #[arg(long)]
        jobmanager: String,
        entry: String,
        /// Job arguments (plus --parallelism P, --restore PATH,
        /// --allow-non-restored-state, --job-id ID).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List a cluster's jobs.
    List {
        #[arg(long)]
        jobmanager: String,
    },
    /// Cancel a job on a cluster.
    Cancel {
        #[arg(long)]
        jobmanager: String,
        job_id: String,
    },
    /// Benchmarks that print events per second.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Keyed 10 s tumbling-window COUNT/SUM over generated events.
    Window {
        #[arg(long, default_value_t = 50_000_000)]
        events: u64,
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        #[arg(long, short = 'p', default_value_t = 1)]
        parallelism: usize,
        /// Repeat and report each run (the last line is the best run).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Take checkpoints this often (milliseconds) during the run.
        #[arg(long)]
        checkpoint_interval: Option<u64>,
        /// Where checkpoints go (default: a temporary directory).
        #[arg(long)]
        checkpoint_dir: Option<String>,
    },
    /// One counter per key for many keys; size and duration of checkpoints.
    State {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, short = 'p', default_value_t = 1)]
        parallelism: usize,
        /// Checkpoints to measure.
        #[arg(long, default_value_t = 3)]
        checkpoints: usize,
        #[arg(long, default_value_t = 1000)]
        checkpoint_interval: u64,
        #[arg(long)]
        checkpoint_dir: Option<String>,
    },
}

/// A checkpoint directory for a benchmark: the given one, or a temporary one.
fn bench_checkpoint_dir(
    dir: &Option<String>,
) -> Result<(String, Option<tempfile::TempDir>), String> {
    match dir {
        Some(d) => Ok((d.clone(), None)),
        None => {
            let t = tempfile::tempdir().map_err(|e| e.to_string())?;
            Ok((t.path().to_string_lossy().into_owned(), Some(t)))
        }
    }
}

fn print_snapshots(snapshots: &[crate::runtime::SnapshotStats]) {
    for s in snapshots {
        println!(
            "checkpoint {}: bytes={} ({:.1} MB) seconds={:.3} upload_seconds={:.3}",
            s.id,
            s.bytes,
            s.bytes as f64 / 1e6,
            s.duration.as_secs_f64(),
            s.upload.as_secs_f64()
        );
    }
}

/// Rill's own options found among a job's arguments.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    job: Vec<String>,
    dynamic: Vec<String>,
    parallelism: Option<String>,
    savepoint_on_exit: bool,
}

/// Rill options with a value that stand for a configuration key.
const SHORTHANDS: &[(&str, &str)] = &[
    ("--checkpoint-dir", "state.checkpoints.dir"),
    ("--checkpoint-interval", "execution.checkpointing.interval"),
    ("--restore", "execution.savepoint.path"),
    ("--savepoint-dir", "state.savepoints.dir"),
    ("--job-id", "$internal.pipeline.job-id"),
];

fn split_args(args: Vec<String>) -> Split {
    let mut split = Split::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-D" => split.dynamic.extend(it.next()),
            "--parallelism" | "-p" => split.parallelism = it.next(),
            "--savepoint-on-exit" => split.savepoint_on_exit = true,
            "--allow-non-restored-state" => split
                .dynamic
                .push("execution.savepoint.ignore-unclaimed-state=true".into()),
            _ => {
                let shorthand = SHORTHANDS.iter().find_map(|(flag, key)| {
                    if a == *flag {
                        Some((key, None))
                    } else {
                        a.strip_prefix(flag)
                            .and_then(|r| r.strip_prefix('='))
                            .map(|v| (key, Some(v.to_string())))
                    }
                });
                if let Some((key, value)) = shorthand {
                    let value = value.or_else(|| it.next()).unwrap_or_default();
                    split.dynamic.push(format!("{key}={value}"));
                } else if let Some(kv) = a.strip_prefix("-D").filter(|kv| !kv.is_empty()) {
                    split.dynamic.push(kv.to_string());
                } else if let Some(p) = a.strip_prefix("--parallelism=") {
                    split.parallelism = Some(p.to_string());
                } else {
                    split.job.push(a);
                }
            }
        }
    }
    split
}

fn configuration(
    cli: &Cli,
    extra: &[String],
    parallelism: Option<&str>,
) -> Result<Configuration, String> {
    let mut config = match &cli.config_dir {
        Some(dir) => Configuration::load_dir(dir).map_err(|e| e.to_string())?,
        None => Configuration::new(),
    };
    for kv in cli.dynamic.iter().chain(extra) {
        config.apply_override(kv).map_err(|e| e.to_string())?;
    }
    if let Some(p) = parallelism {
        config
            .set("parallelism.default", p)
            .map_err(|e| e.to_string())?;
        config.parallelism().map_err(|e| e.to_string())?;
    }
    Ok(config)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`); JSON lines
/// with `json`. Every `rill` command sets it up once, before anything runs.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs the command line; returns the process exit code.
pub fn run<I, T>(catalog: Catalog, args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(catalog, args, None)
}

/// [`run`] with cluster services for configurations the runtime alone
/// cannot serve (Kubernetes HA and TaskManager pods).
pub fn run_with<I, T>(catalog: Catalog, args: I, services: Option<ServicesFactory>) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(cli.log_json);
    match execute(&cli, &catalog, services) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

fn execute(cli: &Cli, catalog: &Catalog, services: Option<ServicesFactory>) -> Result<(), String> {
    // Validate the configuration for every command, so typos never pass silently.
    configuration(cli, &[], None)?;
    let savepoint_timeout = std::time::Duration::from_secs(600);
    match &cli.command {
        Command::Savepoint {
            job_id,
            jobmanager: None,
        } => {
            let location = crate::control::request(job_id, "savepoint")?;
            println!("savepoint: {location}");
            Ok(())
        }
        Command::Savepoint {
            job_id,
            jobmanager: Some(url),
        } => {
            let location = RestClient::new(url)?.savepoint(job_id, false, savepoint_timeout)?;
            println!("savepoint: {location}");
            Ok(())
        }
        Command::Stop {
            job_id,
            jobmanager: None,
        } => {
            crate::control::request(job_id, "stop")?;
            eprintln!("job '{job_id}' is stopping with a savepoint");
            Ok(())
        }
        Command::Stop {
            job_id,
            jobmanager: Some(url),
        } => {
            let location = RestClient::new(url)?.savepoint(job_id, true, savepoint_timeout)?;
            println!("savepoint: {location}");
            Ok(())
        }
        Command::Jobmanager { job, args } => {
            let split = split_args(args.clone());
            let config = configuration(cli, &split.dynamic, split.parallelism.as_deref())?;
            if let Some(entry) = job {
                catalog.get(entry).map_err(|e| e.to_string())?;
            } else if !split.job.is_empty() {
                return Err(format!(
                    "job arguments {:?} need --job ENTRY (application mode)",
                    split.job
                ));
            }
            let job = job.clone().map(|entry| (entry, split.job));
            crate::cluster::jobmanager(catalog.clone(), config, job, services)
        }
        Command::Taskmanager => {
            let config = configuration(cli, &[], None)?;
            crate::cluster::taskmanager(catalog.clone(), config, services)
        }
        Command::Submit {
            jobmanager,
            entry,
            args,
        } => {
            let split = split_args(args.clone());
            let mut request = serde_json::json!({ "entry": entry, "args": split.job });
            if let Some(p) = &split.parallelism {
                let p: usize = p
                    .parse()
                    .map_err(|_| format!("--parallelism {p}: not a number"))?;
                request["parallelism"] = p.into();
            }
            for kv in &split.dynamic {
                match kv.split_once('=') {
                    Some(("execution.savepoint.path", v)) => request["savepointPath"] = v.into(),
                    Some(("execution.savepoint.ignore-unclaimed-state", "true")) => {
                        request["allowNonRestoredState"] = true.into()
                    }
                    Some(("$internal.pipeline.job-id", v)) => request["jobId"] = v.into(),
                    _ => {
                        return Err(format!(
                            "'{kv}' cannot be set per job; set it on the cluster"
                        ))
                    }
                }
            }
            let answer = RestClient::new(jobmanager)?.post("/jobs", &request)?;
            println!("{}", answer["jobid"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::List { jobmanager } => {
            let answer = RestClient::new(jobmanager)?.get("/jobs/overview")?;
            for job in answer["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    job["jid"].as_str().unwrap_or_default(),
                    job["state"].as_str().unwrap_or_default(),
                    job["name"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Cancel { jobmanager, job_id } => {
            RestClient::new(jobmanager)?.patch(&format!("/jobs/{job_id}?mode=cancel"))?;
            eprintln!("job {job_id} is cancelling");
            Ok(())
        }
        Command::Entries => {
            for name in catalog.names() {
                println!("{name}");
            }
            Ok(())
        }
        Command::Run { entry, args } | Command::Plan { entry, args } => {
            let split = split_args(args.clone());
            let config = configuration(cli, &split.dynamic, split.parallelism.as_deref())?;
            let entry = catalog.get(entry).map_err(|e| e.to_string())?;
            let job_args = JobArgs::parse(split.job);
            if matches!(cli.command, Command::Plan { .. }) {
                let graph =
                    crate::build_job(entry, &job_args, config).map_err(|e| e.to_string())?;
                print!("{}", graph.describe());
                return Ok(());
            }
            let executor = crate::executor_for(&config).map_err(|e| e.to_string())?;
            let job_id = config
                .get("$internal.pipeline.job-id")
                .unwrap_or(entry.name)
                .to_string();
            let _control_server =
                match crate::control::ControlServer::start(&job_id, executor.control()) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        eprintln!("warning: `rill savepoint` cannot reach this job: {e}");
                        None
                    }
                };
            let control = executor.control();
            let on_signal = move || {
                if split.savepoint_on_exit {
                    eprintln!("stopping with a savepoint");
                    control.stop_with_savepoint();
                } else {
                    control.cancel();
                }
            };
            if let Err(e) = ctrlc::set_handler(on_signal) {
                tracing::warn!(error = %e, "cannot handle SIGINT/SIGTERM");
            }
            let report = crate::run_local_with(&executor, entry, &job_args, config)
                .map_err(|e| e.to_string())?;
            tracing::info!(job = %report.job, seconds = report.duration.as_secs_f64(), "job finished");
            eprintln!(
                "job '{}' finished in {:.3} s ({} tasks, {} checkpoints, {} restarts)",
                report.job,
                report.duration.as_secs_f64(),
                report.tasks,
                report.checkpoints,
                report.restarts
            );
            if let Some(location) = report.savepoint {
                println!("savepoint: {location}");
            }
            Ok(())
        }
        Command::Bench {
            which:
                Bench::Window {
                    events,
                    keys,
                    parallelism,
                    runs,
                    checkpoint_interval,
                    checkpoint_dir,
                },
        } => {
            println!(
                "bench window: events={events} keys={keys} parallelism={parallelism} \
                 checkpoint_interval_ms={}",
                checkpoint_interval.map_or("none".to_string(), |i| i.to_string())
            );
            let mut best: Option<crate::bench::BenchResult> = None;
            for run in 1..=(*runs).max(1) {
                let (dir, _temp) = bench_checkpoint_dir(checkpoint_dir)?;
                let checkpoints = checkpoint_interval.map(|ms| crate::bench::BenchCheckpoints {
                    dir: format!("{dir}/run-{run}"),
                    interval: std::time::Duration::from_millis(ms),
                });
                let r =
                    crate::bench::run_window(*events, *keys, *parallelism, checkpoints.as_ref())
                        .map_err(|e| e.to_string())?;
                if checkpoints.is_some() {
                    println!("run {run}: {} checkpoints", r.snapshots.len());
                    print_snapshots(&r.snapshots);
                }
                if *runs > 1 {
                    println!("run {run}: seconds={:.3} rate={:.0}/s", r.seconds, r.rate());
                }
                if best.as_ref().is_none_or(|b| r.seconds < b.seconds) {
                    best = Some(r);
                }
            }
            if let Some(b) = best {
                println!(
                    "events={} seconds={:.3} rate={:.0}/s",
                    b.events,
                    b.seconds,
                    b.rate()
                );
            }
            Ok(())
        }
        Command::Bench {
            which:
                Bench::State {
                    keys,
                    parallelism,
                    checkpoints,
                    checkpoint_interval,
                    checkpoint_dir,
                },
        } => {
            let (dir, _temp) = bench_checkpoint_dir(checkpoint_dir)?;
            println!(
                "bench state: keys={keys} parallelism={parallelism} backend=hashmap dir={dir}"
            );
            let r = crate::bench::run_state(
                *keys,
                *parallelism,
                *checkpoints,
                &crate::bench::BenchCheckpoints {
                    dir,
                    interval: std::time::Duration::from_millis(*checkpoint_interval),
                },
            )
            .map_err(|e| e.to_string())?;
            println!("loaded {} keys in {:.3} s", r.keys, r.load_seconds);
            print_snapshots(&r.snapshots);
            if r.snapshots.is_empty() {
                return Err("no checkpoint completed after loading".into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rill_options_are_taken_out_of_job_args() {
        let s = split_args(
            [
                "--input",
                "f",
                "--parallelism",
                "4",
                "-D",
                "a=b",
                "-Dc=d",
                "--window",
                "x",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(
            s.job,
            ["--input", "f", "--window", "x"].map(String::from).to_vec()
        );
        assert_eq!(s.dynamic, vec!["a=b".to_string(), "c=d".to_string()]);
        assert_eq!(s.parallelism.as_deref(), Some("4"));
    }

    #[test]
    fn checkpoint_options_become_flink_keys() {
        let s = split_args(
            [
                "--checkpoint-dir",
                "file:///tmp/c",
                "--checkpoint-interval=250",
                "--restore",
                "/tmp/c/job",
                "--allow-non-restored-state",
                "--savepoint-on-exit",
                "--input",
                "f",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(s.job, ["--input", "f"].map(String::from).to_vec());
        assert_eq!(
            s.dynamic,
            [
                "state.checkpoints.dir=file:///tmp/c",
                "execution.checkpointing.interval=250",
                "execution.savepoint.path=/tmp/c/job",
                "execution.savepoint.ignore-unclaimed-state=true",
            ]
            .map(String::from)
            .to_vec()
        );
        assert!(s.savepoint_on_exit);
    }

    #[test]
    fn bad_invocations_exit_non_zero() {
        let catalog = Catalog::default();
        assert_eq!(run(catalog.clone(), ["rill", "run", "nope"]), 1);
        assert_eq!(run(catalog.clone(), ["rill", "frobnicate"]), 2);
        assert_eq!(
            run(catalog.clone(), ["rill", "-D", "no.such.key=1", "entries"]),
            1
        );
        assert_eq!(run(catalog, ["rill", "entries"]), 0);
    }
}
