//! Live per-operator counters, shared between subtasks (summed with relaxed atomic
//! adds once per batch) and whoever watches the job (progress line, reports).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct OperatorCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
}

impl OperatorCounters {
    pub(crate) fn add_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Counts of one operator over all its subtasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorReport {
    pub name: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
}

/// The outcome of a finished job.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub operators: Vec<OperatorReport>,
    pub elapsed: Duration,
    /// Times the supervisor restarted the job after a failure.
    pub restarts: u32,
    /// Checkpoints completed in this run (the final one included).
    pub checkpoints: u64,
    /// Of those, the ones taken unaligned by some subtask (unaligned mode, or an
    /// alignment that timed out).
    pub unaligned_checkpoints: u64,
    /// Per restart: from the failure to every subtask running again (restart delay
    /// and state restore included).
    pub recoveries: Vec<Duration>,
    /// Each completed checkpoint's duration, trigger to durable metadata, in order.
    pub checkpoint_durations: Vec<Duration>,
    /// The savepoint the job stopped with (`JobControl::stop_with_savepoint`).
    pub savepoint: Option<std::path::PathBuf>,
}

impl JobReport {
    /// The report of the operator with this name.
    pub fn operator(&self, name: &str) -> Option<&OperatorReport> {
        self.operators.iter().find(|o| o.name == name)
    }
}

/// The live counters of a job; empty until the job starts.
#[derive(Debug, Default)]
pub struct JobMetrics {
    operators: OnceLock<Vec<(String, u32, Arc<OperatorCounters>)>>,
}

impl JobMetrics {
    pub(crate) fn install(&self, operators: Vec<(String, u32, Arc<OperatorCounters>)>) {
        // A graph runs once; a second install would be a runtime bug, so keep the first.
        let _ = self.operators.set(operators);
    }

    /// Current totals per operator, in graph order.
    pub fn snapshot(&self) -> Vec<OperatorReport> {
        self.operators
            .get()
            .map(|ops| {
                ops.iter()
                    .map(|(name, parallelism, c)| OperatorReport {
                        name: name.clone(),
                        parallelism: *parallelism,
                        records_in: c.records_in.load(Ordering::Relaxed),
                        records_out: c.records_out.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
