//! The part-file lifecycle of the exactly-once file sink, as an I/O-free state machine
//! (Flink's `FileSink` with an on-checkpoint rolling policy).
//!
//! A subtask writes into one hidden **in-progress** part at a time. A part is closed
//! (flushed, renamed to hidden **pending**; fsynced before any checkpoint listing it
//! completes) when it reaches the size or age limit, and always at a checkpoint
//! barrier, so a checkpoint never covers half a part. The snapshot of checkpoint `n` lists every pending part not yet committed,
//! tagged with the checkpoint that first covered it. On notify-complete of `n` every
//! pending part covered by a checkpoint `<= n` is **committed** (renamed to its
//! visible name); readers only ever see committed parts.
//!
//! Parts are named by their [`PartId`]: the writing subtask's index, its attempt (a
//! restarted attempt never reuses a name of an earlier one, even if one of those is
//! still winding down) and a counter.
//!
//! Recovery from checkpoint `n`: the parts listed by the snapshots this subtask takes
//! over (its own, or several old subtasks' after a rescale) are committed (a part
//! already committed is fine: commits are idempotent), then everything uncommitted
//! that those old subtasks left behind (in-progress and pending parts written after
//! `n`) is deleted. The counter continues after every number this writer's names
//! already use, so no visible name is ever reused.

use serde::{Deserialize, Serialize};

use crate::checkpoint::coordinator::CheckpointId;

/// Which subtask attempt writes a part: part names are unique per writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Writer {
    pub subtask: u32,
    pub attempt: u32,
}

/// One part file, whatever its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartId {
    pub writer: Writer,
    pub counter: u64,
}

/// A closed part waiting for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPart {
    pub part: PartId,
    pub bytes: u64,
    /// The first checkpoint whose snapshot listed this part; `None` until a barrier.
    pub checkpoint: Option<CheckpointId>,
}

/// What a checkpoint stores for one sink subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSnapshot {
    pub writer: Writer,
    /// The next counter of `writer`.
    pub next_counter: u64,
    pub pending: Vec<PendingPart>,
}

impl SinkSnapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a sink snapshot always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingPolicy {
    /// A part is closed before it would grow beyond this (a single larger record
    /// still gets a part of its own).
    pub max_part_bytes: u64,
    /// A part open this long is closed at the next record (checkpoints close every
    /// part anyway).
    pub max_part_age_ms: u64,
}

impl Default for RollingPolicy {
    fn default() -> Self {
        RollingPolicy {
            max_part_bytes: 128 << 20,
            max_part_age_ms: 60_000,
        }
    }
}

/// File operations the shell carries out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Create in-progress `part` and write to it from now on.
    Open { part: PartId },
    /// Flush in-progress `part`, rename it to pending (the shell fsyncs the pending
    /// parts a snapshot lists before the checkpoint may complete).
    Close { part: PartId },
    /// Rename pending `part` to its visible name (no-op if already visible).
    Commit { part: PartId },
    /// Delete every in-progress or pending part left by the subtasks this one takes
    /// over (run after the commits of a restore: what is left was not covered).
    DeleteStrays,
}

#[derive(Debug)]
struct Open {
    part: PartId,
    bytes: u64,
    opened_ms: u64,
}

#[derive(Debug)]
pub struct PartTracker {
    policy: RollingPolicy,
    writer: Writer,
    next_counter: u64,
    open: Option<Open>,
    pending: Vec<PendingPart>,
}

impl PartTracker {
    /// Writer `writer`, fresh or restored from the snapshots of the old subtasks it
    /// takes over; returns the file operations that make the directory agree with
    /// them. `first_free` is above every counter the directory already holds for
    /// `writer` (a name from an earlier run is never overwritten).
    pub fn restore(
        policy: RollingPolicy,
        writer: Writer,
        snapshots: Vec<SinkSnapshot>,
        first_free: u64,
    ) -> (Self, Vec<FileOp>) {
        let next_counter = snapshots
            .iter()
            .filter(|s| s.writer == writer)
            .map(|s| s.next_counter)
            .fold(first_free, u64::max);
        let mut ops: Vec<FileOp> = snapshots
            .iter()
            .flat_map(|s| &s.pending)
            .map(|p| FileOp::Commit { part: p.part })
            .collect();
        ops.push(FileOp::DeleteStrays);
        let tracker = PartTracker {
            policy,
            writer,
            next_counter,
            open: None,
            pending: Vec::new(),
        };
        (tracker, ops)
    }

    /// `bytes` are about to be written; says which parts to close and open first.
    pub fn before_write(&mut self, bytes: u64, now_ms: u64) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if let Some(open) = &self.open {
            let too_big = open.bytes > 0 && open.bytes + bytes > self.policy.max_part_bytes;
            let too_old = now_ms.saturating_sub(open.opened_ms) >= self.policy.max_part_age_ms;
            if too_big || too_old {
                self.close(&mut ops);
            }
        }
        if self.open.is_none() {
            let part = PartId {
                writer: self.writer,
                counter: self.next_counter,
            };
            self.next_counter += 1;
            self.open = Some(Open {
                part,
                bytes: 0,
                opened_ms: now_ms,
            });
            ops.push(FileOp::Open { part });
        }
        self.open.as_mut().expect("a part is open").bytes += bytes;
        ops
    }

    /// Time passes without writes: an old part is closed anyway.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if self
            .open
            .as_ref()
            .is_some_and(|o| now_ms.saturating_sub(o.opened_ms) >= self.policy.max_part_age_ms)
        {
            self.close(&mut ops);
        }
        ops
    }

    fn close(&mut self, ops: &mut Vec<FileOp>) {
        if let Some(open) = self.open.take() {
            ops.push(FileOp::Close { part: open.part });
            self.pending.push(PendingPart {
                part: open.part,
                bytes: open.bytes,
                checkpoint: None,
            });
        }
    }

    /// The barrier of checkpoint `id`: close the open part; the snapshot lists every
    /// uncommitted pending part.
    pub fn snapshot(&mut self, id: CheckpointId) -> (Vec<FileOp>, SinkSnapshot) {
        let mut ops = Vec::new();
        self.close(&mut ops);
        for part in &mut self.pending {
            part.checkpoint.get_or_insert(id);
        }
        (
            ops,
            SinkSnapshot {
                writer: self.writer,
                next_counter: self.next_counter,
                pending: self.pending.clone(),
            },
        )
    }

    /// Checkpoint `id` is complete: commit everything it (or an older one) covered.
    pub fn notify_complete(&mut self, id: CheckpointId) -> Vec<FileOp> {
        let (commit, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint.is_some_and(|c| c <= id));
        self.pending = keep;
        commit
            .into_iter()
            .map(|p| FileOp::Commit { part: p.part })
            .collect()
    }

    pub fn uncommitted(&self) -> usize {
        self.pending.len() + usize::from(self.open.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const WRITER: Writer = Writer {
        subtask: 0,
        attempt: 0,
    };

    fn part(counter: u64) -> PartId {
        PartId {
            writer: WRITER,
            counter,
        }
    }

    fn fresh() -> (PartTracker, Vec<FileOp>) {
        PartTracker::restore(policy(), WRITER, Vec::new(), 0)
    }

    fn policy() -> RollingPolicy {
        RollingPolicy {
            max_part_bytes: 100,
            max_part_age_ms: 1_000,
        }
    }

    #[test]
    fn parts_roll_at_barriers_and_commit_on_completion() {
        let (mut t, ops) = fresh();
        assert_eq!(ops, vec![FileOp::DeleteStrays]);
        assert_eq!(t.before_write(10, 0), vec![FileOp::Open { part: part(0) }]);
        let (ops, snap) = t.snapshot(1);
        assert_eq!(ops, vec![FileOp::Close { part: part(0) }]);
        assert_eq!(
            snap.pending,
            vec![PendingPart {
                part: part(0),
                bytes: 10,
                checkpoint: Some(1)
            }]
        );
        assert_eq!(t.before_write(10, 5), vec![FileOp::Open { part: part(1) }]);
        assert_eq!(t.notify_complete(1), vec![FileOp::Commit { part: part(0) }]);
        assert_eq!(t.uncommitted(), 1);
    }

    #[test]
    fn size_and_age_limits_close_parts_that_wait_for_the_next_checkpoint() {
        let (mut t, _) = fresh();
        t.before_write(60, 0);
        assert_eq!(
            t.before_write(60, 1),
            vec![
                FileOp::Close { part: part(0) },
                FileOp::Open { part: part(1) }
            ]
        );
        assert_eq!(t.on_tick(2_000), vec![FileOp::Close { part: part(1) }]);
        assert_eq!(
            t.notify_complete(9),
            vec![],
            "not covered by any checkpoint yet"
        );
        let (_, snap) = t.snapshot(10);
        assert_eq!(snap.pending.len(), 2);
        assert_eq!(
            t.notify_complete(10),
            vec![
                FileOp::Commit { part: part(0) },
                FileOp::Commit { part: part(1) }
            ]
        );
    }

    #[test]
    fn restore_commits_listed_parts_and_continues_numbering() {
        let snapshot = SinkSnapshot {
            writer: WRITER,
            next_counter: 7,
            pending: vec![PendingPart {
                part: part(6),
                bytes: 3,
                checkpoint: Some(4),
            }],
        };
        let (mut t, ops) = PartTracker::restore(policy(), WRITER, vec![snapshot.clone()], 0);
        assert_eq!(
            ops,
            vec![FileOp::Commit { part: part(6) }, FileOp::DeleteStrays]
        );
        assert_eq!(t.before_write(1, 0), vec![FileOp::Open { part: part(7) }]);
        // Names the directory already holds for this writer are skipped too.
        let (mut t, _) = PartTracker::restore(policy(), WRITER, vec![snapshot], 12);
        assert_eq!(t.before_write(1, 0), vec![FileOp::Open { part: part(12) }]);
    }

    #[test]
    fn a_rescaled_restore_commits_every_old_writers_parts_under_a_name_of_its_own() {
        let old = |subtask: u32, counter: u64| SinkSnapshot {
            writer: Writer {
                subtask,
                attempt: 0,
            },
            next_counter: counter + 1,
            pending: vec![PendingPart {
                part: PartId {
                    writer: Writer {
                        subtask,
                        attempt: 0,
                    },
                    counter,
                },
                bytes: 1,
                checkpoint: Some(3),
            }],
        };
        let me = Writer {
            subtask: 0,
            attempt: 2,
        };
        let (mut t, ops) = PartTracker::restore(policy(), me, vec![old(0, 5), old(2, 9)], 0);
        assert_eq!(
            ops,
            vec![
                FileOp::Commit {
                    part: old(0, 5).pending[0].part
                },
                FileOp::Commit {
                    part: old(2, 9).pending[0].part
                },
                FileOp::DeleteStrays
            ]
        );
        let new = PartId {
            writer: me,
            counter: 0,
        };
        assert_eq!(t.before_write(1, 0), vec![FileOp::Open { part: new }]);
    }

    /// A file system that keeps part contents by state, to replay the protocol with
    /// crashes: a crash loses the tracker and whatever was not committed or listed.
    #[derive(Default)]
    struct Files {
        in_progress: BTreeMap<PartId, Vec<u32>>,
        pending: BTreeMap<PartId, Vec<u32>>,
        visible: BTreeMap<PartId, Vec<u32>>,
        writing: Option<PartId>,
    }

    impl Files {
        fn apply(&mut self, ops: Vec<FileOp>) {
            for op in ops {
                match op {
                    FileOp::Open { part } => {
                        assert!(!self.visible.contains_key(&part), "visible name reused");
                        self.in_progress.insert(part, Vec::new());
                        self.writing = Some(part);
                    }
                    FileOp::Close { part } => {
                        let data = self
                            .in_progress
                            .remove(&part)
                            .expect("closing an open part");
                        self.pending.insert(part, data);
                        self.writing = None;
                    }
                    FileOp::Commit { part } => {
                        if let Some(data) = self.pending.remove(&part) {
                            self.visible.insert(part, data);
                        } else {
                            assert!(
                                self.visible.contains_key(&part),
                                "committing a part that is gone"
                            );
                        }
                    }
                    FileOp::DeleteStrays => {
                        self.in_progress.clear();
                        self.pending.clear();
                    }
                }
            }
        }

        /// What the shell finds by listing the directory: above every counter of
        /// `writer` in any state.
        fn first_free(&self, writer: Writer) -> u64 {
            self.in_progress
                .keys()
                .chain(self.pending.keys())
                .chain(self.visible.keys())
                .filter(|p| p.writer == writer)
                .map(|p| p.counter + 1)
                .max()
                .unwrap_or(0)
        }
    }

    proptest! {
        /// Records 0..n written with checkpoints, completions and crashes at random
        /// (restarts in-process with a new attempt, or reruns with attempt 0 again):
        /// after a final checkpoint, the visible parts hold every record exactly once.
        #[test]
        fn crashes_never_lose_or_duplicate_committed_records(
            steps in proptest::collection::vec(0u8..11, 1..200),
        ) {
            let mut files = Files::default();
            let (mut tracker, ops) = fresh();
            files.apply(ops);
            // The durable checkpoint: its snapshot and the input position it covers.
            let mut completed: Option<(SinkSnapshot, u32)> = None;
            let mut taken: Vec<(CheckpointId, SinkSnapshot, u32)> = Vec::new();
            let (mut next_record, mut next_id, mut now) = (0u32, 1u64, 0u64);
            let mut unnotified = None;
            let mut attempt = 0;
            for step in steps {
                now += 7;
                match step {
                    0..=5 => {
                        files.apply(tracker.before_write(30, now));
                        let part = files.writing.expect("a part is open");
                        files.in_progress.get_mut(&part).unwrap().push(next_record);
                        next_record += 1;
                    }
                    6 => {
                        let (ops, snap) = tracker.snapshot(next_id);
                        files.apply(ops);
                        taken.push((next_id, snap, next_record));
                        next_id += 1;
                    }
                    7 => if let Some((id, snap, position)) = taken.pop() {
                        // The metadata of the newest is durable (older ones are
                        // subsumed); the notification may not arrive before a crash.
                        taken.clear();
                        completed = Some((snap, position));
                        unnotified = Some(id);
                    },
                    8 => if let Some(id) = unnotified.take() {
                        files.apply(tracker.notify_complete(id));
                    },
                    crash => {
                        // Restart from the last completed checkpoint: in-process as
                        // the next attempt, or as a new run (attempt 0 again).
                        attempt = if crash == 9 { attempt + 1 } else { 0 };
                        let writer = Writer { subtask: 0, attempt };
                        let (snap, position) = completed.clone().map_or((None, 0), |(s, p)| (Some(s), p));
                        let (restored, ops) = PartTracker::restore(
                            policy(),
                            writer,
                            snap.into_iter().collect(),
                            files.first_free(writer),
                        );
                        tracker = restored;
                        files.writing = None;
                        files.apply(ops);
                        taken.clear();
                        unnotified = None;
                        next_record = position;
                    }
                }
            }
            let (ops, _) = tracker.snapshot(next_id);
            files.apply(ops);
            files.apply(tracker.notify_complete(next_id));
            let all: Vec<u32> = files.visible.values().flatten().copied().collect();
            let unique: BTreeSet<u32> = all.iter().copied().collect();
            prop_assert_eq!(all.len(), unique.len(), "duplicates: {:?}", all);
            prop_assert_eq!(unique, (0..next_record).collect::<BTreeSet<_>>());
            prop_assert!(files.pending.is_empty() && files.in_progress.is_empty());
        }
    }
}
