//! The checkpointing half of the job master.
//!
//! Checkpointing is the [`Coordinator`] state machine with the master as its shell: a
//! timer ticks it; `Trigger` goes to every source subtask (the final checkpoint of a
//! bounded job goes to every subtask at once: nothing is in flight any more);
//! acknowledgements carry each subtask's state handles; `WriteMetadata` makes the
//! checkpoint durable through the [`CompletedCheckpointStore`] (`_metadata` written
//! last, retention); only then does notify-complete reach every subtask.

use super::{JobMaster, Lifecycle};
use crate::checkpoint::coordinator::{
    AbortReason, Barrier, CheckpointId, CheckpointType, Command, Coordinator, CoordinatorConfig,
    SnapshotKind,
};
use crate::config::{CheckpointConfig, CheckpointMode};
use crate::error::JobError;
use crate::subtask::{
    CompleteAndStop, FinalCheckpoint, NotifyCheckpoint, ResumeSource, TriggerCheckpoint,
};
use actix::{Context, Handler, Message};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_state::checkpoints::{
    list_checkpoint_ids, load_checkpoint, CompletedCheckpointStore, Verify,
};
use weir_state::handle::{CheckpointMetadata, OperatorSnapshot, SubtaskSnapshot};
use weir_state::CheckpointStorage;

/// A subtask's snapshot of checkpoint `id`: (operator, subtask index, handles).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CheckpointAcked {
    pub id: CheckpointId,
    pub subtask: usize,
    pub snapshots: Vec<(String, u32, SubtaskSnapshot)>,
    pub times: SnapshotTimes,
}

/// How one subtask's snapshot went, for the checkpoint's log line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SnapshotTimes {
    /// From its first barrier to the snapshot (aligned: waiting for the others).
    pub alignment: Duration,
    /// The synchronous part, on the subtask's thread.
    pub sync: Duration,
    /// Writing the files, off the subtask's thread.
    pub asynchronous: Duration,
    /// In-flight records kept (unaligned).
    pub channel_bytes: u64,
    /// The subtask's snapshot was unaligned (from the start, or after its alignment
    /// timed out).
    pub unaligned: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CheckpointDeclined {
    pub id: CheckpointId,
    pub attempt: u32,
    pub subtask: usize,
    pub reason: String,
    /// Declined because the subtask has finished: not a failure.
    pub finished: bool,
}

/// One subtask's acknowledgement, as the coordinator collects it.
pub(crate) struct Ack {
    id: CheckpointId,
    snapshots: Vec<(String, u32, SubtaskSnapshot)>,
    times: SnapshotTimes,
}

pub(crate) struct CheckpointDriver {
    pub(super) coordinator: Coordinator<Ack>,
    store: CompletedCheckpointStore,
    /// Operator name → (parallelism, max parallelism), for the metadata.
    operators: BTreeMap<String, (u32, u32)>,
    pub(super) tick: Duration,
    triggered_at: HashMap<CheckpointId, Instant>,
    /// Checkpoints a restart may go back to, oldest first: the one this run resumed
    /// from and those completed since (not older ones: `--fresh` must stay fresh).
    restorable: Vec<CheckpointId>,
    /// Checkpoints completed in this run.
    pub(super) completed: u64,
    /// Of those, the ones that some subtask took unaligned.
    pub(super) completed_unaligned: u64,
    /// How long each completed checkpoint took, trigger to durable metadata.
    pub(super) durations: Vec<Duration>,
}

impl CheckpointDriver {
    pub fn new(
        config: &CheckpointConfig,
        storage: Arc<dyn CheckpointStorage>,
        subtasks: usize,
        operators: BTreeMap<String, (u32, u32)>,
        resumed_from: Option<CheckpointId>,
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
            restorable: resumed_from.into_iter().collect(),
            completed: 0,
            completed_unaligned: 0,
            durations: Vec::new(),
        })
    }

    /// The checkpoint a restart continues from: the newest restorable one that is
    /// still retained and intact. `Ok(None)`: none was ever taken, so the job starts
    /// over. An error when some were taken but none can be read: starting over
    /// would repeat output that their completion already committed.
    pub fn restore_point(&self) -> Result<Option<CheckpointMetadata>, JobError> {
        let retained = self.store.completed();
        let mut damaged = Vec::new();
        for &id in self.restorable.iter().rev() {
            if !retained.contains(&id) {
                continue;
            }
            match load_checkpoint(self.store.storage().as_ref(), id, Verify::Files) {
                Ok(metadata) => {
                    for (id, why) in &damaged {
                        tracing::warn!(checkpoint = id, reason = %why, "skipping a damaged checkpoint");
                    }
                    return Ok(Some(metadata));
                }
                Err(e) => damaged.push((id, e)),
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        let reasons: Vec<String> = damaged
            .iter()
            .map(|(id, e)| format!("checkpoint {id}: {e}"))
            .collect();
        Err(JobError::Runtime(format!(
            "cannot restart: no intact checkpoint to restore from ({})",
            reasons.join("; ")
        )))
    }

    fn write_metadata(
        &mut self,
        id: CheckpointId,
        acks: Vec<Ack>,
        is_savepoint: bool,
    ) -> Result<(u64, SnapshotTimes), String> {
        // The slowest subtask's phases, and all the in-flight bytes.
        let times = acks
            .iter()
            .fold(SnapshotTimes::default(), |all, a| SnapshotTimes {
                alignment: all.alignment.max(a.times.alignment),
                sync: all.sync.max(a.times.sync),
                asynchronous: all.asynchronous.max(a.times.asynchronous),
                channel_bytes: all.channel_bytes + a.times.channel_bytes,
                unaligned: all.unaligned || a.times.unaligned,
            });
        let mut metadata = CheckpointMetadata::new(id);
        metadata.is_savepoint = is_savepoint;
        for (operator, index, snapshot) in acks.into_iter().flat_map(|a| a.snapshots) {
            let (parallelism, max_parallelism) = self.operators[&operator];
            let entry = metadata
                .operators
                .entry(operator)
                .or_insert_with(|| OperatorSnapshot {
                    max_parallelism,
                    subtasks: vec![SubtaskSnapshot::default(); parallelism as usize],
                });
            // A subtask may report several parts for one operator (its keyed state,
            // its in-flight records): they add up.
            absorb(&mut entry.subtasks[index as usize], snapshot);
        }
        let bytes: u64 = metadata.files().iter().map(|f| f.size).sum();
        self.store.add(&metadata).map_err(|e| e.to_string())?;
        if !is_savepoint {
            self.restorable.push(id);
        }
        self.completed += 1;
        Ok((bytes, times))
    }

    fn discard(&self, id: CheckpointId, files: &[weir_state::handle::FileHandle]) {
        if let Err(e) = self.store.discard_uncompleted(id, files) {
            tracing::warn!(checkpoint = id, error = %e, "could not clean up an aborted checkpoint");
        }
    }
}

/// Adds one reported part of a subtask's snapshot to what it reported before.
fn absorb(into: &mut SubtaskSnapshot, part: SubtaskSnapshot) {
    if part.keyed.is_some() {
        into.keyed = part.keyed;
    }
    if part.operator.is_some() {
        into.operator = part.operator;
    }
    into.extra.extend(part.extra);
}

impl JobMaster {
    /// Time passes for the coordinator.
    pub(super) fn tick_checkpoints(&mut self, ctx: &mut Context<Self>) {
        if matches!(
            self.lifecycle,
            Lifecycle::Restarting { .. } | Lifecycle::Over
        ) {
            return;
        }
        self.try_stop(ctx);
        let now = self.now_ms();
        if let Some(driver) = self.checkpoints.as_mut() {
            let commands = driver.coordinator.tick(now);
            self.execute(commands, ctx);
        }
    }

    /// Carries out the coordinator's commands (and those they lead to).
    pub(super) fn execute(&mut self, commands: Vec<Command<Ack>>, ctx: &mut Context<Self>) {
        let mut queue: VecDeque<Command<Ack>> = commands.into();
        while let Some(command) = queue.pop_front() {
            let now = self.now_ms();
            let Some(driver) = self.checkpoints.as_mut() else {
                return;
            };
            match command {
                Command::Trigger { id, kind } => {
                    driver.triggered_at.insert(id, Instant::now());
                    match kind {
                        CheckpointType::Final => {
                            tracing::info!(checkpoint = id, "final checkpoint");
                            self.lifecycle = Lifecycle::Finishing { final_id: Some(id) };
                            for subtask in &self.subtasks {
                                subtask.do_send(FinalCheckpoint { id });
                            }
                        }
                        CheckpointType::Periodic | CheckpointType::Savepoint => {
                            let savepoint = kind == CheckpointType::Savepoint;
                            if savepoint {
                                tracing::info!(checkpoint = id, "savepoint to stop the job");
                                self.lifecycle = Lifecycle::Stopping { savepoint: id };
                            }
                            // Savepoints are aligned whatever the mode: no channel
                            // state, so they restore at any parallelism.
                            let unaligned = !savepoint
                                && self
                                    .deployment
                                    .graph
                                    .config
                                    .checkpoint
                                    .as_ref()
                                    .is_some_and(|c| c.mode == CheckpointMode::Unaligned);
                            let barrier = Barrier {
                                id,
                                unaligned,
                                kind: if savepoint {
                                    SnapshotKind::Savepoint
                                } else {
                                    SnapshotKind::Checkpoint
                                },
                            };
                            for &source in &self.sources {
                                self.subtasks[source].do_send(TriggerCheckpoint {
                                    barrier,
                                    then_suspend: savepoint,
                                });
                            }
                        }
                    }
                }
                Command::WriteMetadata { id, acks } => {
                    let savepoint =
                        driver.coordinator.pending_type(id) == Some(CheckpointType::Savepoint);
                    let next = match driver.write_metadata(id, acks, savepoint) {
                        Ok((bytes, times)) => {
                            let took = driver.triggered_at.remove(&id).map(|t| t.elapsed());
                            let ms = |d: Duration| d.as_secs_f64() * 1e3;
                            if let Some(took) = took {
                                driver.durations.push(took);
                            }
                            driver.completed_unaligned += u64::from(times.unaligned);
                            tracing::info!(
                                checkpoint = id,
                                duration_ms = took.map_or(0.0, ms),
                                alignment_ms = ms(times.alignment),
                                sync_ms = ms(times.sync),
                                async_ms = ms(times.asynchronous),
                                state_bytes = bytes,
                                channel_bytes = times.channel_bytes,
                                unaligned = times.unaligned,
                                "checkpoint complete"
                            );
                            driver.coordinator.metadata_written(id, now)
                        }
                        Err(e) => driver.coordinator.metadata_failed(id, e),
                    };
                    queue.extend(next);
                }
                Command::NotifyComplete { id } => {
                    let is_last = match self.lifecycle {
                        Lifecycle::Finishing { final_id } => final_id == Some(id),
                        Lifecycle::Stopping { savepoint } => savepoint == id,
                        _ => false,
                    };
                    if matches!(self.lifecycle, Lifecycle::Stopping { savepoint } if savepoint == id)
                    {
                        self.savepoint = Some(id);
                    }
                    for subtask in &self.subtasks {
                        if is_last {
                            subtask.do_send(CompleteAndStop { id });
                        } else {
                            subtask.do_send(NotifyCheckpoint {
                                id,
                                completed: true,
                            });
                        }
                    }
                }
                Command::NotifyAborted { id, reason } => {
                    driver.triggered_at.remove(&id);
                    if reason == AbortReason::JobRestart {
                        tracing::debug!(checkpoint = id, "checkpoint aborted by a restart");
                    } else {
                        tracing::warn!(checkpoint = id, ?reason, "checkpoint aborted");
                    }
                    // It will never complete: its private directory goes (acks that
                    // arrive later are discarded on arrival).
                    driver.discard(id, &[]);
                    for subtask in &self.subtasks {
                        subtask.do_send(NotifyCheckpoint {
                            id,
                            completed: false,
                        });
                    }
                    if matches!(self.lifecycle, Lifecycle::Stopping { savepoint } if savepoint == id)
                    {
                        // The sources go on; a finished one means the job is ending
                        // with its final checkpoint anyway.
                        self.lifecycle = Lifecycle::Running;
                        if reason == AbortReason::TasksFinished {
                            self.stop_requested = false;
                            tracing::warn!("a source has finished: the job ends with its final checkpoint instead of a savepoint");
                        } else {
                            tracing::warn!(?reason, "the stop-savepoint failed; trying again");
                        }
                        for &source in &self.sources {
                            self.subtasks[source].do_send(ResumeSource);
                        }
                        self.finish_if_all_finished(ctx);
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
                        driver.discard(ack.id, &files);
                    }
                }
                Command::FailJob { reason } => {
                    tracing::error!(%reason, "checkpointing failed");
                    self.attempt_failed(
                        JobError::Runtime(format!("checkpointing failed: {reason}")),
                        ctx,
                    );
                    return;
                }
            }
        }
    }
}

impl Handler<CheckpointAcked> for JobMaster {
    type Result = ();
    fn handle(&mut self, acked: CheckpointAcked, ctx: &mut Context<Self>) {
        let Some(driver) = self.checkpoints.as_mut() else {
            return;
        };
        // Acks of an earlier attempt name aborted ids: the coordinator discards them.
        let ack = Ack {
            id: acked.id,
            snapshots: acked.snapshots,
            times: acked.times,
        };
        let commands = driver.coordinator.acknowledge(acked.id, acked.subtask, ack);
        self.execute(commands, ctx);
    }
}

impl Handler<CheckpointDeclined> for JobMaster {
    type Result = ();
    fn handle(&mut self, declined: CheckpointDeclined, ctx: &mut Context<Self>) {
        if declined.attempt != self.attempt {
            return;
        }
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
        self.execute(commands, ctx);
    }
}
