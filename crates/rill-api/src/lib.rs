//! The DataStream API of Rill.
//!
//! A job is an ordinary Rust function that receives a [`StreamEnv`] and wires
//! sources, transformations and sinks together. The environment records a
//! [`JobGraph`](graph::JobGraph): typed builders for every operator, erased
//! behind small traits so the runtime can plan chains, parallel subtasks and
//! exchanges without knowing record types. Every process of a cluster rebuilds
//! the same graph from the same catalogue entry, so no closure ever crosses the
//! wire.
//!
//! The pieces, from the bottom up:
//! * [`element`]: records, watermarks and the [`Output`] interface that
//!   chained operators push into;
//! * [`time`]: timestamps and watermark strategies;
//! * [`function`]: map/filter/flat_map and the [`ProcessFunction`] trait;
//! * [`keyed`]: keyed process functions with state and timers;
//! * [`window`]: assigners, triggers and the window operator;
//! * [`broadcast`]: connecting a stream with a broadcast stream;
//! * [`exec`]: typed building blocks of running subtasks (channels, watermark
//!   valves, exchanges) used by the runtime;
//! * [`stream`]: the fluent API ([`DataStream`], [`KeyedStream`], …);
//! * [`catalog`]: named jobs compiled into a binary.

pub mod broadcast;
pub mod catalog;
pub mod checkpoint;
pub mod config;
pub mod element;
pub mod error;
pub mod exec;
pub mod function;
pub mod graph;
pub mod keyed;
pub mod sink;
pub mod source;
pub mod stream;
pub mod time;
pub mod window;
pub mod wire;

pub use catalog::{Catalog, JobArgs, JobEntry};
pub use config::Configuration;
pub use element::{Data, Key, Output, Signal};
pub use error::{Error, Result};
pub use function::{Context, OutputTag, ProcessFunction};
pub use keyed::{KeyedContext, KeyedProcessFunction, TimeDomain};
pub use rill_state::{
    AggregateFunction, AggregatingState, ListState, MapState, ReducingState, StateTtl, ValueState,
};
pub use sink::{Sink, SinkWriter};
pub use source::{Source, SourceFactory, SourceOutput, SourcePoll};
pub use stream::{DataStream, KeyedStream, StreamEnv, WindowedStream};
pub use time::{Timestamp, WatermarkStrategy, MAX_WATERMARK, MIN_WATERMARK};
