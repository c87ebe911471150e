//! Key groups: the unit of keyed-state ownership and of rescaling.
//!
//! A key is hashed from its postcard-serialized bytes with XXH3-64 (seed 0), a
//! specified, platform-independent function, so a key lands in the same key group in
//! every process, on every platform and in every weir version (pinned by a test
//! vector below; changing it breaks every existing checkpoint).
//!
//! `key_group = hash % max_parallelism`. Subtask `i` of `p` owns the contiguous range
//! `[ceil(i*maxP/p), ceil((i+1)*maxP/p))`, exactly as Flink assigns them, so rescaling
//! moves whole key groups and a key group's owner is `kg * p / maxP`.

use serde::Serialize;
use std::cell::RefCell;
use std::ops::Range;

/// Upper bound for `max_parallelism`: key groups are stored as 2 big-endian bytes.
pub const MAX_MAX_PARALLELISM: u32 = 1 << 15;

/// Default `max_parallelism` when a job does not set one (Flink's lower default).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// A key group index in `0..max_parallelism`.
pub type KeyGroup = u16;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The stable 64-bit hash of raw key bytes.
pub fn hash_key_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The stable 64-bit hash of a key: XXH3-64 of its postcard encoding.
pub fn hash_key<K: Serialize + ?Sized>(key: &K) -> u64 {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        let bytes = postcard::to_extend(key, std::mem::take(&mut *buf))
            .expect("serializing a key into a Vec cannot fail for serde-derived keys");
        let hash = hash_key_bytes(&bytes);
        *buf = bytes;
        hash
    })
}

/// The key group of a key hash.
pub fn key_group_of_hash(hash: u64, max_parallelism: u32) -> KeyGroup {
    debug_assert!(max_parallelism > 0 && max_parallelism <= MAX_MAX_PARALLELISM);
    (hash % u64::from(max_parallelism)) as KeyGroup
}

/// The key group of a key.
pub fn key_group_of<K: Serialize + ?Sized>(key: &K, max_parallelism: u32) -> KeyGroup {
    key_group_of_hash(hash_key(key), max_parallelism)
}

/// The subtask (of `parallelism`) that owns `key_group`.
pub fn subtask_for_key_group(key_group: KeyGroup, max_parallelism: u32, parallelism: u32) -> u32 {
    debug_assert!(parallelism > 0 && parallelism <= max_parallelism);
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// A contiguous range of key groups owned by one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    /// First key group (inclusive).
    pub start: KeyGroup,
    /// One past the last key group (exclusive).
    pub end: KeyGroup,
}

impl KeyGroupRange {
    /// The range that subtask `index` of `parallelism` owns.
    pub fn for_subtask(index: u32, parallelism: u32, max_parallelism: u32) -> Self {
        assert!(parallelism > 0 && parallelism <= max_parallelism && index < parallelism);
        let bound = |i: u32| -> KeyGroup {
            (u64::from(i) * u64::from(max_parallelism)).div_ceil(u64::from(parallelism)) as KeyGroup
        };
        KeyGroupRange {
            start: bound(index),
            end: bound(index + 1),
        }
    }

    /// Every key group of a job with `max_parallelism`.
    pub fn all(max_parallelism: u32) -> Self {
        KeyGroupRange {
            start: 0,
            end: max_parallelism as KeyGroup,
        }
    }

    pub fn contains(&self, key_group: KeyGroup) -> bool {
        (self.start..self.end).contains(&key_group)
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn iter(&self) -> Range<KeyGroup> {
        self.start..self.end
    }

    /// The overlap of two ranges, empty if they are disjoint.
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end).max(start);
        KeyGroupRange { start, end }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_pinned_across_versions() {
        // If this fails, existing checkpoints no longer map keys to the same key groups.
        assert_eq!(hash_key_bytes(b""), 0x2d06800538d394c2);
        assert_eq!(
            hash_key(&"word"),
            hash_key_bytes(&[4, b'w', b'o', b'r', b'd'])
        );
        assert_eq!(hash_key(&42u64), hash_key_bytes(&[42]));
        assert_eq!(
            key_group_of(&42u64, 128),
            (hash_key_bytes(&[42]) % 128) as u16
        );
    }

    #[test]
    fn ranges_match_flink_for_uneven_split() {
        let ranges: Vec<_> = (0..3)
            .map(|i| KeyGroupRange::for_subtask(i, 3, 128))
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(ranges, vec![(0, 43), (43, 86), (86, 128)]);
    }

    proptest! {
        #[test]
        fn ranges_partition_all_key_groups_and_agree_with_owner(
            max_p in 1u32..=4096, p_seed in 1u32..=4096,
        ) {
            let p = 1 + p_seed % max_p;
            let mut next = 0u16;
            for i in 0..p {
                let range = KeyGroupRange::for_subtask(i, p, max_p);
                prop_assert_eq!(range.start, next);
                for kg in range.iter() {
                    prop_assert_eq!(subtask_for_key_group(kg, max_p, p), i);
                }
                next = range.end;
            }
            prop_assert_eq!(u32::from(next), max_p);
        }
    }
}
