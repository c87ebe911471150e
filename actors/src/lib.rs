//! weir-actors: subtask actors, the batched credit-based data plane, and job execution.

pub mod operator;

pub use operator::{
    Context, Data, Key, KeyedOperator, Operator, Sink, Source, SourcePoll, SubtaskInfo,
};
