//! Text files: a line source (read by one subtask, in file order, resumable
//! from a byte offset) and a line sink (one file per subtask) that commits
//! in two phases when the job takes checkpoints.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rill_api::checkpoint::{decode_state, encode_state, CheckpointId};
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
    /// Byte offset of the next line.
    offset: u64,
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
            self.offset += n as u64;
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

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let position = (self.offset, self.line_no);
        Ok(Some(encode_state("file source", &position)?))
    }

    fn restore(&mut self, position: &[u8]) -> Result<()> {
        let (offset, line_no): (u64, u64) = decode_state("file source", position)?;
        if let Some(reader) = self.reader.as_mut() {
            let len = reader
                .get_ref()
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?
                .len();
            if offset > len {
                return Err(Error::Checkpoint(format!(
                    "{} is {len} bytes long but the checkpoint read up to byte {offset}; \
                     was the file replaced?",
                    self.path.display()
                )));
            }
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io(format!("seeking in {}", self.path.display()), e))?;
        }
        self.offset = offset;
        self.line_no = line_no;
        Ok(())
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
            offset: 0,
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

/// One subtask's writer. Without checkpoints it writes straight into its
/// file. With checkpoints it writes into a hidden part file per checkpoint
/// interval, `.<file>.part-…` next to the file: a barrier seals the part
/// (pre-commit, fsync), and when that checkpoint completes the part is
/// appended to the file and deleted. The file therefore only ever holds
/// output of completed checkpoints.
struct LineWriter<T> {
    path: PathBuf,
    format: Arc<dyn Fn(&T) -> String + Send + Sync>,
    mode: Mode,
}

enum Mode {
    /// Not opened yet.
    Unopened,
    Direct(BufWriter<File>),
    Transactional(Transactions),
}

/// A sealed part file waiting for its checkpoint to complete.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    checkpoint: CheckpointId,
    part: PathBuf,
    size: u64,
}

/// What a checkpoint records about one sink file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FileTransactions {
    path: PathBuf,
    /// Length of the file with everything committed before the snapshot.
    committed_len: u64,
    /// Parts sealed at or before the checkpoint, oldest first.
    pending: Vec<Pending>,
}

struct Transactions {
    committed_len: u64,
    pending: Vec<Pending>,
    /// The open part (path, writer, bytes written).
    current: Option<(PathBuf, BufWriter<File>, u64)>,
    parts_made: u64,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e)
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

fn part_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.part-")
}

/// Appends a sealed part to the file and makes it durable.
fn append_part(path: &Path, part: &Pending) -> Result<()> {
    let mut from = File::open(&part.part).map_err(io_err(
        "a pending part file is missing; cannot commit",
        &part.part,
    ))?;
    let mut to = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let copied = std::io::copy(&mut from, &mut to).map_err(io_err("committing into", path))?;
    if copied != part.size {
        return Err(Error::Checkpoint(format!(
            "part file {} holds {copied} bytes, {} were sealed",
            part.part.display(),
            part.size
        )));
    }
    to.sync_all().map_err(io_err("syncing", path))
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("opening", path))?;
    f.set_len(len).map_err(io_err("truncating", path))?;
    f.sync_all().map_err(io_err("syncing", path))
}

/// Brings a file back to the state a checkpoint describes: everything
/// committed before it, plus the parts it had sealed (appended once, even if
/// a commit was interrupted), and nothing written after it.
fn recover(state: &FileTransactions) -> Result<u64> {
    let mut actual = std::fs::metadata(&state.path).map(|m| m.len()).unwrap_or(0);
    if actual < state.committed_len {
        return Err(Error::Checkpoint(format!(
            "{} is {actual} bytes long, shorter than the {} bytes the checkpoint committed",
            state.path.display(),
            state.committed_len
        )));
    }
    let mut end = state.committed_len;
    for part in &state.pending {
        if actual < end + part.size {
            // Not (fully) appended before the failure: append it now.
            truncate(&state.path, end)?;
            append_part(&state.path, part)?;
            actual = end + part.size;
        }
        end += part.size;
        let _ = std::fs::remove_file(&part.part);
    }
    truncate(&state.path, end)?;
    Ok(end)
}

/// Deletes part files of `path` that no checkpoint refers to (output of an
/// attempt that failed before its checkpoint).
fn remove_stale_parts(path: &Path) -> Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let prefix = part_prefix(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(()),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
        }
    }
    Ok(())
}

impl<T> LineWriter<T> {
    fn transactions(&mut self) -> Option<&mut Transactions> {
        match &mut self.mode {
            Mode::Transactional(t) => Some(t),
            _ => None,
        }
    }

    /// Seals the open part under `checkpoint`.
    fn seal(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let Some(t) = self.transactions() else {
            return Ok(());
        };
        if let Some((part, mut out, size)) = t.current.take() {
            out.flush().map_err(io_err("writing", &part))?;
            out.get_ref().sync_all().map_err(io_err("syncing", &part))?;
            t.pending.push(Pending {
                checkpoint,
                part,
                size,
            });
        }
        Ok(())
    }

    /// Publishes every sealed part up to `checkpoint`.
    fn publish(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let path = self.path.clone();
        let Some(t) = self.transactions() else {
            return Ok(());
        };
        while t
            .pending
            .first()
            .is_some_and(|p| p.checkpoint <= checkpoint)
        {
            let part = t.pending.remove(0);
            append_part(&path, &part)?;
            t.committed_len += part.size;
            std::fs::remove_file(&part.part).map_err(io_err("removing", &part.part))?;
        }
        Ok(())
    }
}

impl<T: Send + 'static> Sink<T> for TextFileSink<T> {
    fn writer(&self, subtask: usize, parallelism: usize) -> Result<Box<dyn SinkWriter<T>>> {
        let path = subtask_path(&self.path, subtask, parallelism);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        Ok(Box::new(LineWriter {
            path,
            format: self.format.clone(),
            mode: Mode::Unopened,
        }))
    }
}

impl<T: Send> SinkWriter<T> for LineWriter<T> {
    fn write(&mut self, value: T, _: Timestamp) -> Result<()> {
        let line = (self.format)(&value);
        let out = match &mut self.mode {
            Mode::Direct(out) => out,
            Mode::Transactional(t) => {
                if t.current.is_none() {
                    t.parts_made += 1;
                    let dir = self.path.parent().unwrap_or(Path::new(""));
                    let name = format!(
                        "{}{}-{}-{}",
                        part_prefix(&self.path),
                        std::process::id(),
                        rill_api::time::now_ms(),
                        t.parts_made
                    );
                    let part = dir.join(name);
                    let f = File::create(&part).map_err(io_err("creating", &part))?;
                    t.current = Some((part, BufWriter::with_capacity(1 << 16, f), 0));
                }
                let Some((part, out, size)) = t.current.as_mut() else {
                    unreachable!("a part was opened above")
                };
                *size += line.len() as u64 + 1;
                return out
                    .write_all(line.as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(io_err("writing", part));
            }
            Mode::Unopened => {
                let f = File::create(&self.path).map_err(io_err("creating", &self.path))?;
                self.mode = Mode::Direct(BufWriter::with_capacity(1 << 16, f));
                let Mode::Direct(out) = &mut self.mode else {
                    unreachable!("set just above")
                };
                out
            }
        };
        out.write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(io_err("writing", &self.path))
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.mode {
            Mode::Direct(out) => out.flush().map_err(io_err("writing", &self.path)),
            Mode::Transactional(t) => match t.current.as_mut() {
                Some((part, out, _)) => out.flush().map_err(io_err("writing", part)),
                None => Ok(()),
            },
            Mode::Unopened => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<()> {
        match &mut self.mode {
            Mode::Unopened => {
                File::create(&self.path).map_err(io_err("creating", &self.path))?;
                Ok(())
            }
            Mode::Direct(out) => {
                out.flush().map_err(io_err("writing", &self.path))?;
                out.get_ref()
                    .sync_all()
                    .map_err(io_err("syncing", &self.path))
            }
            Mode::Transactional(_) => {
                // The input is complete: everything written is final.
                self.seal(CheckpointId::MAX)?;
                self.publish(CheckpointId::MAX)
            }
        }
    }

    fn begin_transactions(&mut self, restored: Vec<&[u8]>) -> Result<()> {
        let mut own_len = None;
        for blob in restored {
            let state: FileTransactions = decode_state("file sink", blob)?;
            let len = recover(&state)?;
            remove_stale_parts(&state.path)?;
            if state.path == self.path {
                own_len = Some(len);
            }
        }
        let committed_len = match own_len {
            Some(len) => len,
            None => {
                remove_stale_parts(&self.path)?;
                truncate(&self.path, 0)?;
                0
            }
        };
        self.mode = Mode::Transactional(Transactions {
            committed_len,
            pending: Vec::new(),
            current: None,
            parts_made: 0,
        });
        Ok(())
    }

    fn prepare_commit(&mut self, id: CheckpointId) -> Result<Option<Vec<u8>>> {
        self.seal(id)?;
        let path = self.path.clone();
        match self.transactions() {
            Some(t) => {
                let state = FileTransactions {
                    path,
                    committed_len: t.committed_len,
                    pending: t.pending.clone(),
                };
                Ok(Some(encode_state("file sink", &state)?))
            }
            None => {
                self.flush()?;
                Ok(None)
            }
        }
    }

    fn commit(&mut self, id: CheckpointId) -> Result<()> {
        self.publish(id)
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

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn part_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".part-"))
            .count()
    }

    fn transactional(path: &Path, restored: Vec<&[u8]>) -> Box<dyn SinkWriter<String>> {
        let mut w = TextFileSink::new(path, String::clone).writer(0, 1).unwrap();
        w.begin_transactions(restored).unwrap();
        w
    }

    #[test]
    fn output_is_visible_only_after_its_checkpoint_completes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut w = transactional(&path, vec![]);
        w.write("a".into(), 0).unwrap();
        let state1 = w.prepare_commit(1).unwrap().expect("a transaction state");
        w.write("b".into(), 0).unwrap();
        w.flush().unwrap();
        assert_eq!(read(&path), "", "nothing is visible before completion");
        w.commit(1).unwrap();
        assert_eq!(read(&path), "a\n", "only checkpoint 1's part is published");
        let _state2 = w.prepare_commit(2).unwrap();
        w.write("c".into(), 0).unwrap();
        w.flush().unwrap();

        // The job fails here; a new attempt restores checkpoint 1: "b" and
        // "c" are discarded (they will be produced again), "a" stays once.
        let mut w = transactional(&path, vec![&state1]);
        assert_eq!(read(&path), "a\n");
        assert_eq!(
            part_files(dir.path()),
            0,
            "parts of the failed attempt are gone"
        );
        w.write("b".into(), 0).unwrap();
        w.finish().unwrap();
        assert_eq!(read(&path), "a\nb\n");
    }

    #[test]
    fn a_commit_interrupted_by_a_crash_is_completed_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut w = transactional(&path, vec![]);
        w.write("a".into(), 0).unwrap();
        w.prepare_commit(1).unwrap();
        w.commit(1).unwrap();
        w.write("b".into(), 0).unwrap();
        w.write("c".into(), 0).unwrap();
        let state2 = w.prepare_commit(2).unwrap().unwrap();
        // Checkpoint 2 completed, but the process died before the sink
        // published its part: on restore the part is appended now.
        drop(w);
        let w = transactional(&path, vec![&state2]);
        assert_eq!(read(&path), "a\nb\nc\n");
        drop(w);
        // Restoring the same checkpoint again (another failure) must not
        // append the part a second time.
        let _w = transactional(&path, vec![&state2]);
        assert_eq!(read(&path), "a\nb\nc\n");
        // A file shorter than what the checkpoint committed is an error.
        std::fs::write(&path, "").unwrap();
        let mut w = TextFileSink::new(&path, String::clone)
            .writer(0, 1)
            .unwrap();
        let err = w.begin_transactions(vec![&state2]).unwrap_err().to_string();
        assert!(err.contains("shorter"), "{err}");
    }

    #[test]
    fn damaged_sink_state_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TextFileSink::new(dir.path().join("o"), String::clone)
            .writer(0, 1)
            .unwrap();
        assert!(w.begin_transactions(vec![&[1, 2, 3]]).is_err());
    }

    #[test]
    fn file_source_resumes_at_its_checkpointed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(
            &path,
            (1..=3000).map(|i| format!("{i}\n")).collect::<String>(),
        )
        .unwrap();
        let src = TextFileSource::parsed(&path, |l, _| {
            l.parse::<i64>().map(Some).map_err(|e| e.to_string())
        });
        let mut first = src.create(0, 1).unwrap();
        let mut out = VecOutput::default();
        first.poll(&mut SourceOutput::new(&mut out)).unwrap();
        let position = first.snapshot().unwrap().unwrap();
        let read_before = out.records.len();
        assert!(read_before > 0 && read_before < 3000);

        let mut resumed = src.create(0, 1).unwrap();
        resumed.restore(&position).unwrap();
        let mut rest = VecOutput::default();
        while resumed.poll(&mut SourceOutput::new(&mut rest)).unwrap() != SourcePoll::Finished {}
        let all: Vec<i64> = out
            .records
            .iter()
            .chain(&rest.records)
            .map(|r| r.0)
            .collect();
        assert_eq!(
            all,
            (1..=3000).collect::<Vec<_>>(),
            "no line lost or repeated"
        );

        std::fs::write(&path, "1\n").unwrap();
        let mut shorter = src.create(0, 1).unwrap();
        let err = shorter.restore(&position).unwrap_err().to_string();
        assert!(err.contains("replaced"), "{err}");
    }
}
