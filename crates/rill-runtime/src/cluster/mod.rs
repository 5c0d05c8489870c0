//! Running jobs across processes, the way Flink does: a JobManager that
//! schedules subtasks onto the slots of TaskManager processes, data exchanged
//! over TCP, and a REST API in front.

pub mod dispatch;
pub mod services;
