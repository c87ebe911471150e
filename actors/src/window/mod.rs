//! Windows over keyed streams, with Flink's DataStream semantics: tumbling, sliding
//! and session windows in event (or processing) time, incremental aggregation or a
//! full-window function, allowed lateness and a side output for late records.
//!
//! The window arithmetic is I/O-free and property-tested: [`slicing`] (sliding and
//! tumbling windows as shared slices, so a record updates one pane however many
//! windows contain it) and [`session`] (merging sessions). [`function`] says what a
//! pane holds; [`operator`] is the keyed operator that stores panes in keyed state
//! and fires windows on timers, so windows are checkpointed, restored and rescaled
//! with the rest of the keyed state and need nothing of their own.

pub mod function;
pub mod operator;
pub mod session;
pub mod slicing;

pub use function::{
    AggregateFunction, Aggregating, Avg, Collecting, Count, Extreme, Sum, Window, WindowFunction,
    Windowed,
};
pub use operator::{WindowKind, WindowOperator, WindowOutput, WindowTime};
pub use session::{Merge, Session, Sessions};
pub use slicing::Slicing;
