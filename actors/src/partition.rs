//! Choosing the receiving subtask of each record on a network edge.

use std::sync::Arc;
use weir_state::key_group::{key_group_of_hash, subtask_for_key_group};

/// The stable hash of a record's key (see `weir_state::key_group`).
pub type KeyHashFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

pub enum Partitioner<T> {
    /// Every record to the single receiver.
    Forward,
    /// Round robin, starting at the sender's own index so senders spread out.
    Rebalance { next: usize, receivers: usize },
    /// By key group: the owner of `hash(key) % max_parallelism`.
    Key {
        hash: KeyHashFn<T>,
        max_parallelism: u32,
        receivers: u32,
    },
    /// Every record to every receiver.
    Broadcast { receivers: usize },
}

impl<T> Partitioner<T> {
    /// The receiver of a record; `None` for broadcast (all of them).
    #[inline]
    pub fn select(&mut self, record: &T) -> Option<usize> {
        match self {
            Partitioner::Forward => Some(0),
            Partitioner::Rebalance { next, receivers } => {
                let chosen = *next;
                *next = if chosen + 1 == *receivers {
                    0
                } else {
                    chosen + 1
                };
                Some(chosen)
            }
            Partitioner::Key {
                hash,
                max_parallelism,
                receivers,
            } => {
                let key_group = key_group_of_hash(hash(record), *max_parallelism);
                Some(subtask_for_key_group(key_group, *max_parallelism, *receivers) as usize)
            }
            Partitioner::Broadcast { .. } => None,
        }
    }

    pub fn receivers(&self) -> usize {
        match self {
            Partitioner::Forward => 1,
            Partitioner::Rebalance { receivers, .. } | Partitioner::Broadcast { receivers } => {
                *receivers
            }
            Partitioner::Key { receivers, .. } => *receivers as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::key_group::{hash_key, KeyGroupRange};

    #[test]
    fn rebalance_cycles_through_receivers() {
        let mut p = Partitioner::<u32>::Rebalance {
            next: 1,
            receivers: 3,
        };
        let chosen: Vec<_> = (0..6).map(|r| p.select(&r).unwrap()).collect();
        assert_eq!(chosen, vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn key_partitioning_sends_each_key_to_the_owner_of_its_key_group() {
        let mut p = Partitioner::<u64>::Key {
            hash: Arc::new(hash_key::<u64>),
            max_parallelism: 128,
            receivers: 3,
        };
        for key in 0..10_000u64 {
            let receiver = p.select(&key).unwrap() as u32;
            let key_group = (hash_key(&key) % 128) as u16;
            assert!(KeyGroupRange::for_subtask(receiver, 3, 128).contains(key_group));
        }
    }
}
