//! Sources: where records enter a job.
//!
//! A [`SourceFactory`] creates one [`Source`] reader per parallel subtask.
//! Readers are polled, not run: the task calls [`Source::poll`] in a loop,
//! which keeps the task in control of ticks, flushing, cancellation and (with
//! checkpoints) barriers between two polls.

use std::time::Duration;

use crate::element::Output;
use crate::error::Result;
use crate::time::{Timestamp, MIN_WATERMARK};

/// What a poll produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were emitted (or may be); poll again at once.
    Ready,
    /// Nothing available now; poll again after at most this long.
    Pending(Duration),
    /// The source is exhausted.
    Finished,
}

/// Where a source emits its records.
pub struct SourceOutput<'a, T> {
    out: &'a mut dyn Output<T>,
    emitted: usize,
}

impl<'a, T> SourceOutput<'a, T> {
    pub fn new(out: &'a mut dyn Output<T>) -> Self {
        Self { out, emitted: 0 }
    }

    /// Emits a record without a timestamp (a watermark strategy may assign one).
    #[inline]
    pub fn collect(&mut self, value: T) {
        self.emitted += 1;
        self.out.record(value, MIN_WATERMARK);
    }

    /// Emits a record with its event timestamp.
    #[inline]
    pub fn collect_at(&mut self, value: T, timestamp: Timestamp) {
        self.emitted += 1;
        self.out.record(value, timestamp);
    }

    /// Records emitted through this output so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }
}

/// A parallel reader: one instance per source subtask.
pub trait Source<T>: Send + 'static {
    /// Emits what is available (a bounded amount, a few thousand records at
    /// most, so the task stays responsive) and says what comes next.
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll>;

    /// The reader's position for a checkpoint: everything emitted so far is
    /// before it. `None` means the source cannot replay (for example a
    /// socket), so records it delivered after the last checkpoint are lost
    /// on recovery.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Continues from a position [`Source::snapshot`] returned.
    fn restore(&mut self, _position: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// Creates the reader for each source subtask.
pub trait SourceFactory<T>: Send + Sync + 'static {
    fn create(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn Source<T>>>;
}

/// An in-memory collection, split round-robin across subtasks (for tests
/// and examples). Elements carry the given timestamps.
#[derive(Clone)]
pub struct CollectionSource<T> {
    items: std::sync::Arc<Vec<(T, Timestamp)>>,
}

impl<T> CollectionSource<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self::with_timestamps(items.into_iter().map(|v| (v, MIN_WATERMARK)).collect())
    }

    pub fn with_timestamps(items: Vec<(T, Timestamp)>) -> Self {
        Self {
            items: std::sync::Arc::new(items),
        }
    }
}

struct CollectionReader<T> {
    items: std::sync::Arc<Vec<(T, Timestamp)>>,
    next: usize,
    step: usize,
}

impl<T: Clone + Send + Sync + 'static> Source<T> for CollectionReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        for _ in 0..1024 {
            let Some((v, ts)) = self.items.get(self.next) else {
                return Ok(SourcePoll::Finished);
            };
            out.collect_at(v.clone(), *ts);
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(Some(crate::checkpoint::encode_state(
            "collection",
            &self.next,
        )?))
    }

    fn restore(&mut self, position: &[u8]) -> Result<()> {
        self.next = crate::checkpoint::decode_state("collection", position)?;
        Ok(())
    }
}

impl<T: Clone + Send + Sync + 'static> SourceFactory<T> for CollectionSource<T> {
    fn create(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn Source<T>>> {
        Ok(Box::new(CollectionReader {
            items: self.items.clone(),
            next: subtask,
            step: parallelism.max(1),
        }))
    }
}
