//! A private tokio runtime behind blocking calls.
//!
//! The JobManager drives [`rill_runtime::cluster::services`] from plain
//! threads, while kube-rs is async. Each blocking implementation owns one
//! small multi-threaded runtime; a call spawns its future there and waits on
//! a std channel. Unlike `Runtime::block_on` this also works when the caller
//! itself happens to run inside another tokio runtime (it only blocks that
//! thread), and dropping the owner inside async code does not panic because
//! the runtime is shut down in the background.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

use crate::{Error, Result};

pub(crate) struct Bridge {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Bridge {
    /// A runtime with `threads` workers named `name`.
    pub(crate) fn new(name: &str, threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| Error::io(format!("starting the {name} runtime"), e))?;
        let handle = runtime.handle().clone();
        Ok(Bridge {
            runtime: Some(runtime),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` on the private runtime and waits for its output.
    pub(crate) fn run<F, T>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Internal("a Kubernetes call was dropped before finishing".into()))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
