//! Errors a job run reports to its caller.

use crate::operator::SubtaskInfo;
use std::any::Any;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job graph cannot run as built; the message names the node and the fix.
    #[error("invalid job graph: {0}")]
    InvalidGraph(String),
    /// User code returned an error or panicked.
    #[error("operator {operator} (subtask {subtask}) failed: {cause}")]
    OperatorFailed {
        operator: String,
        subtask: u32,
        cause: String,
    },
    /// The checkpoint to start from is unusable (not a valid checkpoint, or it holds
    /// state of operators the job lacks); the message names the path and the fix.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The runtime itself failed (a lost actor, a thread that could not start).
    #[error("runtime failure: {0}")]
    Runtime(String),
}

/// A failure inside a subtask, attributed to the operator whose code failed.
#[derive(Debug, Clone)]
pub(crate) struct StageError {
    pub operator: String,
    pub subtask: u32,
    pub cause: String,
}

impl StageError {
    /// A failure of the operator subtask `info` runs.
    pub fn of(info: &SubtaskInfo, cause: String) -> Self {
        StageError {
            operator: info.operator.to_string(),
            subtask: info.index,
            cause,
        }
    }
}

impl From<StageError> for JobError {
    fn from(e: StageError) -> Self {
        JobError::OperatorFailed {
            operator: e.operator,
            subtask: e.subtask,
            cause: e.cause,
        }
    }
}

/// The message of a panic payload, as `panic!` formatted it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic with a non-string payload".to_string()
    }
}
