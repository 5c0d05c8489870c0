//! Rill on Kubernetes.
//!
//! - [`crd`]: the `FlinkJob` and `FlinkSession` custom resources
//!   (`rill.dev/v1alpha1`) and their generated CRDs ([`run_crdgen`]);
//! - [`ha`]: ConfigMap leader election and job pointers for JobManagers
//!   ([`ha::KubernetesHa`], the runtime's `HighAvailability`);
//! - [`workers`]: TaskManager pods created by the JobManager
//!   ([`workers::KubernetesWorkers`], the runtime's `WorkerProvider`);
//! - [`election`]: the pure leader-election rules both HA and the
//!   operator's own [`lease`] election use;
//! - [`controller`], [`children`], [`lifecycle`], [`rest`]: the operator
//!   that turns custom resources into clusters ([`run_operator`]).
//!
//! Pure logic (election rules, config rendering, upgrade decisions, status
//! from REST answers) is separate from the Kubernetes I/O at the edges, so
//! it is unit-tested without a cluster; the I/O is tested against kube-sim.

mod bridge;
pub mod children;
pub mod config;
pub mod controller;
pub mod crd;
pub mod election;
pub mod error;
pub mod ha;
pub mod lease;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
pub mod rest;
pub mod retention;
pub mod workers;

use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use ha::{HaSettings, KubernetesHa};
pub use operator::{run_operator, Operator, OperatorOptions};
pub use workers::{KubernetesWorkers, OwnerSource, WorkerSettings};

/// Writes the generated CRDs (`flinkjobs.rill.dev.yaml`,
/// `flinksessions.rill.dev.yaml`) into `out_dir` (created if missing) and
/// returns the paths written. `rill crdgen` calls this with `crds/`.
pub fn run_crdgen(out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
    let mut written = Vec::new();
    for (file, yaml) in crd::generated_crds()? {
        let path = out_dir.join(file);
        std::fs::write(&path, yaml)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

/// Compares the CRD files in `dir` with what the types generate; returns
/// the names of files that are missing or differ (empty when in sync).
pub fn crd_drift(dir: &Path) -> Result<Vec<String>> {
    let mut drift = Vec::new();
    for (file, yaml) in crd::generated_crds()? {
        let path = dir.join(&file);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == yaml => {}
            Ok(_) => drift.push(format!("{} differs", path.display())),
            Err(_) => drift.push(format!("{} is missing", path.display())),
        }
    }
    Ok(drift)
}
