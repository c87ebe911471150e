//! The job master: deploys the subtasks, collects their reports, supervises them and
//! drives checkpoints (`checkpoints.rs`).
//!
//! Supervision: the first failure of an attempt (a panic or error in user code, a
//! failed snapshot or commit, a lost actor, too many failed checkpoints) cancels every
//! subtask of that attempt and asks the [`RestartTracker`] what to do. To restart, the
//! master waits for the delay and for every cancelled subtask to be gone (its state
//! released), then deploys the whole graph again as the next attempt, restored from
//! the latest intact checkpoint (sources rewind to the positions it holds). Reports
//! carry their attempt, so a late message of a cancelled subtask changes nothing.
//!
//! End of a bounded job: without checkpoints it ends when every subtask has finished.
//! With checkpoints, subtasks whose chain finished stay until a final checkpoint,
//! taken at every subtask at once (nothing is in flight any more), has completed and
//! they have acted on its notification (sinks commit their last output); then they
//! stop and the job ends.
//!
//! Stop with a savepoint (`JobControl`): the master triggers a savepoint at the
//! sources, which emit nothing after its barrier; when it completes every subtask
//! acts on it (sinks commit) and stops, and the job ends with the savepoint's path.
//! If it cannot complete, the sources resume and the job goes on (a finished source
//! means the job is about to end with its final checkpoint anyway); a failure
//! while stopping restarts as usual and the stop is tried again.

mod checkpoints;

pub(crate) use checkpoints::{
    CheckpointAcked, CheckpointDeclined, CheckpointDriver, SnapshotTimes,
};

use crate::checkpoint::coordinator::CheckpointId;
use crate::checkpoint::restart::{Decision, RestartStrategy, RestartTracker};
use crate::config::StateBackendChoice;
use crate::deploy::Deployment;
use crate::error::{JobError, StageError};
use crate::graph::BuildEnv;
use crate::restore::Restore;
use crate::subtask::{Cancel, EndInput, SubtaskActor};
use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Context, Handler, Message};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use weir_state::CheckpointStorage;

/// How long cancelled subtasks may take to go before the next attempt starts anyway.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// A subtask opened its chain (restored its state).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskOpened {
    pub attempt: u32,
}

/// A subtask's chain has finished and its output has drained.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskFinished {
    pub attempt: u32,
}

/// A subtask acted on the final checkpoint's completion and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskDone {
    pub attempt: u32,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskFailed {
    pub attempt: u32,
    pub error: StageError,
}

/// A subtask actor was dropped: everything it held is released.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskGone;

/// Stop the job with a savepoint (from `JobControl`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopRequested;

/// A source has no more input: no further periodic checkpoint can cover the job.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SourceExhausted {
    pub attempt: u32,
}

/// What the master needs to deploy (and redeploy) the job.
pub(crate) struct Supervision {
    pub strategy: RestartStrategy,
    pub backend: StateBackendChoice,
    /// The job's local state directory; attempt `n` works in `attempt-<n>/` below it.
    pub state_dir: PathBuf,
    pub storage: Arc<dyn CheckpointStorage>,
    /// The checkpoint the first attempt starts from; also where a restart goes back
    /// to while this run has completed no checkpoint of its own.
    pub restore: Option<Restore>,
}

/// What a successful run reports besides the operators' counters.
#[derive(Debug, Clone)]
pub(crate) struct RunSummary {
    pub restarts: u32,
    pub checkpoints: u64,
    pub unaligned_checkpoints: u64,
    pub recoveries: Vec<Duration>,
    pub savepoint: Option<PathBuf>,
    pub checkpoint_durations: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    Running,
    /// Every chain has finished: waiting for the final checkpoint (`final_id` once
    /// triggered) and for every subtask to act on its completion.
    Finishing {
        final_id: Option<CheckpointId>,
    },
    /// Stopping with savepoint `savepoint`: waiting for it to complete and for every
    /// subtask to act on it.
    Stopping {
        savepoint: CheckpointId,
    },
    /// The attempt failed: the next one deploys once the delay has passed
    /// (`delay_passed`) and the cancelled subtasks are gone (or took too long).
    Restarting {
        delay_passed: bool,
        cancel_timed_out: bool,
    },
    Over,
}

pub(crate) struct JobMaster {
    deployment: Arc<Deployment>,
    arbiters: Vec<ArbiterHandle>,
    supervision: Supervision,
    restarts: RestartTracker,
    attempt: u32,
    subtasks: Vec<Addr<SubtaskActor>>,
    sources: Vec<usize>,
    lifecycle: Lifecycle,
    /// Reports of the current attempt.
    opened: usize,
    /// Source subtasks whose input is exhausted (checkpointed jobs).
    exhausted: usize,
    finished: usize,
    done: usize,
    /// Subtask actors of any attempt not yet dropped.
    alive: usize,
    failed_at: Option<Instant>,
    /// From each failure to every subtask of the next attempt running (restored).
    recoveries: Vec<Duration>,
    /// `JobControl::stop_with_savepoint` was called: stop at the next chance.
    stop_requested: bool,
    /// The savepoint the job stopped with.
    savepoint: Option<CheckpointId>,
    outcome: Option<oneshot::Sender<Result<RunSummary, JobError>>>,
    checkpoints: Option<CheckpointDriver>,
    started: Instant,
}

impl JobMaster {
    pub fn new(
        deployment: Arc<Deployment>,
        arbiters: Vec<ArbiterHandle>,
        supervision: Supervision,
        outcome: oneshot::Sender<Result<RunSummary, JobError>>,
        checkpoints: Option<CheckpointDriver>,
    ) -> Self {
        // Seeded by the job's name: a rerun of the same job backs off the same way.
        let seed = deployment
            .graph
            .config
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        JobMaster {
            restarts: RestartTracker::new(supervision.strategy.clone(), seed),
            deployment,
            arbiters,
            supervision,
            attempt: 0,
            subtasks: Vec::new(),
            sources: Vec::new(),
            lifecycle: Lifecycle::Running,
            opened: 0,
            exhausted: 0,
            finished: 0,
            done: 0,
            alive: 0,
            failed_at: None,
            recoveries: Vec::new(),
            stop_requested: false,
            savepoint: None,
            outcome: Some(outcome),
            checkpoints,
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn subtask_count(&self) -> usize {
        self.subtasks.len()
    }

    fn attempt_dir(&self, attempt: u32) -> PathBuf {
        self.supervision
            .state_dir
            .join(format!("attempt-{attempt}"))
    }

    /// Deploys attempt `self.attempt`, restored from `restore`.
    fn deploy(&mut self, restore: Option<Restore>, ctx: &mut Context<Self>) {
        let env = Arc::new(BuildEnv {
            backend: self.supervision.backend,
            state_dir: self.attempt_dir(self.attempt),
            storage: self.supervision.storage.clone(),
            restore,
            checkpointing: self.checkpoints.is_some(),
        });
        let deployed = self
            .deployment
            .deploy(env, &self.arbiters, &ctx.address(), self.attempt);
        self.alive += deployed.subtasks.len();
        self.subtasks = deployed.subtasks;
        self.sources = deployed.sources;
        self.lifecycle = Lifecycle::Running;
        self.opened = 0;
        self.exhausted = 0;
        self.finished = 0;
        self.done = 0;
    }

    fn end(&mut self, result: Result<(), JobError>) {
        if result.is_err() {
            for subtask in &self.subtasks {
                subtask.do_send(Cancel);
            }
        }
        self.lifecycle = Lifecycle::Over;
        if let Some(outcome) = self.outcome.take() {
            let summary = RunSummary {
                restarts: self.attempt,
                checkpoints: self.checkpoints.as_ref().map_or(0, |c| c.completed),
                unaligned_checkpoints: self
                    .checkpoints
                    .as_ref()
                    .map_or(0, |c| c.completed_unaligned),
                recoveries: std::mem::take(&mut self.recoveries),
                checkpoint_durations: self
                    .checkpoints
                    .as_mut()
                    .map(|c| std::mem::take(&mut c.durations))
                    .unwrap_or_default(),
                savepoint: self.savepoint.and_then(|id| {
                    let config = self.deployment.graph.config.checkpoint.as_ref()?;
                    Some(config.dir.join(weir_state::storage::checkpoint_dir(id)))
                }),
            };
            let _ = outcome.send(result.map(|()| summary));
        }
    }

    /// The current attempt failed: cancel it, then restart or give up.
    fn attempt_failed(&mut self, error: JobError, ctx: &mut Context<Self>) {
        if matches!(
            self.lifecycle,
            Lifecycle::Over | Lifecycle::Restarting { .. }
        ) {
            return;
        }
        for subtask in &self.subtasks {
            subtask.do_send(Cancel);
        }
        if let Some(driver) = self.checkpoints.as_mut() {
            let commands = driver.coordinator.restart();
            self.execute(commands, ctx);
        }
        let now = self.now_ms();
        match self.restarts.on_failure(now, error.to_string()) {
            Decision::GiveUp { failures } if failures.len() == 1 => self.end(Err(error)),
            Decision::GiveUp { failures } => {
                let list: Vec<String> = failures
                    .iter()
                    .enumerate()
                    .map(|(i, (at, cause))| format!("{}. at {at} ms: {cause}", i + 1))
                    .collect();
                tracing::error!(failures = failures.len(), "the restart strategy gave up");
                self.end(Err(JobError::Runtime(format!(
                    "the job failed {} times and the restart strategy gave up; the failures: {}",
                    failures.len(),
                    list.join(" | ")
                ))));
            }
            Decision::RestartAfter { delay_ms, attempt } => {
                tracing::warn!(error = %error, restart = attempt, delay_ms, "restarting the job from its latest checkpoint");
                self.failed_at = Some(Instant::now());
                self.lifecycle = Lifecycle::Restarting {
                    delay_passed: false,
                    cancel_timed_out: false,
                };
                self.schedule_restart(Duration::from_millis(delay_ms), ctx);
            }
        }
    }

    fn schedule_restart(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        let attempt = self.attempt;
        ctx.run_later(delay, move |master, ctx| {
            if let Lifecycle::Restarting { delay_passed, .. } = &mut master.lifecycle {
                if master.attempt == attempt {
                    *delay_passed = true;
                    master.redeploy_when_ready(ctx);
                }
            }
        });
        ctx.run_later(delay + CANCEL_TIMEOUT, move |master, ctx| {
            if let Lifecycle::Restarting {
                cancel_timed_out, ..
            } = &mut master.lifecycle
            {
                if master.attempt == attempt {
                    tracing::warn!(
                        lingering = master.alive,
                        "cancelled subtasks did not stop within {CANCEL_TIMEOUT:?}; restarting anyway"
                    );
                    *cancel_timed_out = true;
                    master.redeploy_when_ready(ctx);
                }
            }
        });
    }

    fn redeploy_when_ready(&mut self, ctx: &mut Context<Self>) {
        let Lifecycle::Restarting {
            delay_passed: true,
            cancel_timed_out,
        } = self.lifecycle
        else {
            return;
        };
        if self.alive > 0 && !cancel_timed_out {
            return;
        }
        let restore = match &self.checkpoints {
            Some(driver) => match driver.restore_point() {
                Ok(Some(metadata)) => Some(Restore {
                    metadata,
                    storage: self.supervision.storage.clone(),
                }),
                Ok(None) => self.supervision.restore.clone(),
                Err(e) => return self.end(Err(e)),
            },
            None => self.supervision.restore.clone(),
        };
        if self.alive == 0 {
            for old in 0..=self.attempt {
                let dir = self.attempt_dir(old);
                if dir.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the state of an earlier attempt");
                    }
                }
            }
        }
        self.attempt += 1;
        tracing::info!(
            attempt = self.attempt,
            checkpoint = restore.as_ref().map(|r| r.metadata.checkpoint_id),
            "deploying the job again"
        );
        self.deploy(restore, ctx);
    }
}

impl Actor for JobMaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let restore = self.supervision.restore.clone();
        self.deploy(restore, ctx);
        if let Some(driver) = &self.checkpoints {
            ctx.run_interval(driver.tick, |master, ctx| master.tick_checkpoints(ctx));
        }
    }
}

impl JobMaster {
    /// Triggers the stop-savepoint if the job is in a state to take one (otherwise
    /// the next tick tries again).
    pub(super) fn try_stop(&mut self, ctx: &mut Context<Self>) {
        if !self.stop_requested || self.lifecycle != Lifecycle::Running {
            return;
        }
        let now = self.now_ms();
        let Some(driver) = self.checkpoints.as_mut() else {
            self.stop_requested = false;
            self.end(Err(JobError::Runtime(
                "cannot stop with a savepoint: the job does not checkpoint (configure [checkpoint] / JobConfig::checkpoint)".into(),
            )));
            return;
        };
        let commands = driver.coordinator.trigger_savepoint(now);
        self.execute(commands, ctx);
    }
}

impl Handler<StopRequested> for JobMaster {
    type Result = ();
    fn handle(&mut self, _: StopRequested, ctx: &mut Context<Self>) {
        if !self.stop_requested {
            tracing::info!("stopping the job with a savepoint");
        }
        self.stop_requested = true;
        self.try_stop(ctx);
    }
}

impl Handler<SubtaskOpened> for JobMaster {
    type Result = ();
    fn handle(&mut self, opened: SubtaskOpened, _: &mut Context<Self>) {
        if opened.attempt != self.attempt {
            return;
        }
        self.opened += 1;
        if self.opened == self.subtask_count() {
            if let Some(failed_at) = self.failed_at.take() {
                let recovery = failed_at.elapsed();
                self.recoveries.push(recovery);
                tracing::info!(
                    attempt = self.attempt,
                    recovery_ms = recovery.as_secs_f64() * 1e3,
                    "the job runs again"
                );
            }
        }
    }
}

impl Handler<SourceExhausted> for JobMaster {
    type Result = ();
    fn handle(&mut self, exhausted: SourceExhausted, _: &mut Context<Self>) {
        if exhausted.attempt != self.attempt {
            return;
        }
        // Exhausted sources still carry barriers; once all are, the input ends.
        self.exhausted += 1;
        if self.exhausted == self.sources.len() {
            for &source in &self.sources {
                self.subtasks[source].do_send(EndInput);
            }
        }
    }
}

impl Handler<SubtaskFinished> for JobMaster {
    type Result = ();
    fn handle(&mut self, finished: SubtaskFinished, ctx: &mut Context<Self>) {
        if finished.attempt != self.attempt
            || !matches!(
                self.lifecycle,
                Lifecycle::Running | Lifecycle::Stopping { .. }
            )
        {
            return;
        }
        self.finished += 1;
        self.finish_if_all_finished(ctx);
    }
}

impl JobMaster {
    /// Every subtask of the attempt has finished: end the job, or take the final
    /// checkpoint first.
    pub(super) fn finish_if_all_finished(&mut self, ctx: &mut Context<Self>) {
        if self.finished < self.subtask_count() || self.lifecycle != Lifecycle::Running {
            return;
        }
        let now = self.now_ms();
        match self.checkpoints.as_mut() {
            None => self.end(Ok(())),
            Some(driver) => {
                self.lifecycle = Lifecycle::Finishing { final_id: None };
                let mut commands = driver.coordinator.abort_all();
                commands.extend(driver.coordinator.request_final(now));
                self.execute(commands, ctx);
            }
        }
    }
}

impl Handler<SubtaskDone> for JobMaster {
    type Result = ();
    fn handle(&mut self, done: SubtaskDone, _: &mut Context<Self>) {
        if done.attempt != self.attempt
            || !matches!(
                self.lifecycle,
                Lifecycle::Finishing { .. } | Lifecycle::Stopping { .. }
            )
        {
            return;
        }
        self.done += 1;
        if self.done == self.subtask_count() {
            self.end(Ok(()));
        }
    }
}

impl Handler<SubtaskFailed> for JobMaster {
    type Result = ();
    fn handle(&mut self, failed: SubtaskFailed, ctx: &mut Context<Self>) {
        if failed.attempt != self.attempt {
            return;
        }
        let error = failed.error;
        if !matches!(
            self.lifecycle,
            Lifecycle::Over | Lifecycle::Restarting { .. }
        ) {
            tracing::error!(operator = %error.operator, subtask = error.subtask, cause = %error.cause, attempt = self.attempt, "subtask failed");
        }
        self.attempt_failed(error.into(), ctx);
    }
}

impl Handler<SubtaskGone> for JobMaster {
    type Result = ();
    fn handle(&mut self, _: SubtaskGone, ctx: &mut Context<Self>) {
        self.alive -= 1;
        self.redeploy_when_ready(ctx);
    }
}
