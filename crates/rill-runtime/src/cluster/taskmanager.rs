//! The TaskManager: offers slots to the leading JobManager and runs the
//! subtasks it is given.
//!
//! A TaskManager holds no job definition of its own. A deployment names a
//! catalogue entry, its arguments and configuration; the TaskManager
//! rebuilds the same graph from the catalogue compiled into its binary,
//! builds only the subtasks placed on it, and links their exchanges with
//! the other TaskManagers over the network. When the JobManager connection
//! breaks, every running subtask is cancelled (the JobManager fails the
//! attempt over anyway) and the TaskManager registers again with whoever
//! leads then.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rill_api::checkpoint::Snapshotted;
use rill_api::exec::TaskMetrics;
use rill_api::graph::{Erased, JobGraph, StreamType};
use rill_api::{Catalog, Configuration, Error, JobArgs, StreamEnv};

use super::metrics::{ClusterMetrics, SubtaskTotals};
use super::network::{spawn_link, DataServer, LinkKey};
use super::rpc::{self, Deployment, RpcSender, TaskFigures, ToJobManager, ToTaskManager};
use super::services::HighAvailability;
use crate::local::{spawn_tasks, Placement, TaskCommand, TaskEvent, Wiring};
use crate::plan::Plan;
use crate::RuntimeError;

/// How long a TaskManager waits for the JobManager to answer its
/// registration before it connects again.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the JobManager may take. The address may belong
/// to a pod that is gone, where a connection attempt would otherwise wait
/// for the kernel's SYN retries (minutes) while a new leader is elected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to `address` (`host:port`), trying each address it resolves
/// to for at most [`CONNECT_TIMEOUT`].
fn connect(address: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// How a TaskManager presents itself.
#[derive(Debug, Clone)]
pub struct TaskManagerOptions {
    /// Unique among the cluster's TaskManagers (the pod name on Kubernetes).
    pub id: String,
    /// `taskmanager.numberOfTaskSlots`.
    pub slots: usize,
    /// Where data links are accepted (`taskmanager.data.port`, 0 = any).
    pub data_bind: SocketAddr,
    /// The host other TaskManagers reach this one at.
    pub advertised_host: String,
    /// `heartbeat.interval`.
    pub heartbeat: Duration,
    /// `execution.buffer-timeout`.
    pub buffer_timeout: Duration,
}

/// A job's graph from a catalogue entry, the way both JobManager and
/// TaskManagers build it.
pub fn build_graph(
    catalog: &Catalog,
    entry: &str,
    args: &[String],
    config: &Configuration,
) -> Result<JobGraph, Error> {
    let entry = catalog.get(entry)?;
    let mut env = StreamEnv::new(entry.name, config.clone())?;
    (entry.build)(&mut env, &JobArgs::parse(args.iter().cloned()))?;
    Ok(env.graph())
}

struct LocalAttempt {
    commands: HashMap<usize, Sender<TaskCommand>>,
    cancel: Arc<AtomicBool>,
    figures: Vec<TaskGauge>,
}

/// Where a task's figures come from, and what was reported last.
struct TaskGauge {
    vertex: String,
    subtask: u32,
    metrics: Arc<TaskMetrics>,
    blocked_ns: u64,
    at: Instant,
}

impl TaskGauge {
    /// Totals now, with the backpressure of the interval since the last call.
    fn sample(&mut self, job: &str, attempt: u32) -> TaskFigures {
        let now = Instant::now();
        let blocked = self.metrics.backpressured_ns.load(Ordering::Relaxed);
        let elapsed = now.duration_since(self.at).as_nanos().max(1) as f64;
        let ratio = (blocked.saturating_sub(self.blocked_ns) as f64 / elapsed).clamp(0.0, 1.0);
        self.blocked_ns = blocked;
        self.at = now;
        let watermark = self.metrics.watermark.load(Ordering::Relaxed);
        TaskFigures {
            job: job.to_string(),
            attempt,
            vertex: self.vertex.clone(),
            subtask: self.subtask,
            records_in: self.metrics.records_in.load(Ordering::Relaxed),
            records_out: self.metrics.records_out.load(Ordering::Relaxed),
            backpressure: ratio,
            watermark: (watermark != i64::MIN).then_some(watermark),
        }
    }
}

fn sample_all(attempts: &Attempts) -> Vec<TaskFigures> {
    let Ok(mut attempts) = attempts.lock() else {
        return Vec::new();
    };
    attempts
        .iter_mut()
        .flat_map(|((job, attempt), a)| a.figures.iter_mut().map(|g| g.sample(job, *attempt)))
        .collect()
}

type Attempts = Arc<Mutex<HashMap<(String, u32), LocalAttempt>>>;

/// A running TaskManager.
pub struct TaskManager {
    options: TaskManagerOptions,
    catalog: Arc<Catalog>,
    base_config: Configuration,
    ha: Arc<dyn HighAvailability>,
    data: Arc<DataServer>,
    attempts: Attempts,
    metrics: Arc<ClusterMetrics>,
}

impl TaskManager {
    /// Starts the data server; [`TaskManager::run`] then serves the
    /// JobManager.
    pub fn new(
        options: TaskManagerOptions,
        catalog: Arc<Catalog>,
        config: Configuration,
        ha: Arc<dyn HighAvailability>,
    ) -> Result<Self, RuntimeError> {
        let data = Arc::new(DataServer::start(options.data_bind)?);
        tracing::info!(id = %options.id, data = %data.address(), slots = options.slots, "TaskManager started");
        Ok(Self {
            options,
            catalog,
            base_config: config,
            ha,
            data,
            attempts: Arc::default(),
            metrics: Arc::new(ClusterMetrics::new()),
        })
    }

    /// This TaskManager's figures (for a Prometheus endpoint).
    pub fn metrics(&self) -> Arc<ClusterMetrics> {
        self.metrics.clone()
    }

    fn data_address(&self) -> String {
        format!(
            "{}:{}",
            self.options.advertised_host,
            self.data.address().port()
        )
    }

    /// Registers with the leading JobManager and runs what it deploys,
    /// registering again after a lost connection, until `shutdown` is set.
    pub fn run(&self, shutdown: &AtomicBool) -> Result<(), RuntimeError> {
        let mut announced = false;
        while !shutdown.load(Ordering::SeqCst) {
            let leader = match self.ha.leader() {
                Ok(Some(leader)) => leader,
                Ok(None) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up the leading JobManager");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            match connect(&leader.rpc) {
                Ok(stream) => {
                    announced = false;
                    if let Err(e) = self.serve(stream, &leader.rpc, shutdown) {
                        tracing::warn!(error = %e, jobmanager = %leader.rpc, "JobManager connection lost");
                    }
                    self.cancel_all();
                }
                Err(e) => {
                    if !announced {
                        tracing::info!(error = %e, jobmanager = %leader.rpc, "waiting for the JobManager");
                        announced = true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.cancel_all();
        Ok(())
    }

    fn cancel_all(&self) {
        if let Ok(mut attempts) = self.attempts.lock() {
            for ((job, attempt), a) in attempts.drain() {
                a.cancel.store(true, Ordering::SeqCst);
                self.data.forget(&job, attempt);
            }
        }
    }

    /// Waits until the JobManager at `rpc_address` answers on `stream`
    /// (without consuming the answer), for at most [`REGISTRATION_TIMEOUT`]
    /// and only while the HA services still name it the leader.
    ///
    /// A standby JobManager has bound its RPC port but accepts nothing until
    /// it wins the election, so the kernel queues a connection to it and
    /// nobody ever answers. That happens whenever a leader's container
    /// restarts in place after a crash: its successor comes up as a standby
    /// at the same address while the old leader's record is still valid.
    fn await_answer(
        &self,
        stream: &TcpStream,
        rpc_address: &str,
        shutdown: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let io = |source| RuntimeError::Io {
            context: "waiting for the registration answer".into(),
            source,
        };
        let started = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io)?;
        loop {
            match stream.peek(&mut [0u8; 1]) {
                // An answer, or the connection closed: either is read next.
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            }
            if shutdown.load(Ordering::SeqCst) {
                return Err(RuntimeError::Cluster("stopping".into()));
            }
            if started.elapsed() >= REGISTRATION_TIMEOUT {
                return Err(RuntimeError::Cluster(format!(
                    "no registration answer within {REGISTRATION_TIMEOUT:?}"
                )));
            }
            match self.ha.leader() {
                Ok(Some(leader)) if leader.rpc == rpc_address => {}
                // Lookup failures are retried until the timeout.
                Err(_) => {}
                Ok(other) => {
                    return Err(RuntimeError::Cluster(format!(
                        "no registration answer, and the leader is now {:?}",
                        other.map(|l| l.rpc)
                    )))
                }
            }
        }
        stream.set_read_timeout(None).map_err(io)
    }

    fn serve(
        &self,
        stream: TcpStream,
        rpc_address: &str,
        shutdown: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let waiting = stream.try_clone().map_err(|source| RuntimeError::Io {
            context: "cloning a control connection".into(),
            source,
        })?;
        let (sender, mut receiver) = rpc::split(stream)?;
        sender.send(&ToJobManager::Register {
            id: self.options.id.clone(),
            slots: self.options.slots,
            data_address: self.data_address(),
        })?;
        self.await_answer(&waiting, rpc_address, shutdown)?;
        match receiver.recv::<ToTaskManager>()? {
            Some(ToTaskManager::Registered) => {
                tracing::info!(id = %self.options.id, "registered with the JobManager")
            }
            Some(ToTaskManager::Rejected(why)) => {
                return Err(RuntimeError::Cluster(format!(
                    "registration refused: {why}"
                )))
            }
            _ => return Err(RuntimeError::Cluster("no registration answer".into())),
        }
        let connected = Arc::new(AtomicBool::new(true));
        let beat = {
            let (sender, connected) = (sender.clone(), connected.clone());
            let attempts = self.attempts.clone();
            let metrics = self.metrics.clone();
            // Heartbeats carry the tasks' figures, so they come at least
            // every second whatever `heartbeat.interval` says.
            let every = self.options.heartbeat.min(Duration::from_secs(1));
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || {
                    while connected.load(Ordering::SeqCst) {
                        let tasks = sample_all(&attempts);
                        for t in &tasks {
                            metrics.job(&t.job, &t.job).report_subtask(
                                &t.vertex,
                                t.subtask,
                                &SubtaskTotals {
                                    records_in: t.records_in,
                                    records_out: t.records_out,
                                    backpressure: t.backpressure,
                                    watermark: t.watermark,
                                },
                            );
                        }
                        if sender.send(&ToJobManager::Heartbeat { tasks }).is_err() {
                            break;
                        }
                        std::thread::sleep(every);
                    }
                })
                .map_err(RuntimeError::Spawn)?
        };
        // An idle TaskManager hears nothing from the JobManager, so a stop
        // request (SIGTERM when its pod is deleted) closes the connection
        // rather than waiting for a message that may never come.
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                while connected.load(Ordering::SeqCst) {
                    if shutdown.load(Ordering::SeqCst) {
                        sender.close();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let result = loop {
                if shutdown.load(Ordering::SeqCst) {
                    break Ok(());
                }
                let message = match receiver.recv::<ToTaskManager>() {
                    Ok(Some(m)) => m,
                    // Closed by the stop request.
                    Ok(None) | Err(_) if shutdown.load(Ordering::SeqCst) => break Ok(()),
                    Ok(None) => {
                        break Err(RuntimeError::Cluster(
                            "the JobManager closed the connection".into(),
                        ))
                    }
                    Err(e) => break Err(e),
                };
                match message {
                    ToTaskManager::Deploy(d) => self.deploy(*d, &sender),
                    ToTaskManager::Command {
                        job,
                        attempt,
                        task,
                        command,
                    } => {
                        if let Ok(attempts) = self.attempts.lock() {
                            if let Some(c) = attempts
                                .get(&(job, attempt))
                                .and_then(|a| a.commands.get(&task))
                            {
                                let _ = c.send(command);
                            }
                        }
                    }
                    ToTaskManager::Cancel { job, attempt } => {
                        if let Ok(attempts) = self.attempts.lock() {
                            if let Some(a) = attempts.get(&(job.clone(), attempt)) {
                                a.cancel.store(true, Ordering::SeqCst);
                            }
                        }
                        self.data.forget(&job, attempt);
                    }
                    ToTaskManager::Registered | ToTaskManager::Rejected(_) => {}
                }
            };
            connected.store(false, Ordering::SeqCst);
            result
        });
        connected.store(false, Ordering::SeqCst);
        sender.close();
        let _ = beat.join();
        result
    }

    /// Builds and starts this TaskManager's share of an attempt. Failures
    /// are reported as the end of every task placed here, so the
    /// JobManager fails the attempt over.
    fn deploy(&self, d: Deployment, sender: &RpcSender) {
        let (job, attempt) = (d.job.clone(), d.attempt);
        let me = d.managers.iter().position(|(id, _)| *id == self.options.id);
        let mine: Vec<usize> = match me {
            Some(me) => (0..d.owners.len()).filter(|&t| d.owners[t] == me).collect(),
            None => Vec::new(),
        };
        tracing::info!(%job, attempt, tasks = mine.len(), "deploying");
        if let Err(e) = self.start_attempt(&d, sender) {
            tracing::warn!(%job, attempt, error = %e, "deployment failed");
            self.data.forget(&job, attempt);
            for task in mine {
                let event = TaskEvent::Done {
                    task,
                    name: format!("{} task {task}", d.entry),
                    result: Err(RuntimeError::TaskFailed {
                        task: format!("task {task}"),
                        message: format!(
                            "deployment on TaskManager {} failed: {e}",
                            self.options.id
                        ),
                    }),
                };
                let _ = sender.send(&ToJobManager::Task {
                    job: job.clone(),
                    attempt,
                    event: event.into(),
                });
            }
        }
    }

    fn start_attempt(&self, d: &Deployment, sender: &RpcSender) -> Result<(), RuntimeError> {
        let me = d
            .managers
            .iter()
            .position(|(id, _)| *id == self.options.id)
            .ok_or_else(|| {
                RuntimeError::Cluster("deployment names other TaskManagers only".into())
            })?;
        let mut config = self.base_config.clone();
        for (k, v) in &d.config {
            config.set(k, v.clone())?;
        }
        let graph = build_graph(&self.catalog, &d.entry, &d.args, &config)?;
        let plan = Plan::of(&graph);
        let mut owner = HashMap::new();
        let mut positions = Vec::new();
        let mut position = 0;
        for &head in &plan.heads {
            for index in 0..graph.parallelism_of(&graph.nodes[head]) {
                let tm = *d.owners.get(position).ok_or_else(|| {
                    RuntimeError::Cluster("the deployment does not match the job's plan".into())
                })?;
                owner.insert((head, index), tm);
                positions.push((head, index));
                position += 1;
            }
        }
        if position != d.owners.len() {
            return Err(RuntimeError::Cluster(
                "the deployment does not match the job's plan".into(),
            ));
        }
        let restored = match &d.restore {
            Some(location) => {
                let storage = crate::options::storage_options(&config);
                let (state, _) = crate::local::load_restore_point(location, &d.job, &storage)?;
                Some(Arc::new(state))
            }
            None => None,
        };
        let checkpointing = crate::coordinator::CheckpointSettings::from_config(&config)?.is_some();
        let backend = crate::options::state_backend(&config)?;
        let mut placement = NetworkPlacement {
            graph: &graph,
            plan: &plan,
            owner,
            me,
            deployment: d,
            data: &self.data,
        };
        let tasks = Wiring::new(&graph, checkpointing, restored, backend)
            .build_tasks(Some(&mut placement))?;
        let (events_tx, events) = crossbeam_channel::unbounded::<TaskEvent>();
        let started = spawn_tasks(tasks, self.options.buffer_timeout, &events_tx)?;
        drop(events_tx);
        let key = (d.job.clone(), d.attempt);
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.insert(
                key.clone(),
                LocalAttempt {
                    commands: started
                        .tasks
                        .iter()
                        .map(|t| (t.index, t.commands.clone()))
                        .collect(),
                    cancel: started.cancel.clone(),
                    figures: started
                        .tasks
                        .iter()
                        .map(|t| {
                            let (head, subtask) = positions[t.index];
                            TaskGauge {
                                vertex: graph.nodes[head].uid(),
                                subtask: subtask as u32,
                                metrics: t.metrics.clone(),
                                blocked_ns: 0,
                                at: Instant::now(),
                            }
                        })
                        .collect(),
                },
            );
        }
        // Forward the tasks' events until all of them ended. Native RocksDB
        // snapshots are uploaded on the way, here rather than on the task
        // threads: the JobManager cannot read this machine's files.
        let (sender, attempts, data) = (sender.clone(), self.attempts.clone(), self.data.clone());
        let mut staging = NativeStaging {
            uri: config
                .get("state.checkpoints.dir")
                .or_else(|| config.get("state.savepoints.dir"))
                .map(str::to_string),
            options: crate::options::storage_options(&config),
            job: config
                .get("$internal.pipeline.job-id")
                .map_or_else(|| d.job.clone(), str::to_string),
            storage: None,
        };
        std::thread::Builder::new()
            .name("task-events".into())
            .spawn(move || {
                for event in events {
                    let event = match event {
                        TaskEvent::Snapshot(snapshot) => {
                            TaskEvent::Snapshot(staging.stage(snapshot))
                        }
                        other => other,
                    };
                    let message = ToJobManager::Task {
                        job: key.0.clone(),
                        attempt: key.1,
                        event: event.into(),
                    };
                    if sender.send(&message).is_err() {
                        break;
                    }
                }
                for h in started.handles {
                    let _ = h.join();
                }
                if let Ok(mut attempts) = attempts.lock() {
                    attempts.remove(&key);
                }
                data.forget(&key.0, key.1);
            })
            .map_err(RuntimeError::Spawn)?;
        Ok(())
    }
}

/// Uploads the native RocksDB snapshots of an attempt's tasks before their
/// reports leave this TaskManager (see `CheckpointStorage::stage_native`).
/// The storage is opened at the first snapshot that needs it, so jobs without
/// RocksDB state never open it.
struct NativeStaging {
    /// `state.checkpoints.dir`, else `state.savepoints.dir`.
    uri: Option<String>,
    options: std::collections::BTreeMap<String, String>,
    job: String,
    storage: Option<rill_checkpoint::CheckpointStorage>,
}

impl NativeStaging {
    /// The report with its local snapshot replaced by a staged one; a
    /// snapshot that cannot be staged declines the checkpoint instead.
    fn stage(&mut self, snapshot: Snapshotted) -> Snapshotted {
        let (checkpoint, uid, subtask, parallelism, max_parallelism, state) = match snapshot {
            Snapshotted::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            } => (
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            ),
            other => return other,
        };
        let local = uid.ends_with(rill_state::native::NATIVE_UID_SUFFIX)
            && state
                .operator
                .as_deref()
                .is_some_and(rill_state::native::LocalSnapshot::is_local_snapshot);
        let mut part = rill_checkpoint::SubtaskState {
            uid,
            subtask,
            parallelism,
            max_parallelism,
            keyed: state.keyed,
            operator: state.operator,
        };
        if let (true, Some(uri)) = (local, &self.uri) {
            let staged = match &self.storage {
                Some(storage) => storage.stage_native(&self.job, checkpoint, &mut part),
                None => rill_checkpoint::CheckpointStorage::open(uri, &self.options).and_then(
                    |storage| {
                        let staged = storage.stage_native(&self.job, checkpoint, &mut part);
                        self.storage = Some(storage);
                        staged
                    },
                ),
            };
            if let Err(e) = staged {
                tracing::warn!(
                    checkpoint,
                    uid = %part.uid,
                    subtask,
                    error = %e,
                    "RocksDB snapshot not staged"
                );
                return Snapshotted::Failed(
                    checkpoint,
                    format!(
                        "staging the RocksDB snapshot of `{}` subtask {subtask}: {e}",
                        part.uid
                    ),
                );
            }
        }
        Snapshotted::State {
            checkpoint,
            uid: part.uid,
            subtask,
            parallelism,
            max_parallelism,
            state: rill_api::checkpoint::OperatorState {
                keyed: part.keyed,
                operator: part.operator,
            },
        }
    }
}

/// Places an attempt's tasks as the JobManager decided and links the
/// exchanges that cross TaskManagers.
struct NetworkPlacement<'a> {
    graph: &'a JobGraph,
    plan: &'a Plan,
    owner: HashMap<(usize, usize), usize>,
    me: usize,
    deployment: &'a Deployment,
    data: &'a DataServer,
}

impl NetworkPlacement<'_> {
    /// TaskManagers running a subtask that sends into `consumer`'s `gate`.
    fn senders(&self, consumer: usize, gate: usize) -> BTreeSet<usize> {
        let mut hosts = BTreeSet::new();
        for edge in &self.graph.nodes[consumer].inputs[gate] {
            let from = &self.graph.nodes[edge.from];
            let head = self.plan.head_of(edge.from);
            for index in 0..self.graph.parallelism_of(from) {
                if let Some(&tm) = self.owner.get(&(head, index)) {
                    hosts.insert(tm);
                }
            }
        }
        hosts
    }

    fn key(&self, consumer: usize, gate: usize, receiver: usize) -> LinkKey {
        LinkKey {
            job: self.deployment.job.clone(),
            attempt: self.deployment.attempt,
            consumer,
            gate,
            receiver,
        }
    }
}

impl Placement for NetworkPlacement<'_> {
    fn is_local(&self, head: usize, index: usize) -> bool {
        self.owner.get(&(head, index)) == Some(&self.me)
    }

    fn outbound(
        &mut self,
        consumer: usize,
        gate: usize,
        receiver: usize,
        rx: Erased,
        ty: &Arc<dyn StreamType>,
    ) -> Result<(), Error> {
        if !self.senders(consumer, gate).contains(&self.me) {
            return Ok(());
        }
        let target = self
            .owner
            .get(&(consumer, receiver))
            .and_then(|&tm| self.deployment.managers.get(tm))
            .ok_or_else(|| Error::Graph("a receiving subtask has no TaskManager".into()))?;
        let me = &self.deployment.managers[self.me].0;
        spawn_link(
            self.key(consumer, gate, receiver),
            me.clone(),
            target.1.clone(),
            ty.encoder(rx)?,
        )
        .map_err(|e| Error::Graph(e.to_string()))
    }

    fn inbound(
        &mut self,
        consumer: usize,
        gate: usize,
        receiver: usize,
        tx: &Erased,
        ty: &Arc<dyn StreamType>,
    ) -> Result<(), Error> {
        for tm in self.senders(consumer, gate) {
            if tm == self.me {
                continue;
            }
            let sender = self.deployment.managers[tm].0.clone();
            self.data
                .expect(self.key(consumer, gate, receiver), sender, ty.decoder(tx)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::cluster::services::{LeaderAddress, StandaloneHa};

    fn address(rpc: SocketAddr) -> LeaderAddress {
        LeaderAddress {
            rpc: rpc.to_string(),
            rest: "http://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_silent_standby_does_not_keep_a_taskmanager_from_the_new_leader() {
        // The old leader's address now belongs to a standby: bound, never
        // accepting.
        let standby = TcpListener::bind("127.0.0.1:0").unwrap();
        let ha = Arc::new(StandaloneHa::with_leader(address(
            standby.local_addr().unwrap(),
        )));
        let tm = TaskManager::new(
            TaskManagerOptions {
                id: "tm-1".into(),
                slots: 1,
                data_bind: "127.0.0.1:0".parse().unwrap(),
                advertised_host: "127.0.0.1".into(),
                heartbeat: Duration::from_secs(1),
                buffer_timeout: Duration::from_millis(10),
            },
            Arc::new(Catalog::new(Vec::new())),
            Configuration::new(),
            ha.clone(),
        )
        .unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let running = std::thread::spawn(move || tm.run(&stop));
        std::thread::sleep(Duration::from_millis(500));

        // A new leader publishes its address and answers registrations.
        let leader = TcpListener::bind("127.0.0.1:0").unwrap();
        ha.acquire_leadership("jm-2", &address(leader.local_addr().unwrap()))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = leader.accept().unwrap();
            let (sender, mut receiver) = rpc::split(stream).unwrap();
            if let Ok(Some(ToJobManager::Register { id, .. })) = receiver.recv() {
                sender.send(&ToTaskManager::Registered).unwrap();
                tx.send(id).unwrap();
            }
            // Hold the connection until the TaskManager stops.
            while let Ok(Some(_)) = receiver.recv::<ToJobManager>() {}
        });
        let registered = rx.recv_timeout(Duration::from_secs(5));
        shutdown.store(true, Ordering::SeqCst);
        assert_eq!(
            registered.as_deref(),
            Ok("tm-1"),
            "the TaskManager registered with the new leader"
        );
        running.join().unwrap().unwrap();
        drop(standby);
    }

    #[test]
    fn an_idle_taskmanager_stops_at_once_when_asked() {
        let leader = TcpListener::bind("127.0.0.1:0").unwrap();
        let ha = Arc::new(StandaloneHa::with_leader(address(
            leader.local_addr().unwrap(),
        )));
        let tm = TaskManager::new(
            TaskManagerOptions {
                id: "tm-idle".into(),
                slots: 1,
                data_bind: "127.0.0.1:0".parse().unwrap(),
                advertised_host: "127.0.0.1".into(),
                heartbeat: Duration::from_secs(1),
                buffer_timeout: Duration::from_millis(10),
            },
            Arc::new(Catalog::new(Vec::new())),
            Configuration::new(),
            ha,
        )
        .unwrap();
        // A JobManager that registers the TaskManager and then never sends
        // it anything (no job needs it).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = leader.accept().unwrap();
            let (sender, mut receiver) = rpc::split(stream).unwrap();
            if let Ok(Some(ToJobManager::Register { .. })) = receiver.recv() {
                sender.send(&ToTaskManager::Registered).unwrap();
                tx.send(()).unwrap();
            }
            while let Ok(Some(_)) = receiver.recv::<ToJobManager>() {}
        });
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(tm.run(&stop)).unwrap());
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the TaskManager registered");
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        shutdown.store(true, Ordering::SeqCst);
        let outcome = done
            .recv_timeout(Duration::from_secs(3))
            .expect("the idle TaskManager stopped within 3 s of the request");
        outcome.unwrap();
        assert!(asked.elapsed() < Duration::from_secs(3));
    }
}
