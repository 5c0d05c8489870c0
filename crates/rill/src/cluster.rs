//! `rill jobmanager`, `rill taskmanager` and the REST client commands
//! (`submit`, `list`, `cancel`, `savepoint --jobmanager`).
//!
//! The processes read everything from Flink's keys; only identities and
//! addresses fall back to what Kubernetes' downward API provides
//! (`POD_NAME`, `POD_IP`), so the same command line works on a laptop and
//! in a pod.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rill_api::{Catalog, Configuration};
use rill_runtime::cluster::dispatch::{JobStatus, SubmitRequest};
use rill_runtime::cluster::jobmanager::{JobManager, JobManagerOptions};
use rill_runtime::cluster::metrics::MetricsServer;
use rill_runtime::cluster::rest::{RestOptions, RestServer};
use rill_runtime::cluster::services::{
    HighAvailability, LeaderAddress, StandaloneHa, StaticWorkers, WorkerProvider,
};
use rill_runtime::cluster::taskmanager::{TaskManager, TaskManagerOptions};

/// The HA and worker services a process uses, by `high-availability.type`
/// and `execution.target`.
pub struct ClusterServices {
    pub ha: Arc<dyn HighAvailability>,
    pub workers: Arc<dyn WorkerProvider>,
}

/// Builds [`ClusterServices`] for configurations the runtime alone cannot
/// serve (Kubernetes); the binary plugs one in.
pub type ServicesFactory = fn(&Configuration, Role) -> Result<Option<ClusterServices>, String>;

/// Which process asks for services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    JobManager,
    TaskManager,
}

fn pod_or(var: &str, fallback: impl FnOnce() -> String) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(fallback)
}

fn rpc_address(config: &Configuration) -> Result<String, String> {
    let host = config.get("jobmanager.rpc.address").unwrap_or("127.0.0.1");
    let port: u16 = config
        .get_parsed("jobmanager.rpc.port")
        .map_err(|e| e.to_string())?
        .unwrap_or(6123);
    Ok(format!("{host}:{port}"))
}

fn services(
    config: &Configuration,
    role: Role,
    factory: Option<ServicesFactory>,
) -> Result<ClusterServices, String> {
    if let Some(factory) = factory {
        if let Some(services) = factory(config, role)? {
            return Ok(services);
        }
    }
    match config.get("high-availability.type").unwrap_or("none") {
        "none" | "NONE" => {}
        other => {
            return Err(format!(
                "high-availability.type '{other}' is not available in this binary"
            ))
        }
    }
    let ha: Arc<dyn HighAvailability> = match role {
        Role::JobManager => Arc::new(StandaloneHa::default()),
        Role::TaskManager => {
            let rest_port = config.get("rest.port").unwrap_or("8081");
            let host = config.get("jobmanager.rpc.address").unwrap_or("127.0.0.1");
            Arc::new(StandaloneHa::with_leader(LeaderAddress {
                rpc: rpc_address(config)?,
                rest: format!("http://{host}:{rest_port}"),
            }))
        }
    };
    Ok(ClusterServices {
        ha,
        workers: Arc::new(StaticWorkers::default()),
    })
}

fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)) {
        tracing::warn!(error = %e, "cannot handle SIGINT/SIGTERM");
    }
    stop
}

/// `rill jobmanager [--job ENTRY ARGS...]`: a session cluster's JobManager,
/// or an application cluster's that runs one job and exits with it.
pub fn jobmanager(
    catalog: Catalog,
    config: Configuration,
    job: Option<(String, Vec<String>)>,
    factory: Option<ServicesFactory>,
) -> Result<(), String> {
    let identity = pod_or("POD_NAME", || format!("jobmanager-{}", std::process::id()));
    let mut options =
        JobManagerOptions::from_config(&config, &identity).map_err(|e| e.to_string())?;
    if let Ok(ip) = std::env::var("POD_IP") {
        if !ip.is_empty() {
            options.advertised_host = ip;
        }
    }
    let rest_bind: SocketAddr = format!(
        "{}:{}",
        config.get("rest.bind-address").unwrap_or("0.0.0.0"),
        options.rest_port
    )
    .parse()
    .map_err(|e| format!("rest.bind-address/rest.port: {e}"))?;
    let services = services(&config, Role::JobManager, factory)?;
    let stop = stop_on_signal();
    let catalog = Arc::new(catalog);
    let manager = JobManager::start(
        catalog,
        config.clone(),
        options,
        services.ha,
        services.workers,
    )
    .map_err(|e| e.to_string())?;
    let rest = RestServer::start(
        rest_bind,
        manager.dispatcher(),
        manager.metrics(),
        RestOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "JobManager leading: rpc {} rest http://{}",
        manager.rpc_address(),
        rest.local_addr()
    );
    let job_id = match job {
        Some((entry, args)) => {
            let id = config
                .get("$internal.pipeline.job-id")
                .unwrap_or(&entry)
                .to_string();
            let known = manager.job_status(&id).is_some();
            if !known {
                manager
                    .submit(SubmitRequest {
                        entry,
                        args,
                        job_id: Some(id.clone()),
                        ..SubmitRequest::default()
                    })
                    .map_err(|e| e.to_string())?;
            }
            eprintln!("job {id} submitted");
            Some(id)
        }
        None => None,
    };
    // On Kubernetes the JobManager stays up after its job ends, so the
    // operator can read the outcome and a restarted pod does not run the
    // job again.
    let exit_with_job = config
        .get_parsed::<bool>("execution.shutdown-on-application-finish")
        .map_err(|e| e.to_string())?
        .unwrap_or(true);
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(id) = job_id.as_ref().filter(|_| exit_with_job) {
            match manager.job_status(id) {
                Some(JobStatus::Finished) => {
                    if let Some(job) = manager.dispatcher().job(id) {
                        eprintln!(
                            "job {id} finished in {:.3} s ({} restarts)",
                            job.duration as f64 / 1000.0,
                            job.restarts
                        );
                    }
                    break Ok(());
                }
                Some(s) if s.is_terminal() => break Err(format!("job {id} ended {s:?}")),
                _ => {}
            }
        }
        if let Err(e) = manager.wait_until(Duration::from_millis(100)) {
            break Err(e.to_string());
        }
    };
    manager.shutdown();
    let _ = rest.shutdown();
    result
}

/// `rill taskmanager`: offers `taskmanager.numberOfTaskSlots` slots to the
/// leading JobManager until stopped.
pub fn taskmanager(
    catalog: Catalog,
    config: Configuration,
    factory: Option<ServicesFactory>,
) -> Result<(), String> {
    let parse = |key: &str| -> Result<Option<u64>, String> {
        config.get_parsed::<u64>(key).map_err(|e| e.to_string())
    };
    let port = parse("taskmanager.data.port")?.unwrap_or(0);
    let bind = config.get("taskmanager.bind-host").unwrap_or("0.0.0.0");
    let data_bind: SocketAddr = format!("{bind}:{port}")
        .parse()
        .map_err(|e| format!("taskmanager.bind-host/taskmanager.data.port: {e}"))?;
    let host = config
        .get("taskmanager.host")
        .map(str::to_string)
        .unwrap_or_else(|| pod_or("POD_IP", || "127.0.0.1".into()));
    let id = config
        .get("taskmanager.resource-id")
        .map(str::to_string)
        .unwrap_or_else(|| pod_or("POD_NAME", || format!("taskmanager-{}", std::process::id())));
    let options = TaskManagerOptions {
        id,
        slots: parse("taskmanager.numberOfTaskSlots")?.unwrap_or(1).max(1) as usize,
        data_bind,
        advertised_host: host,
        heartbeat: config
            .get_duration("heartbeat.interval")
            .map_err(|e| e.to_string())?
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(10)),
        buffer_timeout: config
            .get_duration("execution.buffer-timeout")
            .map_err(|e| e.to_string())?
            .unwrap_or(Duration::from_millis(100)),
    };
    let services = services(&config, Role::TaskManager, factory)?;
    let stop = stop_on_signal();
    // Prometheus scrapes TaskManagers only where a port is configured
    // (several TaskManagers may share a host).
    let tm = TaskManager::new(options, Arc::new(catalog), config.clone(), services.ha)
        .map_err(|e| e.to_string())?;
    let _metrics_server = match parse("metrics.reporter.prom.port")? {
        Some(port) if config.is_set("metrics.reporter.prom.port") => {
            let addr: SocketAddr = format!("{bind}:{port}")
                .parse()
                .map_err(|e| format!("metrics.reporter.prom.port: {e}"))?;
            Some(MetricsServer::start(addr, tm.metrics()).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    tm.run(&stop).map_err(|e| e.to_string())
}

/// A small client of the JobManager's REST API.
pub struct RestClient {
    base: String,
    http: reqwest::blocking::Client,
}

impl RestClient {
    pub fn new(base: &str) -> Result<Self, String> {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { base, http })
    }

    fn answer(response: reqwest::blocking::Response) -> Result<serde_json::Value, String> {
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .map_err(|e| format!("unreadable answer ({status}): {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            let errors = body["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| body.to_string());
            Err(format!("{status}: {errors}"))
        }
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        Self::answer(
            self.http
                .get(&url)
                .send()
                .map_err(|e| format!("{url}: {e}"))?,
        )
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        Self::answer(
            self.http
                .post(&url)
                .json(body)
                .send()
                .map_err(|e| format!("{url}: {e}"))?,
        )
    }

    pub fn patch(&self, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        Self::answer(
            self.http
                .patch(&url)
                .send()
                .map_err(|e| format!("{url}: {e}"))?,
        )
    }

    /// Triggers a savepoint (stopping the job after it when `stop`) and
    /// waits for its location.
    pub fn savepoint(&self, job: &str, stop: bool, timeout: Duration) -> Result<String, String> {
        let body = serde_json::json!({ "cancel-job": stop });
        let trigger = self.post(&format!("/jobs/{job}/savepoints"), &body)?;
        let request = trigger["request-id"]
            .as_str()
            .ok_or("the JobManager answered without a request id")?
            .to_string();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.get(&format!("/jobs/{job}/savepoints/{request}"))?;
            if status["status"]["id"] == "COMPLETED" {
                if let Some(location) = status["operation"]["location"].as_str() {
                    return Ok(location.to_string());
                }
                let cause = &status["operation"]["failure-cause"];
                return Err(format!(
                    "savepoint failed: {}",
                    cause["stack-trace"].as_str().unwrap_or(&cause.to_string())
                ));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("no savepoint within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
