//! The built-in sources, operators and sinks of TOML topologies, all on the dynamic
//! [`Record`](crate::record::Record). They implement the runtime's `Source`,
//! `Operator`, `KeyedOperator` and `Sink` traits, so they can also be used from the
//! typed API.

pub mod bad;
pub mod decode;
pub mod operators;
pub mod sinks;
pub mod sources;
pub mod windows;

pub use bad::{BadRecordStats, BadRecords, DeadLetterFile, OnError};
pub use decode::{DecodeSpec, Decoder, FieldType, Format};
pub use operators::{
    AggKind, AggSpec, AggregateOperator, FilterOperator, FlatMapOperator, FlatMapSpec, MapOperator,
    MapSpec, SplitMode,
};
pub use sinks::{
    exactly_once_file_sink, ExactlyOnceFilesSpec, FileSink, NullSink, SinkFormat, StdoutSink,
};
pub use sources::{
    FileSource, FileSourceSpec, FileSplit, GeneratorSource, GeneratorSpec, GeneratorSplit,
    InputFile, StdinSource, StdinSpec,
};
pub use windows::{RecordWindowAgg, WindowAggSpec, WindowSide};
