//! Retention bookkeeping, I/O-free: which checkpoints to drop, and which shared
//! files become unreferenced when they go.
//!
//! Invariant: a shared file is deleted only when its reference count (the number of
//! retained completed checkpoints listing it) drops to zero, and a new checkpoint's
//! references are registered before older checkpoints are released, so a file reused
//! by the newest checkpoint never passes through zero.

use std::collections::BTreeMap;

/// The oldest completed checkpoints beyond the newest `retain` (ids ascending).
pub fn checkpoints_to_drop(completed_ascending: &[u64], retain: usize) -> Vec<u64> {
    let excess = completed_ascending.len().saturating_sub(retain.max(1));
    completed_ascending[..excess].to_vec()
}

#[derive(Debug, Clone, Default)]
pub struct SharedRegistry {
    refs: BTreeMap<String, usize>,
    by_checkpoint: BTreeMap<u64, Vec<String>>,
}

impl SharedRegistry {
    /// Records that `checkpoint_id` references `files` (deduplicated per checkpoint).
    pub fn register(&mut self, checkpoint_id: u64, files: &[String]) {
        let mut files = files.to_vec();
        files.sort();
        files.dedup();
        for f in &files {
            *self.refs.entry(f.clone()).or_default() += 1;
        }
        if let Some(old) = self.by_checkpoint.insert(checkpoint_id, files) {
            // Registering the same checkpoint twice must not leak references.
            for f in old {
                self.decrement(&f);
            }
        }
    }

    /// Forgets a checkpoint; returns the files no retained checkpoint references now.
    pub fn release(&mut self, checkpoint_id: u64) -> Vec<String> {
        let files = self
            .by_checkpoint
            .remove(&checkpoint_id)
            .unwrap_or_default();
        files.into_iter().filter(|f| self.decrement(f)).collect()
    }

    fn decrement(&mut self, file: &str) -> bool {
        match self.refs.get_mut(file) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.refs.remove(file);
                true
            }
            None => false,
        }
    }

    pub fn is_referenced(&self, file: &str) -> bool {
        self.refs.contains_key(file)
    }

    pub fn referenced(&self) -> impl Iterator<Item = &String> {
        self.refs.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn keeps_the_newest() {
        assert_eq!(checkpoints_to_drop(&[1, 2, 3, 4, 5], 3), vec![1, 2]);
        assert_eq!(checkpoints_to_drop(&[4], 3), Vec::<u64>::new());
        assert_eq!(
            checkpoints_to_drop(&[1, 2], 0),
            vec![1],
            "at least one is retained"
        );
    }

    proptest! {
        /// Model: after every step, the live (not deleted) shared files are exactly the
        /// union of the files of the retained checkpoints.
        #[test]
        fn deleted_files_are_exactly_the_unreferenced_ones(
            steps in proptest::collection::vec(proptest::collection::vec(0u8..12, 0..6), 1..60),
            retain in 1usize..5,
        ) {
            let mut reg = SharedRegistry::default();
            let mut retained: Vec<(u64, BTreeSet<String>)> = Vec::new();
            let mut live: BTreeSet<String> = BTreeSet::new();
            for (i, files) in steps.iter().enumerate() {
                let id = i as u64 + 1;
                let files: BTreeSet<String> = files.iter().map(|f| format!("f{f}")).collect();
                let list: Vec<String> = files.iter().cloned().collect();
                live.extend(list.iter().cloned());
                reg.register(id, &list);
                retained.push((id, files));
                let ids: Vec<u64> = retained.iter().map(|(id, _)| *id).collect();
                for drop_id in checkpoints_to_drop(&ids, retain) {
                    for f in reg.release(drop_id) {
                        prop_assert!(live.remove(&f), "deleted twice: {}", f);
                    }
                    retained.retain(|(id, _)| *id != drop_id);
                }
                let expected: BTreeSet<String> = retained.iter().flat_map(|(_, f)| f.iter().cloned()).collect();
                prop_assert_eq!(&live, &expected);
            }
        }
    }
}
