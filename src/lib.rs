//! weir: a stream-processing runtime with Flink-grade fault tolerance in one process.
//!
//! Three ways in: TOML topologies (`weir run job.toml`), scenario replay runs, and
//! this library's typed API ([`StreamJob`]). See ARCHITECTURE.md for the design.

pub mod api;

pub use api::{
    DataStream, KeyedStream, StreamJob, UnionStream, WindowShape, WindowedStream, Windows,
};
/// Job settings (`JobConfig`, the state backend choice).
pub use weir_actors::config;
/// Windows: functions, results and the window arithmetic.
pub use weir_actors::window;
pub use weir_actors::window::{AggregateFunction, Window, Windowed};
pub use weir_actors::{
    AsyncFunction, AsyncMode, AsyncOptions, AsyncResult, CheckpointConfig, CheckpointId,
    CheckpointMode, Context, Data, EventTime, ExactlyOnceFileSink, FiredTimer, JobConfig,
    JobControl, JobError, JobMetrics, JobReport, Key, KeyedContext, KeyedOperator, NodeDescription,
    Operator, OperatorReport, PreCommit, RestartStrategy, RetryStrategy, Sink, Source, SourcePoll,
    SubtaskInfo, TimeDomain, WatermarkStrategy, MAX_WATERMARK, MIN_WATERMARK,
};
/// Keyed and operator state: descriptors, handles, backends (re-exported `weir-state`).
pub use weir_state as state;
pub mod builtins;
pub mod checkpoint_report;
pub mod cli;
pub mod expr;
pub mod record;
pub mod scenario;
pub mod topology;

/// The README's Rust examples compile and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
