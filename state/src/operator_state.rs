//! Operator (non-keyed) state: named lists and broadcast maps per subtask.
//!
//! Redistribution on restore, by mode (as in Flink):
//! - `SplitList`: the old subtasks' lists are concatenated in subtask order and cut
//!   into `p` contiguous, near-equal parts (sizes differ by at most one).
//! - `UnionList`: every new subtask gets the concatenation of all lists.
//! - `Broadcast`: every subtask holds the same map; the new subtasks take subtask 0's.
//!
//! Elements are kept as postcard bytes (operator state is small, e.g. source offsets),
//! so redistribution needs no types; the typed handles decode on access.

use crate::backend::AsyncSnapshot;
use crate::error::{Result, StateError};
use crate::handle::OperatorStateHandle;
use crate::storage::{checkpoint_dir, CheckpointStorage};
use crate::value::{decode, encode, StateKey, StateValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

const MAGIC: [u8; 8] = [b'W', b'E', b'I', b'R', b'O', b'P', 0, 1];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedistributionMode {
    SplitList,
    UnionList,
    Broadcast,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OperatorStateFile {
    lists: BTreeMap<String, (RedistributionMode, Vec<Vec<u8>>)>,
    broadcast: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// The part of `total` elements that new subtask `index` of `parallelism` receives
/// under even-split redistribution: `[index*total/p, (index+1)*total/p)`.
pub fn split_range(total: usize, index: usize, parallelism: usize) -> std::ops::Range<usize> {
    (index * total / parallelism)..((index + 1) * total / parallelism)
}

/// Redistributes one list state from the old subtasks' lists (in subtask order).
pub fn redistribute(
    mode: RedistributionMode,
    old: &[Vec<Vec<u8>>],
    index: usize,
    parallelism: usize,
) -> Vec<Vec<u8>> {
    let all: Vec<Vec<u8>> = old.iter().flatten().cloned().collect();
    match mode {
        RedistributionMode::SplitList => all[split_range(all.len(), index, parallelism)].to_vec(),
        RedistributionMode::UnionList => all,
        RedistributionMode::Broadcast => old.first().cloned().unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct OperatorStateStore {
    state: OperatorStateFile,
}

pub struct OperatorListState<T> {
    name: String,
    _types: PhantomData<fn() -> T>,
}

pub struct BroadcastState<K, V> {
    name: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl OperatorStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn list<T>(&mut self, name: &str, mode: RedistributionMode) -> Result<OperatorListState<T>> {
        let entry = self
            .state
            .lists
            .entry(name.to_string())
            .or_insert((mode, Vec::new()));
        if entry.0 != mode {
            return Err(StateError::Registration {
                name: name.into(),
                reason: format!("restored as {:?} but registered as {mode:?}", entry.0),
            });
        }
        Ok(OperatorListState {
            name: name.to_string(),
            _types: PhantomData,
        })
    }

    /// A list split evenly across subtasks on rescaling.
    pub fn list_state<T: StateValue>(&mut self, name: &str) -> Result<OperatorListState<T>> {
        self.list(name, RedistributionMode::SplitList)
    }

    /// A list of which every subtask gets the union on rescaling.
    pub fn union_list_state<T: StateValue>(&mut self, name: &str) -> Result<OperatorListState<T>> {
        self.list(name, RedistributionMode::UnionList)
    }

    pub fn broadcast_state<K: StateKey + Ord, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<BroadcastState<K, V>> {
        self.state.broadcast.entry(name.to_string()).or_default();
        Ok(BroadcastState {
            name: name.to_string(),
            _types: PhantomData,
        })
    }

    /// Every list: its name, redistribution mode and elements (postcard bytes), by
    /// name; for tools that show what a checkpoint holds.
    pub fn lists(&self) -> impl Iterator<Item = (&str, RedistributionMode, &[Vec<u8>])> {
        self.state
            .lists
            .iter()
            .map(|(name, (mode, elements))| (name.as_str(), *mode, elements.as_slice()))
    }

    /// Every broadcast map: its name and number of entries, by name.
    pub fn broadcast_maps(&self) -> impl Iterator<Item = (&str, usize)> {
        self.state
            .broadcast
            .iter()
            .map(|(name, map)| (name.as_str(), map.len()))
    }

    /// Synchronous part: copies the (small) state; the returned part writes the file.
    pub fn snapshot(
        &self,
        checkpoint_id: u64,
        file_prefix: &str,
        storage: Arc<dyn CheckpointStorage>,
    ) -> AsyncSnapshot<OperatorStateHandle> {
        let state = self.state.clone();
        let path = format!(
            "{}/{file_prefix}-operator.state",
            checkpoint_dir(checkpoint_id)
        );
        AsyncSnapshot::new(move || {
            let mut bytes = MAGIC.to_vec();
            crate::value::encode_into(&state, &mut bytes)?;
            Ok(OperatorStateHandle {
                file: storage.write_file(&path, &bytes)?,
            })
        })
    }

    /// The store of new subtask `index` of `parallelism`, from the handles of all old
    /// subtasks (index = old subtask; `None` where an old subtask had no state).
    pub fn restore(
        old: &[Option<OperatorStateHandle>],
        index: usize,
        parallelism: usize,
        storage: &dyn CheckpointStorage,
    ) -> Result<Self> {
        let mut files = Vec::new();
        for handle in old.iter().flatten() {
            let bytes = storage.read_file(&handle.file)?;
            if bytes.get(..8) != Some(&MAGIC[..]) {
                return Err(StateError::corrupt(
                    &handle.file.path,
                    "bad magic or unsupported version",
                ));
            }
            let file: OperatorStateFile = postcard::from_bytes(&bytes[8..])
                .map_err(|e| StateError::corrupt(&handle.file.path, e.to_string()))?;
            files.push(file);
        }
        let mut state = OperatorStateFile::default();
        let names: std::collections::BTreeSet<&String> =
            files.iter().flat_map(|f| f.lists.keys()).collect();
        for name in names {
            let mode = files
                .iter()
                .find_map(|f| f.lists.get(name).map(|(m, _)| *m))
                .expect("name comes from a file");
            let per_old: Vec<Vec<Vec<u8>>> = files
                .iter()
                .map(|f| {
                    f.lists
                        .get(name)
                        .map(|(_, l)| l.clone())
                        .unwrap_or_default()
                })
                .collect();
            state.lists.insert(
                name.clone(),
                (mode, redistribute(mode, &per_old, index, parallelism)),
            );
        }
        if let Some(first) = files.first() {
            state.broadcast = first.broadcast.clone();
        }
        Ok(OperatorStateStore { state })
    }
}

impl<T: StateValue> OperatorListState<T> {
    fn elements<'a>(&self, s: &'a mut OperatorStateStore) -> &'a mut Vec<Vec<u8>> {
        &mut s.state.lists.get_mut(&self.name).expect("registered").1
    }
    pub fn get(&self, s: &mut OperatorStateStore) -> Result<Vec<T>> {
        self.elements(s).iter().map(|b| decode(b)).collect()
    }
    pub fn add(&self, s: &mut OperatorStateStore, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        self.elements(s).push(bytes);
        Ok(())
    }
    pub fn update(&self, s: &mut OperatorStateStore, values: &[T]) -> Result<()> {
        let encoded = values.iter().map(encode).collect::<Result<Vec<_>>>()?;
        *self.elements(s) = encoded;
        Ok(())
    }
    pub fn clear(&self, s: &mut OperatorStateStore) {
        self.elements(s).clear();
    }
}

impl<K: StateKey + Ord, V: StateValue> BroadcastState<K, V> {
    fn map<'a>(&self, s: &'a mut OperatorStateStore) -> &'a mut BTreeMap<Vec<u8>, Vec<u8>> {
        s.state.broadcast.get_mut(&self.name).expect("registered")
    }
    pub fn get(&self, s: &mut OperatorStateStore, key: &K) -> Result<Option<V>> {
        let k = encode(key)?;
        self.map(s).get(&k).map(|v| decode(v)).transpose()
    }
    pub fn put(&self, s: &mut OperatorStateStore, key: &K, value: &V) -> Result<()> {
        let (k, v) = (encode(key)?, encode(value)?);
        self.map(s).insert(k, v);
        Ok(())
    }
    pub fn remove(&self, s: &mut OperatorStateStore, key: &K) -> Result<()> {
        let k = encode(key)?;
        self.map(s).remove(&k);
        Ok(())
    }
    pub fn entries(&self, s: &mut OperatorStateStore) -> Result<Vec<(K, V)>> {
        self.map(s)
            .iter()
            .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalCheckpointStorage;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_redistribution_is_a_partition(lens in proptest::collection::vec(0usize..20, 1..6), p in 1usize..8) {
            let mut next = 0u32;
            let old: Vec<Vec<Vec<u8>>> = lens.iter().map(|&n| (0..n).map(|_| { next += 1; next.to_be_bytes().to_vec() }).collect()).collect();
            let parts: Vec<_> = (0..p).map(|i| redistribute(RedistributionMode::SplitList, &old, i, p)).collect();
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            let joined: Vec<Vec<u8>> = parts.into_iter().flatten().collect();
            let all: Vec<Vec<u8>> = old.into_iter().flatten().collect();
            prop_assert_eq!(joined, all);
        }
    }

    #[test]
    fn restore_redistributes_by_mode() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalCheckpointStorage::new(dir.path()).unwrap());
        let mut handles = Vec::new();
        for sub in 0..2u64 {
            let mut s = OperatorStateStore::new();
            let offsets = s.list_state::<u64>("offsets").unwrap();
            offsets
                .update(&mut s, &[sub * 10, sub * 10 + 1, sub * 10 + 2])
                .unwrap();
            let union = s.union_list_state::<String>("seen").unwrap();
            union.add(&mut s, &format!("from-{sub}")).unwrap();
            let rules = s.broadcast_state::<String, u32>("rules").unwrap();
            rules.put(&mut s, &"r".to_string(), &7).unwrap();
            handles.push(Some(
                s.snapshot(1, &format!("op-{sub}"), storage.clone())
                    .run()
                    .unwrap(),
            ));
        }
        let mut all_offsets = Vec::new();
        for i in 0..3 {
            let mut s = OperatorStateStore::restore(&handles, i, 3, &*storage).unwrap();
            all_offsets.extend(s.list_state::<u64>("offsets").unwrap().get(&mut s).unwrap());
            let union = s
                .union_list_state::<String>("seen")
                .unwrap()
                .get(&mut s)
                .unwrap();
            assert_eq!(union, vec!["from-0".to_string(), "from-1".to_string()]);
            let rules = s.broadcast_state::<String, u32>("rules").unwrap();
            assert_eq!(rules.get(&mut s, &"r".to_string()).unwrap(), Some(7));
        }
        assert_eq!(all_offsets, vec![0, 1, 2, 10, 11, 12]);
        // A union list registered as split is refused.
        let mut s = OperatorStateStore::restore(&handles, 0, 3, &*storage).unwrap();
        assert!(s.list_state::<String>("seen").is_err());
    }
}
