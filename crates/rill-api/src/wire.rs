//! Batches between processes: the typed half of a network exchange.
//!
//! A remote exchange is an ordinary bounded channel on each side with a TCP
//! connection in between. Only code that knows the record type can encode
//! and decode its batches, so the runtime asks a port's
//! [`StreamType`](crate::graph::StreamType) for a [`BatchEncoder`] (sending
//! side: drains the local channel) and a [`BatchDecoder`] (receiving side:
//! feeds the receiving task's input gate); framing, credits and sockets stay
//! in the runtime.

use crate::element::Data;
use crate::error::{Error, Result};
use crate::exec::{Batch, Rx, Tx};

/// Drains batches bound for a remote receiver and encodes them.
pub trait BatchEncoder: Send {
    /// Waits for the next batch and appends its encoding to `out`; `false`
    /// once every local sender has gone (the stream is over).
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool>;
}

/// Decodes batches from a remote sender into a local input gate.
pub trait BatchDecoder: Send {
    /// Hands one encoded batch to the receiving task, waiting while its
    /// input is full. Fails on malformed bytes or when the task is gone.
    fn push(&mut self, bytes: &[u8]) -> Result<()>;
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(crate) struct ChannelEncoder<T>(pub(crate) Rx<T>);

impl<T: Data> BatchEncoder for ChannelEncoder<T> {
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let Ok(batch) = self.0.recv() else {
            return Ok(false);
        };
        bincode::serde::encode_into_std_write(&batch, out, config()).map_err(|e| Error::Task {
            task: "network".into(),
            message: format!("cannot encode a batch: {e}"),
        })?;
        Ok(true)
    }
}

pub(crate) struct ChannelDecoder<T>(pub(crate) Tx<T>);

impl<T: Data> BatchDecoder for ChannelDecoder<T> {
    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        let (batch, read): (Batch<T>, usize) = bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| Error::Task {
            task: "network".into(),
            message: format!("malformed batch from a remote sender: {e}"),
        })?;
        if read != bytes.len() {
            return Err(Error::Task {
                task: "network".into(),
                message: "malformed batch from a remote sender: trailing bytes".into(),
            });
        }
        self.0.send(batch).map_err(|_| Error::Task {
            task: "network".into(),
            message: "the receiving task is gone".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Event;

    #[test]
    fn batches_survive_the_round_trip_and_garbage_is_refused() {
        let (tx, rx) = crossbeam_channel::bounded::<Batch<(String, i64)>>(4);
        let (tx2, rx2) = crossbeam_channel::bounded::<Batch<(String, i64)>>(4);
        let mut encoder = ChannelEncoder(rx);
        let mut decoder = ChannelDecoder(tx2);
        tx.send(Batch {
            channel: 3,
            events: vec![
                Event::Record(("a".into(), 1), 10),
                Event::Watermark(9),
                Event::Barrier(2),
                Event::End,
            ],
        })
        .unwrap();
        drop(tx);
        let mut bytes = Vec::new();
        assert!(encoder.next(&mut bytes).unwrap());
        decoder.push(&bytes).unwrap();
        let got = rx2.try_recv().unwrap();
        assert_eq!(got.channel, 3);
        assert_eq!(got.events.len(), 4);
        assert!(matches!(&got.events[0], Event::Record((k, 1), 10) if k == "a"));
        assert!(matches!(got.events[2], Event::Barrier(2)));
        let mut more = Vec::new();
        assert!(
            !encoder.next(&mut more).unwrap(),
            "senders gone: stream over"
        );
        assert!(decoder.push(&[0xff, 0xff, 0xff]).is_err());
        bytes.push(0);
        assert!(decoder.push(&bytes).is_err(), "trailing bytes are refused");
    }
}
