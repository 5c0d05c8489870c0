//! Windows: assigners, triggers, window functions and the window operator.
//!
//! Semantics follow Flink's `WindowOperator` exactly, because users port
//! Flink jobs and expect the same numbers:
//! * an element is assigned to windows (tumbling and sliding windows aligned
//!   to epoch 0, session windows merged when they touch or overlap);
//! * a window is *late* when `max_timestamp + allowed_lateness <= watermark`;
//!   an element dropped for every one of its windows goes to the late-data
//!   side output;
//! * a trigger decides when a window fires and/or purges; the default event
//!   time trigger fires when the watermark passes the window's end and again
//!   for every late element within the allowed lateness;
//! * window state is dropped by a cleanup timer at
//!   `max_timestamp + allowed_lateness`.

mod assigner;
mod function;
mod operator;
mod trigger;

pub use assigner::{
    EventTimeSessionWindows, GlobalWindow, GlobalWindows, SlidingEventTimeWindows,
    SlidingProcessingTimeWindows, TimeWindow, TumblingEventTimeWindows,
    TumblingProcessingTimeWindows, Window, WindowAssigner,
};
pub use function::{AggregateWindow, ProcessWindow, ReduceWindow, WindowFunction, WindowOutput};
pub use operator::WindowOperator;
pub use trigger::{
    ContinuousEventTimeTrigger, CountTrigger, DeltaTrigger, EventTimeTrigger, NeverTrigger,
    ProcessingTimeTrigger, PurgingTrigger, Trigger, TriggerContext, TriggerResult,
};
