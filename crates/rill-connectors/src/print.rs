//! Sinks that print or discard.

use std::io::Write;
use std::sync::Arc;

use rill_api::{Error, Result, Sink, SinkWriter, Timestamp};

/// Prints records to stdout, prefixed like Flink's `print()` (`3> ...`) when
/// the sink is parallel.
pub struct PrintSink<T> {
    format: Arc<dyn Fn(&T) -> String + Send + Sync>,
}

impl<T: std::fmt::Debug> Default for PrintSink<T> {
    fn default() -> Self {
        Self::with_format(|v| format!("{v:?}"))
    }
}

impl<T> PrintSink<T> {
    pub fn with_format(format: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        Self {
            format: Arc::new(format),
        }
    }
}

struct Printer<T> {
    prefix: String,
    format: Arc<dyn Fn(&T) -> String + Send + Sync>,
}

impl<T: Send + 'static> Sink<T> for PrintSink<T> {
    fn writer(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(Printer {
            prefix: if parallelism > 1 {
                format!("{}> ", subtask + 1)
            } else {
                String::new()
            },
            format: self.format.clone(),
        }))
    }
}

impl<T: Send> SinkWriter<T> for Printer<T> {
    fn write(&mut self, value: T, _: Timestamp) -> Result<()> {
        let line = format!("{}{}\n", self.prefix, (self.format)(&value));
        std::io::stdout()
            .lock()
            .write_all(line.as_bytes())
            .map_err(|e| Error::io("writing to stdout", e))
    }
}

/// Drops every record (Flink's `blackhole` connector).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl<T: Send + 'static> Sink<T> for DiscardSink {
    fn writer(&self, _: usize, _: usize) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(|_: T, _: Timestamp| {}))
    }
}
