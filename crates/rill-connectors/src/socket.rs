//! Lines from a TCP server, like Flink's `socketTextStream`
//! (`nc -lk 9999` on the other side). The source ends when the server closes
//! the connection.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::time::Duration;

use rill_api::{Error, Result, Source, SourceFactory, SourceOutput, SourcePoll};

/// Reads lines from `host:port` (one subtask connects; others finish at once).
#[derive(Debug, Clone)]
pub struct SocketTextSource {
    address: String,
}

impl SocketTextSource {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
        }
    }
}

struct Reader {
    address: String,
    reader: Option<BufReader<TcpStream>>,
    buf: String,
}

impl Source<String> for Reader {
    fn poll(&mut self, out: &mut SourceOutput<'_, String>) -> Result<SourcePoll> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(SourcePoll::Finished);
        };
        for _ in 0..1024 {
            match reader.read_line(&mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    return Ok(SourcePoll::Finished);
                }
                Ok(_) => {
                    if !self.buf.ends_with('\n') {
                        continue; // partial line: wait for the rest
                    }
                    let line = self.buf.trim_end_matches(['\n', '\r']).to_string();
                    self.buf.clear();
                    out.collect(line);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(SourcePoll::Pending(Duration::from_millis(5)));
                }
                Err(e) => return Err(Error::io(format!("reading from {}", self.address), e)),
            }
        }
        Ok(SourcePoll::Ready)
    }
}

impl SourceFactory<String> for SocketTextSource {
    fn create(&self, subtask: usize, _: usize) -> Result<Box<dyn Source<String>>> {
        let reader = if subtask == 0 {
            let stream = TcpStream::connect(&self.address)
                .map_err(|e| Error::io(format!("connecting to {}", self.address), e))?;
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| Error::io("configuring socket", e))?;
            Some(BufReader::new(stream))
        } else {
            None
        };
        Ok(Box::new(Reader {
            address: self.address.clone(),
            reader,
            buf: String::new(),
        }))
    }
}
