//! The JobManager: dispatcher, resource manager and one job master per job.
//!
//! * The **resource manager** keeps the registered TaskManagers and their
//!   free slots, asks the [`WorkerProvider`] for as many TaskManagers as the
//!   jobs need, releases idle ones, and fails every task of a TaskManager
//!   the moment its connection breaks (heartbeat timeout as the backstop).
//! * A **job master** per job runs the same supervising loop as local mode
//!   (checkpoint coordination, restarts from the latest checkpoint), with a
//!   launcher that places the tasks on slots and deploys them over RPC.
//!   With slot sharing, subtask *i* of every task goes to the job's slot
//!   *i*, so a job of parallelism P needs P slots.
//! * The **dispatcher** accepts submissions, remembers jobs in the HA
//!   services so a new leader can recover them, and answers the REST API
//!   through [`Dispatcher`].
//!
//! Nothing happens before this JobManager leads; when it loses leadership,
//! its jobs stop at once and [`JobManager::wait`] reports it.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use rill_api::checkpoint::CheckpointId;
use rill_api::graph::JobGraph;
use rill_api::{Catalog, Configuration};
use rill_checkpoint::SnapshotKind;

use super::dispatch::{
    CheckpointCounts, CheckpointHistory, CheckpointInfo, ClusterOverview, DispatchError,
    Dispatcher, JobDetails, JobSample, JobStatus, JobSummary, LatestCheckpoints, RestoredInfo,
    SavepointStatus, SubmitRequest, TaskManagerInfo, VertexInfo, VertexInput, VertexMetrics,
};
use super::metrics::{ClusterMetrics, SubtaskTotals};
use super::rpc::{self, Deployment, RpcSender, ToJobManager, ToTaskManager};
use super::services::{
    CheckpointPointer, HighAvailability, LeaderAddress, Leadership, StoredJob, WorkerProvider,
};
use super::taskmanager::build_graph;
use crate::local::{
    supervise, JobControl, JobObserver, JobOptions, Launched, Launcher, Restore, RunningTask,
    SnapshotStats, TaskCommand, TaskEvent,
};
use crate::plan::Plan;
use crate::RuntimeError;

/// Checkpoints kept in a job's history for the REST API.
const HISTORY: usize = 64;

/// How the JobManager runs.
#[derive(Debug, Clone)]
pub struct JobManagerOptions {
    /// Unique among JobManager replicas (the pod name on Kubernetes).
    pub identity: String,
    /// `jobmanager.rpc.address`/`jobmanager.rpc.port` to listen on.
    pub rpc_bind: SocketAddr,
    /// The host TaskManagers and clients reach this JobManager at.
    pub advertised_host: String,
    /// The REST port published with the leader address.
    pub rest_port: u16,
    /// `heartbeat.timeout`.
    pub heartbeat_timeout: Duration,
    /// `taskmanager.numberOfTaskSlots`: slots each new TaskManager brings.
    pub slots_per_taskmanager: usize,
    /// `slot.request.timeout`: how long an attempt waits for slots.
    pub slot_request_timeout: Duration,
    /// `resourcemanager.taskmanager-timeout`: idle TaskManagers are released
    /// after this long.
    pub idle_timeout: Duration,
    /// `slotmanager.number-of-slots.min`: slots kept even when no job needs
    /// them (a session's `minTaskManagers` × slots).
    pub min_slots: usize,
    /// `slotmanager.number-of-slots.max`: the most slots asked for.
    pub max_slots: Option<usize>,
}

impl JobManagerOptions {
    /// Options from Flink's keys.
    pub fn from_config(config: &Configuration, identity: &str) -> Result<Self, RuntimeError> {
        let host = config
            .get("jobmanager.rpc.address")
            .unwrap_or("127.0.0.1")
            .to_string();
        let port: u16 = config.get_parsed("jobmanager.rpc.port")?.unwrap_or(6123);
        let bind_host = config.get("jobmanager.bind-host").unwrap_or("0.0.0.0");
        let rpc_bind = format!("{bind_host}:{port}").parse().map_err(|e| {
            RuntimeError::Api(rill_api::Error::Config(format!(
                "jobmanager.bind-host/jobmanager.rpc.port: {e}"
            )))
        })?;
        let ms = |key: &str, default: u64| -> Result<Duration, RuntimeError> {
            Ok(config
                .get_duration(key)?
                .unwrap_or(Duration::from_millis(default)))
        };
        Ok(Self {
            identity: identity.to_string(),
            rpc_bind,
            advertised_host: host,
            rest_port: config.get_parsed("rest.port")?.unwrap_or(8081),
            heartbeat_timeout: ms("heartbeat.timeout", 50_000)?,
            slots_per_taskmanager: config
                .get_parsed("taskmanager.numberOfTaskSlots")?
                .unwrap_or(1usize)
                .max(1),
            slot_request_timeout: ms("slot.request.timeout", 300_000)?,
            idle_timeout: ms("resourcemanager.taskmanager-timeout", 30_000)?,
            min_slots: config
                .get_parsed("slotmanager.number-of-slots.min")?
                .unwrap_or(0usize),
            max_slots: config.get_parsed("slotmanager.number-of-slots.max")?,
        })
    }

    /// TaskManagers to keep for jobs wanting `wanted` slots: enough for
    /// them and for `min_slots`, but no more than `max_slots` allows, in
    /// whole TaskManagers.
    pub fn taskmanagers_for(&self, wanted: usize) -> usize {
        let per = self.slots_per_taskmanager.max(1);
        let n = wanted.max(self.min_slots).div_ceil(per);
        match self.max_slots {
            Some(max) => n.min(max / per),
            None => n,
        }
    }
}

struct TaskManagerEntry {
    slots: usize,
    free: usize,
    data_address: String,
    sender: RpcSender,
    connection: u64,
    last_heartbeat: Instant,
    idle_since: Option<Instant>,
    /// Given back to the worker provider; gone once its connection closes.
    /// It takes no slots and no longer counts as held.
    released: bool,
}

/// Where the events of one deployed attempt go.
struct Route {
    events: Sender<TaskEvent>,
    /// TaskManager of each task, in plan order.
    owners: Vec<String>,
    done: Vec<bool>,
}

struct JobRecord {
    stored: StoredJob,
    name: String,
    status: JobStatus,
    start_ms: u64,
    end_ms: Option<u64>,
    control: JobControl,
    restarts: u32,
    failure: Option<String>,
    vertices: Vec<VertexInfo>,
    tasks: usize,
    parallelism: usize,
    counts: CheckpointCounts,
    history: Vec<CheckpointInfo>,
    restored: Option<RestoredInfo>,
    savepoints: HashMap<String, SavepointStatus>,
    /// The savepoint request that stops the job, if any.
    stop_request: Option<String>,
    /// Latest figures of each subtask, by vertex id and subtask index.
    subtasks: HashMap<(String, u32), VertexMetrics>,
    attempt: u32,
}

impl JobRecord {
    /// Folds subtask figures into the vertices: sums of records, the
    /// worst backpressure, the slowest watermark.
    fn refresh_vertices(&mut self) {
        for v in &mut self.vertices {
            let mut m = VertexMetrics::default();
            let mut watermark: Option<i64> = None;
            for ((vertex, _), s) in &self.subtasks {
                if *vertex != v.id {
                    continue;
                }
                m.read_records += s.read_records;
                m.write_records += s.write_records;
                m.backpressure = m.backpressure.max(s.backpressure);
                if let Some(w) = s.watermark {
                    watermark = Some(watermark.map_or(w, |x| x.min(w)));
                }
            }
            m.watermark = watermark;
            v.metrics = m;
        }
    }
}

#[derive(Default)]
struct ClusterState {
    taskmanagers: BTreeMap<String, TaskManagerEntry>,
    routes: HashMap<(String, u32), Route>,
    jobs: BTreeMap<String, JobRecord>,
    /// Slots each active job wants.
    wanted: BTreeMap<String, usize>,
}

struct Shared {
    catalog: Arc<Catalog>,
    config: Configuration,
    options: JobManagerOptions,
    ha: Arc<dyn HighAvailability>,
    workers: Arc<dyn WorkerProvider>,
    leadership: Leadership,
    state: Mutex<ClusterState>,
    /// Orders what the worker provider is told: a count computed earlier
    /// must not land after a later one.
    provider: Mutex<()>,
    changed: Condvar,
    connections: AtomicU64,
    stop: AtomicBool,
    metrics: Arc<ClusterMetrics>,
}

/// A running, leading JobManager.
pub struct JobManager {
    shared: Arc<Shared>,
    rpc_address: SocketAddr,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_job_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let mixed = (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{nanos:016x}{mixed:016x}")
}

fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl JobManager {
    /// Binds the RPC port, waits for leadership (a standby blocks here),
    /// then serves TaskManagers and recovers the jobs the HA services
    /// remember.
    pub fn start(
        catalog: Arc<Catalog>,
        config: Configuration,
        options: JobManagerOptions,
        ha: Arc<dyn HighAvailability>,
        workers: Arc<dyn WorkerProvider>,
    ) -> Result<Self, RuntimeError> {
        let listener = TcpListener::bind(options.rpc_bind).map_err(|source| RuntimeError::Io {
            context: format!("cannot listen for TaskManagers on {}", options.rpc_bind),
            source,
        })?;
        let rpc_address = listener.local_addr().map_err(|source| RuntimeError::Io {
            context: "RPC address".into(),
            source,
        })?;
        let address = LeaderAddress {
            rpc: format!("{}:{}", options.advertised_host, rpc_address.port()),
            rest: format!("http://{}:{}", options.advertised_host, options.rest_port),
        };
        tracing::info!(identity = %options.identity, rpc = %address.rpc, "waiting for leadership");
        let leadership = ha.acquire_leadership(&options.identity, &address)?;
        tracing::info!(identity = %options.identity, "leading");
        let shared = Arc::new(Shared {
            catalog,
            config,
            options,
            ha,
            workers,
            leadership,
            state: Mutex::default(),
            provider: Mutex::default(),
            changed: Condvar::new(),
            connections: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            metrics: Arc::new(ClusterMetrics::new()),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("jm-accept".into())
            .spawn(move || accept(listener, s))
            .map_err(RuntimeError::Spawn)?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("jm-monitor".into())
            .spawn(move || monitor(s))
            .map_err(RuntimeError::Spawn)?;
        let manager = Self {
            shared,
            rpc_address,
        };
        for job in manager.shared.ha.jobs()? {
            tracing::info!(job = %job.job_id, entry = %job.entry, "recovering job");
            manager.shared.clone().launch_job(job, true)?;
        }
        // The first desired count: the recovered jobs' slots and the
        // minimum, so a session starts with its minimum TaskManagers.
        manager.shared.update_desired();
        Ok(manager)
    }

    /// Where TaskManagers connect.
    pub fn rpc_address(&self) -> SocketAddr {
        self.rpc_address
    }

    /// The metrics the REST API serves at `/metrics`.
    pub fn metrics(&self) -> Arc<ClusterMetrics> {
        self.shared.metrics.clone()
    }

    /// The dispatcher for the REST API.
    pub fn dispatcher(&self) -> Arc<dyn Dispatcher> {
        Arc::new(ClusterDispatcher(self.shared.clone()))
    }

    /// Submits a job (or recovers one with a given id).
    pub fn submit(&self, request: SubmitRequest) -> Result<String, DispatchError> {
        ClusterDispatcher(self.shared.clone()).submit(request)
    }

    /// The status of a job, if known.
    pub fn job_status(&self, id: &str) -> Option<JobStatus> {
        self.shared.lock().ok()?.jobs.get(id).map(|j| j.status)
    }

    /// Waits until job `id` is terminal (or leadership is lost).
    pub fn wait_for_job(&self, id: &str) -> Result<JobStatus, RuntimeError> {
        loop {
            self.shared.leadership.check()?;
            match self.job_status(id) {
                Some(s) if s.is_terminal() => return Ok(s),
                Some(_) => {}
                None => return Err(RuntimeError::Cluster(format!("unknown job {id}"))),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout`; fails once leadership is lost.
    pub fn wait_until(&self, timeout: Duration) -> Result<(), RuntimeError> {
        self.shared.leadership.check()?;
        std::thread::sleep(timeout);
        self.shared.leadership.check()
    }

    /// Cancels every job's tasks (HA data stays, so a successor recovers
    /// them) and stops serving.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.halt_jobs();
    }
}

impl Drop for JobManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, ClusterState>, RuntimeError> {
        self.state
            .lock()
            .map_err(|_| RuntimeError::Cluster("JobManager state lock poisoned".into()))
    }

    /// Stops every job master without forgetting its jobs.
    fn halt_jobs(&self) {
        if let Ok(state) = self.lock() {
            for job in state.jobs.values() {
                job.control.cancel();
            }
        }
        self.changed.notify_all();
    }

    fn update_job(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        if let Ok(mut state) = self.lock() {
            if let Some(job) = state.jobs.get_mut(id) {
                f(job);
            }
        }
    }

    /// Starts a job master thread for `job`.
    fn launch_job(self: Arc<Self>, job: StoredJob, recovered: bool) -> Result<(), RuntimeError> {
        let mut config = self.job_config(&job);
        if recovered {
            if let Some(pointer) = self.ha.latest_checkpoint(&job.job_id)? {
                config.set("execution.savepoint.path", pointer.location)?;
            }
        }
        let graph = build_graph(&self.catalog, &job.entry, &job.args, &config)?;
        let control = JobControl::default();
        let record = JobRecord {
            name: graph.name.clone(),
            status: JobStatus::Created,
            start_ms: now_ms(),
            end_ms: None,
            control: control.clone(),
            restarts: 0,
            failure: None,
            vertices: vertices(&graph),
            tasks: task_count(&graph),
            parallelism: slots_needed(&graph),
            counts: CheckpointCounts::default(),
            history: Vec::new(),
            restored: None,
            savepoints: HashMap::new(),
            stop_request: None,
            subtasks: HashMap::new(),
            attempt: 0,
            stored: job.clone(),
        };
        {
            let mut state = self.lock()?;
            // Counted from the start, so a desired count stated before the
            // job master asks for its slots already covers the job.
            state.wanted.insert(job.job_id.clone(), record.parallelism);
            state.jobs.insert(job.job_id.clone(), record);
        }
        let shared = self.clone();
        std::thread::Builder::new()
            .name("job-master".into())
            .spawn(move || shared.run_job(job, config, graph, control))
            .map_err(RuntimeError::Spawn)?;
        Ok(())
    }

    fn job_config(&self, job: &StoredJob) -> Configuration {
        let mut config = self.config.clone();
        let mut set = |k: &str, v: String| {
            if let Err(e) = config.set(k, v) {
                tracing::warn!(key = k, error = %e, "cannot set a job key");
            }
        };
        set("$internal.pipeline.job-id", job.job_id.clone());
        if let Some(p) = job.parallelism {
            set("parallelism.default", p.to_string());
        }
        if let Some(s) = &job.initial_savepoint {
            set("execution.savepoint.path", s.clone());
        }
        if job.allow_non_restored_state {
            set("execution.savepoint.ignore-unclaimed-state", "true".into());
        }
        config
    }

    fn run_job(
        self: Arc<Self>,
        job: StoredJob,
        config: Configuration,
        graph: JobGraph,
        control: JobControl,
    ) {
        let id = job.job_id.clone();
        let outcome = crate::options::job_options(&config, &id).and_then(|mut options| {
            if let (Some(state), Some(location)) = (&options.restore, &options.restore_location) {
                let restored = RestoredInfo {
                    id: state.checkpoint,
                    restore_timestamp: now_ms(),
                    is_savepoint: location.contains("savepoint"),
                    external_path: location.clone(),
                };
                self.update_job(&id, |j| {
                    j.restored = Some(restored);
                    j.counts.restored += 1;
                });
            }
            options.observer = Some(Arc::new(RecordObserver {
                shared: self.clone(),
                job: id.clone(),
            }));
            let mut launcher = ClusterLauncher {
                shared: self.clone(),
                job: job.clone(),
                config: config
                    .entries()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                control: control.clone(),
            };
            supervise(&control, &mut launcher, &graph, &options)
        });
        if let Ok(mut state) = self.lock() {
            state.wanted.remove(&id);
        }
        self.update_desired();
        let lost_leadership = matches!(outcome, Err(RuntimeError::NotLeader(_)))
            || !self.leadership.is_leader()
            || self.stop.load(Ordering::SeqCst);
        let status = match &outcome {
            Ok(_) => JobStatus::Finished,
            Err(_) if lost_leadership => JobStatus::Suspended,
            Err(_) if control.is_cancelled() => JobStatus::Canceled,
            Err(_) => JobStatus::Failed,
        };
        match &outcome {
            Ok(_) => tracing::info!(job = %id, "job finished"),
            Err(e) => tracing::warn!(job = %id, error = %e, ?status, "job ended"),
        }
        let final_savepoint = outcome.as_ref().ok().and_then(|r| r.savepoint.clone());
        self.update_job(&id, |j| {
            j.status = status;
            j.end_ms = Some(now_ms());
            if let Err(e) = &outcome {
                if status == JobStatus::Failed {
                    j.failure = Some(e.to_string());
                }
            }
            if let Some(request) = j.stop_request.take() {
                let result = match &final_savepoint {
                    Some(location) => SavepointStatus::Completed {
                        location: location.clone(),
                    },
                    None => SavepointStatus::Failed {
                        cause: "the job stopped without a savepoint".into(),
                    },
                };
                j.savepoints.insert(request, result);
            }
        });
        // A terminal job is forgotten by HA; a suspended one stays for the
        // next leader.
        if status.is_terminal() {
            self.metrics.remove_job(&id);
            if let Err(e) = self.ha.remove_job(&self.leadership, &id) {
                tracing::warn!(job = %id, error = %e, "cannot remove the job's HA data");
            }
        }
    }

    /// Blocks until `need` slots are free and takes them for `job`:
    /// returns the TaskManager of each slot.
    fn allocate(
        &self,
        job: &str,
        need: usize,
        control: &JobControl,
    ) -> Result<Vec<String>, RuntimeError> {
        self.lock()?.wanted.insert(job.to_string(), need);
        self.update_desired();
        let deadline = Instant::now() + self.options.slot_request_timeout;
        let mut state = self.lock()?;
        loop {
            self.leadership.check()?;
            if control.is_cancelled() || self.stop.load(Ordering::SeqCst) {
                return Err(RuntimeError::Cancelled);
            }
            let free: usize = state.taskmanagers.values().map(|t| t.free).sum();
            if free >= need {
                let mut slots = Vec::with_capacity(need);
                for _ in 0..need {
                    // Spread over TaskManagers: the one with most free slots.
                    let Some((id, tm)) = state
                        .taskmanagers
                        .iter_mut()
                        .filter(|(_, t)| t.free > 0)
                        .max_by_key(|(_, t)| t.free)
                    else {
                        break;
                    };
                    tm.free -= 1;
                    tm.idle_since = None;
                    slots.push(id.clone());
                }
                return Ok(slots);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RuntimeError::Cluster(format!(
                    "could not get {need} slots within {:?}: {} TaskManagers with {free} free slots",
                    self.options.slot_request_timeout,
                    state.taskmanagers.len()
                )));
            }
            state = self
                .changed
                .wait_timeout(state, left.min(Duration::from_millis(100)))
                .map_err(|_| RuntimeError::Cluster("JobManager state lock poisoned".into()))?
                .0;
        }
    }

    fn release(&self, slots: &[String]) {
        if let Ok(mut state) = self.lock() {
            for id in slots {
                if let Some(tm) = state.taskmanagers.get_mut(id) {
                    tm.free = (tm.free + 1).min(tm.slots);
                    if tm.free == tm.slots {
                        tm.idle_since = Some(Instant::now());
                    }
                }
            }
        }
        self.changed.notify_all();
    }

    /// Tells the worker provider how many TaskManagers to keep: what the
    /// jobs need, and never fewer than are registered. TaskManagers the jobs
    /// no longer need go only when idle, released one by one after
    /// `resourcemanager.taskmanager-timeout`; lowering the count would let
    /// the provider stop any of them, busy ones included.
    fn update_desired(&self) {
        let _order = self.provider.lock();
        let (wanted, held) = match self.lock() {
            Ok(state) => (state.wanted.values().sum(), held(&state)),
            Err(_) => return,
        };
        if let Err(e) = self
            .workers
            .set_desired(desired_taskmanagers(&self.options, wanted, held))
        {
            tracing::warn!(error = %e, "cannot request TaskManagers");
        }
    }

    /// A TaskManager is gone: every task it ran ends with a failure now.
    fn lose_taskmanager(&self, id: &str, connection: u64, why: &str) {
        let Ok(mut state) = self.lock() else { return };
        match state.taskmanagers.get(id) {
            Some(tm) if tm.connection == connection => {}
            _ => return,
        }
        if let Some(tm) = state.taskmanagers.remove(id) {
            tm.sender.close();
        }
        tracing::warn!(taskmanager = %id, reason = why, "TaskManager lost");
        for route in state.routes.values_mut() {
            fail_tasks_of(route, id, why);
        }
        drop(state);
        self.changed.notify_all();
    }

    fn register(
        &self,
        id: String,
        slots: usize,
        data_address: String,
        sender: RpcSender,
    ) -> Result<u64, RuntimeError> {
        let connection = self.connections.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock()?;
        if let Some(old) = state.taskmanagers.remove(&id) {
            // The same TaskManager again (a restarted process): the old
            // connection and everything on it is gone.
            old.sender.close();
            for route in state.routes.values_mut() {
                fail_tasks_of(route, &id, "the TaskManager restarted");
            }
        }
        state.taskmanagers.insert(
            id.clone(),
            TaskManagerEntry {
                slots,
                free: slots,
                data_address,
                sender,
                connection,
                last_heartbeat: Instant::now(),
                idle_since: Some(Instant::now()),
                released: false,
            },
        );
        drop(state);
        tracing::info!(taskmanager = %id, slots, "TaskManager registered");
        self.changed.notify_all();
        Ok(connection)
    }

    fn route_event(&self, job: String, attempt: u32, event: rpc::RemoteEvent) {
        let Ok(mut state) = self.lock() else { return };
        let Some(route) = state.routes.get_mut(&(job, attempt)) else {
            return;
        };
        let event = TaskEvent::from(event);
        if let TaskEvent::Done { task, .. } = &event {
            match route.done.get_mut(*task) {
                Some(done) if !*done => *done = true,
                // Already failed by a lost connection, or not a task.
                _ => return,
            }
        }
        let _ = route.events.send(event);
    }

    /// Task figures from a heartbeat: into the jobs' vertices and the
    /// Prometheus families.
    fn record_figures(&self, tasks: Vec<rpc::TaskFigures>) {
        let Ok(mut state) = self.lock() else { return };
        for t in tasks {
            let Some(job) = state.jobs.get_mut(&t.job) else {
                continue;
            };
            if t.attempt != job.attempt {
                continue;
            }
            self.metrics.job(&t.job, &job.name).report_subtask(
                &t.vertex,
                t.subtask,
                &SubtaskTotals {
                    records_in: t.records_in,
                    records_out: t.records_out,
                    backpressure: t.backpressure,
                    watermark: t.watermark,
                },
            );
            job.subtasks.insert(
                (t.vertex, t.subtask),
                VertexMetrics {
                    read_records: t.records_in,
                    write_records: t.records_out,
                    backpressure: t.backpressure,
                    watermark: t.watermark,
                },
            );
        }
        for job in state.jobs.values_mut() {
            job.refresh_vertices();
        }
    }

    fn send_to(&self, tm: &str, message: &ToTaskManager) -> Result<(), RuntimeError> {
        let sender = self
            .lock()?
            .taskmanagers
            .get(tm)
            .map(|t| (t.sender.clone(), t.connection));
        match sender {
            Some((sender, connection)) => sender.send(message).inspect_err(|e| {
                self.lose_taskmanager(tm, connection, &e.to_string());
            }),
            None => Err(RuntimeError::Cluster(format!("TaskManager {tm} is gone"))),
        }
    }
}

fn fail_tasks_of(route: &mut Route, tm: &str, why: &str) {
    for (task, owner) in route.owners.iter().enumerate() {
        if owner == tm && !route.done[task] {
            route.done[task] = true;
            let _ = route.events.send(TaskEvent::Done {
                task,
                name: format!("task {task} on {tm}"),
                result: Err(RuntimeError::TaskFailed {
                    task: format!("task {task}"),
                    message: format!("TaskManager {tm} lost: {why}"),
                }),
            });
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("jm-conn".into())
            .spawn(move || serve_taskmanager(stream, s));
    }
}

fn serve_taskmanager(stream: TcpStream, shared: Arc<Shared>) {
    let Ok((sender, mut receiver)) = rpc::split(stream) else {
        return;
    };
    let (id, connection) = match receiver.recv::<ToJobManager>() {
        Ok(Some(ToJobManager::Register {
            id,
            slots,
            data_address,
        })) if !id.is_empty() && slots > 0 => {
            // The answer goes first: once registered, the TaskManager's
            // slots can be taken and a deployment sent at once, and the
            // TaskManager expects the answer before anything else.
            if sender.send(&ToTaskManager::Registered).is_err() {
                return;
            }
            match shared.register(id.clone(), slots, data_address, sender.clone()) {
                Ok(c) => (id, c),
                Err(_) => return,
            }
        }
        Ok(Some(_)) => {
            let _ = sender.send(&ToTaskManager::Rejected(
                "register first, with an id and at least one slot".into(),
            ));
            return;
        }
        _ => return,
    };
    let why = loop {
        match receiver.recv::<ToJobManager>() {
            Ok(Some(ToJobManager::Heartbeat { tasks })) => {
                if let Ok(mut state) = shared.lock() {
                    if let Some(tm) = state.taskmanagers.get_mut(&id) {
                        tm.last_heartbeat = Instant::now();
                    }
                }
                shared.record_figures(tasks);
            }
            Ok(Some(ToJobManager::Task {
                job,
                attempt,
                event,
            })) => shared.route_event(job, attempt, event),
            Ok(Some(ToJobManager::Register { .. })) => break "registered twice".to_string(),
            Ok(None) => break "connection closed".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    shared.lose_taskmanager(&id, connection, &why);
}

/// Heartbeat timeouts, idle TaskManagers, lost leadership.
fn monitor(shared: Arc<Shared>) {
    let mut halted = false;
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if !shared.leadership.is_leader() {
            if !halted {
                tracing::error!("leadership lost: stopping every job");
                shared.halt_jobs();
                halted = true;
            }
            continue;
        }
        let now = Instant::now();
        let (silent, idle, wanted) = match shared.lock() {
            Ok(state) => {
                let silent: Vec<(String, u64)> = state
                    .taskmanagers
                    .iter()
                    .filter(|(_, t)| {
                        now.duration_since(t.last_heartbeat) > shared.options.heartbeat_timeout
                    })
                    .map(|(id, t)| (id.clone(), t.connection))
                    .collect();
                let idle: Vec<String> = state
                    .taskmanagers
                    .iter()
                    .filter(|(_, t)| {
                        t.idle_since
                            .is_some_and(|s| now.duration_since(s) > shared.options.idle_timeout)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                let wanted: usize = state.wanted.values().sum();
                shared.metrics.set_taskmanagers(state.taskmanagers.len());
                shared.metrics.set_slots(
                    state.taskmanagers.values().map(|t| t.slots).sum(),
                    state.taskmanagers.values().map(|t| t.free).sum(),
                );
                for (id, job) in &state.jobs {
                    if !job.status.is_terminal() {
                        let uptime = now_ms().saturating_sub(job.start_ms);
                        shared
                            .metrics
                            .job(id, &job.name)
                            .set_uptime(Duration::from_millis(uptime));
                    }
                }
                (silent, idle, wanted)
            }
            Err(_) => continue,
        };
        for (id, connection) in silent {
            shared.lose_taskmanager(&id, connection, "heartbeat timed out");
        }
        // Release idle TaskManagers beyond what the jobs (and the minimum)
        // need.
        let _order = shared.provider.lock();
        let (registered, wanted) = shared
            .lock()
            .map_or((0, wanted), |s| (held(&s), s.wanted.values().sum()));
        let surplus = registered.saturating_sub(shared.options.taskmanagers_for(wanted));
        for id in idle.into_iter().take(surplus) {
            // Still idle? A job may have taken a slot since; a released
            // TaskManager offers no slots from here on.
            let taken =
                shared
                    .lock()
                    .is_ok_and(|mut state| match state.taskmanagers.get_mut(&id) {
                        Some(tm) if !tm.released && tm.idle_since.is_some() => {
                            tm.released = true;
                            tm.free = 0;
                            tm.idle_since = None;
                            true
                        }
                        _ => false,
                    });
            if !taken {
                continue;
            }
            tracing::info!(taskmanager = %id, "releasing an idle TaskManager");
            if let Err(e) = shared.workers.release(&id) {
                tracing::warn!(taskmanager = %id, error = %e, "cannot release");
                if let Ok(mut state) = shared.lock() {
                    if let Some(tm) = state.taskmanagers.get_mut(&id) {
                        tm.released = false;
                        tm.free = tm.slots;
                        tm.idle_since = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// Records a job's progress and keeps the HA pointers current.
struct RecordObserver {
    shared: Arc<Shared>,
    job: String,
}

impl JobObserver for RecordObserver {
    fn running(&self, attempt: u32) {
        self.shared.update_job(&self.job, |j| {
            j.status = JobStatus::Running;
            j.attempt = attempt;
            j.subtasks.clear();
        });
    }

    fn restarting(&self, error: &RuntimeError, _delay: Duration) {
        let mut name = String::new();
        self.shared.update_job(&self.job, |j| {
            j.status = JobStatus::Restarting;
            j.restarts += 1;
            j.failure = Some(error.to_string());
            name = j.name.clone();
        });
        self.shared.metrics.job(&self.job, &name).restarted();
    }

    fn snapshot_completed(&self, stats: &SnapshotStats) -> Result<(), RuntimeError> {
        let completed = now_ms();
        if stats.kind == SnapshotKind::Checkpoint {
            self.shared.ha.put_checkpoint(
                &self.shared.leadership,
                &self.job,
                &CheckpointPointer {
                    id: stats.id,
                    location: stats.location.clone(),
                    completed_ms: completed,
                },
            )?;
        }
        let info = CheckpointInfo {
            id: stats.id,
            status: "COMPLETED".into(),
            is_savepoint: stats.kind == SnapshotKind::Savepoint,
            trigger_timestamp: completed.saturating_sub(stats.duration.as_millis() as u64),
            latest_ack_timestamp: completed,
            state_size: stats.bytes as u64,
            end_to_end_duration: stats.duration.as_millis() as u64,
            external_path: Some(stats.location.clone()),
            failure_message: None,
        };
        let mut name = String::new();
        self.shared.update_job(&self.job, |j| {
            j.counts.total += 1;
            j.counts.completed += 1;
            push_history(&mut j.history, info);
            name = j.name.clone();
        });
        self.shared
            .metrics
            .job(&self.job, &name)
            .checkpoint_completed(stats.duration, stats.bytes as u64);
        Ok(())
    }

    fn snapshot_failed(&self, id: CheckpointId, kind: SnapshotKind, reason: &str) {
        let now = now_ms();
        let info = CheckpointInfo {
            id,
            status: "FAILED".into(),
            is_savepoint: kind == SnapshotKind::Savepoint,
            trigger_timestamp: now,
            latest_ack_timestamp: now,
            state_size: 0,
            end_to_end_duration: 0,
            external_path: None,
            failure_message: Some(reason.to_string()),
        };
        let mut name = String::new();
        self.shared.update_job(&self.job, |j| {
            j.counts.total += 1;
            j.counts.failed += 1;
            push_history(&mut j.history, info);
            name = j.name.clone();
        });
        self.shared
            .metrics
            .job(&self.job, &name)
            .checkpoint_failed();
    }
}

fn push_history(history: &mut Vec<CheckpointInfo>, info: CheckpointInfo) {
    history.insert(0, info);
    history.truncate(HISTORY);
}

/// Places an attempt's tasks on slots and deploys them to TaskManagers.
struct ClusterLauncher {
    shared: Arc<Shared>,
    job: StoredJob,
    config: Vec<(String, String)>,
    control: JobControl,
}

impl Launcher for ClusterLauncher {
    fn launch(
        &mut self,
        graph: &JobGraph,
        _options: &JobOptions,
        restore: Option<&Restore>,
        attempt: u32,
    ) -> Result<Launched, RuntimeError> {
        let shared = self.shared.clone();
        let job = self.job.job_id.clone();
        let plan = Plan::of(graph);
        let positions: Vec<(usize, usize, bool)> = plan
            .heads
            .iter()
            .flat_map(|&h| {
                let n = &graph.nodes[h];
                let source = matches!(n.kind, rill_api::graph::NodeKind::Source(_));
                (0..graph.parallelism_of(n)).map(move |i| (h, i, source))
            })
            .collect();
        let slots = shared.allocate(&job, slots_needed(graph), &self.control)?;
        let mut managers: Vec<String> = Vec::new();
        for tm in &slots {
            if !managers.contains(tm) {
                managers.push(tm.clone());
            }
        }
        let owners: Vec<String> = positions
            .iter()
            .map(|&(_, i, _)| slots[i].clone())
            .collect();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let addresses: Vec<(String, String)> = {
            let mut state = shared.lock()?;
            let addresses: Vec<(String, String)> = managers
                .iter()
                .map(|id| {
                    let address = state
                        .taskmanagers
                        .get(id)
                        .map(|t| t.data_address.clone())
                        .unwrap_or_default();
                    (id.clone(), address)
                })
                .collect();
            let mut route = Route {
                events: events_tx,
                done: vec![false; owners.len()],
                owners: owners.clone(),
            };
            // A TaskManager lost while slots were being allocated.
            for (id, address) in &addresses {
                if address.is_empty() {
                    fail_tasks_of(&mut route, id, "lost before deployment");
                }
            }
            state.routes.insert((job.clone(), attempt), route);
            addresses
        };
        let deployment = Deployment {
            job: job.clone(),
            attempt,
            entry: self.job.entry.clone(),
            args: self.job.args.clone(),
            config: self.config.clone(),
            restore: match restore {
                Some(r) => Some(r.location.clone().ok_or_else(|| {
                    RuntimeError::Cluster("restored state without a location".into())
                })?),
                None => None,
            },
            owners: owners
                .iter()
                .map(|o| managers.iter().position(|m| m == o).unwrap_or(0))
                .collect(),
            managers: addresses,
        };
        for tm in &managers {
            // A failed send loses the TaskManager, which fails its tasks.
            let _ = shared.send_to(tm, &ToTaskManager::Deploy(Box::new(deployment.clone())));
        }
        let tasks = positions
            .iter()
            .enumerate()
            .map(|(task, &(_, _, is_source))| {
                let (shared, tm, job) = (shared.clone(), owners[task].clone(), job.clone());
                RunningTask {
                    commands: Box::new(move |command: TaskCommand| {
                        let _ = shared.send_to(
                            &tm,
                            &ToTaskManager::Command {
                                job: job.clone(),
                                attempt,
                                task,
                                command,
                            },
                        );
                    }),
                    is_source,
                }
            })
            .collect();
        let cancel = {
            let (shared, managers, job) = (shared.clone(), managers.clone(), job.clone());
            Box::new(move || {
                for tm in &managers {
                    let _ = shared.send_to(
                        tm,
                        &ToTaskManager::Cancel {
                            job: job.clone(),
                            attempt,
                        },
                    );
                }
            })
        };
        let finish = Box::new(move || {
            if let Ok(mut state) = shared.lock() {
                state.routes.remove(&(job, attempt));
            }
            shared.release(&slots);
        });
        Ok(Launched {
            tasks,
            events,
            cancel,
            finish,
        })
    }
}

/// Registered TaskManagers not given back to the worker provider.
fn held(state: &ClusterState) -> usize {
    state.taskmanagers.values().filter(|t| !t.released).count()
}

/// The TaskManager count asked of the worker provider: what `wanted` slots
/// need within the minimum and maximum, or the `held` TaskManagers when
/// more (the surplus goes by idle release, not by a lower count).
fn desired_taskmanagers(options: &JobManagerOptions, wanted: usize, held: usize) -> usize {
    options.taskmanagers_for(wanted).max(held)
}

/// Slots a job needs with slot sharing: its largest parallelism.
fn slots_needed(graph: &JobGraph) -> usize {
    graph
        .nodes
        .iter()
        .map(|n| graph.parallelism_of(n))
        .max()
        .unwrap_or(1)
}

fn task_count(graph: &JobGraph) -> usize {
    let plan = Plan::of(graph);
    plan.heads
        .iter()
        .map(|&h| graph.parallelism_of(&graph.nodes[h]))
        .sum()
}

/// The job's tasks as the REST API shows them.
fn vertices(graph: &JobGraph) -> Vec<VertexInfo> {
    let plan = Plan::of(graph);
    plan.tasks(graph)
        .into_iter()
        .map(|chain| {
            let head = &graph.nodes[chain[0]];
            VertexInfo {
                id: head.uid(),
                name: chain
                    .iter()
                    .map(|&n| graph.nodes[n].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "),
                parallelism: graph.parallelism_of(head),
                max_parallelism: graph.max_parallelism_of(head),
                inputs: head
                    .inputs
                    .iter()
                    .flatten()
                    .map(|e| VertexInput {
                        id: graph.nodes[plan.head_of(e.from)].uid(),
                        ship_strategy: e.partition.name().to_string(),
                    })
                    .collect(),
                metrics: VertexMetrics::default(),
            }
        })
        .collect()
}

/// The JobManager behind the REST API.
struct ClusterDispatcher(Arc<Shared>);

impl ClusterDispatcher {
    fn with_job<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut JobRecord) -> Result<T, DispatchError>,
    ) -> Result<T, DispatchError> {
        let mut state = self
            .0
            .lock()
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        let job = state
            .jobs
            .get_mut(id)
            .ok_or_else(|| DispatchError::NotFound(format!("job {id} not found")))?;
        f(job)
    }
}

fn summary(id: &str, j: &JobRecord) -> JobSummary {
    let now = now_ms();
    JobSummary {
        jid: id.to_string(),
        name: j.name.clone(),
        state: j.status,
        start_time: j.start_ms,
        end_time: j.end_ms.map_or(-1, |e| e as i64),
        duration: j.end_ms.unwrap_or(now).saturating_sub(j.start_ms),
        last_modification: j.end_ms.unwrap_or(now),
        tasks: j.tasks,
    }
}

impl Dispatcher for ClusterDispatcher {
    fn overview(&self) -> ClusterOverview {
        let state = match self.0.lock() {
            Ok(s) => s,
            Err(_) => {
                return ClusterOverview {
                    taskmanagers: 0,
                    slots_total: 0,
                    slots_available: 0,
                    jobs_running: 0,
                    jobs_finished: 0,
                    jobs_cancelled: 0,
                    jobs_failed: 0,
                    flink_version: env!("CARGO_PKG_VERSION").into(),
                }
            }
        };
        let count = |s: JobStatus| state.jobs.values().filter(|j| j.status == s).count();
        ClusterOverview {
            taskmanagers: state.taskmanagers.len(),
            slots_total: state.taskmanagers.values().map(|t| t.slots).sum(),
            slots_available: state.taskmanagers.values().map(|t| t.free).sum(),
            jobs_running: state
                .jobs
                .values()
                .filter(|j| !j.status.is_terminal())
                .count(),
            jobs_finished: count(JobStatus::Finished),
            jobs_cancelled: count(JobStatus::Canceled),
            jobs_failed: count(JobStatus::Failed),
            flink_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn jobs(&self) -> Vec<JobSummary> {
        self.0.lock().map_or(Vec::new(), |s| {
            s.jobs.iter().map(|(id, j)| summary(id, j)).collect()
        })
    }

    fn job(&self, id: &str) -> Option<JobDetails> {
        self.with_job(id, |j| {
            let s = summary(id, j);
            Ok(JobDetails {
                jid: s.jid,
                name: s.name,
                state: s.state,
                start_time: s.start_time,
                end_time: s.end_time,
                duration: s.duration,
                now: now_ms(),
                entry: j.stored.entry.clone(),
                args: j.stored.args.clone(),
                parallelism: j.parallelism,
                restarts: j.restarts,
                failure: j.failure.clone(),
                vertices: j.vertices.clone(),
            })
        })
        .ok()
    }

    fn submit(&self, request: SubmitRequest) -> Result<String, DispatchError> {
        if request.entry.trim().is_empty() {
            return Err(DispatchError::BadRequest(
                "'entry' must name a catalogue entry".into(),
            ));
        }
        let shared = &self.0;
        shared
            .leadership
            .check()
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        if shared.catalog.get(&request.entry).is_err() {
            return Err(DispatchError::BadRequest(format!(
                "unknown entry '{}'; this image has: {}",
                request.entry,
                shared.catalog.names().join(", ")
            )));
        }
        if request.parallelism == Some(0) {
            return Err(DispatchError::BadRequest(
                "parallelism must be at least 1".into(),
            ));
        }
        let job_id = match request.job_id {
            Some(id) if is_job_id(&id) => id,
            Some(id) => {
                return Err(DispatchError::BadRequest(format!(
                    "'{id}' is not a valid job id (letters, digits, '-' and '_')"
                )))
            }
            None => new_job_id(),
        };
        let job = StoredJob {
            job_id: job_id.clone(),
            entry: request.entry,
            args: request.args,
            parallelism: request.parallelism,
            initial_savepoint: request.savepoint_path,
            allow_non_restored_state: request.allow_non_restored_state,
            submitted_ms: now_ms(),
        };
        {
            let state = shared
                .lock()
                .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
            // A job id runs once: a submission repeated after a lost answer
            // must not start the job again, even when it has ended.
            if let Some(j) = state.jobs.get(&job_id) {
                return Err(DispatchError::Conflict(format!(
                    "job {job_id} was already submitted ({:?})",
                    j.status
                )));
            }
        }
        // Rejects bad arguments before anything is stored.
        let config = shared.job_config(&job);
        build_graph(&shared.catalog, &job.entry, &job.args, &config)
            .map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        crate::options::job_options(&config, &job_id)
            .map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        shared
            .ha
            .put_job(&shared.leadership, &job)
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        shared
            .clone()
            .launch_job(job, false)
            .map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        Ok(job_id)
    }

    fn cancel(&self, id: &str) -> Result<(), DispatchError> {
        self.with_job(id, |j| {
            if j.status.is_terminal() {
                return Err(DispatchError::Conflict(format!(
                    "job {id} is already {:?}",
                    j.status
                )));
            }
            j.status = JobStatus::Cancelling;
            j.control.cancel();
            Ok(())
        })?;
        self.0.changed.notify_all();
        Ok(())
    }

    fn checkpoints(&self, id: &str) -> Option<CheckpointHistory> {
        self.with_job(id, |j| {
            let latest = |savepoint: bool, status: &str| {
                j.history
                    .iter()
                    .find(|c| c.is_savepoint == savepoint && c.status == status)
                    .cloned()
            };
            Ok(CheckpointHistory {
                counts: j.counts.clone(),
                latest: LatestCheckpoints {
                    completed: latest(false, "COMPLETED"),
                    savepoint: latest(true, "COMPLETED"),
                    failed: j.history.iter().find(|c| c.status == "FAILED").cloned(),
                    restored: j.restored.clone(),
                },
                history: j.history.clone(),
            })
        })
        .ok()
    }

    fn trigger_savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
        cancel_job: bool,
    ) -> Result<String, DispatchError> {
        if target_directory.is_some() {
            return Err(DispatchError::BadRequest(
                "a per-request target directory is not supported; savepoints go to \
                 state.savepoints.dir (or state.checkpoints.dir)"
                    .into(),
            ));
        }
        let request = new_job_id();
        let control = self.with_job(id, |j| {
            if j.status.is_terminal() {
                return Err(DispatchError::Conflict(format!(
                    "job {id} is {:?}",
                    j.status
                )));
            }
            if cancel_job && j.stop_request.is_some() {
                return Err(DispatchError::Conflict(format!(
                    "job {id} is already stopping"
                )));
            }
            j.savepoints
                .insert(request.clone(), SavepointStatus::InProgress);
            if cancel_job {
                j.stop_request = Some(request.clone());
            }
            Ok(j.control.clone())
        })?;
        if cancel_job {
            control.stop_with_savepoint();
            return Ok(request);
        }
        let (shared, job, r) = (self.0.clone(), id.to_string(), request.clone());
        std::thread::Builder::new()
            .name("savepoint".into())
            .spawn(move || {
                let result = match control.savepoint(Duration::from_secs(600)) {
                    Ok(location) => SavepointStatus::Completed { location },
                    Err(cause) => SavepointStatus::Failed { cause },
                };
                shared.update_job(&job, |j| {
                    j.savepoints.insert(r, result);
                });
            })
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        Ok(request)
    }

    fn savepoint_status(&self, id: &str, request: &str) -> Option<SavepointStatus> {
        self.with_job(id, |j| {
            j.savepoints
                .get(request)
                .cloned()
                .ok_or_else(|| DispatchError::NotFound(request.to_string()))
        })
        .ok()
    }

    fn taskmanagers(&self) -> Vec<TaskManagerInfo> {
        let now = Instant::now();
        self.0.lock().map_or(Vec::new(), |s| {
            s.taskmanagers
                .iter()
                .map(|(id, t)| TaskManagerInfo {
                    id: id.clone(),
                    path: t.data_address.clone(),
                    data_port: t
                        .data_address
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                    time_since_last_heartbeat: now.duration_since(t.last_heartbeat).as_millis()
                        as u64,
                    slots_number: t.slots,
                    free_slots: t.free,
                })
                .collect()
        })
    }

    fn config(&self) -> Vec<(String, String)> {
        self.0
            .config
            .entries()
            .filter(|(k, _)| !is_secret(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn sample(&self, id: &str) -> Option<JobSample> {
        self.with_job(id, |j| {
            Ok(JobSample {
                vertices: j
                    .vertices
                    .iter()
                    .map(|v| (v.id.clone(), v.metrics.clone()))
                    .collect(),
            })
        })
        .ok()
    }
}

/// Configuration keys whose values are not shown over REST.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "credential",
        "access-key",
        "access_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_shown_and_job_ids_are_checked() {
        assert!(is_secret("s3.secret-key"));
        assert!(is_secret("s3.access-key"));
        assert!(!is_secret("state.checkpoints.dir"));
        assert!(is_job_id(&new_job_id()));
        assert_eq!(new_job_id().len(), 32);
        assert_ne!(new_job_id(), new_job_id());
        assert!(!is_job_id("../etc"));
        assert!(!is_job_id(""));
    }

    fn options(slots: &[(&str, &str)]) -> JobManagerOptions {
        let mut config = Configuration::new();
        for (k, v) in slots {
            config.set(k, *v).unwrap();
        }
        JobManagerOptions::from_config(&config, "jm").unwrap()
    }

    #[test]
    fn taskmanagers_cover_the_jobs_within_the_minimum_and_maximum() {
        let plain = options(&[("taskmanager.numberOfTaskSlots", "2")]);
        assert_eq!(plain.taskmanagers_for(0), 0);
        assert_eq!(plain.taskmanagers_for(3), 2);
        let session = options(&[
            ("taskmanager.numberOfTaskSlots", "2"),
            ("slotmanager.number-of-slots.min", "2"),
            ("slotmanager.number-of-slots.max", "8"),
        ]);
        assert_eq!(session.taskmanagers_for(0), 1, "the minimum with no job");
        assert_eq!(session.taskmanagers_for(1), 1);
        assert_eq!(session.taskmanagers_for(5), 3);
        assert_eq!(session.taskmanagers_for(40), 4, "bounded by the maximum");
        let one = options(&[
            ("slotmanager.number-of-slots.min", "1"),
            ("slotmanager.number-of-slots.max", "4"),
        ]);
        assert_eq!(one.taskmanagers_for(4), 4);
        assert_eq!(one.taskmanagers_for(2), 2);
        assert_eq!(one.taskmanagers_for(0), 1);
    }

    #[test]
    fn the_desired_count_never_drops_below_the_taskmanagers_held() {
        let one = options(&[
            ("slotmanager.number-of-slots.min", "1"),
            ("slotmanager.number-of-slots.max", "4"),
        ]);
        // Two jobs of two slots on four TaskManagers; one is cancelled: the
        // count stays at four until idle ones are released.
        assert_eq!(desired_taskmanagers(&one, 4, 4), 4);
        assert_eq!(desired_taskmanagers(&one, 2, 4), 4);
        assert_eq!(desired_taskmanagers(&one, 2, 2), 2);
        // More needed than held: starting ones are asked for.
        assert_eq!(desired_taskmanagers(&one, 4, 2), 4);
        // Nothing held, nothing running: the minimum.
        assert_eq!(desired_taskmanagers(&one, 0, 0), 1);
    }
}
