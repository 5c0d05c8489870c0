//! Sinks: where records leave a job.

use crate::element::{Output, Signal};
use crate::error::Result;
use crate::exec::FailureSlot;
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
    failure: FailureSlot,
    failed: bool,
}

impl<T> SinkOperator<T> {
    pub fn new(writer: Box<dyn SinkWriter<T>>, failure: FailureSlot) -> Self {
        Self {
            writer,
            failure,
            failed: false,
        }
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
            _ => Ok(()),
        };
        self.check(r);
    }
}
