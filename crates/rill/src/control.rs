//! Talking to a job that runs in another local `rill run` process.
//!
//! A local job listens on a Unix socket named after its job id (in the
//! system's temporary directory unless `RILL_CONTROL_DIR` says otherwise),
//! so `rill savepoint <job-id>` and `rill stop <job-id>` can reach it. The
//! protocol is one request line and one reply line:
//! `savepoint` → `ok <location>` or `error <message>`; `stop` (stop with a
//! savepoint) → `ok stopping`. The cluster runtime will offer the same
//! operations over REST.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rill_runtime::JobControl;

/// How long a savepoint request waits for its savepoint.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(600);

/// The socket of the local job `job_id`.
pub fn socket_path(job_id: &str) -> PathBuf {
    let dir = std::env::var_os("RILL_CONTROL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("rill-{safe}.sock"))
}

/// What a request line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Savepoint,
    Stop,
}

fn parse_request(line: &str) -> Result<Request, String> {
    match line.trim() {
        "savepoint" => Ok(Request::Savepoint),
        "stop" => Ok(Request::Stop),
        other => Err(format!("unknown request '{other}' (savepoint, stop)")),
    }
}

/// Serves control requests for a running job until the returned guard is
/// dropped (which removes the socket).
pub struct ControlServer {
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlServer {
    /// Listens on the job's socket. An existing socket of a process that is
    /// gone is replaced; one that answers means the job already runs.
    pub fn start(job_id: &str, control: JobControl) -> Result<Self, String> {
        let path = socket_path(job_id);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(format!(
                    "a local job with id '{job_id}' is already running ({}); \
                     give this one another --job-id",
                    path.display()
                ));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        std::thread::Builder::new()
            .name("rill-control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let control = control.clone();
                    // One request at a time per connection; a slow
                    // savepoint does not block other clients.
                    let _ = std::thread::Builder::new()
                        .name("rill-control-conn".into())
                        .spawn(move || serve(stream, &control));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn serve(stream: UnixStream, control: &JobControl) {
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = match parse_request(&line) {
        Ok(Request::Savepoint) => match control.savepoint(SAVEPOINT_TIMEOUT) {
            Ok(location) => format!("ok {location}"),
            Err(e) => format!("error {e}"),
        },
        Ok(Request::Stop) => {
            control.stop_with_savepoint();
            "ok stopping".to_string()
        }
        Err(e) => format!("error {e}"),
    };
    let mut writer = &stream;
    let _ = writer.write_all(format!("{reply}\n").as_bytes());
}

/// Sends one request to the local job `job_id`; returns the reply's payload.
pub fn request(job_id: &str, what: &str) -> Result<String, String> {
    let path = socket_path(job_id);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no local job '{job_id}' is running (cannot reach {}: {e})",
            path.display()
        )
    })?;
    let mut writer = &stream;
    writer
        .write_all(format!("{what}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| e.to_string())?;
    let reply = reply.trim_end();
    if let Some(ok) = reply.strip_prefix("ok ") {
        Ok(ok.to_string())
    } else if let Some(err) = reply.strip_prefix("error ") {
        Err(err.to_string())
    } else {
        Err(format!("unexpected reply '{reply}' from the job"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request("savepoint\n"), Ok(Request::Savepoint));
        assert_eq!(parse_request(" stop "), Ok(Request::Stop));
        assert!(parse_request("delete everything").is_err());
    }

    #[test]
    fn job_ids_make_safe_socket_names() {
        let p = socket_path("../etc/passwd job");
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, "rill-___etc_passwd_job.sock");
    }

    #[test]
    fn unknown_requests_get_an_error_reply() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("RILL_CONTROL_DIR", dir.path());
        let server = ControlServer::start("control-test", JobControl::default()).unwrap();
        assert!(server.path().exists());
        let err = request("control-test", "frobnicate").unwrap_err();
        assert!(err.contains("unknown request"), "{err}");
        assert!(
            ControlServer::start("control-test", JobControl::default()).is_err(),
            "one job per id"
        );
        let err = request("no-such-job", "savepoint").unwrap_err();
        assert!(err.contains("no local job"), "{err}");
        drop(server);
        assert!(!socket_path("control-test").exists());
    }
}
