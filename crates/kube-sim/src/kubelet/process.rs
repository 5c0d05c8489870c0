//! Starting a container's process and signalling it.
//!
//! A container is a process group started with a clean environment. When
//! mount namespaces are usable, the child unshares its mount (and UTS)
//! namespace before `exec`, makes `/` private so nothing leaks back to the
//! host, and bind-mounts the pod's volumes, `/etc/hosts` and the service
//! account directory at their container paths; in namespace network mode it
//! first joins the pod's network namespace. Everything the child does
//! between `fork` and `exec` is a raw system call on data prepared before
//! the fork, which is what `pre_exec` allows.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, Result};

/// One bind mount inside the container's mount namespace.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one process of a pod.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// stdout and stderr go here (appended); `None` discards them.
    pub log: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Unshare a mount namespace and apply `mounts`.
    pub isolate: bool,
    /// A network namespace to join (`/run/netns/...`).
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains a NUL byte", p.display())))
}

/// Create what a bind mount needs at `target` on the host (an empty
/// directory or file); returns the paths it created, deepest last.
pub(crate) fn prepare_mount_point(m: &Mount) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    if m.target.exists() {
        return Ok(created);
    }
    let mut missing = Vec::new();
    let mut p = m.target.parent();
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        p = dir.parent();
    }
    let exists_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(true),
    };
    for dir in missing.into_iter().rev() {
        if exists_ok(std::fs::create_dir(&dir))? {
            created.push(dir);
        }
    }
    let made = if m.source.is_dir() {
        exists_ok(std::fs::create_dir(&m.target))?
    } else {
        exists_ok(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&m.target)
                .map(drop),
        )?
    };
    if made {
        created.push(m.target.clone());
    }
    Ok(created)
}

/// Start the process in its own process group.
pub(crate) fn spawn(l: &Launch) -> Result<tokio::process::Child> {
    let Some((program, args)) = l.argv.split_first() else {
        return Err(Error::Invalid("the container has no command to run".into()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&l.cwd)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    match &l.log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let netns = match &l.netns {
        Some(p) => Some(File::open(p)?),
        None => None,
    };
    let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
    let mut mounts = Vec::new();
    if l.isolate {
        for m in &l.mounts {
            mounts.push((cstring(&m.source)?, cstring(&m.target)?, m.read_only));
        }
    }
    let isolate = l.isolate;
    let hostname = match (&l.hostname, isolate) {
        (Some(h), true) => Some(h.as_bytes().to_vec()),
        _ => None,
    };
    let root = CString::new("/").map_err(|_| Error::Internal("bad root path".into()))?;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw system calls (setns, unshare, mount, sethostname) on
    // memory prepared before the fork; it neither allocates nor locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if isolate {
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (src, dst, ro) in &mounts {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if *ro {
                        // Best effort: some kernels refuse read-only remounts
                        // of certain bind sources; the data is still there.
                        libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        );
                    }
                }
                if let Some(h) = &hostname {
                    libc::sethostname(h.as_ptr().cast(), h.len());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Invalid(format!("starting {program}: {e}")))?;
    drop(netns);
    Ok(child)
}

/// Send `sig` to a process group; false when it no longer exists.
pub(crate) fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether this process can create private mount namespaces (root, or a
/// kernel that allows it), tried with a short-lived child.
pub(crate) fn mount_namespaces_work() -> bool {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("true");
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only raw system calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// The host's `PATH`, or a conventional one.
pub(crate) fn host_path() -> String {
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// The exit code Kubernetes reports: the code, or 128 + signal.
pub(crate) fn exit_code(status: &std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        (None, None) => (-1, None),
    }
}
