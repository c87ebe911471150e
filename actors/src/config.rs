//! Job-wide settings, every one of them a bound or a default that a user can change.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::checkpoint::barrier::CheckpointMode;
pub use crate::checkpoint::restart::RestartStrategy;
use std::time::Duration;
use weir_state::key_group::DEFAULT_MAX_PARALLELISM;

/// Settings of one job run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Shown in logs and reports.
    pub name: String,
    /// Parallelism of every operator that does not set its own.
    pub parallelism: u32,
    /// Number of key groups: the upper bound for any operator's parallelism, now and
    /// after rescaling.
    pub max_parallelism: u32,
    /// Worker threads (actix arbiters); subtask `j` of every operator runs on worker
    /// `j % workers`. 0 means one per core.
    pub workers: usize,
    /// Records per batch on the network between subtasks.
    pub batch_size: usize,
    /// Credits per channel: batches a sender may have in flight to one receiver.
    pub channel_capacity: usize,
    /// How long a partly filled batch may wait before it is sent anyway.
    pub linger: Duration,
    /// Where keyed state lives.
    pub state_backend: StateBackendChoice,
    /// Local working directory for state (RocksDB databases); a temporary directory,
    /// removed when the job ends, if not set.
    pub state_dir: Option<PathBuf>,
    /// Periodic checkpoints; none when `None`.
    pub checkpoint: Option<CheckpointConfig>,
    /// Start from this checkpoint directory (`…/chk-<id>`, in any storage) instead of
    /// the latest one in the checkpoint dir: at any parallelism up to
    /// `max_parallelism` (which must match the checkpoint's) and with either state
    /// backend.
    pub restore_from: Option<PathBuf>,
    /// Start from a checkpoint even if it holds state of operators this job does not
    /// have (that state is dropped); otherwise such a restore is refused.
    pub allow_non_restored_state: bool,
    /// What the supervisor does when a subtask fails. `None`: restart with
    /// exponential backoff when the job checkpoints (from the latest checkpoint),
    /// fail at once when it does not (a restart would replay the input from the start).
    pub restart: Option<RestartStrategy>,
}

/// How and where a job checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// Checkpoint storage: `DIR/chk-<id>/`, `DIR/shared/`.
    pub dir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    pub min_pause: Duration,
    pub max_concurrent: usize,
    pub tolerable_failures: u32,
    pub mode: CheckpointMode,
    /// Completed checkpoints kept.
    pub retain: usize,
    /// Start from the latest valid checkpoint in `dir`, if there is one.
    pub resume: bool,
}

impl CheckpointConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 0,
            mode: CheckpointMode::Aligned,
            retain: 3,
            resume: true,
        }
    }
}

/// The keyed state backend of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendChoice {
    /// Objects on the heap: fastest; state must fit in memory.
    #[default]
    Memory,
    /// One RocksDB per subtask on local disk: state can exceed memory.
    RocksDb,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "weir-job".to_string(),
            parallelism: default_workers() as u32,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            workers: 0,
            batch_size: 1024,
            channel_capacity: 4,
            linger: Duration::from_millis(1),
            state_backend: StateBackendChoice::Memory,
            state_dir: None,
            checkpoint: None,
            restore_from: None,
            allow_non_restored_state: false,
            restart: None,
        }
    }
}

impl JobConfig {
    /// The number of worker threads this config asks for, with 0 resolved to the cores.
    pub fn resolved_workers(&self) -> usize {
        if self.workers == 0 {
            default_workers()
        } else {
            self.workers
        }
    }

    /// The restart strategy in force: the configured one, else the default for
    /// whether the job checkpoints.
    pub fn resolved_restart_strategy(&self) -> RestartStrategy {
        match (&self.restart, &self.checkpoint) {
            (Some(strategy), _) => strategy.clone(),
            (None, Some(_)) => RestartStrategy::default(),
            (None, None) => RestartStrategy::None,
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
