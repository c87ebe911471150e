//! weir-actors: subtask actors, the batched credit-based data plane, and job execution.
//!
//! See ARCHITECTURE.md at the repository root for the protocols and invariants.

pub mod async_io;
mod channel_state;
pub mod checkpoint;
pub mod config;
mod control;
mod deploy;
mod error;
pub mod flow;
pub mod gate;
mod graph;
mod job;
mod master;
mod metrics;
pub mod network;
pub mod operator;
mod partition;
pub mod plan;
pub mod restore;
pub mod sink;
mod stage;
mod subtask;
pub mod time;
pub mod window;

pub use async_io::{
    AsyncFunction, AsyncMode, AsyncOptions, AsyncResult, RetryStrategy, ASYNC_IN_FLIGHT_STATE,
};
pub use config::{CheckpointConfig, CheckpointMode, JobConfig, RestartStrategy};
pub use control::JobControl;
pub use error::JobError;
pub use graph::{JobGraph, NodeDescription, NodeId, Partitioning};
pub use metrics::{JobMetrics, JobReport, OperatorReport};
pub use operator::{
    CheckpointId, Context, Data, EventTime, FiredTimer, Key, KeyedContext, KeyedOperator, Operator,
    PreCommit, Sink, Source, SourcePoll, SubtaskInfo, TimeDomain, MAX_WATERMARK, MIN_WATERMARK,
    SOURCE_SPLITS_STATE,
};
pub use sink::file_sink::ExactlyOnceFileSink;
pub use sink::two_phase::RollingPolicy;
pub use time::generator::WatermarkStrategy;
