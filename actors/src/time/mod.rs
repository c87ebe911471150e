//! Event time: watermarks (and, with windows, timers).

pub mod generator;
pub mod watermarks;
