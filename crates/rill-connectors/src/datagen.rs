//! A parallel sequence generator: `start..=end` split into contiguous ranges,
//! one per subtask, each number mapped to a record by a function.

use std::sync::Arc;

use rill_api::checkpoint::{decode_state, encode_state};
use rill_api::{Result, Source, SourceFactory, SourceOutput, SourcePoll};

use crate::Pacer;

/// Generates `f(seq)` for every `seq` in `start..=end`.
pub struct DataGen<T> {
    start: u64,
    end: u64,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    rows_per_second: Option<f64>,
}

impl<T> DataGen<T> {
    pub fn sequence(start: u64, end: u64, make: impl Fn(u64) -> T + Send + Sync + 'static) -> Self {
        Self {
            start,
            end,
            make: Arc::new(make),
            rows_per_second: None,
        }
    }

    /// Total rows per second over all subtasks.
    pub fn rows_per_second(mut self, rate: f64) -> Self {
        self.rows_per_second = Some(rate.max(0.001));
        self
    }
}

struct Reader<T> {
    next: u64,
    /// Exclusive.
    end: u64,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    pacer: Option<Pacer>,
}

impl<T: Send + 'static> Source<T> for Reader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        if self.next >= self.end {
            return Ok(SourcePoll::Finished);
        }
        let mut n = 4096usize;
        if let Some(p) = &mut self.pacer {
            match p.budget(n) {
                Ok(b) => n = b,
                Err(wait) => return Ok(SourcePoll::Pending(wait)),
            }
        }
        let stop = self.end.min(self.next.saturating_add(n as u64));
        for seq in self.next..stop {
            out.collect((self.make)(seq));
        }
        if let Some(p) = &mut self.pacer {
            p.emitted((stop - self.next) as usize);
        }
        self.next = stop;
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(Some(encode_state("datagen", &self.next)?))
    }

    fn restore(&mut self, position: &[u8]) -> Result<()> {
        let next: u64 = decode_state("datagen", position)?;
        if next > self.end {
            return Err(rill_api::Error::Checkpoint(format!(
                "datagen position {next} lies beyond this subtask's end {}",
                self.end
            )));
        }
        self.next = next;
        Ok(())
    }
}

impl<T: Send + 'static> SourceFactory<T> for DataGen<T> {
    fn create(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn Source<T>>> {
        let total = (self.end + 1).saturating_sub(self.start);
        let p = parallelism.max(1) as u64;
        let i = subtask as u64;
        let first = self.start + total * i / p;
        let last_exclusive = self.start + total * (i + 1) / p;
        Ok(Box::new(Reader {
            next: first,
            end: last_exclusive,
            make: self.make.clone(),
            pacer: self.rows_per_second.map(|r| Pacer::new(r / p as f64)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_api::element::VecOutput;

    fn drain(gen: &DataGen<u64>, subtask: usize, p: usize) -> Vec<u64> {
        let mut reader = gen.create(subtask, p).unwrap();
        let mut sink = VecOutput::default();
        loop {
            let mut out = SourceOutput::new(&mut sink);
            if reader.poll(&mut out).unwrap() == SourcePoll::Finished {
                break;
            }
        }
        sink.records.into_iter().map(|r| r.0).collect()
    }

    #[test]
    fn subtasks_split_the_sequence_exactly() {
        let gen = DataGen::sequence(1, 10_001, |s| s);
        let mut all: Vec<u64> = (0..3).flat_map(|i| drain(&gen, i, 3)).collect();
        all.sort();
        assert_eq!(all, (1..=10_001).collect::<Vec<_>>());
    }

    #[test]
    fn more_subtasks_than_rows() {
        let gen = DataGen::sequence(1, 2, |s| s);
        let mut all: Vec<u64> = (0..5).flat_map(|i| drain(&gen, i, 5)).collect();
        all.sort();
        assert_eq!(all, vec![1, 2]);
    }
}
