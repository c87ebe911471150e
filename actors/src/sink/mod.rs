//! Sinks with delivery guarantees.

pub mod part_files;
pub mod two_phase;
