//! The checkpoint side of a subtask: acknowledging with state handles, carrying out
//! what the barrier handler decides, and, for unaligned checkpoints, keeping the
//! in-flight records (see `channel_state.rs`) until every channel delivered its
//! barrier.

use crate::channel_state::{ChannelIo, ChannelState, InputRecorder};
use crate::checkpoint::barrier::{Action, BarrierHandler};
use crate::checkpoint::coordinator::{Barrier, CheckpointId};
use crate::error::StageError;
use crate::flow::ChannelEvent;
use crate::gate::InputGate;
use crate::graph::CHANNELS;
use crate::master::{CheckpointAcked, CheckpointDeclined, JobMaster, SnapshotTimes};
use crate::network::{AnyBatch, Network};
use crate::stage::{file_safe, PendingSnapshot};
use actix::Addr;
use std::time::{Duration, Instant};
use weir_state::handle::SubtaskSnapshot;
use weir_state::storage::checkpoint_dir;
use weir_state::AsyncSnapshot;

/// Where a subtask acknowledges checkpoints.
#[derive(Clone)]
pub(super) struct AckTo {
    pub master: Addr<JobMaster>,
    pub subtask: usize,
    pub index: u32,
    pub attempt: u32,
    pub name: String,
}

impl AckTo {
    pub fn decline(&self, id: CheckpointId, why: &str) {
        let reason = format!("{} ({}) {why}", self.name, self.index);
        self.master.do_send(CheckpointDeclined {
            id,
            attempt: self.attempt,
            subtask: self.subtask,
            reason,
            finished: false,
        });
    }

    pub fn decline_finished(&self, id: CheckpointId) {
        let reason = format!("{} ({}) has finished", self.name, self.index);
        self.master.do_send(CheckpointDeclined {
            id,
            attempt: self.attempt,
            subtask: self.subtask,
            reason,
            finished: true,
        });
    }

    /// Runs the asynchronous parts of the snapshot off the actor's thread, then
    /// acknowledges (or declines) the checkpoint.
    pub fn acknowledge(
        &self,
        id: CheckpointId,
        pending: Vec<PendingSnapshot>,
        mut times: SnapshotTimes,
    ) {
        let to = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weir-snapshot-{id}"))
            .spawn(move || {
                let started = Instant::now();
                let written: Result<Vec<_>, String> = pending
                    .into_iter()
                    .map(|p| {
                        p.snapshot
                            .run()
                            .map(|s| (p.operator, to.index, s))
                            .map_err(|e| e.to_string())
                    })
                    .collect();
                times.asynchronous = started.elapsed();
                match written {
                    Ok(snapshots) => to.master.do_send(CheckpointAcked {
                        id,
                        subtask: to.subtask,
                        snapshots,
                        times,
                    }),
                    Err(reason) => {
                        to.decline(id, &format!("could not write its snapshot: {reason}"))
                    }
                }
            });
        if let Err(e) = spawned {
            self.decline(id, &format!("could not start a snapshot thread: {e}"));
        }
    }
}

/// An unaligned snapshot whose input side is still being recorded.
struct Unaligned {
    id: CheckpointId,
    pending: Vec<PendingSnapshot>,
    outputs: Vec<Vec<Vec<u8>>>,
    inputs: InputRecorder,
    times: SnapshotTimes,
}

/// An aligned snapshot whose barrier still waits for credit behind queued output
/// (aligned with timeout): acknowledged once the barrier has left, or, at the
/// deadline, unaligned, with the batches the barrier then overtakes as output
/// channel state.
struct AwaitingSend {
    id: CheckpointId,
    pending: Vec<PendingSnapshot>,
    times: SnapshotTimes,
    deadline: Instant,
}

/// A subtask's part in checkpoints.
pub(super) struct Checkpointing {
    pub ack_to: AckTo,
    pub barriers: BarrierHandler,
    /// The newest barrier received: a snapshot is always of its checkpoint (older
    /// ones were subsumed), and takes its kind.
    pub latest: Barrier,
    pub channels: Option<ChannelIo>,
    unaligned: Option<Unaligned>,
    /// Oldest first.
    awaiting_send: Vec<AwaitingSend>,
    /// When the first barrier of the newest checkpoint arrived.
    first_barrier: Instant,
}

impl Checkpointing {
    pub fn new(ack_to: AckTo, barriers: BarrierHandler, channels: Option<ChannelIo>) -> Self {
        Checkpointing {
            ack_to,
            barriers,
            latest: Barrier::checkpoint(0),
            channels,
            unaligned: None,
            awaiting_send: Vec::new(),
            first_barrier: Instant::now(),
        }
    }

    pub fn saw(&mut self, barrier: Barrier) {
        if barrier.id > self.latest.id {
            self.first_barrier = Instant::now();
        }
        if barrier.id >= self.latest.id {
            self.latest = barrier;
        }
    }

    fn failure(&self, cause: String) -> StageError {
        StageError {
            operator: self.ack_to.name.clone(),
            subtask: self.ack_to.index,
            cause,
        }
    }

    /// An input batch arrived on `channel`: keep it if it precedes its barrier in an
    /// unaligned checkpoint being recorded.
    pub fn on_batch(&mut self, channel: usize, batch: &AnyBatch) -> Result<(), StageError> {
        let Some(unaligned) = self.unaligned.as_mut() else {
            return Ok(());
        };
        if !unaligned.inputs.is_recording(channel) {
            return Ok(());
        }
        let codec = self.channels.as_ref().and_then(|c| c.input.clone());
        let codec = codec.expect("a subtask with input channels has an input codec");
        let encoded = codec.encode(batch).map_err(|e| self.failure(e))?;
        self.unaligned
            .as_mut()
            .expect("recording")
            .inputs
            .add(channel, encoded);
        Ok(())
    }

    /// The batches waiting for credit on every output channel, encoded: what an
    /// unaligned barrier just overtook.
    fn overtaken_output(&self, net: &Network) -> Result<Vec<Vec<Vec<u8>>>, StageError> {
        self.encode_output(net, &vec![usize::MAX; net.channels()])
    }

    /// The first `take[channel]` batches waiting for credit on each output channel,
    /// encoded.
    fn encode_output(
        &self,
        net: &Network,
        take: &[usize],
    ) -> Result<Vec<Vec<Vec<u8>>>, StageError> {
        let codec = self.channels.as_ref().and_then(|c| c.output.clone());
        (0..net.channels())
            .map(|channel| {
                net.queued_batches(channel)
                    .take(take[channel])
                    .map(|batch| {
                        let codec = codec.as_ref().expect("output channels have a codec");
                        codec.encode(batch).map_err(|e| self.failure(e))
                    })
                    .collect()
            })
            .collect()
    }

    /// A source's snapshot (or the final one): nothing on the input side.
    pub fn snapshot_without_inputs(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        checkpoint: impl FnOnce(
            Barrier,
            &mut Network,
            &mut Vec<PendingSnapshot>,
        ) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let started = Instant::now();
        let mut pending = Vec::new();
        checkpoint(barrier, net, &mut pending)?;
        let mut times = SnapshotTimes::default();
        if barrier.unaligned {
            let outputs = self.overtaken_output(net)?;
            self.push_output_state(barrier.id, outputs, &mut pending, &mut times);
        }
        times.sync = started.elapsed();
        self.acknowledge_when_sent(barrier, started, net, pending, times);
        Ok(())
    }

    /// Acknowledges a snapshot, or, when its aligned barrier may still switch to
    /// unaligned and waits for credit behind queued output, once it has left.
    fn acknowledge_when_sent(
        &mut self,
        barrier: Barrier,
        started: Instant,
        net: &Network,
        pending: Vec<PendingSnapshot>,
        times: SnapshotTimes,
    ) {
        match self.barriers.switch_timeout(&barrier) {
            Some(timeout_ms) if net.holds_barrier(barrier.id) => {
                self.awaiting_send.push(AwaitingSend {
                    id: barrier.id,
                    pending,
                    times,
                    deadline: started + Duration::from_millis(timeout_ms),
                })
            }
            _ => self.ack_to.acknowledge(barrier.id, pending, times),
        }
    }

    /// Credits came back: acknowledges the snapshots whose barrier has now left.
    pub fn on_output_progress(&mut self, net: &Network) {
        if self.awaiting_send.is_empty() {
            return;
        }
        let (sent, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_send)
            .into_iter()
            .partition(|a| !net.holds_barrier(a.id));
        self.awaiting_send = waiting;
        for a in sent {
            self.ack_to.acknowledge(a.id, a.pending, a.times);
        }
    }

    /// When the oldest barrier waiting for credit must overtake its queue.
    pub fn send_deadline(&self) -> Option<Instant> {
        self.awaiting_send.iter().map(|a| a.deadline).min()
    }

    /// Barriers that waited for credit past their deadline overtake the batches
    /// ahead of them, which become output channel state; then their snapshots are
    /// acknowledged.
    pub fn overtake_due(&mut self, net: &mut Network, now: Instant) -> Result<(), StageError> {
        while let Some(at) = self.awaiting_send.iter().position(|a| a.deadline <= now) {
            let AwaitingSend {
                id,
                mut pending,
                mut times,
                ..
            } = self.awaiting_send.remove(at);
            let overtaken = net.overtake_barrier(id);
            let outputs = self.encode_output(net, &overtaken)?;
            tracing::debug!(subtask = %self.ack_to.name, index = self.ack_to.index, checkpoint = id, "barrier waited too long for credit: it overtakes the output queued ahead of it");
            self.push_output_state(id, outputs, &mut pending, &mut times);
            self.ack_to.acknowledge(id, pending, times);
        }
        Ok(())
    }

    /// The coordinator aborted checkpoint `id`: a snapshot waiting to be
    /// acknowledged is dropped.
    pub fn on_aborted(&mut self, id: CheckpointId) {
        self.awaiting_send.retain(|a| a.id != id);
    }

    /// Carries out what the barrier handler decided; `checkpoint` runs the chain's
    /// checkpoint pass (snapshots, then the barrier downstream).
    pub fn apply(
        &mut self,
        actions: Vec<Action>,
        gate: &mut InputGate<ChannelEvent<AnyBatch>>,
        net: &mut Network,
        mut checkpoint: impl FnMut(
            Barrier,
            &mut Network,
            &mut Vec<PendingSnapshot>,
        ) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        for action in actions {
            match action {
                Action::Block(channel) => gate.block(channel),
                Action::UnblockAll => gate.unblock_all(),
                Action::Snapshot {
                    id,
                    unaligned: false,
                } => {
                    debug_assert_eq!(id, self.latest.id);
                    let started = Instant::now();
                    let mut pending = Vec::new();
                    let barrier = Barrier {
                        unaligned: false,
                        ..self.latest
                    };
                    checkpoint(barrier, net, &mut pending)?;
                    let times = SnapshotTimes {
                        alignment: started.duration_since(self.first_barrier),
                        sync: started.elapsed(),
                        ..SnapshotTimes::default()
                    };
                    let first_barrier = self.first_barrier;
                    self.acknowledge_when_sent(barrier, first_barrier, net, pending, times);
                }
                Action::Snapshot {
                    id,
                    unaligned: true,
                } => {
                    let barrier = Barrier {
                        unaligned: true,
                        ..self.latest
                    };
                    debug_assert_eq!(id, barrier.id);
                    let started = Instant::now();
                    let mut pending = Vec::new();
                    checkpoint(barrier, net, &mut pending)?;
                    let outputs = self.overtaken_output(net)?;
                    let times = SnapshotTimes {
                        alignment: started.duration_since(self.first_barrier),
                        sync: started.elapsed(),
                        unaligned: true,
                        ..SnapshotTimes::default()
                    };
                    self.unaligned = Some(Unaligned {
                        id,
                        pending,
                        outputs,
                        inputs: InputRecorder::new(gate.channels()),
                        times,
                    });
                }
                Action::RecordQueued { channel, id } => self.record_queued(gate, channel, id)?,
                Action::Record(channel) => {
                    self.record_queued(gate, channel, self.latest.id)?;
                    if let Some(unaligned) = self.unaligned.as_mut() {
                        unaligned.inputs.start(channel);
                    }
                }
                Action::StopRecording(channel) => {
                    if let Some(unaligned) = self.unaligned.as_mut() {
                        unaligned.inputs.stop(channel);
                    }
                }
                Action::ChannelStateComplete { id } => {
                    if let Some(unaligned) = self.unaligned.take() {
                        debug_assert_eq!(unaligned.id, id);
                        let mut pending = unaligned.pending;
                        let state = ChannelState {
                            inputs: unaligned.inputs.finish(),
                            outputs: unaligned.outputs,
                        };
                        let times = SnapshotTimes {
                            channel_bytes: state.bytes() as u64,
                            ..unaligned.times
                        };
                        self.push_channel_state(id, state, &mut pending);
                        self.ack_to.acknowledge(id, pending, times);
                    }
                }
                // A newer barrier subsumes the older checkpoint (or the coordinator
                // aborted it): what was kept for it is dropped; the coordinator
                // aborts it quietly (a decline would count as a failure).
                Action::Abort { id } => {
                    if self.unaligned.as_ref().is_some_and(|u| u.id == id) {
                        self.unaligned = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the batches queued on `channel` ahead of its barrier `id` (all of them
    /// when that barrier is not queued) as input channel state.
    fn record_queued(
        &mut self,
        gate: &InputGate<ChannelEvent<AnyBatch>>,
        channel: usize,
        id: CheckpointId,
    ) -> Result<(), StageError> {
        let codec = self.channels.as_ref().and_then(|c| c.input.clone());
        let mut encoded = Vec::new();
        for event in gate.queued(channel) {
            match event {
                ChannelEvent::Batch(batch) => {
                    let codec = codec.as_ref().expect("input channels have a codec");
                    encoded.push(codec.encode(batch).map_err(|e| self.failure(e))?);
                }
                ChannelEvent::Barrier(barrier) if barrier.id >= id => break,
                _ => {}
            }
        }
        let unaligned = self
            .unaligned
            .as_mut()
            .expect("recording after the snapshot");
        for batch in encoded {
            unaligned.inputs.add(channel, batch);
        }
        Ok(())
    }

    /// An unaligned snapshot without input side: the output its barrier overtook is
    /// its channel state.
    fn push_output_state(
        &self,
        id: CheckpointId,
        outputs: Vec<Vec<Vec<u8>>>,
        pending: &mut Vec<PendingSnapshot>,
        times: &mut SnapshotTimes,
    ) {
        let state = ChannelState {
            inputs: Vec::new(),
            outputs,
        };
        times.channel_bytes = state.bytes() as u64;
        times.unaligned = true;
        self.push_channel_state(id, state, pending);
    }

    /// Adds the asynchronous write of the channel state (if any) to `pending`.
    fn push_channel_state(
        &self,
        id: CheckpointId,
        state: ChannelState,
        pending: &mut Vec<PendingSnapshot>,
    ) {
        if state.is_empty() {
            return;
        }
        let channels = self
            .channels
            .as_ref()
            .expect("a subtask with channel state has its channel io");
        let storage = channels.storage.clone();
        let path = format!(
            "{}/{}-{}.channels",
            checkpoint_dir(id),
            file_safe(&channels.operator),
            self.ack_to.index
        );
        tracing::debug!(checkpoint = id, subtask = %self.ack_to.name, bytes = state.bytes(), "in-flight records kept");
        pending.push(PendingSnapshot {
            operator: channels.operator.clone(),
            snapshot: AsyncSnapshot::new(move || {
                let file = storage.write_file(&path, &state.encode())?;
                Ok(SubtaskSnapshot {
                    keyed: None,
                    operator: None,
                    extra: vec![(CHANNELS.to_string(), file)],
                })
            }),
        });
    }
}
