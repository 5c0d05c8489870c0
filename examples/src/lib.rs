//! Example jobs, registered in the default `rill` binary's catalogue.
//!
//! Each is a plain function a newcomer can copy:
//! * [`wordcount`]: running word counts from a file, a socket or built-in text;
//! * [`top_speed`]: Flink's TopSpeedWindowing — global windows with a delta trigger;
//! * [`driving_score`]: per-driver session windows with an end-of-trip trigger;
//! * [`windowed_sum`]: the window-semantics contract checked from outside;
//! * [`bench_window`]: the benchmark workload, runnable on a cluster.

pub mod bench_window;
pub mod driving_score;
pub mod top_speed;
pub mod windowed_sum;
pub mod wordcount;

pub use bench_window::bench_window;
pub use driving_score::driving_score;
pub use top_speed::top_speed;
pub use windowed_sum::windowed_sum;
pub use wordcount::wordcount;

use rill::api::{Error, JobArgs, Result};

/// Rejects arguments a job does not know (a typo should not be ignored).
pub(crate) fn only_known(args: &JobArgs, known: &[&str]) -> Result<()> {
    let unknown = args.unknown(known);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::Args(format!(
            "unknown option(s) --{}; known: --{}",
            unknown.join(", --"),
            known.join(", --")
        )))
    }
}

/// The default catalogue of the `rill` binary.
pub fn catalog() -> rill::Catalog {
    rill::catalog![
        wordcount,
        top_speed,
        driving_score,
        windowed_sum,
        bench_window
    ]
}
