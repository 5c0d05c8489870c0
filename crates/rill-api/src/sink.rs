//! Sinks: where records leave a job.

use crate::checkpoint::{CheckpointId, OperatorState};
use crate::element::{Output, Signal};
use crate::error::Result;
use crate::exec::{FailureSlot, SubtaskInfo};
use crate::time::Timestamp;

/// Writes one subtask's records.
pub trait SinkWriter<T>: Send {
    fn write(&mut self, value: T, timestamp: Timestamp) -> Result<()>;
    /// Make written records durable/visible as far as the sink can.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// The input ended; called once.
    fn finish(&mut self) -> Result<()> {
        self.flush()
    }

    /// The job takes checkpoints: from now on, written records must stay
    /// invisible until the checkpoint covering them completes (two-phase
    /// commit). `restored` holds the transaction states this writer takes
    /// over from a checkpoint (empty on a fresh start): the writer commits
    /// what they had prepared and discards what came after. Sinks that
    /// cannot hold records back keep writing directly (at-least-once).
    fn begin_transactions(&mut self, _restored: Vec<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// Pre-commit for checkpoint `id`: make everything written so far
    /// durable but still invisible, and describe it for the checkpoint.
    fn prepare_commit(&mut self, _id: CheckpointId) -> Result<Option<Vec<u8>>> {
        self.flush()?;
        Ok(None)
    }

    /// Checkpoint `id` is complete: publish what was prepared up to it.
    fn commit(&mut self, _id: CheckpointId) -> Result<()> {
        Ok(())
    }
}

/// Creates a writer per sink subtask.
pub trait Sink<T>: Send + Sync + 'static {
    fn writer(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn SinkWriter<T>>>;
}

/// Closures are sinks that cannot fail (handy in tests).
impl<T, F> SinkWriter<T> for F
where
    F: FnMut(T, Timestamp) + Send,
{
    fn write(&mut self, value: T, timestamp: Timestamp) -> Result<()> {
        self(value, timestamp);
        Ok(())
    }
}

/// Runs a [`SinkWriter`] at the end of a chain; a write error fails the task.
pub struct SinkOperator<T> {
    writer: Box<dyn SinkWriter<T>>,
    info: SubtaskInfo,
    failure: FailureSlot,
    failed: bool,
}

impl<T> SinkOperator<T> {
    /// Wraps a writer. With checkpointing on, or when restoring (the output
    /// must first be brought back to the snapshot), it writes in
    /// transactions that start from the restored state of this subtask.
    pub fn new(mut writer: Box<dyn SinkWriter<T>>, info: &SubtaskInfo) -> Result<Self> {
        if info.checkpoint.enabled || info.restored().is_some() {
            writer.begin_transactions(info.restored_operator_states())?;
        }
        Ok(Self {
            writer,
            info: info.clone(),
            failure: info.failure.clone(),
            failed: false,
        })
    }

    fn check(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.failed = true;
            self.failure.fail(e);
        }
    }
}

impl<T: Send> Output<T> for SinkOperator<T> {
    #[inline]
    fn record(&mut self, value: T, timestamp: Timestamp) {
        if !self.failed {
            let r = self.writer.write(value, timestamp);
            self.check(r);
        }
    }

    fn signal(&mut self, signal: Signal) {
        if self.failed {
            return;
        }
        let r = match signal {
            Signal::EndOfInput => self.writer.finish(),
            Signal::Flush => self.writer.flush(),
            Signal::Barrier(id) => self.writer.prepare_commit(id).map(|state| {
                self.info.put_snapshot(
                    id,
                    OperatorState {
                        keyed: Vec::new(),
                        operator: state,
                    },
                )
            }),
            Signal::CheckpointComplete(id) => self.writer.commit(id),
            _ => Ok(()),
        };
        self.check(r);
    }
}
