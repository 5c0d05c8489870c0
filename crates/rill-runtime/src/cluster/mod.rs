//! Running jobs across processes, the way Flink does: a JobManager that
//! schedules subtasks onto the slots of TaskManager processes, data exchanged
//! over TCP, and a REST API in front.

pub mod dispatch;
pub mod history;
pub mod jobmanager;
pub mod metrics;
pub(crate) mod network;
pub mod rest;
pub(crate) mod rpc;
pub mod services;
pub mod taskmanager;
