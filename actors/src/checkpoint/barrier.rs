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
//!   is recorded as channel state and replayed first on recovery.
//! - **Aligned with timeout**: aligned, but an alignment that lasts longer than the
//!   timeout switches that checkpoint to unaligned.
//!
//! A barrier of a newer checkpoint aborts the one in progress; barriers of aborted or
//! older checkpoints are ignored; a channel that ended counts as having delivered
//! every later barrier.

use super::coordinator::CheckpointId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CheckpointMode {
    Aligned,
    AtLeastOnce,
    Unaligned,
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
    /// Unaligned: record this channel's data up to its barrier as channel state.
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
    Aligning { id: CheckpointId, started_ms: u64 },
    Counting { id: CheckpointId },
    Recording { id: CheckpointId },
}

#[derive(Debug)]
pub struct BarrierHandler {
    mode: CheckpointMode,
    channels: Vec<Channel>,
    phase: Phase,
    /// The newest checkpoint this handler has started or seen aborted.
    latest: CheckpointId,
}

impl BarrierHandler {
    pub fn new(mode: CheckpointMode, channels: usize) -> Self {
        BarrierHandler {
            mode,
            channels: vec![Channel::Pending; channels],
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

    pub fn on_barrier(&mut self, channel: usize, id: CheckpointId, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if id < self.latest || (id == self.latest && self.in_progress() != Some(id)) {
            return actions;
        }
        let starts = id > self.latest;
        if starts {
            self.abandon(&mut actions);
        }
        let newly_arrived = self.channels[channel] == Channel::Pending;
        if newly_arrived {
            self.channels[channel] = Channel::Arrived;
        }
        if starts {
            self.start(id, now_ms, &mut actions);
        }
        if newly_arrived {
            match self.phase {
                Phase::Aligning { .. } => actions.push(Action::Block(channel)),
                Phase::Recording { .. } if !starts => actions.push(Action::StopRecording(channel)),
                _ => {}
            }
        }
        self.complete_if_all_arrived(&mut actions);
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
        if let (
            CheckpointMode::AlignedWithTimeout { timeout_ms },
            Phase::Aligning { id, started_ms },
        ) = (self.mode, self.phase)
        {
            if now_ms.saturating_sub(started_ms) > timeout_ms {
                actions.push(Action::Snapshot {
                    id,
                    unaligned: true,
                });
                actions.push(Action::UnblockAll);
                self.record_pending(&mut actions);
                self.phase = Phase::Recording { id };
            }
        }
        actions
    }

    fn start(&mut self, id: CheckpointId, now_ms: u64, actions: &mut Vec<Action>) {
        self.latest = id;
        self.phase = match self.mode {
            CheckpointMode::Aligned | CheckpointMode::AlignedWithTimeout { .. } => {
                Phase::Aligning {
                    id,
                    started_ms: now_ms,
                }
            }
            CheckpointMode::AtLeastOnce => Phase::Counting { id },
            CheckpointMode::Unaligned => {
                actions.push(Action::Snapshot {
                    id,
                    unaligned: true,
                });
                self.record_pending(actions);
                Phase::Recording { id }
            }
        };
    }

    fn record_pending(&self, actions: &mut Vec<Action>) {
        let pending = self
            .channels
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == Channel::Pending);
        actions.extend(pending.map(|(channel, _)| Action::Record(channel)));
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
    use Action::*;

    #[test]
    fn aligned_blocks_each_channel_until_all_barriers_arrived() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 3);
        assert_eq!(h.on_barrier(1, 1, 0), vec![Block(1)]);
        assert!(h.is_blocked(1) && !h.is_blocked(0));
        assert_eq!(h.on_barrier(0, 1, 5), vec![Block(0)]);
        assert_eq!(
            h.on_barrier(2, 1, 9),
            vec![
                Block(2),
                Snapshot {
                    id: 1,
                    unaligned: false
                },
                UnblockAll
            ]
        );
        assert!(!h.is_blocked(1));
        assert_eq!(h.in_progress(), None);
    }

    #[test]
    fn unaligned_snapshots_at_the_first_barrier_and_records_the_others() {
        let mut h = BarrierHandler::new(CheckpointMode::Unaligned, 3);
        assert_eq!(
            h.on_barrier(2, 4, 0),
            vec![
                Snapshot {
                    id: 4,
                    unaligned: true
                },
                Record(0),
                Record(1)
            ]
        );
        assert_eq!(h.on_barrier(0, 4, 1), vec![StopRecording(0)]);
        assert_eq!(
            h.on_end_of_input(1),
            vec![StopRecording(1), ChannelStateComplete { id: 4 }]
        );
    }

    #[test]
    fn at_least_once_never_blocks() {
        let mut h = BarrierHandler::new(CheckpointMode::AtLeastOnce, 2);
        assert_eq!(h.on_barrier(0, 1, 0), vec![]);
        assert!(!h.is_blocked(0));
        assert_eq!(
            h.on_barrier(1, 1, 0),
            vec![Snapshot {
                id: 1,
                unaligned: false
            }]
        );
    }

    #[test]
    fn an_alignment_past_its_timeout_turns_unaligned() {
        let mut h = BarrierHandler::new(CheckpointMode::AlignedWithTimeout { timeout_ms: 100 }, 3);
        h.on_barrier(0, 1, 0);
        assert_eq!(h.on_tick(50), vec![]);
        assert_eq!(
            h.on_tick(101),
            vec![
                Snapshot {
                    id: 1,
                    unaligned: true
                },
                UnblockAll,
                Record(1),
                Record(2)
            ]
        );
        assert!(!h.is_blocked(0));
        assert_eq!(h.on_barrier(1, 1, 120), vec![StopRecording(1)]);
        assert_eq!(
            h.on_barrier(2, 1, 130),
            vec![StopRecording(2), ChannelStateComplete { id: 1 }]
        );
    }

    #[test]
    fn a_newer_barrier_aborts_the_alignment_in_progress_and_old_barriers_are_ignored() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 2);
        h.on_barrier(0, 1, 0);
        assert_eq!(
            h.on_barrier(1, 2, 1),
            vec![Abort { id: 1 }, UnblockAll, Block(1)]
        );
        assert_eq!(h.on_barrier(0, 1, 2), vec![], "barrier 1 is obsolete");
        assert_eq!(
            h.on_barrier(0, 2, 3),
            vec![
                Block(0),
                Snapshot {
                    id: 2,
                    unaligned: false
                },
                UnblockAll
            ]
        );
    }

    #[test]
    fn an_abort_from_the_coordinator_releases_the_channels() {
        let mut h = BarrierHandler::new(CheckpointMode::Aligned, 2);
        h.on_barrier(0, 3, 0);
        assert_eq!(h.on_abort(3), vec![Abort { id: 3 }, UnblockAll]);
        assert_eq!(
            h.on_barrier(1, 3, 1),
            vec![],
            "the aborted checkpoint does not restart"
        );
        assert_eq!(h.on_barrier(1, 4, 2), vec![Block(1)]);
    }

    fn mode_strategy() -> impl Strategy<Value = CheckpointMode> {
        prop_oneof![
            Just(CheckpointMode::Aligned),
            Just(CheckpointMode::AtLeastOnce),
            Just(CheckpointMode::Unaligned),
            (1u64..50).prop_map(|timeout_ms| CheckpointMode::AlignedWithTimeout { timeout_ms }),
        ]
    }

    proptest! {
        /// Channels deliver barriers 1..=k in order, interleaved at random (some end
        /// early). Every checkpoint whose barriers all arrive is snapshotted exactly
        /// once, in id order; in aligned mode only after all its barriers and with no
        /// channel left blocked; blocked channels are exactly those that delivered.
        #[test]
        fn every_fully_delivered_checkpoint_is_snapshotted_once_in_order(
            mode in mode_strategy(),
            channels in 1usize..5,
            checkpoints in 1u64..6,
            order in proptest::collection::vec(0usize..5, 0..80),
            ends in proptest::collection::vec(proptest::option::of(0u64..6), 5),
        ) {
            let mut h = BarrierHandler::new(mode, channels);
            let mut next = vec![1u64; channels];
            let mut snapshots = Vec::new();
            let mut blocked = vec![false; channels];
            let mut now = 0;
            let mut delivered = std::collections::BTreeSet::new();
            let apply = |actions: Vec<Action>, blocked: &mut Vec<bool>, snapshots: &mut Vec<u64>| {
                for a in actions {
                    match a {
                        Block(c) => { assert!(!blocked[c]); blocked[c] = true; }
                        UnblockAll => blocked.iter_mut().for_each(|b| *b = false),
                        Snapshot { id, .. } => snapshots.push(id),
                        _ => {}
                    }
                }
            };
            let pick = order.into_iter().chain((0..channels * (checkpoints as usize + 1)).map(|i| i % channels));
            for raw in pick {
                let c = raw % channels;
                now += 3;
                apply(h.on_tick(now), &mut blocked, &mut snapshots);
                if next[c] > checkpoints { continue; }
                let aligning = matches!(mode, CheckpointMode::Aligned | CheckpointMode::AlignedWithTimeout { .. });
                if aligning && blocked[c] { continue; } // a blocked channel delivers nothing
                if ends[c] == Some(next[c]) {
                    apply(h.on_end_of_input(c), &mut blocked, &mut snapshots);
                    next[c] = u64::MAX;
                    continue;
                }
                apply(h.on_barrier(c, next[c], now), &mut blocked, &mut snapshots);
                delivered.insert(next[c]);
                next[c] += 1;
                for (ch, b) in blocked.iter().enumerate() {
                    prop_assert_eq!(*b, h.is_blocked(ch));
                }
            }
            prop_assert!(snapshots.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", snapshots);
            prop_assert!(blocked.iter().all(|b| !b), "nothing left blocked");
            // The newest checkpoint always completes; when barriers cannot overtake
            // each other (aligned, no timeout) none is ever aborted.
            prop_assert_eq!(snapshots.last(), delivered.last());
            if mode == CheckpointMode::Aligned {
                prop_assert_eq!(snapshots, delivered.into_iter().collect::<Vec<_>>());
            }
        }
    }
}
