//! The embedded mini cluster: every subtask a thread, every exchange a set of
//! bounded channels.
//!
//! Wiring happens once, before any thread starts: channels are created for
//! every input gate of every task head, then each subtask's chain is built
//! from its head towards the sinks, so a chained operator is handed its
//! downstream output at construction. A task loop polls its input, passes
//! processing-time ticks and flush requests into the chain, and stops on end
//! of input, on failure or on cancellation. The first failure cancels the
//! job.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rill_api::checkpoint::{
    CheckpointContext, CheckpointId, RestoredOperator, RestoredState, SnapshotBuffer, Snapshotted,
    StateBackend,
};
use rill_api::exec::{
    FailureSlot, Progress, SubtaskInfo, TaskInput, TaskMetrics, CHANNEL_CAPACITY,
};
use rill_api::function::SideOutputs;
use rill_api::graph::{Erased, ExchangeShape, JobGraph, NodeKind};
use rill_api::{Error, Signal};
use rill_checkpoint::{CheckpointStorage, Snapshot, SnapshotKind};

use crate::coordinator::{CheckpointSettings, Coordinator, Outcome};
use crate::plan::Plan;
use crate::restart::{RestartStrategy, RestartTracker};
use crate::RuntimeError;

/// How often processing-time timers are checked.
const TICK: Duration = Duration::from_millis(10);

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: String,
    pub duration: Duration,
    pub tasks: usize,
    /// Restarts after failures.
    pub restarts: u32,
    /// Checkpoints completed (all attempts).
    pub checkpoints: u64,
    /// Where the job's final savepoint went (stop with savepoint).
    pub savepoint: Option<String>,
}

/// Checkpointing, restore and restarts of one job.
#[derive(Clone)]
pub struct JobOptions {
    /// Identifies the job's checkpoint directory.
    pub job_id: String,
    /// Periodic checkpoints (needs `checkpoint_storage`).
    pub checkpoints: Option<CheckpointSettings>,
    pub checkpoint_storage: Option<CheckpointStorage>,
    /// Where savepoints go (default: the checkpoint storage).
    pub savepoint_storage: Option<CheckpointStorage>,
    /// The state the first attempt starts from.
    pub restore: Option<Arc<RestoredState>>,
    /// Where `restore` was read from (TaskManagers read it again there).
    pub restore_location: Option<String>,
    /// Ignore restored state of operators the job no longer has.
    pub allow_non_restored_state: bool,
    pub restart: RestartStrategy,
    /// Where keyed state lives (`state.backend.type`).
    pub state_backend: StateBackend,
    /// Told about attempts, restarts and checkpoints.
    pub observer: Option<Arc<dyn JobObserver>>,
}

/// Hooks into a job's lifecycle (the JobManager records status and HA
/// pointers through them). Every method has a no-op default.
pub trait JobObserver: Send + Sync {
    /// Attempt `attempt` (0 first) has been deployed.
    fn running(&self, _attempt: u32) {}
    /// The attempt failed and the job restarts after `delay`.
    fn restarting(&self, _error: &RuntimeError, _delay: Duration) {}
    /// A checkpoint or savepoint completed. An error (e.g. lost
    /// leadership) fails the job without restarts.
    fn snapshot_completed(&self, _stats: &SnapshotStats) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// A checkpoint or savepoint was declined or could not be written.
    fn snapshot_failed(&self, _id: CheckpointId, _kind: SnapshotKind, _reason: &str) {}
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            job_id: "job".into(),
            checkpoints: None,
            checkpoint_storage: None,
            savepoint_storage: None,
            restore: None,
            restore_location: None,
            allow_non_restored_state: false,
            restart: RestartStrategy::None,
            state_backend: StateBackend::HashMap,
            observer: None,
        }
    }
}

/// Asks a running job for savepoints or to stop.
#[derive(Clone)]
pub struct JobControl {
    cancel: Arc<AtomicBool>,
    stop_with_savepoint: Arc<AtomicBool>,
    savepoints: Sender<Sender<Result<String, String>>>,
    savepoint_requests: Receiver<Sender<Result<String, String>>>,
    completed: Arc<std::sync::Mutex<Vec<SnapshotStats>>>,
}

/// Figures of one completed checkpoint or savepoint.
#[derive(Debug, Clone)]
pub struct SnapshotStats {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    /// State bytes reported by the tasks.
    pub bytes: usize,
    /// From trigger until `_metadata` was written.
    pub duration: Duration,
    /// Part of `duration` spent writing to storage.
    pub upload: Duration,
    pub location: String,
}

impl Default for JobControl {
    fn default() -> Self {
        let (savepoints, savepoint_requests) = crossbeam_channel::unbounded();
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
            stop_with_savepoint: Arc::new(AtomicBool::new(false)),
            savepoints,
            savepoint_requests,
            completed: Arc::default(),
        }
    }
}

impl JobControl {
    /// Cancels the job (it ends with [`RuntimeError::Cancelled`]).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether the job was asked to cancel.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Takes a savepoint, then stops the job; the report names the savepoint.
    pub fn stop_with_savepoint(&self) {
        self.stop_with_savepoint.store(true, Ordering::SeqCst);
    }

    /// Completed checkpoints and savepoints so far.
    pub fn completed_snapshots(&self) -> Vec<SnapshotStats> {
        self.completed.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Takes a savepoint of the running job and waits for its location.
    pub fn savepoint(&self, timeout: Duration) -> Result<String, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.savepoints
            .send(reply)
            .map_err(|_| "the job is not running".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("no savepoint within {timeout:?}"))?
    }
}

/// Runs job graphs in this process.
#[derive(Clone)]
pub struct LocalExecutor {
    control: JobControl,
    buffer_timeout: Duration,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self {
            control: JobControl::default(),
            buffer_timeout: Duration::from_millis(100),
        }
    }
}

struct Gate {
    /// `Tx<T>` per receiving subtask.
    senders: Vec<Erased>,
    /// `Rx<T>` per receiving subtask, taken when its head is built.
    receivers: Vec<Option<Erased>>,
    /// Channels (sending subtasks) of the gate, and each edge's first channel.
    channels: usize,
    edge_offsets: Vec<usize>,
}

pub(crate) struct Wiring<'g> {
    graph: &'g JobGraph,
    plan: Plan,
    /// `gates[node][gate]` for task heads with inputs.
    gates: Vec<Vec<Gate>>,
    /// `consumers[node][port]`: (consumer, gate, edge index).
    consumers: Vec<Vec<Vec<(usize, usize, usize)>>>,
    checkpointing: bool,
    restored: Option<Arc<RestoredState>>,
    state_backend: StateBackend,
}

/// What one task shares with the operators of its chain.
#[derive(Clone, Default)]
struct TaskShared {
    failure: FailureSlot,
    snapshots: SnapshotBuffer,
    metrics: Arc<TaskMetrics>,
}

pub(crate) struct Task {
    /// Position in the plan (heads in plan order, then subtask index).
    index: usize,
    name: String,
    input: Box<dyn TaskInput>,
    shared: TaskShared,
    is_source: bool,
}

/// Where the tasks of a plan run when they are spread over processes: the
/// wiring builds only local tasks and hands the ends of exchanges with
/// remote subtasks to the network.
pub(crate) trait Placement {
    /// Does subtask `index` of the task headed by `head` run here?
    fn is_local(&self, head: usize, index: usize) -> bool;
    /// The channel into remote subtask `receiver` of `consumer`'s input
    /// `gate`: local senders write into it; `rx` is its receiving end.
    fn outbound(
        &mut self,
        consumer: usize,
        gate: usize,
        receiver: usize,
        rx: Erased,
        ty: &Arc<dyn rill_api::graph::StreamType>,
    ) -> Result<(), Error>;
    /// The sending end of local subtask `receiver`'s input `gate`, for
    /// remote senders.
    fn inbound(
        &mut self,
        consumer: usize,
        gate: usize,
        receiver: usize,
        tx: &Erased,
        ty: &Arc<dyn rill_api::graph::StreamType>,
    ) -> Result<(), Error>;
}

/// What the executor tells a running task.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) enum TaskCommand {
    /// Start checkpoint `id` (sources only).
    Trigger(CheckpointId),
    /// Checkpoint `id` is complete: commit.
    Complete(CheckpointId),
    /// Stop (after a final savepoint).
    Stop,
}

/// What a task tells the executor.
pub(crate) enum TaskEvent {
    Snapshot(Snapshotted),
    /// Task `task` (its position in the plan) ended.
    Done {
        task: usize,
        name: String,
        result: Result<(), RuntimeError>,
    },
}

/// Sends a command to one task, wherever it runs.
pub(crate) type CommandSink = Box<dyn Fn(TaskCommand) + Send>;

pub(crate) struct RunningTask {
    pub commands: CommandSink,
    pub is_source: bool,
}

/// One deployed attempt of a job, as the supervising loop sees it.
pub(crate) struct Launched {
    /// Every task of the plan, in plan order.
    pub tasks: Vec<RunningTask>,
    pub events: Receiver<TaskEvent>,
    /// Stops every task of the attempt.
    pub cancel: Box<dyn Fn() + Send>,
    /// Called once every task reported its end.
    pub finish: Box<dyn FnOnce() + Send>,
}

/// The state an attempt starts from.
#[derive(Clone)]
pub(crate) struct Restore {
    pub state: Arc<RestoredState>,
    /// Where it was read from, when it came from storage.
    pub location: Option<String>,
}

/// Deploys attempts of a job: as threads here, or onto TaskManagers.
pub(crate) trait Launcher {
    fn launch(
        &mut self,
        graph: &JobGraph,
        options: &JobOptions,
        restore: Option<&Restore>,
        attempt: u32,
    ) -> Result<Launched, RuntimeError>;
}

/// How one attempt ended.
struct Attempt {
    result: Result<(), RuntimeError>,
    tasks: usize,
    savepoint: Option<String>,
}

impl LocalExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Longest time a record may wait in a partially filled batch.
    pub fn with_buffer_timeout(mut self, timeout: Duration) -> Self {
        self.buffer_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Controls the running job (savepoints, stop, cancel).
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// A handle that cancels the running job when set.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.control.cancel.clone()
    }

    /// Runs the job to completion (bounded sources) or until cancelled,
    /// without checkpoints.
    pub fn run(&self, graph: &JobGraph) -> Result<JobReport, RuntimeError> {
        self.run_with(graph, &JobOptions::default())
    }

    /// Runs the job with checkpoints, restore and restarts as configured:
    /// after a failure the whole job restarts (per the restart strategy)
    /// from its latest completed checkpoint.
    pub fn run_with(
        &self,
        graph: &JobGraph,
        options: &JobOptions,
    ) -> Result<JobReport, RuntimeError> {
        let mut launcher = ThreadLauncher {
            buffer_timeout: self.buffer_timeout,
        };
        supervise(&self.control, &mut launcher, graph, options)
    }
}

/// Runs every task of an attempt as a thread of this process.
struct ThreadLauncher {
    buffer_timeout: Duration,
}

impl Launcher for ThreadLauncher {
    fn launch(
        &mut self,
        graph: &JobGraph,
        options: &JobOptions,
        restore: Option<&Restore>,
        _attempt: u32,
    ) -> Result<Launched, RuntimeError> {
        let tasks = Wiring::new(
            graph,
            options.checkpoints.is_some(),
            restore.map(|r| r.state.clone()),
            options.state_backend.clone(),
        )
        .build_tasks(None)?;
        let (events_tx, events) = crossbeam_channel::unbounded::<TaskEvent>();
        let started = spawn_tasks(tasks, self.buffer_timeout, &events_tx)?;
        let cancel = started.cancel.clone();
        Ok(Launched {
            tasks: started
                .tasks
                .into_iter()
                .map(|t| {
                    let commands = t.commands;
                    RunningTask {
                        commands: Box::new(move |c| {
                            let _ = commands.send(c);
                        }),
                        is_source: t.is_source,
                    }
                })
                .collect(),
            events,
            cancel: Box::new(move || cancel.store(true, Ordering::SeqCst)),
            finish: Box::new(move || {
                for h in started.handles {
                    let _ = h.join();
                }
            }),
        })
    }
}

/// Task threads of one attempt in this process.
pub(crate) struct StartedTasks {
    pub tasks: Vec<StartedTask>,
    pub handles: Vec<std::thread::JoinHandle<()>>,
    /// Set to stop every task.
    pub cancel: Arc<AtomicBool>,
}

pub(crate) struct StartedTask {
    /// Position in the plan.
    pub index: usize,
    pub commands: Sender<TaskCommand>,
    pub is_source: bool,
    pub metrics: Arc<TaskMetrics>,
}

/// Starts a thread per task; each reports [`TaskEvent`]s to `events`.
pub(crate) fn spawn_tasks(
    tasks: Vec<Task>,
    flush_every: Duration,
    events: &Sender<TaskEvent>,
) -> Result<StartedTasks, RuntimeError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let mut started = StartedTasks {
        tasks: Vec::with_capacity(tasks.len()),
        handles: Vec::with_capacity(tasks.len()),
        cancel: cancel.clone(),
    };
    for task in tasks {
        let (commands_tx, commands) = crossbeam_channel::unbounded();
        started.tasks.push(StartedTask {
            index: task.index,
            commands: commands_tx,
            is_source: task.is_source,
            metrics: task.shared.metrics.clone(),
        });
        let events = events.clone();
        let cancel = cancel.clone();
        let handle = std::thread::Builder::new()
            .name(short_thread_name(&task.name))
            .spawn(move || {
                let name = task.name.clone();
                let index = task.index;
                let result = catch_unwind(AssertUnwindSafe(|| {
                    run_task(task, &cancel, flush_every, &commands, &events)
                }))
                .unwrap_or_else(|panic| {
                    Err(RuntimeError::TaskFailed {
                        task: name.clone(),
                        message: panic_message(&panic),
                    })
                });
                let _ = events.send(TaskEvent::Done {
                    task: index,
                    name,
                    result,
                });
            })
            .map_err(RuntimeError::Spawn)?;
        started.handles.push(handle);
    }
    Ok(started)
}

/// Runs a job through its attempts: deploys with `launcher`, coordinates
/// checkpoints, and after a failure restarts (per the restart strategy)
/// from the latest completed checkpoint.
pub(crate) fn supervise(
    control: &JobControl,
    launcher: &mut dyn Launcher,
    graph: &JobGraph,
    options: &JobOptions,
) -> Result<JobReport, RuntimeError> {
    graph.validate()?;
    if options.checkpoints.is_some() && options.checkpoint_storage.is_none() {
        return Err(Error::Config(
            "checkpointing needs a checkpoint directory (state.checkpoints.dir)".into(),
        )
        .into());
    }
    let started = Instant::now();
    let mut tracker = RestartTracker::new(options.restart.clone());
    let mut restore = match &options.restore {
        Some(r) => Some(Restore {
            state: check_restored(graph, r.clone(), options.allow_non_restored_state)?,
            location: options.restore_location.clone(),
        }),
        None => None,
    };
    let mut next_id = first_checkpoint_id(options, restore.as_ref().map(|r| &*r.state))?;
    let mut checkpoints = 0u64;
    for attempt in 0u32.. {
        let attempt_started = Instant::now();
        let outcome = run_attempt(
            control,
            launcher,
            graph,
            options,
            restore.as_ref(),
            attempt,
            &mut next_id,
            &mut checkpoints,
        )?;
        let error = match outcome.result {
            Ok(()) => {
                return Ok(JobReport {
                    job: graph.name.clone(),
                    duration: started.elapsed(),
                    tasks: outcome.tasks,
                    restarts: tracker.restarts(),
                    checkpoints,
                    savepoint: outcome.savepoint,
                })
            }
            Err(e) => e,
        };
        if control.cancel.load(Ordering::SeqCst) || matches!(error, RuntimeError::NotLeader(_)) {
            return Err(error);
        }
        // Jitter only needs to differ between processes and restarts.
        let random = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.5, |d| f64::from(d.subsec_nanos() % 1000) / 1000.0);
        let Some(delay) = tracker.on_failure(Instant::now(), attempt_started.elapsed(), random)
        else {
            return Err(error);
        };
        tracing::warn!(job = %graph.name, error = %error, ?delay, "job failed; restarting");
        eprintln!("job failed: {error}; restarting in {delay:?}");
        if let Some(observer) = &options.observer {
            observer.restarting(&error, delay);
        }
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if control.cancel.load(Ordering::SeqCst) {
                return Err(RuntimeError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(5).min(delay));
        }
        // Without a checkpoint yet, the job starts again where it started.
        if let Some(storage) = &options.checkpoint_storage {
            if let Some(latest) = latest_checkpoint(storage, &options.job_id)? {
                let allow = options.allow_non_restored_state;
                restore = Some(Restore {
                    state: check_restored(graph, latest.state, allow)?,
                    location: latest.location,
                });
            }
        }
    }
    unreachable!("attempts are unbounded")
}

#[allow(clippy::too_many_arguments)]
fn run_attempt(
    control: &JobControl,
    launcher: &mut dyn Launcher,
    graph: &JobGraph,
    options: &JobOptions,
    restore: Option<&Restore>,
    attempt: u32,
    next_id: &mut CheckpointId,
    completed: &mut u64,
) -> Result<Attempt, RuntimeError> {
    if let Some(r) = restore {
        tracing::info!(job = %graph.name, checkpoint = r.state.checkpoint, "restoring state");
    }
    let launched = launcher.launch(graph, options, restore, attempt)?;
    let running = launched.tasks;
    let events = launched.events;
    let cancel = launched.cancel;
    let count = running.len();
    tracing::info!(job = %graph.name, tasks = count, attempt, "job running");
    if let Some(observer) = &options.observer {
        observer.running(attempt);
    }

    let mut coordinator = Coordinator::new(options.checkpoints.clone(), count, *next_id);
    let mut savepoint_replies: BTreeMap<CheckpointId, Sender<Result<String, String>>> =
        BTreeMap::new();
    let mut stop_savepoint: Option<CheckpointId> = None;
    let mut final_savepoint = None;
    let mut first_error: Option<RuntimeError> = None;
    let mut cancelled = false;
    let mut done = 0;
    let fail = |first_error: &mut Option<RuntimeError>, e: RuntimeError| {
        if first_error
            .as_ref()
            .is_none_or(|f| is_consequence(f) && !is_consequence(&e))
        {
            *first_error = Some(e);
        }
    };
    while done < count {
        let now = Instant::now();
        if !cancelled && (control.cancel.load(Ordering::SeqCst) || first_error.is_some()) {
            cancel();
            cancelled = true;
        }
        // Savepoints on request, and the one that stops the job.
        while let Ok(reply) = control.savepoint_requests.try_recv() {
            match coordinator.start(SnapshotKind::Savepoint, now) {
                Some(id) => {
                    trigger(&running, id);
                    savepoint_replies.insert(id, reply);
                }
                None => {
                    let _ = reply.send(Err("the job is finishing".into()));
                }
            }
        }
        if stop_savepoint.is_none()
            && first_error.is_none()
            && control.stop_with_savepoint.load(Ordering::SeqCst)
        {
            match coordinator.start(SnapshotKind::Savepoint, now) {
                Some(id) => {
                    trigger(&running, id);
                    stop_savepoint = Some(id);
                }
                None => {
                    tracing::warn!("cannot take a final savepoint: the job is finishing");
                    control.cancel();
                }
            }
        }
        if first_error.is_none() && coordinator.due(now) {
            if let Some(id) = coordinator.start(SnapshotKind::Checkpoint, now) {
                trigger(&running, id);
            }
        }
        let mut outcomes = coordinator.expire(now);
        match events.recv_timeout(coordinator.next_wakeup(now)) {
            Ok(TaskEvent::Snapshot(item)) => outcomes.extend(coordinator.report(item)),
            Ok(TaskEvent::Done {
                name: task, result, ..
            }) => {
                done += 1;
                outcomes.extend(coordinator.task_finished());
                let stopping = final_savepoint.is_some();
                let result = match result {
                    // Stopping after the final savepoint: tasks see their
                    // inputs go away, which is expected now.
                    Err(e) if stopping && is_consequence(&e) => Ok(()),
                    other => other,
                };
                if let Err(e) = result {
                    if !matches!(e, RuntimeError::Cancelled) || first_error.is_none() {
                        tracing::warn!(%task, error = %e, "task stopped");
                    }
                    fail(&mut first_error, e);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                // Nobody can report any more: whatever did not end is lost.
                fail(
                    &mut first_error,
                    RuntimeError::Cluster("the job's tasks stopped reporting".into()),
                );
                break;
            }
        }
        for outcome in outcomes {
            let (id, kind, reason) = match outcome {
                Outcome::Ready(pending) if first_error.is_none() => {
                    let id = pending.id;
                    let kind = pending.kind;
                    let written = write_snapshot(options, pending).and_then(|stats| match &options
                        .observer
                    {
                        Some(o) => o.snapshot_completed(&stats).map(|()| stats),
                        None => Ok(stats),
                    });
                    coordinator.finished_writing(Instant::now());
                    match written {
                        Ok(stats) => {
                            let location = stats.location.clone();
                            if let Ok(mut c) = control.completed.lock() {
                                c.push(stats);
                            }
                            if kind == SnapshotKind::Checkpoint {
                                *completed += 1;
                            }
                            for t in &running {
                                (t.commands)(TaskCommand::Complete(id));
                            }
                            if let Some(reply) = savepoint_replies.remove(&id) {
                                let _ = reply.send(Ok(location.clone()));
                            }
                            if stop_savepoint == Some(id) {
                                eprintln!("savepoint written to {location}");
                                final_savepoint = Some(location);
                                for t in &running {
                                    (t.commands)(TaskCommand::Stop);
                                }
                            }
                            continue;
                        }
                        Err(e @ RuntimeError::NotLeader(_)) => {
                            let reason = e.to_string();
                            fail(&mut first_error, e);
                            (id, kind, reason)
                        }
                        Err(e) => {
                            tracing::warn!(checkpoint = id, error = %e, "snapshot not written");
                            if stop_savepoint == Some(id) {
                                control.cancel();
                            }
                            (id, kind, e.to_string())
                        }
                    }
                }
                Outcome::Ready(pending) => (pending.id, pending.kind, "the job failed".into()),
                Outcome::Declined { id, kind, reason } => {
                    if done > 0 {
                        tracing::info!(checkpoint = id, ?kind, %reason, "snapshot aborted");
                    } else {
                        tracing::warn!(checkpoint = id, ?kind, %reason, "snapshot declined");
                    }
                    if stop_savepoint == Some(id) {
                        // The user asked the job to stop: it stops, without a savepoint.
                        tracing::warn!(%reason, "final savepoint failed; cancelling the job");
                        control.cancel();
                    }
                    (id, kind, reason)
                }
            };
            if let Some(observer) = &options.observer {
                observer.snapshot_failed(id, kind, &reason);
            }
            decline(&mut savepoint_replies, &mut stop_savepoint, id, reason);
        }
    }
    if !cancelled && first_error.is_some() {
        cancel();
    }
    (launched.finish)();
    *next_id = coordinator.next_id();
    Ok(Attempt {
        result: match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        },
        tasks: count,
        savepoint: final_savepoint,
    })
}

/// A root cause beats the cancellations and disconnections it causes.
pub(crate) fn is_consequence(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Cancelled)
        || matches!(e, RuntimeError::Api(Error::Task { message, .. }) if message.contains("upstream task stopped"))
}

/// A task that stopped because a neighbour did (as reported from afar).
pub(crate) fn consequence(task: &str, message: String) -> RuntimeError {
    let message = if message.contains("upstream task stopped") {
        message
    } else {
        format!("an upstream task stopped: {message}")
    };
    RuntimeError::Api(Error::Task {
        task: task.to_string(),
        message,
    })
}

fn trigger(running: &[RunningTask], id: CheckpointId) {
    for t in running.iter().filter(|t| t.is_source) {
        (t.commands)(TaskCommand::Trigger(id));
    }
}

fn decline(
    replies: &mut BTreeMap<CheckpointId, Sender<Result<String, String>>>,
    stop: &mut Option<CheckpointId>,
    id: CheckpointId,
    reason: String,
) {
    if let Some(reply) = replies.remove(&id) {
        let _ = reply.send(Err(reason));
    }
    if *stop == Some(id) {
        *stop = None;
    }
}

fn write_snapshot(
    options: &JobOptions,
    pending: crate::coordinator::PendingSnapshot,
) -> Result<SnapshotStats, RuntimeError> {
    let started = pending.started;
    let storage = match pending.kind {
        SnapshotKind::Checkpoint => options.checkpoint_storage.as_ref(),
        SnapshotKind::Savepoint => options
            .savepoint_storage
            .as_ref()
            .or(options.checkpoint_storage.as_ref()),
    }
    .ok_or_else(|| Error::Config("no checkpoint or savepoint directory is configured".into()))?;
    let bytes: usize = pending
        .parts
        .iter()
        .map(|p| {
            p.keyed.iter().map(|(_, b)| b.len()).sum::<usize>()
                + p.operator.as_ref().map_or(0, |o| o.len())
        })
        .sum();
    let upload_started = Instant::now();
    let location = storage.write(&options.job_id, pending.id, pending.kind, pending.parts)?;
    let stats = SnapshotStats {
        id: pending.id,
        kind: pending.kind,
        bytes,
        duration: started.elapsed(),
        upload: upload_started.elapsed(),
        location: location.clone(),
    };
    tracing::info!(
        id = pending.id,
        kind = ?pending.kind,
        bytes,
        millis = started.elapsed().as_millis() as u64,
        %location,
        "snapshot complete"
    );
    if pending.kind == SnapshotKind::Checkpoint {
        let keep = options.checkpoints.as_ref().map_or(1, |s| s.retained);
        if let Err(e) = storage.retain(&options.job_id, keep) {
            tracing::warn!(error = %e, "old checkpoints not removed");
        }
    }
    Ok(stats)
}

/// The id after every checkpoint this job already has (ids never repeat).
fn first_checkpoint_id(
    options: &JobOptions,
    restored: Option<&RestoredState>,
) -> Result<CheckpointId, RuntimeError> {
    let mut next = restored.map_or(1, |r| r.checkpoint + 1);
    if let Some(storage) = &options.checkpoint_storage {
        if let Some(last) = storage.complete_checkpoints(&options.job_id)?.last() {
            next = next.max(last + 1);
        }
    }
    Ok(next)
}

/// The newest complete checkpoint of a job, falling back past damaged ones.
pub(crate) fn latest_checkpoint(
    storage: &CheckpointStorage,
    job_id: &str,
) -> Result<Option<Restore>, RuntimeError> {
    match storage.restore_point(job_id) {
        Ok((snapshot, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
                eprintln!("warning: {w}");
            }
            let location = storage.checkpoint_location(job_id, snapshot.id);
            Ok(Some(Restore {
                state: Arc::new(restored_state(snapshot)),
                location: Some(location),
            }))
        }
        Err(rill_checkpoint::CheckpointError::NothingRestorable { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What operators see of a snapshot.
pub fn restored_state(snapshot: Snapshot) -> RestoredState {
    RestoredState {
        checkpoint: snapshot.id,
        operators: snapshot
            .operators
            .into_iter()
            .map(|(uid, op)| {
                (
                    uid,
                    RestoredOperator {
                        parallelism: op.parallelism,
                        max_parallelism: op.max_parallelism,
                        keyed: op.keyed,
                        operator: op.operator,
                    },
                )
            })
            .collect(),
    }
}

/// Checks that restored state fits the job: every operator in the snapshot
/// must exist (by uid) unless unclaimed state is allowed, and keyed state
/// needs the same number of key groups.
fn check_restored(
    graph: &JobGraph,
    restored: Arc<RestoredState>,
    allow_unclaimed: bool,
) -> Result<Arc<RestoredState>, RuntimeError> {
    for (uid, op) in &restored.operators {
        let owner = uid.split('#').next().unwrap_or(uid);
        let node = graph.nodes.iter().find(|n| n.uid() == owner);
        match node {
            None if allow_unclaimed => {
                tracing::warn!(%uid, "state of an operator the job no longer has is ignored");
            }
            None => {
                return Err(Error::Checkpoint(format!(
                    "the snapshot holds state of operator '{uid}', which this job does not have; \
                     set execution.savepoint.ignore-unclaimed-state=true to drop it"
                ))
                .into())
            }
            Some(n) => {
                let max = graph.max_parallelism_of(n);
                if !op.keyed.is_empty() && op.max_parallelism != max {
                    return Err(Error::Checkpoint(format!(
                        "operator '{uid}' was checkpointed with maxParallelism {} but now has {max}; \
                         keyed state cannot be redistributed across a different number of key groups",
                        op.max_parallelism
                    ))
                    .into());
                }
            }
        }
    }
    Ok(restored)
}

/// Resolves `--restore`: a snapshot directory, a job's checkpoint directory
/// (its newest complete checkpoint, skipping damaged ones), or a checkpoint
/// root holding the job's directory.
pub fn load_restore_point(
    location: &str,
    job_id: &str,
    options: &BTreeMap<String, String>,
) -> Result<(RestoredState, Vec<String>), RuntimeError> {
    let trimmed = location.trim_end_matches('/');
    let attempt = |root: &str, rel: &str| -> Result<(Snapshot, Vec<String>), RuntimeError> {
        let storage = CheckpointStorage::open(root, options)?;
        Ok(storage.restore_point(rel)?)
    };
    let first = match trimmed.rsplit_once('/') {
        Some((parent, last))
            if !last.is_empty()
                && !parent.is_empty()
                && !parent.ends_with(':')
                && !parent.ends_with("//") =>
        {
            attempt(parent, last)
        }
        _ => Err(Error::Checkpoint(format!("'{location}' is not a snapshot location")).into()),
    };
    let (snapshot, warnings) = match first {
        Ok(found) => found,
        Err(first_error) => attempt(trimmed, job_id).map_err(|_| first_error)?,
    };
    Ok((restored_state(snapshot), warnings))
}

fn short_thread_name(name: &str) -> String {
    name.chars().take(15).collect()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

fn run_task(
    mut task: Task,
    cancel: &AtomicBool,
    flush_every: Duration,
    commands: &Receiver<TaskCommand>,
    events: &Sender<TaskEvent>,
) -> Result<(), RuntimeError> {
    let mut next_tick = Instant::now();
    let mut next_flush = Instant::now() + flush_every;
    let report = |task: &Task| {
        for item in task.shared.snapshots.drain() {
            let _ = events.send(TaskEvent::Snapshot(item));
        }
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        while let Ok(command) = commands.try_recv() {
            match command {
                TaskCommand::Trigger(id) => {
                    task.input.trigger_checkpoint(id)?;
                }
                TaskCommand::Complete(id) => task.input.signal(Signal::CheckpointComplete(id)),
                TaskCommand::Stop => {
                    task.input.signal(Signal::Flush);
                    report(&task);
                    return match task.shared.failure.take() {
                        Some(e) => Err(e.into()),
                        None => Ok(()),
                    };
                }
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            task.input
                .signal(Signal::ProcessingTime(rill_api::time::now_ms()));
            next_tick = now + TICK;
        }
        if now >= next_flush {
            task.input.signal(Signal::Flush);
            next_flush = now + flush_every;
        }
        let mut progress = task.input.poll(Duration::ZERO)?;
        if progress == Progress::Idle {
            // Nothing queued: hand partial batches on, then wait for input.
            task.input.signal(Signal::Flush);
            next_flush = Instant::now() + flush_every;
            let wait = next_tick.saturating_duration_since(Instant::now());
            progress = task.input.poll(wait)?;
        }
        report(&task);
        if let Some(e) = task.shared.failure.take() {
            return Err(e.into());
        }
        if progress == Progress::Finished {
            tracing::debug!(task = %task.name, "task finished");
            return Ok(());
        }
    }
}

impl<'g> Wiring<'g> {
    pub(crate) fn new(
        graph: &'g JobGraph,
        checkpointing: bool,
        restored: Option<Arc<RestoredState>>,
        state_backend: StateBackend,
    ) -> Self {
        let plan = Plan::of(graph);
        let mut consumers: Vec<Vec<Vec<(usize, usize, usize)>>> = graph
            .nodes
            .iter()
            .map(|n| vec![Vec::new(); n.ports.len()])
            .collect();
        for n in &graph.nodes {
            for (g, edges) in n.inputs.iter().enumerate() {
                for (e, edge) in edges.iter().enumerate() {
                    consumers[edge.from][edge.port].push((n.id, g, e));
                }
            }
        }
        let gates = graph
            .nodes
            .iter()
            .map(|n| {
                if plan.chained_into[n.id].is_some() {
                    return Vec::new();
                }
                let p = graph.parallelism_of(n);
                n.inputs
                    .iter()
                    .map(|edges| {
                        let mut offsets = Vec::with_capacity(edges.len());
                        let mut channels = 0;
                        for e in edges {
                            offsets.push(channels);
                            channels += graph.parallelism_of(&graph.nodes[e.from]);
                        }
                        let ty = &graph.nodes[edges[0].from].ports[edges[0].port].ty;
                        let (senders, receivers) = (0..p)
                            .map(|_| {
                                let (tx, rx) = ty.channel(CHANNEL_CAPACITY);
                                (tx, Some(rx))
                            })
                            .unzip();
                        Gate {
                            senders,
                            receivers,
                            channels,
                            edge_offsets: offsets,
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            graph,
            plan,
            gates,
            consumers,
            checkpointing,
            restored,
            state_backend,
        }
    }

    fn info(&self, node: usize, index: usize, shared: &TaskShared) -> SubtaskInfo {
        let n = &self.graph.nodes[node];
        let parallelism = self.graph.parallelism_of(n);
        SubtaskInfo {
            task_name: format!("{} ({}/{})", n.name, index + 1, parallelism),
            uid: n.uid(),
            index,
            parallelism,
            max_parallelism: self.graph.max_parallelism_of(n),
            failure: shared.failure.clone(),
            checkpoint: CheckpointContext {
                enabled: self.checkpointing,
                snapshots: shared.snapshots.clone(),
                restored: self.restored.clone(),
                state_backend: self.state_backend.clone(),
            },
            metrics: shared.metrics.clone(),
        }
    }

    /// The main output and side outputs of `node`'s subtask `index`.
    fn outputs(
        &mut self,
        node: usize,
        index: usize,
        shared: &TaskShared,
    ) -> Result<(Erased, SideOutputs), Error> {
        let graph = self.graph;
        let n = &graph.nodes[node];
        let mut ports = Vec::with_capacity(n.ports.len());
        for (p, port) in n.ports.iter().enumerate() {
            let mut targets = Vec::new();
            for &(consumer, gate, edge) in &self.consumers[node][p].clone() {
                if self.plan.chained_into[consumer] == Some(node) {
                    targets.push(self.chained(consumer, index, shared)?);
                } else {
                    let c = &graph.nodes[consumer];
                    let g = &self.gates[consumer][gate];
                    let shape = ExchangeShape {
                        sender_index: index,
                        sender_parallelism: graph.parallelism_of(n),
                        receiver_parallelism: graph.parallelism_of(c),
                        receiver_max_parallelism: graph.max_parallelism_of(c),
                    };
                    let channel = (g.edge_offsets[edge] + index) as u32;
                    targets.push(port.ty.exchange(
                        channel,
                        &g.senders,
                        &c.inputs[gate][edge].partition,
                        shape,
                        shared.metrics.clone(),
                    )?);
                }
            }
            ports.push(port.ty.fan_out(targets)?);
        }
        let mut ports = ports.into_iter();
        let main = ports.next().unwrap_or_else(|| n.ports[0].ty.discard());
        let side = n.ports[1..]
            .iter()
            .zip(ports)
            .map(|(port, out)| {
                Ok((
                    port.tag.clone().unwrap_or_default(),
                    port.ty.side_output(out)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((main, SideOutputs::new(side)))
    }

    /// The input of a chained operator, built with everything after it.
    fn chained(&mut self, node: usize, index: usize, shared: &TaskShared) -> Result<Erased, Error> {
        let (main, side) = self.outputs(node, index, shared)?;
        let info = self.info(node, index, shared);
        match &self.graph.nodes[node].kind {
            NodeKind::OneInput(build) => build.build(&info, main, side),
            _ => Err(Error::Graph(
                "only one-input operators can be chained".into(),
            )),
        }
    }

    /// Builds the tasks (all of them, or the local ones of `placement`).
    pub(crate) fn build_tasks(
        mut self,
        placement: Option<&mut dyn Placement>,
    ) -> Result<Vec<Task>, Error> {
        let graph = self.graph;
        let mut tasks = Vec::new();
        let mut position = 0;
        for head in self.plan.heads.clone() {
            let n = &graph.nodes[head];
            for index in 0..graph.parallelism_of(n) {
                position += 1;
                if placement.as_ref().is_some_and(|p| !p.is_local(head, index)) {
                    continue;
                }
                let shared = TaskShared::default();
                let info = self.info(head, index, &shared);
                let (main, side) = self.outputs(head, index, &shared)?;
                let input = match &n.kind {
                    NodeKind::Source(build) => build.build(&info, main)?,
                    NodeKind::OneInput(build) => {
                        let chain = build.build(&info, main, side)?;
                        let edge = &n.inputs[0][0];
                        let ty = &graph.nodes[edge.from].ports[edge.port].ty;
                        let gate = &mut self.gates[head][0];
                        let rx = gate.receivers[index]
                            .take()
                            .ok_or_else(|| Error::Graph("input gate wired twice".into()))?;
                        ty.one_input_head(
                            rx,
                            gate.channels,
                            chain,
                            shared.snapshots.clone(),
                            shared.metrics.clone(),
                        )?
                    }
                    NodeKind::TwoInput(build) => {
                        let mut take = |g: usize| -> Result<(Erased, usize), Error> {
                            let gate = &mut self.gates[head][g];
                            let rx = gate.receivers[index]
                                .take()
                                .ok_or_else(|| Error::Graph("input gate wired twice".into()))?;
                            Ok((rx, gate.channels))
                        };
                        let (rx1, c1) = take(0)?;
                        let (rx2, c2) = take(1)?;
                        build.build(&info, rx1, c1, rx2, c2, main, side)?
                    }
                };
                tasks.push(Task {
                    index: position - 1,
                    name: info.task_name.clone(),
                    input,
                    shared,
                    is_source: matches!(n.kind, NodeKind::Source(_)),
                });
            }
        }
        if let Some(placement) = placement {
            for (consumer, gates) in self.gates.iter_mut().enumerate() {
                for (g, gate) in gates.iter_mut().enumerate() {
                    let edge = &graph.nodes[consumer].inputs[g][0];
                    let ty = &graph.nodes[edge.from].ports[edge.port].ty;
                    for receiver in 0..gate.senders.len() {
                        if placement.is_local(consumer, receiver) {
                            placement.inbound(
                                consumer,
                                g,
                                receiver,
                                &gate.senders[receiver],
                                ty,
                            )?;
                        } else if let Some(rx) = gate.receivers[receiver].take() {
                            placement.outbound(consumer, g, receiver, rx, ty)?;
                        }
                    }
                }
            }
        }
        // Only the exchanges' clones of the senders remain, so a receiver sees
        // its channel disconnect when all its senders are gone.
        drop(self.gates);
        Ok(tasks)
    }
}
