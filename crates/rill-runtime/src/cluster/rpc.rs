//! The control protocol between the JobManager and its TaskManagers.
//!
//! One TCP connection per TaskManager, opened by the TaskManager, carries
//! length-framed messages both ways: registration and heartbeats up,
//! deployments and task commands down, task events (snapshots, ends) up.
//! The connection is the failure detector: when it breaks, the JobManager
//! fails the TaskManager's tasks at once; heartbeats with a timeout are the
//! backstop for a peer that hangs without closing it.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use rill_api::checkpoint::{CheckpointId, OperatorState, Snapshotted};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::network::{read_frame, write_frame};
use crate::local::{TaskCommand, TaskEvent};
use crate::RuntimeError;

const MESSAGE: u8 = 16;

/// TaskManager → JobManager.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToJobManager {
    Register {
        id: String,
        slots: usize,
        /// Where other TaskManagers open data links to this one.
        data_address: String,
    },
    Heartbeat {
        tasks: Vec<TaskFigures>,
    },
    Task {
        job: String,
        attempt: u32,
        event: RemoteEvent,
    },
}

/// JobManager → TaskManager.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToTaskManager {
    Registered,
    /// Refused (e.g. a duplicate id); the TaskManager retries later.
    Rejected(String),
    Deploy(Box<Deployment>),
    Command {
        job: String,
        attempt: u32,
        task: usize,
        command: TaskCommand,
    },
    Cancel {
        job: String,
        attempt: u32,
    },
}

/// One attempt of a job, as a TaskManager needs it: enough to rebuild the
/// graph from its catalogue and to find every other subtask.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Deployment {
    pub job: String,
    pub attempt: u32,
    pub entry: String,
    pub args: Vec<String>,
    /// The job's configuration.
    pub config: Vec<(String, String)>,
    /// Snapshot to restore from.
    pub restore: Option<String>,
    /// Index into `managers` of the TaskManager running each task of the
    /// plan (in plan order).
    pub owners: Vec<usize>,
    /// `(id, data address)` of the TaskManagers involved.
    pub managers: Vec<(String, String)>,
}

/// Per-task figures sent with heartbeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TaskFigures {
    pub job: String,
    pub attempt: u32,
    /// The task's vertex (its head's uid) and subtask index.
    pub vertex: String,
    pub subtask: u32,
    pub records_in: u64,
    pub records_out: u64,
    /// Share of the last interval spent blocked by downstream.
    pub backpressure: f64,
    pub watermark: Option<i64>,
}

/// A task event on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RemoteEvent {
    State {
        checkpoint: CheckpointId,
        uid: String,
        subtask: usize,
        parallelism: usize,
        max_parallelism: usize,
        state: OperatorState,
    },
    BarrierDone(CheckpointId),
    SnapshotFailed(CheckpointId, String),
    Done {
        task: usize,
        name: String,
        error: Option<RemoteError>,
    },
}

/// How a task ended badly, keeping the distinction the JobManager's
/// failure handling needs (root cause vs consequence).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RemoteError {
    Cancelled,
    /// The task stopped because something upstream or downstream did.
    Consequence(String),
    Failed {
        task: String,
        message: String,
    },
}

impl From<TaskEvent> for RemoteEvent {
    fn from(event: TaskEvent) -> Self {
        match event {
            TaskEvent::Snapshot(Snapshotted::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            }) => RemoteEvent::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            },
            TaskEvent::Snapshot(Snapshotted::BarrierDone(id)) => RemoteEvent::BarrierDone(id),
            TaskEvent::Snapshot(Snapshotted::Failed(id, why)) => {
                RemoteEvent::SnapshotFailed(id, why)
            }
            TaskEvent::Done { task, name, result } => RemoteEvent::Done {
                task,
                error: result.err().map(|e| match e {
                    RuntimeError::Cancelled => RemoteError::Cancelled,
                    e if crate::local::is_consequence(&e) => {
                        RemoteError::Consequence(e.to_string())
                    }
                    e => RemoteError::Failed {
                        task: name.clone(),
                        message: e.to_string(),
                    },
                }),
                name,
            },
        }
    }
}

impl From<RemoteEvent> for TaskEvent {
    fn from(event: RemoteEvent) -> Self {
        match event {
            RemoteEvent::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            } => TaskEvent::Snapshot(Snapshotted::State {
                checkpoint,
                uid,
                subtask,
                parallelism,
                max_parallelism,
                state,
            }),
            RemoteEvent::BarrierDone(id) => TaskEvent::Snapshot(Snapshotted::BarrierDone(id)),
            RemoteEvent::SnapshotFailed(id, why) => {
                TaskEvent::Snapshot(Snapshotted::Failed(id, why))
            }
            RemoteEvent::Done { task, name, error } => TaskEvent::Done {
                task,
                result: match error {
                    None => Ok(()),
                    Some(RemoteError::Cancelled) => Err(RuntimeError::Cancelled),
                    Some(RemoteError::Consequence(message)) => {
                        Err(crate::local::consequence(&name, message))
                    }
                    Some(RemoteError::Failed { task, message }) => {
                        Err(RuntimeError::TaskFailed { task, message })
                    }
                },
                name,
            },
        }
    }
}

fn codec() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The sending half of a control connection, shared by the threads that
/// talk to the peer.
#[derive(Clone)]
pub(crate) struct RpcSender {
    stream: Arc<Mutex<TcpStream>>,
}

impl RpcSender {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: Arc::new(Mutex::new(stream)),
        }
    }

    pub fn send<M: Serialize>(&self, message: &M) -> Result<(), RuntimeError> {
        let bytes = bincode::serde::encode_to_vec(message, codec())
            .map_err(|e| RuntimeError::Cluster(format!("cannot encode a message: {e}")))?;
        let mut stream = self
            .stream
            .lock()
            .map_err(|_| RuntimeError::Cluster("connection lock poisoned".into()))?;
        write_frame(&mut *stream, MESSAGE, &bytes)
            .and_then(|()| stream.flush())
            .map_err(|source| RuntimeError::Io {
                context: "sending to the peer".into(),
                source,
            })
    }

    /// Breaks the connection (both directions), so the peer and our reader
    /// notice at once.
    pub fn close(&self) {
        if let Ok(stream) = self.stream.lock() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The receiving half of a control connection.
pub(crate) struct RpcReceiver {
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl RpcReceiver {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, stream),
            buf: Vec::new(),
        }
    }

    /// The next message; `None` when the peer closed the connection.
    pub fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, RuntimeError> {
        let io = |source| RuntimeError::Io {
            context: "reading from the peer".into(),
            source,
        };
        match read_frame(&mut self.reader, &mut self.buf).map_err(io)? {
            None => Ok(None),
            Some(MESSAGE) => {
                let (message, _) = bincode::serde::decode_from_slice(&self.buf, codec())
                    .map_err(|e| RuntimeError::Cluster(format!("malformed message: {e}")))?;
                Ok(Some(message))
            }
            Some(kind) => Err(RuntimeError::Cluster(format!(
                "unexpected frame kind {kind} on a control connection"
            ))),
        }
    }
}

/// Splits a connected stream into its two halves.
pub(crate) fn split(stream: TcpStream) -> Result<(RpcSender, RpcReceiver), RuntimeError> {
    stream
        .set_nodelay(true)
        .map_err(|source| RuntimeError::Io {
            context: "configuring a control connection".into(),
            source,
        })?;
    let reader = stream.try_clone().map_err(|source| RuntimeError::Io {
        context: "cloning a control connection".into(),
        source,
    })?;
    Ok((RpcSender::new(stream), RpcReceiver::new(reader)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ends_keep_root_causes_apart_from_consequences() {
        let failed = TaskEvent::Done {
            task: 3,
            name: "map (1/2)".into(),
            result: Err(RuntimeError::TaskFailed {
                task: "map (1/2)".into(),
                message: "boom".into(),
            }),
        };
        let wire: RemoteEvent = failed.into();
        let bytes = bincode::serde::encode_to_vec(&wire, codec()).unwrap();
        let (back, _): (RemoteEvent, usize) =
            bincode::serde::decode_from_slice(&bytes, codec()).unwrap();
        match TaskEvent::from(back) {
            TaskEvent::Done {
                task: 3,
                result: Err(e),
                ..
            } => {
                assert!(!crate::local::is_consequence(&e));
                assert!(e.to_string().contains("boom"));
            }
            _ => panic!("expected a failed task end"),
        }
        let upstream = TaskEvent::Done {
            task: 1,
            name: "sink (1/1)".into(),
            result: Err(crate::local::consequence("sink (1/1)", "gone".into())),
        };
        match TaskEvent::from(RemoteEvent::from(upstream)) {
            TaskEvent::Done { result: Err(e), .. } => assert!(crate::local::is_consequence(&e)),
            _ => panic!("expected a consequence"),
        }
    }
}
