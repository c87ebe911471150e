//! A subtask's input gate: one queue per input channel, served round robin.
//!
//! A blocked channel (a barrier arrived on it during alignment) yields nothing: its
//! events stay queued and, since credits are returned only for processed batches, its
//! sender soon runs out of credit, so what piles up is bounded by the channel's
//! capacity. Order within a channel is always kept.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct InputGate<E> {
    queues: Vec<VecDeque<E>>,
    blocked: Vec<bool>,
    next: usize,
}

impl<E> InputGate<E> {
    pub fn new(channels: usize) -> Self {
        InputGate {
            queues: (0..channels).map(|_| VecDeque::new()).collect(),
            blocked: vec![false; channels],
            next: 0,
        }
    }

    pub fn push(&mut self, channel: usize, event: E) {
        self.queues[channel].push_back(event);
    }

    /// Puts an event back ahead of the channel's queue (the part of a batch that was
    /// not processed yet).
    pub fn push_front(&mut self, channel: usize, event: E) {
        self.queues[channel].push_front(event);
    }

    /// The next event of an unblocked channel, channels taken in turn.
    pub fn pop(&mut self) -> Option<(usize, E)> {
        let n = self.queues.len();
        for offset in 0..n {
            let channel = (self.next + offset) % n;
            if self.blocked[channel] {
                continue;
            }
            if let Some(event) = self.queues[channel].pop_front() {
                self.next = (channel + 1) % n;
                return Some((channel, event));
            }
        }
        None
    }

    pub fn channels(&self) -> usize {
        self.queues.len()
    }

    pub fn block(&mut self, channel: usize) {
        self.blocked[channel] = true;
    }

    pub fn unblock_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// Events queued on a channel, oldest first (for channel state).
    pub fn queued(&self, channel: usize) -> impl Iterator<Item = &E> {
        self.queues[channel].iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn serves_channels_in_turn_and_holds_blocked_ones() {
        let mut gate = InputGate::new(2);
        for e in [1, 2, 3] {
            gate.push(0, e);
        }
        gate.push(1, 10);
        assert_eq!(gate.pop(), Some((0, 1)));
        assert_eq!(gate.pop(), Some((1, 10)));
        gate.block(0);
        assert_eq!(gate.pop(), None);
        assert_eq!(gate.queued(0).copied().collect::<Vec<_>>(), vec![2, 3]);
        gate.unblock_all();
        assert_eq!(gate.pop(), Some((0, 2)));
    }

    proptest! {
        /// Whatever is pushed, blocked and unblocked (and popped events put back in
        /// front, as a batch cut short): each channel's events come out in order,
        /// never while blocked, and none is lost.
        #[test]
        fn per_channel_order_and_no_loss(ops in proptest::collection::vec((0u8..5, 0usize..3), 0..200)) {
            let mut gate = InputGate::new(3);
            let (mut next_event, mut out) = (0u32, vec![Vec::new(); 3]);
            let mut pushed = vec![Vec::new(); 3];
            for (op, channel) in ops {
                match op {
                    0 | 1 => { gate.push(channel, next_event); pushed[channel].push(next_event); next_event += 1; }
                    2 => if let Some((c, e)) = gate.pop() {
                        prop_assert!(!gate.blocked[c]);
                        out[c].push(e);
                    },
                    3 => if let Some((c, e)) = gate.pop() {
                        gate.push_front(c, e);
                    },
                    _ => if channel == 0 { gate.unblock_all() } else { gate.block(channel) },
                }
            }
            gate.unblock_all();
            while let Some((c, e)) = gate.pop() { out[c].push(e); }
            prop_assert_eq!(out, pushed);
        }
    }
}
