//! What a subtask does when checkpoint barriers arrive on its input channels, as an
//! I/O-free state machine (Flink's `SingleCheckpointBarrierHandler`, simplified).
//!
//! Modes:
//! - **Aligned** (exactly once): a channel that delivered barrier `n` is blocked (its
//!   data is held, its credits withheld) until every channel has delivered `n`; then
//!   the subtask snapshots, forwards `n` behind its output, and unblocks.
//! - **At least once**: nothing blocks; the snapshot is taken when the last barrier
//!   arrives, so records after some barriers are in the snapshot and get replayed.
//! - **Unaligned**: the first barrier triggers the snapshot at once and is forwarded
//!   ahead of queued output. Everything not yet processed that precedes a barrier,
//!   the queued input at snapshot time and what arrives on a channel until its barrier,
//!   is recorded as channel state and replayed first on recovery. Savepoints stay
//!   aligned (their barriers are aligned ones), so they hold no channel state and
//!   restore at any parallelism.
//! - **Aligned with timeout**: aligned, but an alignment that lasts longer than the
//!   timeout switches that checkpoint to unaligned. An aligned barrier is *announced*
//!   when it arrives, before the data queued ahead of it is processed, so the timeout
//!   runs from its arrival, and at the switch the data queued ahead of an announced
//!   barrier is recorded up to that barrier. An unaligned barrier from an upstream
//!   that timed out switches the checkpoint at once. Savepoints never time out.
//!
//! A barrier of a newer checkpoint aborts the one in progress; barriers of aborted or
//! older checkpoints are ignored; a channel that ended counts as having delivered
//! every later barrier.

use super::coordinator::{Barrier, CheckpointId};
use std::collections::VecDeque;
use weir_state::SnapshotKind;

/// How a subtask with several inputs takes its part of a checkpoint (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CheckpointMode {
    /// Exactly once: wait for the barrier on every input, holding the inputs that
    /// delivered it (the default).
    Aligned,
    /// Never wait: records after a barrier may be in the snapshot and are replayed
    /// after a failure (duplicates downstream, nothing lost).
    AtLeastOnce,
    /// Exactly once: snapshot at the first barrier, keeping the records it overtook
    /// as channel state; fast under backpressure, restores at the same parallelism
    /// (savepoints stay aligned).
    Unaligned,
    /// Aligned, but a checkpoint whose barrier waits longer than `timeout_ms` (in an
    /// input's queue or in an output's) continues unaligned.
    AlignedWithTimeout { timeout_ms: u64 },
}

/// What the subtask must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hold this channel's data (and credits) until `UnblockAll`.
    Block(usize),
    /// Process held data again, in arrival order.
    UnblockAll,
    /// Snapshot now and forward the barrier: behind queued output when aligned, ahead
    /// of it (recording it as output channel state) when unaligned.
    Snapshot {
        id: CheckpointId,
        unaligned: bool,
    },
    /// Unaligned: keep the input queued on `channel` ahead of its barrier `id` (all of
    /// it when that barrier is not queued there) as channel state.
    RecordQueued {
        channel: usize,
        id: CheckpointId,
    },
    /// Unaligned: keep the input queued on this channel, and what arrives on it until
    /// its barrier, as channel state.
    Record(usize),
    StopRecording(usize),
    /// Unaligned: every channel delivered its barrier; the channel state is complete.
    ChannelStateComplete {
        id: CheckpointId,
    },
    /// The checkpoint in progress is abandoned (decline it if not yet acknowledged).
    Abort {
        id: CheckpointId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Pending,
    Arrived,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Aligning {
        id: CheckpointId,
        started_ms: u64,
        /// Switch to unaligned once the alignment has lasted this long.
        timeout_ms: Option<u64>,
    },
    Counting {
        id: CheckpointId,
    },
    Recording {
        id: CheckpointId,
    },
}

#[derive(Debug)]
pub struct BarrierHandler {
    mode: CheckpointMode,
    channels: Vec<Channel>,
    /// Per channel, the aligned barriers that arrived but wait behind queued data.
    announced: Vec<VecDeque<CheckpointId>>,
    phase: Phase,
    /// The newest checkpoint this handler has started or seen aborted.
    latest: CheckpointId,
}

impl BarrierHandler {
    pub fn new(mode: CheckpointMode, channels: usize) -> Self {
        BarrierHandler {
            mode,
            channels: vec![Channel::Pending; channels],
            announced: vec![VecDeque::new(); channels],
            phase: Phase::Idle,
            latest: 0,
        }
    }

    /// The checkpoint being aligned or recorded, if any.
    pub fn in_progress(&self) -> Option<CheckpointId> {
        match self.phase {
            Phase::Idle => None,
            Phase::Aligning { id, .. } | Phase::Counting { id } | Phase::Recording { id } => {
                Some(id)
            }
        }
    }

    pub fn is_blocked(&self, channel: usize) -> bool {
        matches!(self.phase, Phase::Aligning { .. }) && self.channels[channel] == Channel::Arrived
    }

    /// Whether aligned barriers must be announced on arrival (`on_announced`).
    pub fn wants_announcements(&self) -> bool {
        matches!(self.mode, CheckpointMode::AlignedWithTimeout { .. })
    }

    /// How long an aligned barrier of this kind may take before its checkpoint
    /// switches to unaligned (aligned with timeout, checkpoints only).
    pub fn switch_timeout(&self, barrier: &Barrier) -> Option<u64> {
        match self.mode {
            CheckpointMode::AlignedWithTimeout { timeout_ms }
                if !barrier.unaligned && barrier.kind == SnapshotKind::Checkpoint =>
            {
                Some(timeout_ms)
            }
            _ => None,
        }
    }

    /// When the alignment in progress times out (`on_tick` is due), if it can.
    pub fn alignment_deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Aligning {
                started_ms,
                timeout_ms: Some(timeout),
                ..
            } => Some(started_ms + timeout),
            _ => None,
        }
    }

    /// A barrier was processed on `channel`: an aligned one taken from its queue in
    /// order, or an unaligned one on arrival, ahead of the channel's queued data.
    pub fn on_barrier(&mut self, channel: usize, barrier: &Barrier, now_ms: u64) -> Vec<Action> {
        let id = barrier.id;
        if !barrier.unaligned {
            self.announced[channel].retain(|&announced| announced > id);
        }
        let mut actions = Vec::new();
        if self.is_stale(id) {
            return actions;
        }
        let starts = id > self.latest;
        if starts {
            self.abandon(&mut actions);
        }
        let was_recording = self.phase == Phase::Recording { id };
        let newly_arrived = self.channels[channel] == Channel::Pending;
        if newly_arrived {
            self.channels[channel] = Channel::Arrived;
        }
        let overtaking = barrier.unaligned.then_some(channel);
        if starts {
            self.begin(barrier, now_ms, overtaking, &mut actions);
        } else if barrier.unaligned && matches!(self.phase, Phase::Aligning { .. }) {
            // An upstream timed out: this checkpoint is unaligned from here on.
            self.go_unaligned(id, overtaking, &mut actions);
        }
        if newly_arrived {
            match self.phase {
                Phase::Aligning { .. } => actions.push(Action::Block(channel)),
                Phase::Recording { .. } if was_recording => {
                    actions.push(Action::StopRecording(channel))
                }
                _ => {}
            }
        }
        self.complete_if_all_arrived(&mut actions);
        actions
    }

    /// An aligned barrier arrived on `channel` and waits behind the data queued there
    /// (aligned with timeout only): the timeout starts, and an unaligned checkpoint
    /// being recorded stops recording the channel here.
    pub fn on_announced(&mut self, channel: usize, barrier: &Barrier, now_ms: u64) -> Vec<Action> {
        let id = barrier.id;
        let mut actions = Vec::new();
        self.announced[channel].push_back(id);
        match self.phase {
            Phase::Idle if id > self.latest => self.begin(barrier, now_ms, None, &mut actions),
            Phase::Recording { id: recording }
                if recording == id && self.channels[channel] == Channel::Pending =>
            {
                self.channels[channel] = Channel::Arrived;
                actions.push(Action::StopRecording(channel));
                self.complete_if_all_arrived(&mut actions);
            }
            _ => {}
        }
        actions
    }

    pub fn on_end_of_input(&mut self, channel: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.channels[channel] == Channel::Pending
            && matches!(self.phase, Phase::Recording { .. })
        {
            actions.push(Action::StopRecording(channel));
        }
        self.channels[channel] = Channel::Ended;
        self.complete_if_all_arrived(&mut actions);
        actions
    }

    /// The coordinator aborted checkpoint `id`.
    pub fn on_abort(&mut self, id: CheckpointId) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.in_progress() == Some(id) {
            self.abandon(&mut actions);
        }
        self.latest = self.latest.max(id);
        actions
    }

    /// Time passes: an alignment past its timeout switches to unaligned.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if let (Some(deadline), Phase::Aligning { id, .. }) =
            (self.alignment_deadline(), self.phase)
        {
            if now_ms >= deadline {
                self.go_unaligned(id, None, &mut actions);
                self.complete_if_all_arrived(&mut actions);
            }
        }
        actions
    }

    /// A barrier of a checkpoint that is over (or older than the newest): ignored.
    fn is_stale(&self, id: CheckpointId) -> bool {
        id < self.latest || (id == self.latest && self.in_progress() != Some(id))
    }

    /// Starts checkpoint `barrier.id`; `overtaking` is the channel whose unaligned
    /// barrier starts it (its whole queue precedes that barrier).
    fn begin(
        &mut self,
        barrier: &Barrier,
        now_ms: u64,
        overtaking: Option<usize>,
        actions: &mut Vec<Action>,
    ) {
        let id = barrier.id;
        self.latest = id;
        self.phase = match self.mode {
            CheckpointMode::AtLeastOnce => Phase::Counting { id },
            _ if barrier.unaligned => {
                self.go_unaligned(id, overtaking, actions);
                return;
            }
            CheckpointMode::AlignedWithTimeout { timeout_ms }
                if barrier.kind == SnapshotKind::Checkpoint =>
            {
                Phase::Aligning {
                    id,
                    started_ms: now_ms,
                    timeout_ms: Some(timeout_ms),
                }
            }
            _ => Phase::Aligning {
                id,
                started_ms: now_ms,
                timeout_ms: None,
            },
        };
    }

    /// Snapshot now, unaligned: release the blocked channels and keep as channel state
    /// what precedes the barrier on every channel that has not processed it.
    fn go_unaligned(
        &mut self,
        id: CheckpointId,
        overtaking: Option<usize>,
        actions: &mut Vec<Action>,
    ) {
        actions.push(Action::Snapshot {
            id,
            unaligned: true,
        });
        if matches!(self.phase, Phase::Aligning { .. }) {
            actions.push(Action::UnblockAll);
        }
        for channel in 0..self.channels.len() {
            match self.channels[channel] {
                Channel::Pending if self.announced[channel].contains(&id) => {
                    self.channels[channel] = Channel::Arrived;
                    actions.push(Action::RecordQueued { channel, id });
                }
                Channel::Pending => actions.push(Action::Record(channel)),
                Channel::Arrived if overtaking == Some(channel) => {
                    actions.push(Action::RecordQueued { channel, id })
                }
                Channel::Arrived | Channel::Ended => {}
            }
        }
        self.phase = Phase::Recording { id };
    }

    fn complete_if_all_arrived(&mut self, actions: &mut Vec<Action>) {
        if self.channels.contains(&Channel::Pending) {
            return;
        }
        match self.phase {
            Phase::Idle => return,
            Phase::Aligning { id, .. } => {
                actions.push(Action::Snapshot {
                    id,
                    unaligned: false,
                });
                actions.push(Action::UnblockAll);
            }
            Phase::Counting { id } => actions.push(Action::Snapshot {
                id,
                unaligned: false,
            }),
            Phase::Recording { id } => actions.push(Action::ChannelStateComplete { id }),
        }
        self.reset();
    }

    fn abandon(&mut self, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Idle => return,
            Phase::Aligning { id, .. } => {
                actions.push(Action::Abort { id });
                actions.push(Action::UnblockAll);
            }
            Phase::Counting { id } => actions.push(Action::Abort { id }),
            Phase::Recording { id } => {
                let recording = self
                    .channels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == Channel::Pending);
                actions.extend(recording.map(|(channel, _)| Action::StopRecording(channel)));
                actions.push(Action::Abort { id });
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.phase = Phase::Idle;
        for channel in &mut self.channels {
            if *channel == Channel::Arrived {
                *channel = Channel::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use Action::*;

    fn aligned(id: CheckpointId) -> Barrier {
        Barrier::checkpoint(id)
    }

    fn unaligned(id: CheckpointId) -> Barrier {
        Barrier {
            unaligned: true,
            ..Barrier::checkpoint(id)
        }
    }

    fn savepoint(id: CheckpointId) -> Barrier {
        Barrier {
            kind: SnapshotKind::Savepoint,
            ..Barrier::checkpoint(id)
        }
    }

    const SNAPSHOT_ALIGNED: fn(CheckpointId) -> Action = |id| Snapshot {
        id,
        unaligned: false,
    };
    const SNAPSHOT_UNALIGNED: fn(CheckpointId) -> Action = |id| Snapshot {
        id,
        unaligned: true,
    };

    #[test]
    fn aligned_blocks_each_channel_until_all_barriers_arrived() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 3);
        assert_eq!(h.on_barrier(1, &aligned(1), 0), vec![Block(1)]);
        assert!(h.is_blocked(1) && !h.is_blocked(0));
        assert_eq!(h.on_barrier(0, &aligned(1), 5), vec![Block(0)]);
        assert_eq!(
            h.on_barrier(2, &aligned(1), 9),
            vec![Block(2), SNAPSHOT_ALIGNED(1), UnblockAll]
        );
        assert!(!h.is_blocked(1));
        assert_eq!(h.in_progress(), None);
        assert_eq!(
            h.alignment_deadline(),
            None,
            "plain alignments never time out"
        );
    }

    #[test]
    fn unaligned_snapshots_at_the_first_barrier_and_records_the_others() {
        let mut h = BarrierHandler::new(CheckpointMode::Unaligned, 3);
        assert_eq!(
            h.on_barrier(2, &unaligned(4), 0),
            vec![
                SNAPSHOT_UNALIGNED(4),
                Record(0),
                Record(1),
                RecordQueued { channel: 2, id: 4 }
            ]
        );
        assert_eq!(h.on_barrier(0, &unaligned(4), 1), vec![StopRecording(0)]);
        assert_eq!(
            h.on_end_of_input(1),
            vec![StopRecording(1), ChannelStateComplete { id: 4 }]
        );
    }

    #[test]
    fn a_savepoint_in_unaligned_mode_is_aligned() {
        let mut h = BarrierHandler::new(CheckpointMode::Unaligned, 2);
        assert_eq!(h.on_barrier(0, &savepoint(2), 0), vec![Block(0)]);
        assert_eq!(
            h.on_barrier(1, &savepoint(2), 1),
            vec![Block(1), SNAPSHOT_ALIGNED(2), UnblockAll]
        );
    }

    #[test]
    fn at_least_once_never_blocks() {
        let mut h = BarrierHandler::new(CheckpointMode::AtLeastOnce, 2);
        assert_eq!(h.on_barrier(0, &aligned(1), 0), vec![]);
        assert!(!h.is_blocked(0));
        assert_eq!(h.on_barrier(1, &aligned(1), 0), vec![SNAPSHOT_ALIGNED(1)]);
    }

    #[test]
    fn an_alignment_past_its_timeout_turns_unaligned() {
        let mut h = BarrierHandler::new(CheckpointMode::AlignedWithTimeout { timeout_ms: 100 }, 3);
        h.on_barrier(0, &aligned(1), 0);
        assert_eq!(h.alignment_deadline(), Some(100));
        assert_eq!(h.on_tick(50), vec![]);
        assert_eq!(
            h.on_tick(101),
            vec![SNAPSHOT_UNALIGNED(1), UnblockAll, Record(1), Record(2)]
        );
        assert!(!h.is_blocked(0));
        assert_eq!(h.alignment_deadline(), None);
        assert_eq!(h.on_barrier(1, &aligned(1), 120), vec![StopRecording(1)]);
        assert_eq!(
            h.on_barrier(2, &aligned(1), 130),
            vec![StopRecording(2), ChannelStateComplete { id: 1 }]
        );
    }

    #[test]
    fn an_announced_barrier_starts_the_timeout_and_bounds_what_is_recorded() {
        let mut h = BarrierHandler::new(CheckpointMode::AlignedWithTimeout { timeout_ms: 10 }, 3);
        assert!(h.wants_announcements());
        assert_eq!(h.on_announced(0, &aligned(1), 5), vec![]);
        assert_eq!(h.alignment_deadline(), Some(15));
        assert_eq!(h.on_barrier(0, &aligned(1), 8), vec![Block(0)]);
        assert_eq!(h.on_announced(1, &aligned(1), 9), vec![]);
        assert_eq!(
            h.on_tick(15),
            vec![
                SNAPSHOT_UNALIGNED(1),
                UnblockAll,
                RecordQueued { channel: 1, id: 1 },
                Record(2)
            ],
            "channel 1's queue is recorded up to its barrier, channel 2 until its barrier comes"
        );
        assert_eq!(
            h.on_announced(2, &aligned(1), 20),
            vec![StopRecording(2), ChannelStateComplete { id: 1 }]
        );
        assert_eq!(h.on_barrier(1, &aligned(1), 25), vec![], "recorded already");
        assert_eq!(h.on_barrier(2, &aligned(1), 26), vec![]);
        assert_eq!(h.on_announced(2, &aligned(2), 30), vec![]);
        assert_eq!(h.in_progress(), Some(2));
    }

    #[test]
    fn an_unaligned_barrier_from_a_timed_out_upstream_switches_at_once() {
        let mut h = BarrierHandler::new(CheckpointMode::AlignedWithTimeout { timeout_ms: 1000 }, 2);
        assert_eq!(h.on_barrier(0, &aligned(3), 0), vec![Block(0)]);
        assert_eq!(
            h.on_barrier(1, &unaligned(3), 1),
            vec![
                SNAPSHOT_UNALIGNED(3),
                UnblockAll,
                RecordQueued { channel: 1, id: 3 },
                ChannelStateComplete { id: 3 }
            ]
        );
    }

    #[test]
    fn savepoints_never_time_out() {
        let mut h = BarrierHandler::new(CheckpointMode::AlignedWithTimeout { timeout_ms: 1 }, 2);
        h.on_announced(0, &savepoint(1), 0);
        h.on_barrier(0, &savepoint(1), 0);
        assert_eq!(h.alignment_deadline(), None);
        assert_eq!(h.on_tick(1_000), vec![]);
        assert!(h.is_blocked(0));
    }

    #[test]
    fn a_newer_barrier_aborts_the_alignment_in_progress_and_old_barriers_are_ignored() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 2);
        h.on_barrier(0, &aligned(1), 0);
        assert_eq!(
            h.on_barrier(1, &aligned(2), 1),
            vec![Abort { id: 1 }, UnblockAll, Block(1)]
        );
        assert_eq!(
            h.on_barrier(0, &aligned(1), 2),
            vec![],
            "barrier 1 is obsolete"
        );
        assert_eq!(
            h.on_barrier(0, &aligned(2), 3),
            vec![Block(0), SNAPSHOT_ALIGNED(2), UnblockAll]
        );
    }

    #[test]
    fn an_abort_from_the_coordinator_releases_the_channels() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 2);
        h.on_barrier(0, &aligned(3), 0);
        assert_eq!(h.on_abort(3), vec![Abort { id: 3 }, UnblockAll]);
        assert_eq!(
            h.on_barrier(1, &aligned(3), 1),
            vec![],
            "the aborted checkpoint does not restart"
        );
        assert_eq!(h.on_barrier(1, &aligned(4), 2), vec![Block(1)]);
    }

    fn mode_strategy() -> impl Strategy<Value = CheckpointMode> {
        prop_oneof![
            Just(CheckpointMode::Aligned),
            Just(CheckpointMode::AtLeastOnce),
            Just(CheckpointMode::Unaligned),
            (0u64..40).prop_map(|timeout_ms| CheckpointMode::AlignedWithTimeout { timeout_ms }),
        ]
    }

    /// What travels on one input channel in the model below.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Event {
        Record(u32),
        Barrier(Barrier),
        End,
    }

    /// One subtask with its input gate, driven by the handler's actions, over records
    /// that are numbered per channel.
    struct Model {
        h: BarrierHandler,
        /// Per channel: what is still upstream, and what arrived but waits in the gate.
        upstream: Vec<VecDeque<Event>>,
        queued: Vec<VecDeque<Event>>,
        blocked: Vec<bool>,
        live: Vec<bool>,
        processed: BTreeSet<(usize, u32)>,
        /// Per checkpoint: what its snapshot holds and the channel state it keeps.
        snapshots: BTreeMap<CheckpointId, BTreeSet<(usize, u32)>>,
        channel_state: BTreeMap<CheckpointId, Vec<(usize, u32)>>,
        recording: Option<CheckpointId>,
        completed: Vec<CheckpointId>,
        now: u64,
    }

    impl Model {
        fn apply(&mut self, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Block(c) => {
                        assert!(!self.blocked[c], "blocked twice");
                        self.blocked[c] = true;
                    }
                    UnblockAll => self.blocked.iter_mut().for_each(|b| *b = false),
                    Snapshot { id, unaligned } => {
                        self.snapshots.insert(id, self.processed.clone());
                        if unaligned {
                            self.recording = Some(id);
                            self.channel_state.insert(id, Vec::new());
                        } else {
                            self.completed.push(id);
                        }
                    }
                    Record(c) | RecordQueued { channel: c, .. } => {
                        let id = self
                            .recording
                            .expect("recording after an unaligned snapshot");
                        let until = match action {
                            RecordQueued { id, .. } => id,
                            _ => id,
                        };
                        let state = self.channel_state.get_mut(&id).unwrap();
                        for event in &self.queued[c] {
                            match event {
                                Event::Record(r) => state.push((c, *r)),
                                Event::Barrier(b) if b.id >= until => break,
                                _ => {}
                            }
                        }
                        if matches!(action, Record(_)) {
                            self.live[c] = true;
                        }
                    }
                    StopRecording(c) => self.live[c] = false,
                    ChannelStateComplete { id } => {
                        assert_eq!(self.recording.take(), Some(id));
                        assert!(self.live.iter().all(|l| !l));
                        self.completed.push(id);
                    }
                    Abort { id } => {
                        if self.recording == Some(id) {
                            self.recording = None;
                            self.live.iter_mut().for_each(|l| *l = false);
                        }
                    }
                }
            }
        }

        /// The next event upstream of `c` arrives.
        fn arrive(&mut self, c: usize) {
            let Some(event) = self.upstream[c].pop_front() else {
                return;
            };
            match event {
                Event::Barrier(b) if b.unaligned => {
                    let actions = self.h.on_barrier(c, &b, self.now);
                    self.apply(actions);
                    return;
                }
                Event::Barrier(b) if self.h.wants_announcements() => {
                    let actions = self.h.on_announced(c, &b, self.now);
                    self.apply(actions);
                }
                Event::Record(r) if self.live[c] => {
                    let id = self.recording.unwrap();
                    self.channel_state.get_mut(&id).unwrap().push((c, r));
                }
                _ => {}
            }
            self.queued[c].push_back(event);
        }

        /// The subtask takes the next event of channel `c` from the gate.
        fn process(&mut self, c: usize) {
            if self.blocked[c] {
                return;
            }
            let actions = match self.queued[c].pop_front() {
                None => return,
                Some(Event::Record(r)) => {
                    self.processed.insert((c, r));
                    return;
                }
                Some(Event::Barrier(b)) => self.h.on_barrier(c, &b, self.now),
                Some(Event::End) => self.h.on_end_of_input(c),
            };
            self.apply(actions);
        }

        fn tick(&mut self, by: u64) {
            self.now += by;
            let actions = self.h.on_tick(self.now);
            self.apply(actions);
        }
    }

    proptest! {
        /// Channels carry records and barriers 1..=k (a channel may end early);
        /// events arrive, are processed and time passes in random order. Every
        /// checkpoint that completes holds exactly the records ahead of its barrier on
        /// every channel, each once, split between what the snapshot processed and
        /// the channel state it kept (at least once: the snapshot holds at least
        /// them). Checkpoints complete in order, the newest always does, nothing
        /// stays blocked, and plain aligned checkpoints are never abandoned.
        #[test]
        fn completed_checkpoints_hold_exactly_the_records_ahead_of_their_barriers(
            mode in mode_strategy(),
            channels in 1usize..4,
            checkpoints in 1u64..5,
            gaps in proptest::collection::vec(0u32..4, 24),
            ends in proptest::collection::vec(proptest::option::of(1u64..5), 4),
            unaligned_upstream in proptest::collection::vec(any::<bool>(), 24),
            savepoint_ids in proptest::collection::vec(any::<bool>(), 5),
            ops in proptest::collection::vec((0u8..6, 0usize..4), 0..160),
        ) {
            let mut upstream = Vec::new();
            let mut newest = 0;
            let mut ahead: Vec<BTreeMap<CheckpointId, BTreeSet<(usize, u32)>>> = Vec::new();
            for c in 0..channels {
                let mut events = VecDeque::new();
                let mut before = BTreeMap::new();
                let mut sent = BTreeSet::new();
                let mut next_record = 0;
                let last = ends[c].map_or(checkpoints, |e| e.min(checkpoints));
                newest = newest.max(last);
                for id in 1..=checkpoints {
                    for _ in 0..gaps[(c * 7 + id as usize) % gaps.len()] {
                        events.push_back(Event::Record(next_record));
                        sent.insert((c, next_record));
                        next_record += 1;
                    }
                    if id > last {
                        continue;
                    }
                    before.insert(id, sent.clone());
                    let kind = if savepoint_ids[id as usize] { SnapshotKind::Savepoint } else { SnapshotKind::Checkpoint };
                    let overtakes = match mode {
                        CheckpointMode::Unaligned => kind == SnapshotKind::Checkpoint,
                        CheckpointMode::AlignedWithTimeout { .. } => {
                            kind == SnapshotKind::Checkpoint && unaligned_upstream[(c * 5 + id as usize) % 24]
                        }
                        _ => false,
                    };
                    events.push_back(Event::Barrier(Barrier { id, kind, unaligned: overtakes }));
                }
                // A channel that ends early counts as having sent every later barrier.
                for id in last + 1..=checkpoints {
                    before.insert(id, sent.clone());
                }
                events.push_back(Event::End);
                upstream.push(events);
                ahead.push(before);
            }
            let mut m = Model {
                h: BarrierHandler::new(mode, channels),
                upstream,
                queued: vec![VecDeque::new(); channels],
                blocked: vec![false; channels],
                live: vec![false; channels],
                processed: BTreeSet::new(),
                snapshots: BTreeMap::new(),
                channel_state: BTreeMap::new(),
                recording: None,
                completed: Vec::new(),
                now: 0,
            };
            for (op, c) in ops {
                let c = c % channels;
                match op {
                    0 | 1 => m.arrive(c),
                    2..=4 => m.process(c),
                    _ => m.tick(7),
                }
                for ch in 0..channels {
                    prop_assert_eq!(m.blocked[ch], m.h.is_blocked(ch));
                }
            }
            // Then everything arrives and is processed, with time passing.
            while m.upstream.iter().any(|u| !u.is_empty()) || m.queued.iter().any(|q| !q.is_empty()) {
                for c in 0..channels {
                    m.arrive(c);
                    m.process(c);
                    m.process(c);
                }
                m.tick(3);
                let stuck = (0..channels).all(|c| m.blocked[c] || m.queued[c].is_empty())
                    && m.upstream.iter().all(|u| u.is_empty())
                    && m.queued.iter().any(|q| !q.is_empty());
                prop_assert!(!stuck, "the gate deadlocked: {:?}", m.blocked);
            }
            prop_assert!(m.completed.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", m.completed);
            prop_assert_eq!(m.completed.last().copied(), Some(newest), "the newest completes");
            if mode == CheckpointMode::Aligned {
                prop_assert_eq!(&m.completed, &(1..=newest).collect::<Vec<_>>());
            }
            for id in &m.completed {
                let expected: BTreeSet<_> = ahead.iter().flat_map(|a| a[id].iter().copied()).collect();
                let snapshot = &m.snapshots[id];
                let state = m.channel_state.get(id).cloned().unwrap_or_default();
                if mode == CheckpointMode::AtLeastOnce {
                    prop_assert!(snapshot.is_superset(&expected), "checkpoint {}: lost records", id);
                    continue;
                }
                let mut held: Vec<_> = snapshot.iter().copied().chain(state.iter().copied()).collect();
                held.sort();
                let unique: BTreeSet<_> = held.iter().copied().collect();
                prop_assert_eq!(held.len(), unique.len(), "checkpoint {}: a record held twice", id);
                prop_assert_eq!(unique, expected, "checkpoint {}", id);
            }
        }
    }
}
