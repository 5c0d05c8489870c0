//! A job's runtime options from Flink-style configuration keys, shared by
//! local runs and the JobManager so both read the same keys the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use rill_api::checkpoint::StateBackend;
use rill_api::{Configuration, Error};
use rill_checkpoint::CheckpointStorage;

use crate::coordinator::CheckpointSettings;
use crate::local::{load_restore_point, JobOptions};
use crate::restart::RestartStrategy;
use crate::RuntimeError;

/// Storage options (S3 endpoint and credentials) from the configuration.
pub fn storage_options(config: &Configuration) -> BTreeMap<String, String> {
    config
        .entries()
        .filter(|(k, _)| k.starts_with("s3."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Checkpointing, restore and restart settings from Flink's keys.
/// `execution.savepoint.path` is loaded here, so a bad location fails
/// before anything runs.
pub fn job_options(config: &Configuration, job_name: &str) -> Result<JobOptions, RuntimeError> {
    let storage = storage_options(config);
    let open = |key: &str| -> Result<Option<CheckpointStorage>, RuntimeError> {
        match config.get(key) {
            Some(uri) => Ok(Some(CheckpointStorage::open(uri, &storage)?)),
            None => Ok(None),
        }
    };
    let checkpoints = CheckpointSettings::from_config(config)?;
    let job_id = match config.get("$internal.pipeline.job-id") {
        Some(id) => id.to_string(),
        None => job_name.to_string(),
    };
    let (restore, restore_location) = match config.get("execution.savepoint.path") {
        Some(location) => {
            let (state, warnings) = load_restore_point(location, &job_id, &storage)?;
            for w in warnings {
                tracing::warn!("{w}");
                eprintln!("warning: {w}");
            }
            eprintln!(
                "restoring from checkpoint {} ({location})",
                state.checkpoint
            );
            (Some(Arc::new(state)), Some(location.to_string()))
        }
        None => (None, None),
    };
    Ok(JobOptions {
        job_id,
        restart: RestartStrategy::from_config(config, checkpoints.is_some())?,
        checkpoint_storage: open("state.checkpoints.dir")?,
        savepoint_storage: open("state.savepoints.dir")?,
        checkpoints,
        restore,
        restore_location,
        allow_non_restored_state: config
            .get_parsed("execution.savepoint.ignore-unclaimed-state")?
            .unwrap_or(false),
        state_backend: state_backend(config)?,
        observer: None,
    })
}

/// The state backend from `state.backend.type` (with its options).
pub fn state_backend(config: &Configuration) -> Result<StateBackend, RuntimeError> {
    StateBackend::from_config(
        config.get("state.backend.type").unwrap_or("hashmap"),
        config
            .get_parsed("state.backend.incremental")?
            .unwrap_or(false),
        config.get("state.backend.rocksdb.localdir"),
    )
    .map_err(|e| {
        let message = match e {
            rill_state::StateError::Backend(m) => m,
            other => other.to_string(),
        };
        RuntimeError::Api(Error::Config(message))
    })
}
