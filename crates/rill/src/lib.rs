//! Rill: stateful stream processing in Rust.
//!
//! This is the crate a job depends on. It re-exports the DataStream API, the
//! connectors and the runtime, and provides [`main`], the command line every
//! Rill binary shares:
//!
//! ```no_run
//! use rill::prelude::*;
//!
//! fn hello(env: &mut StreamEnv, _args: &JobArgs) -> rill::api::Result<()> {
//!     env.from_collection(vec!["hello", "world"].into_iter().map(String::from).collect())
//!         .map(|s| s.to_uppercase())
//!         .sink_to(PrintSink::default(), "print");
//!     Ok(())
//! }
//!
//! fn main() {
//!     rill::main(rill::catalog![hello]);
//! }
//! ```
//!
//! `my-binary run hello` then runs the job in an embedded mini cluster.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod control;

pub use rill_api as api;
pub use rill_api::{catalog, Catalog, JobArgs, JobEntry};
pub use rill_connectors as connectors;
pub use rill_runtime as runtime;
pub use rill_state as state;

/// Everything a job usually needs.
pub mod prelude {
    pub use rill_api::broadcast::{BroadcastProcessFunction, KeyedBroadcastProcessFunction};
    pub use rill_api::window::*;
    pub use rill_api::{
        AggregateFunction, AggregatingState, Configuration, Context, DataStream, JobArgs,
        KeyedContext, KeyedProcessFunction, KeyedStream, ListState, MapState, OutputTag,
        ProcessFunction, ReducingState, StateTtl, StreamEnv, TimeDomain, Timestamp, ValueState,
        WatermarkStrategy, WindowedStream,
    };
    pub use rill_connectors::*;
}

use rill_api::Configuration;
use rill_runtime::{JobOptions, JobReport, LocalExecutor};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] rill_api::Error),
    #[error(transparent)]
    Runtime(#[from] rill_runtime::RuntimeError),
}

/// Builds a catalogue entry's graph from its arguments.
pub fn build_job(
    entry: &JobEntry,
    args: &JobArgs,
    config: Configuration,
) -> Result<rill_api::graph::JobGraph, Error> {
    let mut env = rill_api::StreamEnv::new(entry.name, config)?;
    (entry.build)(&mut env, args)?;
    Ok(env.graph())
}

/// Runs a catalogue entry to completion in this process.
pub fn run_local(
    entry: &JobEntry,
    args: &JobArgs,
    config: Configuration,
) -> Result<JobReport, Error> {
    let executor = executor_for(&config)?;
    run_local_with(&executor, entry, args, config)
}

/// Runs a catalogue entry on `executor` (whose control handle the caller
/// may keep), with checkpoints, restore and restarts from `config`.
pub fn run_local_with(
    executor: &LocalExecutor,
    entry: &JobEntry,
    args: &JobArgs,
    config: Configuration,
) -> Result<JobReport, Error> {
    let options = job_options(&config, entry.name)?;
    let graph = build_job(entry, args, config)?;
    Ok(executor.run_with(&graph, &options)?)
}

/// Checkpointing, restore and restart settings from Flink's keys.
pub fn job_options(config: &Configuration, job_name: &str) -> Result<JobOptions, Error> {
    Ok(rill_runtime::options::job_options(config, job_name)?)
}

/// The state backend from `state.backend.type` (with its options).
pub fn state_backend(config: &Configuration) -> Result<rill_api::checkpoint::StateBackend, Error> {
    Ok(rill_runtime::options::state_backend(config)?)
}

pub(crate) fn executor_for(config: &Configuration) -> Result<LocalExecutor, Error> {
    let mut executor = LocalExecutor::new();
    if let Some(t) = config.get_duration("execution.buffer-timeout")? {
        executor = executor.with_buffer_timeout(t);
    }
    Ok(executor)
}

/// The `main` of a Rill binary: parses the command line and runs it.
pub fn main(catalog: Catalog) {
    std::process::exit(cli::run(catalog, std::env::args_os()));
}

/// [`main`] with cluster services the runtime alone does not have (the
/// Kubernetes HA and TaskManager pods of `rill-operator`).
pub fn main_with_services(catalog: Catalog, services: cluster::ServicesFactory) {
    std::process::exit(cli::run_with(catalog, std::env::args_os(), Some(services)));
}
