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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rill_api::exec::{FailureSlot, Progress, SubtaskInfo, TaskInput, CHANNEL_CAPACITY};
use rill_api::function::SideOutputs;
use rill_api::graph::{Erased, ExchangeShape, JobGraph, NodeKind};
use rill_api::{Error, Signal};

use crate::plan::Plan;
use crate::RuntimeError;

/// How often processing-time timers are checked.
const TICK: Duration = Duration::from_millis(10);

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: String,
    pub duration: Duration,
    pub tasks: usize,
}

/// Runs job graphs in this process.
#[derive(Clone)]
pub struct LocalExecutor {
    cancel: Arc<AtomicBool>,
    buffer_timeout: Duration,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
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
}

struct Task {
    name: String,
    input: Box<dyn TaskInput>,
    failure: FailureSlot,
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

    /// A handle that cancels the running job when set.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Runs the job to completion (bounded sources) or until cancelled.
    pub fn run(&self, graph: &JobGraph) -> Result<JobReport, RuntimeError> {
        graph.validate()?;
        let started = Instant::now();
        let tasks = Wiring::new(graph).build_tasks()?;
        let count = tasks.len();
        tracing::info!(job = %graph.name, tasks = count, "job running");

        let (done_tx, done_rx) = mpsc::channel::<(String, Result<(), RuntimeError>)>();
        let mut handles = Vec::with_capacity(count);
        for task in tasks {
            let done = done_tx.clone();
            let cancel = self.cancel.clone();
            let flush_every = self.buffer_timeout;
            let name = task.name.clone();
            let handle = std::thread::Builder::new()
                .name(short_thread_name(&name))
                .spawn(move || {
                    let name = task.name.clone();
                    let result =
                        catch_unwind(AssertUnwindSafe(|| run_task(task, &cancel, flush_every)))
                            .unwrap_or_else(|panic| {
                                Err(RuntimeError::TaskFailed {
                                    task: name.clone(),
                                    message: panic_message(&panic),
                                })
                            });
                    let _ = done.send((name, result));
                })
                .map_err(RuntimeError::Spawn)?;
            handles.push((name, handle));
        }
        drop(done_tx);

        let mut first_error: Option<RuntimeError> = None;
        for (task, result) in done_rx.iter() {
            if let Err(e) = result {
                tracing::warn!(%task, error = %e, "task stopped");
                self.cancel.store(true, Ordering::SeqCst);
                // A root cause beats the cancellations and disconnections it causes.
                let is_consequence = |e: &RuntimeError| {
                    matches!(e, RuntimeError::Cancelled)
                        || matches!(e, RuntimeError::Api(Error::Task { message, .. }) if message.contains("upstream task stopped"))
                };
                if first_error
                    .as_ref()
                    .is_none_or(|f| is_consequence(f) && !is_consequence(&e))
                {
                    first_error = Some(e);
                }
            }
        }
        for (_, h) in handles {
            let _ = h.join();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(JobReport {
                job: graph.name.clone(),
                duration: started.elapsed(),
                tasks: count,
            }),
        }
    }
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
) -> Result<(), RuntimeError> {
    let mut next_tick = Instant::now();
    let mut next_flush = Instant::now() + flush_every;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
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
        if let Some(e) = task.failure.take() {
            return Err(e.into());
        }
        if progress == Progress::Finished {
            tracing::debug!(task = %task.name, "task finished");
            return Ok(());
        }
    }
}

impl<'g> Wiring<'g> {
    fn new(graph: &'g JobGraph) -> Self {
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
        }
    }

    fn info(&self, node: usize, index: usize, failure: &FailureSlot) -> SubtaskInfo {
        let n = &self.graph.nodes[node];
        let parallelism = self.graph.parallelism_of(n);
        SubtaskInfo {
            task_name: format!("{} ({}/{})", n.name, index + 1, parallelism),
            uid: n.uid(),
            index,
            parallelism,
            max_parallelism: self.graph.max_parallelism_of(n),
            failure: failure.clone(),
        }
    }

    /// The main output and side outputs of `node`'s subtask `index`.
    fn outputs(
        &mut self,
        node: usize,
        index: usize,
        failure: &FailureSlot,
    ) -> Result<(Erased, SideOutputs), Error> {
        let graph = self.graph;
        let n = &graph.nodes[node];
        let mut ports = Vec::with_capacity(n.ports.len());
        for (p, port) in n.ports.iter().enumerate() {
            let mut targets = Vec::new();
            for &(consumer, gate, edge) in &self.consumers[node][p].clone() {
                if self.plan.chained_into[consumer] == Some(node) {
                    targets.push(self.chained(consumer, index, failure)?);
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
    fn chained(
        &mut self,
        node: usize,
        index: usize,
        failure: &FailureSlot,
    ) -> Result<Erased, Error> {
        let (main, side) = self.outputs(node, index, failure)?;
        let info = self.info(node, index, failure);
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
                let failure = FailureSlot::default();
                let info = self.info(head, index, &failure);
                let (main, side) = self.outputs(head, index, &failure)?;
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
                        ty.one_input_head(rx, gate.channels, chain)?
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
                    failure,
                });
            }
        }
        // Only the exchanges' clones of the senders remain, so a receiver sees
        // its channel disconnect when all its senders are gone.
        drop(self.gates);
        Ok(tasks)
    }
}
