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
use rill_api::exec::{FailureSlot, Progress, SubtaskInfo, TaskInput, CHANNEL_CAPACITY};
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
    /// Ignore restored state of operators the job no longer has.
    pub allow_non_restored_state: bool,
    pub restart: RestartStrategy,
    /// Where keyed state lives (`state.backend.type`).
    pub state_backend: StateBackend,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            job_id: "job".into(),
            checkpoints: None,
            checkpoint_storage: None,
            savepoint_storage: None,
            restore: None,
            allow_non_restored_state: false,
            restart: RestartStrategy::None,
            state_backend: StateBackend::HashMap,
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

struct Wiring<'g> {
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
}

struct Task {
    name: String,
    input: Box<dyn TaskInput>,
    shared: TaskShared,
    is_source: bool,
}

/// What the executor tells a running task.
#[derive(Debug, Clone, Copy)]
enum TaskCommand {
    /// Start checkpoint `id` (sources only).
    Trigger(CheckpointId),
    /// Checkpoint `id` is complete: commit.
    Complete(CheckpointId),
    /// Stop (after a final savepoint).
    Stop,
}

/// What a task tells the executor.
enum TaskEvent {
    Snapshot(Snapshotted),
    Done(String, Result<(), RuntimeError>),
}

struct RunningTask {
    commands: Sender<TaskCommand>,
    is_source: bool,
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
        graph.validate()?;
        if options.checkpoints.is_some() && options.checkpoint_storage.is_none() {
            return Err(Error::Config(
                "checkpointing needs a checkpoint directory (state.checkpoints.dir)".into(),
            )
            .into());
        }
        let started = Instant::now();
        let mut tracker = RestartTracker::new(options.restart.clone());
        let mut restored = match &options.restore {
            Some(r) => Some(check_restored(
                graph,
                r.clone(),
                options.allow_non_restored_state,
            )?),
            None => None,
        };
        let mut next_id = first_checkpoint_id(options, restored.as_deref())?;
        let mut checkpoints = 0u64;
        loop {
            let attempt_started = Instant::now();
            let attempt = self.run_attempt(
                graph,
                options,
                restored.clone(),
                &mut next_id,
                &mut checkpoints,
            )?;
            let error = match attempt.result {
                Ok(()) => {
                    return Ok(JobReport {
                        job: graph.name.clone(),
                        duration: started.elapsed(),
                        tasks: attempt.tasks,
                        restarts: tracker.restarts(),
                        checkpoints,
                        savepoint: attempt.savepoint,
                    })
                }
                Err(e) => e,
            };
            if self.control.cancel.load(Ordering::SeqCst) {
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
            let deadline = Instant::now() + delay;
            while Instant::now() < deadline {
                if self.control.cancel.load(Ordering::SeqCst) {
                    return Err(RuntimeError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(5).min(delay));
            }
            // Without a checkpoint yet, the job starts again where it started.
            if let Some(storage) = &options.checkpoint_storage {
                if let Some(state) = latest_checkpoint(storage, &options.job_id)? {
                    let allow = options.allow_non_restored_state;
                    restored = Some(check_restored(graph, state, allow)?);
                }
            }
        }
    }

    fn run_attempt(
        &self,
        graph: &JobGraph,
        options: &JobOptions,
        restored: Option<Arc<RestoredState>>,
        next_id: &mut CheckpointId,
        completed: &mut u64,
    ) -> Result<Attempt, RuntimeError> {
        let checkpointing = options.checkpoints.is_some();
        if let Some(r) = &restored {
            tracing::info!(job = %graph.name, checkpoint = r.checkpoint, "restoring state");
        }
        let tasks = Wiring::new(
            graph,
            checkpointing,
            restored,
            options.state_backend.clone(),
        )
        .build_tasks()?;
        let count = tasks.len();
        tracing::info!(job = %graph.name, tasks = count, "job running");
        let cancel = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = crossbeam_channel::unbounded::<TaskEvent>();
        let mut running = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for task in tasks {
            let (commands_tx, commands) = crossbeam_channel::unbounded();
            running.push(RunningTask {
                commands: commands_tx,
                is_source: task.is_source,
            });
            let events = events_tx.clone();
            let cancel = cancel.clone();
            let flush_every = self.buffer_timeout;
            let name = task.name.clone();
            let handle = std::thread::Builder::new()
                .name(short_thread_name(&name))
                .spawn(move || {
                    let name = task.name.clone();
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        run_task(task, &cancel, flush_every, &commands, &events)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(RuntimeError::TaskFailed {
                            task: name.clone(),
                            message: panic_message(&panic),
                        })
                    });
                    let _ = events.send(TaskEvent::Done(name, result));
                })
                .map_err(RuntimeError::Spawn)?;
            handles.push(handle);
        }
        drop(events_tx);

        let mut coordinator = Coordinator::new(options.checkpoints.clone(), count, *next_id);
        let mut savepoint_replies: BTreeMap<CheckpointId, Sender<Result<String, String>>> =
            BTreeMap::new();
        let mut stop_savepoint: Option<CheckpointId> = None;
        let mut final_savepoint = None;
        let mut first_error: Option<RuntimeError> = None;
        let mut done = 0;
        while done < count {
            let now = Instant::now();
            if self.control.cancel.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            }
            // Savepoints on request, and the one that stops the job.
            while let Ok(reply) = self.control.savepoint_requests.try_recv() {
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
                && self.control.stop_with_savepoint.load(Ordering::SeqCst)
            {
                match coordinator.start(SnapshotKind::Savepoint, now) {
                    Some(id) => {
                        trigger(&running, id);
                        stop_savepoint = Some(id);
                    }
                    None => {
                        tracing::warn!("cannot take a final savepoint: the job is finishing");
                        self.control.cancel();
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
                Ok(TaskEvent::Done(task, result)) => {
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
                        cancel.store(true, Ordering::SeqCst);
                        if first_error
                            .as_ref()
                            .is_none_or(|f| is_consequence(f) && !is_consequence(&e))
                        {
                            first_error = Some(e);
                        }
                    }
                }
                Err(_) => {}
            }
            for outcome in outcomes {
                match outcome {
                    Outcome::Ready(pending) if first_error.is_none() => {
                        let id = pending.id;
                        let kind = pending.kind;
                        let written = write_snapshot(options, pending);
                        coordinator.finished_writing(Instant::now());
                        match written {
                            Ok(stats) => {
                                let location = stats.location.clone();
                                if let Ok(mut c) = self.control.completed.lock() {
                                    c.push(stats);
                                }
                                if kind == SnapshotKind::Checkpoint {
                                    *completed += 1;
                                }
                                for t in &running {
                                    let _ = t.commands.send(TaskCommand::Complete(id));
                                }
                                if let Some(reply) = savepoint_replies.remove(&id) {
                                    let _ = reply.send(Ok(location.clone()));
                                }
                                if stop_savepoint == Some(id) {
                                    eprintln!("savepoint written to {location}");
                                    final_savepoint = Some(location);
                                    for t in &running {
                                        let _ = t.commands.send(TaskCommand::Stop);
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(checkpoint = id, error = %e, "snapshot not written");
                                if stop_savepoint == Some(id) {
                                    self.control.cancel();
                                }
                                decline(
                                    &mut savepoint_replies,
                                    &mut stop_savepoint,
                                    id,
                                    e.to_string(),
                                );
                            }
                        }
                    }
                    Outcome::Ready(pending) => decline(
                        &mut savepoint_replies,
                        &mut stop_savepoint,
                        pending.id,
                        "the job failed".into(),
                    ),
                    Outcome::Declined { id, kind, reason } => {
                        if done > 0 {
                            tracing::info!(checkpoint = id, ?kind, %reason, "snapshot aborted");
                        } else {
                            tracing::warn!(checkpoint = id, ?kind, %reason, "snapshot declined");
                        }
                        if stop_savepoint == Some(id) {
                            // The user asked the job to stop: it stops, without a savepoint.
                            tracing::warn!(%reason, "final savepoint failed; cancelling the job");
                            self.control.cancel();
                        }
                        decline(&mut savepoint_replies, &mut stop_savepoint, id, reason);
                    }
                }
            }
        }
        for h in handles {
            let _ = h.join();
        }
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
}

/// A root cause beats the cancellations and disconnections it causes.
fn is_consequence(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Cancelled)
        || matches!(e, RuntimeError::Api(Error::Task { message, .. }) if message.contains("upstream task stopped"))
}

fn trigger(running: &[RunningTask], id: CheckpointId) {
    for t in running.iter().filter(|t| t.is_source) {
        let _ = t.commands.send(TaskCommand::Trigger(id));
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
fn latest_checkpoint(
    storage: &CheckpointStorage,
    job_id: &str,
) -> Result<Option<Arc<RestoredState>>, RuntimeError> {
    match storage.restore_point(job_id) {
        Ok((snapshot, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
                eprintln!("warning: {w}");
            }
            Ok(Some(Arc::new(restored_state(snapshot))))
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
    fn new(
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

    fn build_tasks(mut self) -> Result<Vec<Task>, Error> {
        let graph = self.graph;
        let mut tasks = Vec::new();
        for head in self.plan.heads.clone() {
            let n = &graph.nodes[head];
            for index in 0..graph.parallelism_of(n) {
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
                        ty.one_input_head(rx, gate.channels, chain, shared.snapshots.clone())?
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
                    name: info.task_name.clone(),
                    input,
                    shared,
                    is_source: matches!(n.kind, NodeKind::Source(_)),
                });
            }
        }
        // Only the exchanges' clones of the senders remain, so a receiver sees
        // its channel disconnect when all its senders are gone.
        drop(self.gates);
        Ok(tasks)
    }
}
