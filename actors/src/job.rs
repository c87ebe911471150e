//! Running a job: one actix system on a thread of its own, one arbiter per worker,
//! and a job master that deploys the subtasks (see `deploy.rs`), supervises them
//! (restarts from the latest checkpoint) and drives checkpoints.

use crate::config::JobConfig;
use crate::control::JobControl;
use crate::deploy::Deployment;
use crate::error::JobError;
use crate::graph::JobGraph;
use crate::master::{CheckpointDriver, JobMaster, RunSummary, Supervision};
use crate::metrics::{JobReport, OperatorCounters};
use actix::{Actor, Arbiter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use weir_state::{CheckpointStorage, LocalCheckpointStorage};

/// Runs a job graph to completion. Blocks; safe to call from any thread, including
/// one that already runs an async runtime (the job gets a thread of its own).
pub(crate) fn execute(graph: JobGraph, control: JobControl) -> Result<JobReport, JobError> {
    let plan = graph.plan()?;
    let counters: Vec<Arc<OperatorCounters>> = graph.nodes.iter().map(|_| Arc::default()).collect();
    graph.metrics.install(
        graph
            .nodes
            .iter()
            .zip(&counters)
            .enumerate()
            .map(|(i, (node, c))| (node.name.clone(), plan.parallelism[i], c.clone()))
            .collect(),
    );
    let workers = graph.config.resolved_workers();
    tracing::info!(job = %graph.config.name, subtasks = plan.vertices.iter().map(|v| v.parallelism).sum::<u32>(), workers, "starting job");
    let metrics = graph.metrics.clone();
    let state = StateDir::for_job(&graph.config)?;
    // Snapshots go to the checkpoint storage; without checkpoints, backends still
    // need a storage (to restore from, later), so they get one in the state dir.
    let storage_root = graph
        .config
        .checkpoint
        .as_ref()
        .map_or_else(|| state.path.join("checkpoints"), |c| c.dir.clone());
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalCheckpointStorage::new(&storage_root).map_err(|e| {
            JobError::Runtime(format!(
                "cannot prepare the checkpoint storage {}: {e}",
                storage_root.display()
            ))
        })?);
    let operators: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    let restore = crate::restore::select(&graph.config, &storage, &operators)?;
    let checkpoints = match &graph.config.checkpoint {
        None => None,
        Some(config) => {
            let subtasks = plan.vertices.iter().map(|v| v.parallelism as usize).sum();
            let operators = graph
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        n.name.clone(),
                        (plan.parallelism[i], graph.config.max_parallelism),
                    )
                })
                .collect();
            Some(CheckpointDriver::new(
                config,
                storage.clone(),
                subtasks,
                operators,
                // A restart may go back to a resumed checkpoint of this storage; one
                // restored from elsewhere is the supervisor's fallback instead.
                restore
                    .as_ref()
                    .filter(|_| graph.config.restore_from.is_none())
                    .map(|r| r.metadata.checkpoint_id),
            )?)
        }
    };
    let supervision = Supervision {
        strategy: graph.config.resolved_restart_strategy(),
        backend: graph.config.state_backend,
        state_dir: state.path.clone(),
        storage,
        restore,
    };
    let deployment = Arc::new(Deployment {
        graph,
        plan,
        counters,
    });
    let started = Instant::now();
    let summary = std::thread::Builder::new()
        .name("weir-job".into())
        .spawn(move || run_on_system(deployment, workers, supervision, checkpoints, control))
        .map_err(|e| JobError::Runtime(format!("cannot start the job thread: {e}")))?
        .join()
        .map_err(|_| JobError::Runtime("the job thread panicked".into()))??;
    Ok(JobReport {
        operators: metrics.snapshot(),
        elapsed: started.elapsed(),
        restarts: summary.restarts,
        checkpoints: summary.checkpoints,
        unaligned_checkpoints: summary.unaligned_checkpoints,
        recoveries: summary.recoveries,
        savepoint: summary.savepoint,
        checkpoint_durations: summary.checkpoint_durations,
    })
}

/// The job's local state directory; a temporary one is removed when the job ends.
struct StateDir {
    path: PathBuf,
    temporary: bool,
}

impl StateDir {
    fn for_job(config: &JobConfig) -> Result<Self, JobError> {
        let (path, temporary) = match &config.state_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let unique = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let name: String = config
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                (
                    std::env::temp_dir()
                        .join(format!("weir-{name}-{}-{unique}", std::process::id())),
                    true,
                )
            }
        };
        std::fs::create_dir_all(&path).map_err(|e| {
            JobError::Runtime(format!(
                "cannot create the state directory {}: {e}",
                path.display()
            ))
        })?;
        Ok(StateDir { path, temporary })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the temporary state directory");
            }
        }
    }
}

fn run_on_system(
    deployment: Arc<Deployment>,
    workers: usize,
    supervision: Supervision,
    checkpoints: Option<CheckpointDriver>,
    control: JobControl,
) -> Result<RunSummary, JobError> {
    let system = actix::System::new();
    let (result, arbiters) = system.block_on(async move {
        let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
        let handles = arbiters.iter().map(|a| a.handle()).collect();
        let (outcome, finished) = oneshot::channel();
        let master = JobMaster::new(deployment, handles, supervision, outcome, checkpoints).start();
        control.attach(master);
        let result = finished
            .await
            .unwrap_or_else(|_| Err(JobError::Runtime("the job master stopped".into())));
        (result, arbiters)
    });
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    result
}
