//! The checkpoint coordinator's bookkeeping, as an I/O-free state machine.
//!
//! Time is an input (`now` in milliseconds since an arbitrary origin), so the machine
//! is deterministic and a seeded scheduler can drive it. The actor around it feeds it
//! ticks, acknowledgements and declines, and carries out its [`Command`]s.
//!
//! Protocol (Flink's): a checkpoint is triggered at the sources when fewer than
//! `max_concurrent` are pending, `interval` has passed since the last trigger and
//! `min_pause` since the last completion. It completes when every subtask has
//! acknowledged it *and* its metadata is durable; only then are subtasks notified
//! (two-phase commit sinks commit on that notification). Completing checkpoint `n`
//! subsumes every older pending one. A decline or a timeout aborts a checkpoint and
//! counts as a failure; more than `tolerable_failures` consecutive failures fail the
//! job. Ids grow monotonically, also across restarts (`next_id` is restored).

use std::collections::BTreeMap;

pub type CheckpointId = u64;

pub use weir_state::SnapshotKind;

/// What travels with the data (and reaches every stage's checkpoint pass): which
/// checkpoint, and how to snapshot for it: a savepoint must be self-contained, in
/// the backend-independent format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    /// Overtakes in-flight data, which the checkpoint keeps as channel state.
    pub unaligned: bool,
}

impl Barrier {
    pub fn checkpoint(id: CheckpointId) -> Self {
        Barrier {
            id,
            kind: SnapshotKind::Checkpoint,
            unaligned: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Milliseconds between triggers; `None` disables periodic checkpoints.
    pub interval_ms: Option<u64>,
    pub timeout_ms: u64,
    pub max_concurrent: usize,
    pub min_pause_ms: u64,
    /// Consecutive failed checkpoints tolerated before the job fails.
    pub tolerable_failures: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            interval_ms: Some(1_000),
            timeout_ms: 60_000,
            max_concurrent: 1,
            min_pause_ms: 0,
            tolerable_failures: 0,
        }
    }
}

/// Why a checkpoint did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    Declined {
        subtask: usize,
        reason: String,
    },
    Expired,
    /// A newer checkpoint completed first.
    Subsumed,
    /// The job restarted or stopped.
    JobRestart,
    /// Part of the job has finished: no barrier can reach it any more.
    TasksFinished,
}

/// Why a checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointType {
    /// On the interval, injected at the sources.
    Periodic,
    /// The last of a bounded job, once every subtask has finished.
    Final,
    /// Asked for (to stop the job with it): self-contained, never subsumed or
    /// dropped by retention, and its failure is not a checkpoint failure.
    Savepoint,
}

/// What the coordinator asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<A> {
    /// Inject barrier `id` at every source (the final checkpoint: snapshot every
    /// subtask directly).
    Trigger {
        id: CheckpointId,
        kind: CheckpointType,
    },
    /// Every subtask acknowledged: persist the metadata (durably) and report back
    /// with [`Coordinator::metadata_written`].
    WriteMetadata {
        id: CheckpointId,
        acks: Vec<A>,
    },
    NotifyComplete {
        id: CheckpointId,
    },
    NotifyAborted {
        id: CheckpointId,
        reason: AbortReason,
    },
    /// State referenced by acks of a checkpoint that will never complete.
    Discard {
        acks: Vec<A>,
    },
    FailJob {
        reason: String,
    },
}

#[derive(Debug)]
struct Pending<A> {
    started_ms: u64,
    acks: BTreeMap<usize, A>,
    writing: bool,
    kind: CheckpointType,
}

#[derive(Debug)]
pub struct Coordinator<A> {
    config: CoordinatorConfig,
    subtasks: usize,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending<A>>,
    last_trigger_ms: Option<u64>,
    last_completion_ms: Option<u64>,
    latest_completed: Option<CheckpointId>,
    consecutive_failures: u32,
    final_requested: bool,
    triggering: bool,
    failed: bool,
}

impl<A> Coordinator<A> {
    /// `subtasks`: how many acks complete a checkpoint. `next_id`: one past the
    /// highest id ever used by this job (restored from checkpoint storage).
    pub fn new(config: CoordinatorConfig, subtasks: usize, next_id: CheckpointId) -> Self {
        Coordinator {
            config,
            subtasks,
            next_id: next_id.max(1),
            pending: BTreeMap::new(),
            last_trigger_ms: None,
            last_completion_ms: None,
            latest_completed: None,
            consecutive_failures: 0,
            final_requested: false,
            triggering: true,
            failed: false,
        }
    }

    pub fn latest_completed(&self) -> Option<CheckpointId> {
        self.latest_completed
    }

    pub fn pending_ids(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.pending.keys().copied()
    }

    /// Time passes: trigger when due, expire what took too long.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        if self.failed {
            return commands;
        }
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                !p.writing && now_ms.saturating_sub(p.started_ms) > self.config.timeout_ms
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.abort(id, AbortReason::Expired, &mut commands);
        }
        if !self.failed && self.trigger_due(now_ms) {
            let kind = if self.final_requested {
                CheckpointType::Final
            } else {
                CheckpointType::Periodic
            };
            commands.push(self.trigger(now_ms, kind));
        }
        commands
    }

    fn trigger_due(&self, now_ms: u64) -> bool {
        if self.pending.len() >= self.config.max_concurrent
            || self
                .pending
                .values()
                .any(|p| p.kind != CheckpointType::Periodic)
        {
            return false;
        }
        if self.final_requested {
            return true;
        }
        if !self.triggering {
            return false;
        }
        let Some(interval) = self.config.interval_ms else {
            return false;
        };
        let interval_passed = self.last_trigger_ms.is_none_or(|t| now_ms >= t + interval);
        let pause_passed = self
            .last_completion_ms
            .is_none_or(|t| now_ms >= t + self.config.min_pause_ms);
        interval_passed && pause_passed
    }

    fn trigger(&mut self, now_ms: u64, kind: CheckpointType) -> Command<A> {
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger_ms = Some(now_ms);
        self.pending.insert(
            id,
            Pending {
                started_ms: now_ms,
                acks: BTreeMap::new(),
                writing: false,
                kind,
            },
        );
        if kind == CheckpointType::Final {
            self.final_requested = false;
        }
        Command::Trigger { id, kind }
    }

    /// Take a savepoint now, whatever the interval and the pending checkpoints (none
    /// while another savepoint or the final checkpoint is pending).
    pub fn trigger_savepoint(&mut self, now_ms: u64) -> Vec<Command<A>> {
        if self.failed
            || self
                .pending
                .values()
                .any(|p| p.kind != CheckpointType::Periodic)
        {
            return Vec::new();
        }
        vec![self.trigger(now_ms, CheckpointType::Savepoint)]
    }

    /// The type of pending checkpoint `id`.
    pub fn pending_type(&self, id: CheckpointId) -> Option<CheckpointType> {
        self.pending.get(&id).map(|p| p.kind)
    }

    /// No more periodic checkpoints (a source has finished, so no barrier could
    /// cover the whole job); pending ones still complete or expire.
    pub fn stop_triggering(&mut self) {
        self.triggering = false;
    }

    /// Every source is exhausted: take a final checkpoint as soon as possible, so a
    /// bounded job commits all of its output before it ends.
    pub fn request_final(&mut self, now_ms: u64) -> Vec<Command<A>> {
        self.final_requested = true;
        self.tick(now_ms)
    }

    /// Subtask `subtask` snapshotted checkpoint `id`.
    pub fn acknowledge(&mut self, id: CheckpointId, subtask: usize, ack: A) -> Vec<Command<A>> {
        let Some(pending) = self.pending.get_mut(&id) else {
            // Aborted or subsumed meanwhile: its state is of no use.
            return vec![Command::Discard { acks: vec![ack] }];
        };
        pending.acks.insert(subtask, ack);
        if pending.acks.len() < self.subtasks || pending.writing {
            return Vec::new();
        }
        pending.writing = true;
        let acks = std::mem::take(&mut pending.acks).into_values().collect();
        vec![Command::WriteMetadata { id, acks }]
    }

    /// Subtask `subtask` could not snapshot checkpoint `id`.
    pub fn decline(&mut self, id: CheckpointId, subtask: usize, reason: String) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        if self.pending.contains_key(&id) {
            self.abort(id, AbortReason::Declined { subtask, reason }, &mut commands);
        }
        commands
    }

    /// The metadata of `id` is durable: the checkpoint is complete.
    pub fn metadata_written(&mut self, id: CheckpointId, now_ms: u64) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        let Some(pending) = self.pending.remove(&id) else {
            return commands;
        };
        if pending.kind == CheckpointType::Savepoint {
            commands.push(Command::NotifyComplete { id });
            return commands;
        }
        let subsumed: Vec<CheckpointId> =
            self.pending.range(..id).map(|(&older, _)| older).collect();
        for older in subsumed {
            self.abort_quietly(older, AbortReason::Subsumed, &mut commands);
        }
        self.latest_completed = Some(id);
        self.last_completion_ms = Some(now_ms);
        self.consecutive_failures = 0;
        commands.push(Command::NotifyComplete { id });
        commands
    }

    /// Writing the metadata of `id` failed: the checkpoint failed.
    pub fn metadata_failed(&mut self, id: CheckpointId, reason: String) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        if self.pending.contains_key(&id) {
            self.abort(
                id,
                AbortReason::Declined {
                    subtask: usize::MAX,
                    reason,
                },
                &mut commands,
            );
        }
        commands
    }

    /// Checkpoint `id` cannot complete for a reason that is not a failure (part of
    /// the job finished): abort it without counting it.
    pub fn abandon(&mut self, id: CheckpointId, reason: AbortReason) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        self.abort_quietly(id, reason, &mut commands);
        commands
    }

    /// The job restarts from its latest checkpoint: every pending checkpoint is
    /// aborted (not counted as failed), and triggering starts over as in a new job
    /// (ids keep growing).
    pub fn restart(&mut self) -> Vec<Command<A>> {
        let commands = self.abort_all();
        self.failed = false;
        self.triggering = true;
        self.final_requested = false;
        self.consecutive_failures = 0;
        commands
    }

    /// Every pending checkpoint is aborted (not counted as failed).
    pub fn abort_all(&mut self) -> Vec<Command<A>> {
        let mut commands = Vec::new();
        let ids: Vec<CheckpointId> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort_quietly(id, AbortReason::JobRestart, &mut commands);
        }
        commands
    }

    fn abort(&mut self, id: CheckpointId, reason: AbortReason, commands: &mut Vec<Command<A>>) {
        let kind = self.pending.get(&id).map(|p| p.kind);
        self.abort_quietly(id, reason.clone(), commands);
        if kind == Some(CheckpointType::Savepoint) {
            return;
        }
        let is_final = kind == Some(CheckpointType::Final);
        self.consecutive_failures += 1;
        if self.consecutive_failures > self.config.tolerable_failures {
            self.failed = true;
            commands.push(Command::FailJob {
                reason: format!(
                    "{} consecutive checkpoint failures (tolerable: {}); the last, checkpoint {id}: {}",
                    self.consecutive_failures,
                    self.config.tolerable_failures,
                    describe(&reason)
                ),
            });
        } else if is_final {
            // The final checkpoint must happen for the job to end: try again.
            self.final_requested = true;
        }
    }

    fn abort_quietly(
        &mut self,
        id: CheckpointId,
        reason: AbortReason,
        commands: &mut Vec<Command<A>>,
    ) {
        if let Some(pending) = self.pending.remove(&id) {
            if !pending.acks.is_empty() {
                commands.push(Command::Discard {
                    acks: pending.acks.into_values().collect(),
                });
            }
            commands.push(Command::NotifyAborted { id, reason });
        }
    }
}

fn describe(reason: &AbortReason) -> String {
    match reason {
        AbortReason::Declined { subtask, reason } if *subtask == usize::MAX => {
            format!("metadata not written: {reason}")
        }
        AbortReason::Declined { subtask, reason } => {
            format!("declined by subtask {subtask}: {reason}")
        }
        AbortReason::Expired => "expired before all subtasks acknowledged".into(),
        AbortReason::Subsumed => "subsumed by a newer checkpoint".into(),
        AbortReason::JobRestart => "the job restarted".into(),
        AbortReason::TasksFinished => "part of the job has finished".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(max_concurrent: usize, tolerable_failures: u32) -> CoordinatorConfig {
        CoordinatorConfig {
            interval_ms: Some(100),
            timeout_ms: 1_000,
            max_concurrent,
            min_pause_ms: 50,
            tolerable_failures,
        }
    }

    fn triggered(commands: &[Command<u32>]) -> Vec<CheckpointId> {
        commands
            .iter()
            .filter_map(|c| {
                if let Command::Trigger { id, .. } = c {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn a_restart_aborts_pending_checkpoints_and_triggers_again_with_growing_ids() {
        let mut c = Coordinator::new(config(1, 0), 1, 1);
        assert_eq!(triggered(&c.tick(0)), vec![1]);
        assert_eq!(c.decline(1, 0, "boom".into()).last(), Some(&Command::FailJob {
            reason: "1 consecutive checkpoint failures (tolerable: 0); the last, checkpoint 1: declined by subtask 0: boom".into()
        }));
        assert!(
            c.tick(1_000).is_empty(),
            "a failed coordinator triggers nothing"
        );
        c.stop_triggering();
        assert_eq!(triggered(&c.tick(2_000)), Vec::<CheckpointId>::new());
        c.restart();
        assert_eq!(triggered(&c.tick(3_000)), vec![2]);
        let aborted = c.restart();
        assert_eq!(
            aborted,
            vec![Command::NotifyAborted {
                id: 2,
                reason: AbortReason::JobRestart
            }]
        );
        assert_eq!(triggered(&c.tick(4_000)), vec![3]);
    }

    #[test]
    fn a_savepoint_triggers_at_once_is_not_subsumed_and_its_failure_is_no_checkpoint_failure() {
        let mut c = Coordinator::new(config(1, 0), 1, 1);
        assert_eq!(triggered(&c.tick(0)), vec![1]);
        // Beyond max_concurrent and the interval: a savepoint is asked for.
        assert_eq!(
            c.trigger_savepoint(10),
            vec![Command::Trigger {
                id: 2,
                kind: CheckpointType::Savepoint
            }]
        );
        assert!(
            c.trigger_savepoint(11).is_empty(),
            "one savepoint at a time"
        );
        assert_eq!(c.pending_type(2), Some(CheckpointType::Savepoint));
        assert!(c.acknowledge(2, 0, 20).len() == 1);
        // Completing the savepoint subsumes nothing and is not the latest checkpoint.
        assert_eq!(
            c.metadata_written(2, 20),
            vec![Command::NotifyComplete { id: 2 }]
        );
        assert_eq!(c.pending_ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(c.latest_completed(), None);
        // A failed savepoint does not count against tolerable_failures = 0.
        assert_eq!(triggered(&c.trigger_savepoint(30)), vec![3]);
        let aborted = c.decline(3, 0, "disk full".into());
        assert!(!aborted.iter().any(|c| matches!(c, Command::FailJob { .. })));
    }

    #[test]
    fn completes_after_all_acks_and_durable_metadata_then_notifies() {
        let mut c = Coordinator::new(config(1, 0), 2, 7);
        assert_eq!(triggered(&c.tick(0)), vec![7]);
        assert!(c.acknowledge(7, 0, 10).is_empty());
        assert_eq!(
            c.acknowledge(7, 1, 11),
            vec![Command::WriteMetadata {
                id: 7,
                acks: vec![10, 11]
            }]
        );
        assert_eq!(
            c.latest_completed(),
            None,
            "not complete before the metadata is durable"
        );
        assert_eq!(
            c.metadata_written(7, 20),
            vec![Command::NotifyComplete { id: 7 }]
        );
        assert_eq!(c.latest_completed(), Some(7));
    }

    #[test]
    fn respects_interval_min_pause_and_max_concurrent() {
        let mut c = Coordinator::<u32>::new(config(1, 0), 1, 1);
        assert_eq!(triggered(&c.tick(0)), vec![1]);
        assert!(triggered(&c.tick(150)).is_empty(), "one pending at most");
        c.acknowledge(1, 0, 0);
        c.metadata_written(1, 160);
        assert!(
            triggered(&c.tick(180)).is_empty(),
            "min pause after completion"
        );
        assert_eq!(triggered(&c.tick(210)), vec![2]);
    }

    #[test]
    fn a_newer_completion_subsumes_older_pending_checkpoints() {
        let mut c = Coordinator::new(config(2, 0), 1, 1);
        c.tick(0);
        c.tick(100);
        c.acknowledge(1, 0, 1);
        let commands = c.acknowledge(2, 0, 2);
        assert_eq!(
            commands,
            vec![Command::WriteMetadata {
                id: 2,
                acks: vec![2]
            }]
        );
        let commands = c.metadata_written(2, 150);
        assert!(commands.contains(&Command::NotifyAborted {
            id: 1,
            reason: AbortReason::Subsumed
        }));
        assert!(commands.contains(&Command::NotifyComplete { id: 2 }));
    }

    #[test]
    fn failures_beyond_the_tolerance_fail_the_job() {
        let mut c = Coordinator::<u32>::new(config(1, 1), 2, 1);
        c.tick(0);
        let commands = c.decline(1, 1, "disk full".into());
        assert!(commands.contains(&Command::NotifyAborted {
            id: 1,
            reason: AbortReason::Declined {
                subtask: 1,
                reason: "disk full".into()
            }
        }));
        assert!(!commands
            .iter()
            .any(|c| matches!(c, Command::FailJob { .. })));
        c.tick(100);
        let commands = c.tick(1_200);
        assert!(commands.contains(&Command::NotifyAborted {
            id: 2,
            reason: AbortReason::Expired
        }));
        assert!(commands
            .iter()
            .any(|c| matches!(c, Command::FailJob { reason } if reason.contains("2 consecutive"))));
        assert!(
            c.tick(5_000).is_empty(),
            "a failed coordinator triggers nothing"
        );
    }

    #[test]
    fn final_checkpoint_is_triggered_at_once_and_retried_after_an_abort() {
        let mut c = Coordinator::<u32>::new(
            CoordinatorConfig {
                interval_ms: None,
                ..config(1, 5)
            },
            1,
            1,
        );
        assert!(c.tick(0).is_empty(), "no periodic checkpoints");
        assert_eq!(
            c.request_final(10),
            vec![Command::Trigger {
                id: 1,
                kind: CheckpointType::Final
            }]
        );
        c.decline(1, 0, "failed".into());
        assert_eq!(
            c.tick(11),
            vec![Command::Trigger {
                id: 2,
                kind: CheckpointType::Final
            }]
        );
    }

    #[test]
    fn an_abandoned_checkpoint_is_not_a_failure() {
        let mut c = Coordinator::<u32>::new(config(1, 0), 2, 1);
        c.tick(0);
        let commands = c.abandon(1, AbortReason::TasksFinished);
        assert_eq!(
            commands,
            vec![Command::NotifyAborted {
                id: 1,
                reason: AbortReason::TasksFinished
            }]
        );
        assert_eq!(triggered(&c.tick(100)), vec![2], "no failure was counted");
    }

    #[test]
    fn late_acks_of_aborted_checkpoints_are_discarded() {
        let mut c = Coordinator::new(config(1, 3), 2, 1);
        c.tick(0);
        c.decline(1, 0, "x".into());
        assert_eq!(
            c.acknowledge(1, 1, 42),
            vec![Command::Discard { acks: vec![42] }]
        );
    }

    proptest! {
        /// Under any interleaving: ids strictly increase, never more than
        /// max_concurrent pending, every trigger ends exactly once (complete or
        /// aborted), and notifications of completion come in increasing id order.
        #[test]
        fn every_trigger_ends_exactly_once(
            max_concurrent in 1usize..4,
            events in proptest::collection::vec((0u8..5, 0usize..3, 0u64..300), 1..300),
        ) {
            let subtasks = 3;
            let mut c = Coordinator::new(config(max_concurrent, 1_000), subtasks, 1);
            let (mut now, mut triggered_ids, mut ended) = (0u64, Vec::new(), Vec::new());
            let mut completed = Vec::new();
            let handle = |commands: Vec<Command<usize>>, c: &mut Coordinator<usize>, now: u64,
                              triggered_ids: &mut Vec<u64>, ended: &mut Vec<u64>, completed: &mut Vec<u64>| {
                let mut queue = commands;
                while let Some(command) = queue.pop() {
                    match command {
                        Command::Trigger { id, .. } => triggered_ids.push(id),
                        Command::WriteMetadata { id, .. } => queue.extend(c.metadata_written(id, now)),
                        Command::NotifyComplete { id } => { ended.push(id); completed.push(id); }
                        Command::NotifyAborted { id, .. } => ended.push(id),
                        Command::Discard { .. } | Command::FailJob { .. } => {}
                    }
                }
            };
            for (kind, subtask, delta) in events {
                now += delta;
                let commands = match kind {
                    0 | 1 => c.tick(now),
                    2 | 3 => {
                        let oldest = c.pending_ids().next();
                        oldest.map_or_else(Vec::new, |id| c.acknowledge(id, subtask, subtask))
                    }
                    _ => {
                        let newest = c.pending_ids().last();
                        newest.map_or_else(Vec::new, |id| c.decline(id, subtask, "test".into()))
                    }
                };
                handle(commands, &mut c, now, &mut triggered_ids, &mut ended, &mut completed);
                prop_assert!(c.pending_ids().count() <= max_concurrent);
            }
            let commands = c.abort_all();
            handle(commands, &mut c, now, &mut triggered_ids, &mut ended, &mut completed);
            prop_assert!(triggered_ids.windows(2).all(|w| w[0] < w[1]));
            let mut ended_sorted = ended.clone();
            ended_sorted.sort_unstable();
            prop_assert_eq!(ended_sorted, triggered_ids);
            prop_assert!(completed.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
