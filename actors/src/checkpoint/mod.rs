//! Checkpointing protocols, each an I/O-free state machine (see each module's top
//! comment). The subtask and job-master actors drive them.

pub mod barrier;
pub mod coordinator;
pub mod restart;
