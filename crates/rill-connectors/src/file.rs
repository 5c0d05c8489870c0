//! Text files: a line source (read by one subtask, in file order) and a line
//! sink (one file per subtask).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rill_api::{
    Error, Result, Sink, SinkWriter, Source, SourceFactory, SourceOutput, SourcePoll, Timestamp,
};

use crate::Pacer;

type Parser<T> = Arc<dyn Fn(&str, u64) -> std::result::Result<Option<T>, String> + Send + Sync>;

/// The lines of a text file, optionally parsed into records and paced.
///
/// The file is read by subtask 0 only, so records keep file order; other
/// subtasks finish at once. A line the parser rejects fails the job with the
/// file name and line number.
pub struct TextFileSource<T> {
    path: PathBuf,
    parse: Parser<T>,
    rate: Option<f64>,
}

impl TextFileSource<String> {
    /// Every line as a `String` (without the line break).
    pub fn lines(path: impl Into<PathBuf>) -> Self {
        Self::parsed(path, |line, _| Ok(Some(line.to_string())))
    }
}

impl<T> TextFileSource<T> {
    /// Lines parsed by `parse(line, line_number)`; `Ok(None)` skips a line.
    pub fn parsed(
        path: impl Into<PathBuf>,
        parse: impl Fn(&str, u64) -> std::result::Result<Option<T>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            path: path.into(),
            parse: Arc::new(parse),
            rate: None,
        }
    }

    /// At most this many lines per second.
    pub fn rate(mut self, lines_per_second: f64) -> Self {
        self.rate = Some(lines_per_second.max(0.001));
        self
    }
}

struct LineReader<T> {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line_no: u64,
    buf: String,
    parse: Parser<T>,
    pacer: Option<Pacer>,
}

impl<T: Send + 'static> Source<T> for LineReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(SourcePoll::Finished);
        };
        let mut budget = 1024usize;
        if let Some(p) = &mut self.pacer {
            match p.budget(budget) {
                Ok(b) => budget = b,
                Err(wait) => return Ok(SourcePoll::Pending(wait)),
            }
        }
        for _ in 0..budget {
            self.buf.clear();
            let n = reader
                .read_line(&mut self.buf)
                .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
            if n == 0 {
                self.reader = None;
                return Ok(SourcePoll::Finished);
            }
            self.line_no += 1;
            let line = self.buf.trim_end_matches(['\n', '\r']);
            match (self.parse)(line, self.line_no) {
                Ok(Some(v)) => out.collect(v),
                Ok(None) => {}
                Err(msg) => {
                    return Err(Error::Source {
                        name: self.path.display().to_string(),
                        message: format!("line {}: {msg}", self.line_no),
                    })
                }
            }
            if let Some(p) = &mut self.pacer {
                p.emitted(1);
            }
        }
        Ok(SourcePoll::Ready)
    }
}

impl<T: Send + 'static> SourceFactory<T> for TextFileSource<T> {
    fn create(&self, subtask: usize, _parallelism: usize) -> Result<Box<dyn Source<T>>> {
        let reader = if subtask == 0 {
            let f = File::open(&self.path)
                .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
            Some(BufReader::with_capacity(1 << 16, f))
        } else {
            None
        };
        Ok(Box::new(LineReader {
            path: self.path.clone(),
            reader,
            line_no: 0,
            buf: String::new(),
            parse: self.parse.clone(),
            pacer: self.rate.map(Pacer::new),
        }))
    }
}

/// Writes records as lines: to `path` when the sink has one subtask,
/// otherwise to `path.<subtask>`.
pub struct TextFileSink<T> {
    path: PathBuf,
    format: Arc<dyn Fn(&T) -> String + Send + Sync>,
}

impl<T> TextFileSink<T> {
    pub fn new(
        path: impl Into<PathBuf>,
        format: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            path: path.into(),
            format: Arc::new(format),
        }
    }
}

struct LineWriter<T> {
    path: PathBuf,
    out: BufWriter<File>,
    format: Arc<dyn Fn(&T) -> String + Send + Sync>,
}

fn subtask_path(path: &Path, subtask: usize, parallelism: usize) -> PathBuf {
    if parallelism <= 1 {
        path.to_path_buf()
    } else {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{subtask}"));
        PathBuf::from(p)
    }
}

impl<T: Send + 'static> Sink<T> for TextFileSink<T> {
    fn writer(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn SinkWriter<T>>> {
        let path = subtask_path(&self.path, subtask, parallelism);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let f = File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Box::new(LineWriter {
            path,
            out: BufWriter::with_capacity(1 << 16, f),
            format: self.format.clone(),
        }))
    }
}

impl<T: Send> SinkWriter<T> for LineWriter<T> {
    fn write(&mut self, value: T, _: Timestamp) -> Result<()> {
        let line = (self.format)(&value);
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_api::element::VecOutput;

    #[test]
    fn parse_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "1\n2\nx\n4\n").unwrap();
        let src = TextFileSource::parsed(&path, |l, _| {
            l.parse::<i64>().map(Some).map_err(|e| e.to_string())
        });
        let mut r = src.create(0, 1).unwrap();
        let mut sink = VecOutput::default();
        let err = r
            .poll(&mut SourceOutput::new(&mut sink))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert_eq!(
            sink.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = TextFileSource::lines("/nonexistent/rill/input.txt")
            .create(0, 1)
            .err()
            .expect("opening must fail")
            .to_string();
        assert!(err.contains("/nonexistent/rill/input.txt"), "{err}");
    }
}
