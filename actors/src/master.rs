//! The job master: collects the subtasks' reports, ends the job when all finished or
//! one failed, and drives checkpoints.
//!
//! Checkpointing is the [`Coordinator`] state machine with this actor as its shell: a
//! timer ticks it; `Trigger` goes to every source subtask; acknowledgements carry
//! each subtask's state handles; `WriteMetadata` makes the checkpoint durable
//! through the [`CompletedCheckpointStore`] (`_metadata` written last, retention);
//! only then does notify-complete reach every subtask.

use crate::checkpoint::coordinator::{
    AbortReason, CheckpointId, Command, Coordinator, CoordinatorConfig,
};
use crate::config::CheckpointConfig;
use crate::error::{JobError, StageError};
use crate::subtask::{Cancel, NotifyCheckpoint, SubtaskActor, TriggerCheckpoint};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use weir_state::checkpoints::{list_checkpoint_ids, CompletedCheckpointStore};
use weir_state::handle::{CheckpointMetadata, OperatorSnapshot, SubtaskSnapshot};
use weir_state::CheckpointStorage;

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskFinished;

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SubtaskFailed(pub StageError);

/// A subtask's snapshot of checkpoint `id`: (operator, subtask index, handles).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CheckpointAcked {
    pub id: CheckpointId,
    pub subtask: usize,
    pub snapshots: Vec<(String, u32, SubtaskSnapshot)>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CheckpointDeclined {
    pub id: CheckpointId,
    pub subtask: usize,
    pub reason: String,
    /// Declined because the subtask has finished: not a failure.
    pub finished: bool,
}

/// A source has no more input: no further checkpoint can cover the whole job.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SourceExhausted;

/// The deployed subtasks, by number; `sources` are the numbers of source subtasks.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deployed {
    pub subtasks: Vec<Addr<SubtaskActor>>,
    pub sources: Vec<usize>,
}

/// One subtask's acknowledgement, as the coordinator collects it.
pub(crate) struct Ack {
    id: CheckpointId,
    snapshots: Vec<(String, u32, SubtaskSnapshot)>,
}

/// The checkpointing half of the master.
pub(crate) struct CheckpointDriver {
    coordinator: Coordinator<Ack>,
    store: CompletedCheckpointStore,
    /// Operator name → (parallelism, max parallelism), for the metadata.
    operators: BTreeMap<String, (u32, u32)>,
    tick: Duration,
    triggered_at: HashMap<CheckpointId, Instant>,
}

impl CheckpointDriver {
    pub fn new(
        config: &CheckpointConfig,
        storage: std::sync::Arc<dyn CheckpointStorage>,
        subtasks: usize,
        operators: BTreeMap<String, (u32, u32)>,
    ) -> Result<Self, JobError> {
        let fail = |e: weir_state::StateError| {
            JobError::Runtime(format!("checkpoint storage {}: {e}", config.dir.display()))
        };
        // Ids stay monotonic across runs: continue after every id ever used here.
        let next_id = list_checkpoint_ids(storage.as_ref())
            .map_err(fail)?
            .into_iter()
            .max()
            .unwrap_or(0)
            + 1;
        let store = CompletedCheckpointStore::open(storage, config.retain).map_err(fail)?;
        let millis = |d: Duration| d.as_millis() as u64;
        let coordinator = Coordinator::new(
            CoordinatorConfig {
                interval_ms: Some(millis(config.interval)),
                timeout_ms: millis(config.timeout),
                max_concurrent: config.max_concurrent,
                min_pause_ms: millis(config.min_pause),
                tolerable_failures: config.tolerable_failures,
            },
            subtasks,
            next_id,
        );
        let tick =
            (config.interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        Ok(CheckpointDriver {
            coordinator,
            store,
            operators,
            tick,
            triggered_at: HashMap::new(),
        })
    }
}

/// Collects subtask reports; ends the job when all finished or one failed.
pub(crate) struct JobMaster {
    subtasks: Vec<Addr<SubtaskActor>>,
    sources: Vec<usize>,
    running: usize,
    outcome: Option<oneshot::Sender<Result<(), JobError>>>,
    checkpoints: Option<CheckpointDriver>,
    started: Instant,
}

impl JobMaster {
    pub fn new(
        outcome: oneshot::Sender<Result<(), JobError>>,
        checkpoints: Option<CheckpointDriver>,
    ) -> Self {
        JobMaster {
            subtasks: Vec::new(),
            sources: Vec::new(),
            running: 0,
            outcome: Some(outcome),
            checkpoints,
            started: Instant::now(),
        }
    }

    fn end(&mut self, result: Result<(), JobError>) {
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(result);
        }
    }

    fn fail(&mut self, error: JobError) {
        if self.outcome.is_none() {
            return;
        }
        for subtask in &self.subtasks {
            subtask.do_send(Cancel);
        }
        self.end(Err(error));
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Carries out the coordinator's commands (and those they lead to).
    fn execute(&mut self, commands: Vec<Command<Ack>>) {
        let mut queue: std::collections::VecDeque<Command<Ack>> = commands.into();
        while let Some(command) = queue.pop_front() {
            let now = self.now_ms();
            let Some(driver) = self.checkpoints.as_mut() else {
                return;
            };
            match command {
                Command::Trigger { id, .. } => {
                    driver.triggered_at.insert(id, Instant::now());
                    for &source in &self.sources {
                        self.subtasks[source].do_send(TriggerCheckpoint { id });
                    }
                }
                Command::WriteMetadata { id, acks } => {
                    let mut metadata = CheckpointMetadata::new(id);
                    for (operator, index, snapshot) in acks.into_iter().flat_map(|a| a.snapshots) {
                        let (parallelism, max_parallelism) = driver.operators[&operator];
                        let entry = metadata.operators.entry(operator).or_insert_with(|| {
                            OperatorSnapshot {
                                max_parallelism,
                                subtasks: vec![SubtaskSnapshot::default(); parallelism as usize],
                            }
                        });
                        entry.subtasks[index as usize] = snapshot;
                    }
                    let bytes: u64 = metadata.files().iter().map(|f| f.size).sum();
                    let next = match driver.store.add(&metadata) {
                        Ok(_) => {
                            let took = driver.triggered_at.remove(&id).map(|t| t.elapsed());
                            tracing::info!(
                                checkpoint = id,
                                duration_ms = took.map_or(0, |d| d.as_millis() as u64),
                                state_bytes = bytes,
                                "checkpoint complete"
                            );
                            driver.coordinator.metadata_written(id, now)
                        }
                        Err(e) => driver.coordinator.metadata_failed(id, e.to_string()),
                    };
                    queue.extend(next);
                }
                Command::NotifyComplete { id } => {
                    for subtask in &self.subtasks {
                        subtask.do_send(NotifyCheckpoint {
                            id,
                            completed: true,
                        });
                    }
                }
                Command::NotifyAborted { id, reason } => {
                    driver.triggered_at.remove(&id);
                    tracing::warn!(checkpoint = id, ?reason, "checkpoint aborted");
                    // It will never complete: its private directory goes (acks that
                    // arrive later are discarded on arrival).
                    if let Err(e) = driver.store.discard_uncompleted(id, &[]) {
                        tracing::warn!(checkpoint = id, error = %e, "could not clean up an aborted checkpoint");
                    }
                    for subtask in &self.subtasks {
                        subtask.do_send(NotifyCheckpoint {
                            id,
                            completed: false,
                        });
                    }
                }
                Command::Discard { acks } => {
                    for ack in acks {
                        let files: Vec<_> = ack
                            .snapshots
                            .iter()
                            .flat_map(|(_, _, s)| s.files())
                            .cloned()
                            .collect();
                        if let Err(e) = driver.store.discard_uncompleted(ack.id, &files) {
                            tracing::warn!(checkpoint = ack.id, error = %e, "could not clean up an aborted checkpoint");
                        }
                    }
                }
                Command::FailJob { reason } => {
                    tracing::error!(%reason, "checkpointing failed");
                    self.fail(JobError::Runtime(format!("checkpointing failed: {reason}")));
                    return;
                }
            }
        }
    }
}

impl Actor for JobMaster {
    type Context = Context<Self>;
}

impl Handler<Deployed> for JobMaster {
    type Result = ();
    fn handle(&mut self, deployed: Deployed, ctx: &mut Context<Self>) {
        self.running += deployed.subtasks.len();
        self.subtasks = deployed.subtasks;
        self.sources = deployed.sources;
        if let Some(driver) = &self.checkpoints {
            ctx.run_interval(driver.tick, |master, _| {
                let now = master.now_ms();
                if let Some(driver) = master.checkpoints.as_mut() {
                    let commands = driver.coordinator.tick(now);
                    master.execute(commands);
                }
            });
        }
    }
}

impl Handler<SourceExhausted> for JobMaster {
    type Result = ();
    fn handle(&mut self, _: SourceExhausted, _: &mut Context<Self>) {
        if let Some(driver) = self.checkpoints.as_mut() {
            // A finished source cannot carry barriers: no checkpoint could complete.
            driver.coordinator.stop_triggering();
        }
    }
}

impl Handler<SubtaskFinished> for JobMaster {
    type Result = ();
    fn handle(&mut self, _: SubtaskFinished, _: &mut Context<Self>) {
        self.running -= 1;
        if self.running == 0 {
            if let Some(driver) = self.checkpoints.as_mut() {
                let commands = driver.coordinator.abort_all();
                self.execute(commands);
            }
            self.end(Ok(()));
        }
    }
}

impl Handler<SubtaskFailed> for JobMaster {
    type Result = ();
    fn handle(&mut self, failed: SubtaskFailed, _: &mut Context<Self>) {
        if self.outcome.is_none() {
            return;
        }
        tracing::error!(operator = %failed.0.operator, subtask = failed.0.subtask, cause = %failed.0.cause, "subtask failed");
        self.fail(failed.0.into());
    }
}

impl Handler<CheckpointAcked> for JobMaster {
    type Result = ();
    fn handle(&mut self, acked: CheckpointAcked, _: &mut Context<Self>) {
        let Some(driver) = self.checkpoints.as_mut() else {
            return;
        };
        let ack = Ack {
            id: acked.id,
            snapshots: acked.snapshots,
        };
        let commands = driver.coordinator.acknowledge(acked.id, acked.subtask, ack);
        self.execute(commands);
    }
}

impl Handler<CheckpointDeclined> for JobMaster {
    type Result = ();
    fn handle(&mut self, declined: CheckpointDeclined, _: &mut Context<Self>) {
        let Some(driver) = self.checkpoints.as_mut() else {
            return;
        };
        let commands = if declined.finished {
            driver.coordinator.stop_triggering();
            driver
                .coordinator
                .abandon(declined.id, AbortReason::TasksFinished)
        } else {
            driver
                .coordinator
                .decline(declined.id, declined.subtask, declined.reason)
        };
        self.execute(commands);
    }
}
