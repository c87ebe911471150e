//! A subtask's network endpoints: its output channels (credit-gated, see `flow`) and
//! the way back to the senders of its input channels (for credits).

use crate::checkpoint::coordinator::CheckpointId;
use crate::flow::{ChannelEvent, OutputChannel};
use actix::{Message, Recipient};
use std::any::Any;

/// A batch of records of the edge's type, `Vec<T>` behind the erasure.
pub type AnyBatch = Box<dyn Any + Send>;

/// An event arriving on input channel `channel` of the receiving subtask.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub channel: usize,
    pub event: ChannelEvent<AnyBatch>,
}

/// The receiver of output channel `channel` processed `batches` batches.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Credit {
    pub channel: usize,
    pub batches: usize,
}

/// Where one output channel leads.
#[derive(Clone)]
pub struct OutputTarget {
    pub receiver: Recipient<Deliver>,
    pub input_channel: usize,
}

/// Where one input channel comes from.
#[derive(Clone)]
pub struct InputSource {
    pub sender: Recipient<Credit>,
    pub output_channel: usize,
}

/// The output side of a subtask.
pub struct Network {
    channels: Vec<OutputChannel<AnyBatch>>,
    targets: Vec<OutputTarget>,
    waiting: usize,
    /// Set when a partly filled batch waits in a network output buffer.
    pub has_partial: bool,
}

impl Network {
    pub fn new(targets: Vec<OutputTarget>, capacity: usize) -> Self {
        Network {
            channels: targets
                .iter()
                .map(|_| OutputChannel::new(capacity))
                .collect(),
            targets,
            waiting: 0,
            has_partial: false,
        }
    }

    /// Queue an event on a channel and send whatever its credits allow.
    pub fn send(&mut self, channel: usize, event: ChannelEvent<AnyBatch>) {
        let before = self.channels[channel].queued();
        self.channels[channel].push(event);
        self.pump(channel, before);
    }

    /// Send an event ahead of everything waiting for credit on the channel.
    pub fn send_first(&mut self, channel: usize, event: ChannelEvent<AnyBatch>) {
        let before = self.channels[channel].queued();
        self.channels[channel].push_front(event);
        self.pump(channel, before);
    }

    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// The batches waiting for credit on a channel, oldest first.
    pub fn queued_batches(&self, channel: usize) -> impl Iterator<Item = &AnyBatch> {
        self.channels[channel].queued_batches()
    }

    /// Whether the barrier of checkpoint `id` still waits for credit on some channel.
    pub fn holds_barrier(&self, id: CheckpointId) -> bool {
        self.channels.iter().any(|c| c.holds_barrier(id))
    }

    /// Sends the waiting barrier of checkpoint `id`, turned unaligned, ahead of the
    /// batches before it on every channel where it waits: per channel, how many
    /// batches it overtook (the first ones of `queued_batches`).
    pub fn overtake_barrier(&mut self, id: CheckpointId) -> Vec<usize> {
        (0..self.channels.len())
            .map(|channel| {
                let before = self.channels[channel].queued();
                let overtaken = self.channels[channel].overtake_barrier(id);
                self.pump(channel, before);
                overtaken.unwrap_or(0)
            })
            .collect()
    }

    /// Credits came back: send what was waiting for them.
    pub fn grant(&mut self, channel: usize, batches: usize) {
        let before = self.channels[channel].queued();
        self.channels[channel].grant(batches);
        self.pump(channel, before);
    }

    /// Sends what the credits allow; `before` was the channel's queue length when the
    /// caller last counted it into `waiting`.
    fn pump(&mut self, channel: usize, before: usize) {
        let target = &self.targets[channel];
        self.channels[channel].take_sendable(|event| {
            // Credits bound what is in flight, so the mailbox bound is not needed. A
            // receiver that is gone has failed or been cancelled; the job master learns
            // of that from the receiver's own report.
            target.receiver.do_send(Deliver {
                channel: target.input_channel,
                event,
            });
        });
        let after = self.channels[channel].queued();
        self.waiting = self.waiting + after - before;
    }

    /// True when some event waits for credit: the subtask must not process input.
    pub fn is_blocked(&self) -> bool {
        self.waiting > 0
    }
}
