//! Credit-based flow control for one output channel, as an I/O-free state machine.
//!
//! A sender starts with `capacity` credits per channel. Every data batch it sends
//! costs one credit; the receiver grants a credit back when it has *processed* a batch
//! from that channel. A batch without a credit waits in the channel's queue, and a
//! subtask with a waiting batch on any channel stops processing input, so it stops
//! granting credits upstream: pressure travels back to the sources and the data in
//! flight per channel stays below `capacity` batches (+ what one input batch produced).
//!
//! Events (end of input; barriers later) cost no credit but keep their place in the
//! queue behind the data that precedes them.

use std::collections::VecDeque;

/// What travels on a channel.
#[derive(Debug)]
pub enum ChannelEvent<B> {
    Batch(B),
    /// No record with an event time at or before this will follow on the channel.
    Watermark(crate::time::watermarks::EventTime),
    /// The channel's source has (no longer) nothing to send: don't wait for its
    /// watermark.
    Idle(bool),
    /// Checkpoint barrier: everything before it belongs to checkpoint `id`.
    Barrier(crate::checkpoint::coordinator::Barrier),
    EndOfInput,
}

/// The sender's view of one channel.
#[derive(Debug)]
pub struct OutputChannel<B> {
    credits: usize,
    queue: VecDeque<ChannelEvent<B>>,
}

impl<B> OutputChannel<B> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a channel needs at least one credit");
        OutputChannel {
            credits: capacity,
            queue: VecDeque::new(),
        }
    }

    /// Queue an event behind everything already queued.
    pub fn push(&mut self, event: ChannelEvent<B>) {
        self.queue.push_back(event);
    }

    /// The receiver processed `n` batches.
    pub fn grant(&mut self, n: usize) {
        self.credits += n;
    }

    /// Take the events that may be sent now, in order.
    pub fn take_sendable(&mut self, mut send: impl FnMut(ChannelEvent<B>)) {
        while let Some(front) = self.queue.front() {
            if matches!(front, ChannelEvent::Batch(_)) {
                if self.credits == 0 {
                    return;
                }
                self.credits -= 1;
            }
            send(self.queue.pop_front().expect("front exists"));
        }
    }

    /// Put an event ahead of everything queued (an unaligned barrier overtaking).
    pub fn push_front(&mut self, event: ChannelEvent<B>) {
        self.queue.push_front(event);
    }

    /// Whether the barrier of checkpoint `id` still waits behind batches.
    pub fn holds_barrier(&self, id: crate::checkpoint::coordinator::CheckpointId) -> bool {
        self.queue
            .iter()
            .any(|e| matches!(e, ChannelEvent::Barrier(b) if b.id == id))
    }

    /// Moves the waiting barrier of checkpoint `id` to the front, turned unaligned:
    /// the number of batches it overtook (they now follow it, first in the queue),
    /// or `None` when it is not waiting here.
    pub fn overtake_barrier(
        &mut self,
        id: crate::checkpoint::coordinator::CheckpointId,
    ) -> Option<usize> {
        let at = self
            .queue
            .iter()
            .position(|e| matches!(e, ChannelEvent::Barrier(b) if b.id == id))?;
        let Some(ChannelEvent::Barrier(barrier)) = self.queue.remove(at) else {
            unreachable!("the event at `at` is the barrier")
        };
        let overtaken = self
            .queue
            .iter()
            .take(at)
            .filter(|e| matches!(e, ChannelEvent::Batch(_)))
            .count();
        self.queue.push_front(ChannelEvent::Barrier(
            crate::checkpoint::coordinator::Barrier {
                unaligned: true,
                ..barrier
            },
        ));
        Some(overtaken)
    }

    /// Events waiting for credit.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The batches waiting for credit, oldest first.
    pub fn queued_batches(&self) -> impl Iterator<Item = &B> {
        self.queue.iter().filter_map(|e| match e {
            ChannelEvent::Batch(b) => Some(b),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(channel: &mut OutputChannel<u32>) -> Vec<Option<u32>> {
        let mut sent = Vec::new();
        channel.take_sendable(|e| {
            sent.push(match e {
                ChannelEvent::Batch(b) => Some(b),
                _ => None,
            })
        });
        sent
    }

    #[test]
    fn an_event_pushed_in_front_overtakes_batches_waiting_for_credit() {
        let mut channel = OutputChannel::new(1);
        for b in 0..3 {
            channel.push(ChannelEvent::Batch(b));
        }
        assert_eq!(drain(&mut channel), vec![Some(0)]);
        channel.push_front(ChannelEvent::EndOfInput);
        assert_eq!(drain(&mut channel), vec![None], "sent without credit");
        assert_eq!(
            channel.queued_batches().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_waiting_barrier_overtakes_the_batches_ahead_of_it_and_turns_unaligned() {
        use crate::checkpoint::coordinator::Barrier;
        let mut channel = OutputChannel::new(1);
        channel.push(ChannelEvent::Batch(0));
        assert_eq!(drain(&mut channel), vec![Some(0)]);
        channel.push(ChannelEvent::Batch(1));
        channel.push(ChannelEvent::Idle(false));
        channel.push(ChannelEvent::Batch(2));
        channel.push(ChannelEvent::Barrier(Barrier::checkpoint(7)));
        channel.push(ChannelEvent::Batch(3));
        assert!(channel.holds_barrier(7) && !channel.holds_barrier(6));
        assert_eq!(channel.overtake_barrier(6), None);
        assert_eq!(channel.overtake_barrier(7), Some(2));
        assert!(matches!(
            channel.queue.front(),
            Some(ChannelEvent::Barrier(b)) if b.id == 7 && b.unaligned
        ));
        assert_eq!(drain(&mut channel), vec![None], "sent without credit");
        assert!(!channel.holds_barrier(7));
        assert_eq!(
            channel.queued_batches().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn batches_wait_for_credit_and_events_keep_their_place() {
        let mut channel = OutputChannel::new(2);
        for b in 0..3 {
            channel.push(ChannelEvent::Batch(b));
        }
        channel.push(ChannelEvent::EndOfInput);
        assert_eq!(drain(&mut channel), vec![Some(0), Some(1)]);
        assert_eq!(channel.queued(), 2);
        channel.grant(1);
        assert_eq!(drain(&mut channel), vec![Some(2), None]);
        assert_eq!(channel.queued(), 0);
    }

    proptest! {
        /// Whatever the interleaving of pushes and grants, in-flight batches never
        /// exceed the capacity, order is kept, and nothing is lost.
        #[test]
        fn in_flight_is_bounded_and_order_kept(
            capacity in 1usize..8,
            steps in proptest::collection::vec(prop_oneof![Just(true), Just(false)], 1..200),
        ) {
            let mut channel = OutputChannel::new(capacity);
            let (mut next, mut in_flight, mut received) = (0u32, 0usize, Vec::new());
            for push in steps {
                if push {
                    channel.push(ChannelEvent::Batch(next));
                    next += 1;
                } else if in_flight > 0 {
                    in_flight -= 1;
                    channel.grant(1);
                }
                for b in drain(&mut channel).into_iter().flatten() {
                    in_flight += 1;
                    received.push(b);
                }
                prop_assert!(in_flight <= capacity);
            }
            while in_flight > 0 {
                in_flight -= 1;
                channel.grant(1);
                for b in drain(&mut channel).into_iter().flatten() {
                    in_flight += 1;
                    received.push(b);
                }
            }
            prop_assert_eq!(received, (0..next).collect::<Vec<_>>());
        }
    }
}
