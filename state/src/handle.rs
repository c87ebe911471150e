//! State handles: the serializable description of what a snapshot wrote.
//!
//! Handles name files by their path relative to the checkpoint storage root
//! (`chk-<id>/…` for files private to one checkpoint, `shared/…` for incremental
//! RocksDB SST files reused across checkpoints) with their size and crc32c, so a
//! restore verifies every byte it uses. Everything here is postcard-encoded inside
//! the checkpoint's `_metadata`; the enums are append-only to stay readable.

use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::ttl::TtlConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A file in checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileHandle {
    /// Relative to the storage root, `/`-separated.
    pub path: String,
    pub size: u64,
    pub crc32c: u32,
}

impl FileHandle {
    pub fn is_shared(&self) -> bool {
        self.path.starts_with("shared/")
    }
}

/// The kind of a keyed state, recorded so a restore can refuse a mismatched type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
    Aggregating,
    /// Internal: the timer service's queues.
    Timers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    pub name: String,
    pub kind: StateKind,
    pub ttl: Option<TtlConfig>,
}

/// Where one key group's block starts in a key-group file, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupOffset {
    pub key_group: KeyGroup,
    pub offset: u64,
    pub len: u64,
    pub crc32c: u32,
}

/// A key-group file (see [`crate::kg_file`]): the backend-independent format used by
/// memory-backend checkpoints, every savepoint, and timers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupsHandle {
    pub range: KeyGroupRange,
    pub file: FileHandle,
    pub states: Vec<StateMeta>,
    /// Only key groups that hold data, ascending.
    pub groups: Vec<KeyGroupOffset>,
}

/// A RocksDB native checkpoint: SST files (shared, reused by later incremental
/// checkpoints) plus the small private files (MANIFEST, CURRENT, OPTIONS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RocksDbHandle {
    pub range: KeyGroupRange,
    /// Local file name in the DB directory -> stored file.
    pub shared: Vec<(String, FileHandle)>,
    pub private: Vec<(String, FileHandle)>,
    /// Column family name = state name.
    pub states: Vec<StateMeta>,
    pub timers: KeyGroupsHandle,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyedStateHandle {
    KeyGroups(KeyGroupsHandle),
    RocksDb(RocksDbHandle),
}

impl KeyedStateHandle {
    pub fn range(&self) -> KeyGroupRange {
        match self {
            KeyedStateHandle::KeyGroups(h) => h.range,
            KeyedStateHandle::RocksDb(h) => h.range,
        }
    }

    pub fn files(&self) -> Vec<&FileHandle> {
        match self {
            KeyedStateHandle::KeyGroups(h) => vec![&h.file],
            KeyedStateHandle::RocksDb(h) => h
                .shared
                .iter()
                .chain(h.private.iter())
                .map(|(_, f)| f)
                .chain(std::iter::once(&h.timers.file))
                .collect(),
        }
    }
}

/// Operator (non-keyed) state of one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStateHandle {
    pub file: FileHandle,
}

/// Everything one subtask contributed to a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    pub keyed: Option<KeyedStateHandle>,
    pub operator: Option<OperatorStateHandle>,
    /// Files the runtime writes itself (e.g. channel state of unaligned checkpoints).
    pub extra: Vec<(String, FileHandle)>,
}

impl SubtaskSnapshot {
    pub fn files(&self) -> Vec<&FileHandle> {
        let mut out = Vec::new();
        if let Some(k) = &self.keyed {
            out.extend(k.files());
        }
        if let Some(o) = &self.operator {
            out.push(&o.file);
        }
        out.extend(self.extra.iter().map(|(_, f)| f));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    pub max_parallelism: u32,
    /// Indexed by subtask; its length is the parallelism at snapshot time.
    pub subtasks: Vec<SubtaskSnapshot>,
}

impl OperatorSnapshot {
    pub fn keyed_handles(&self) -> Vec<KeyedStateHandle> {
        self.subtasks
            .iter()
            .filter_map(|s| s.keyed.clone())
            .collect()
    }

    pub fn operator_handles(&self) -> Vec<Option<OperatorStateHandle>> {
        self.subtasks.iter().map(|s| s.operator.clone()).collect()
    }
}

/// The content of `chk-<id>/_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub checkpoint_id: u64,
    pub is_savepoint: bool,
    /// By operator id.
    pub operators: BTreeMap<String, OperatorSnapshot>,
    /// Small runtime data (e.g. the job's topology fingerprint).
    pub extra: Vec<u8>,
}

impl CheckpointMetadata {
    pub fn new(checkpoint_id: u64) -> Self {
        CheckpointMetadata {
            checkpoint_id,
            is_savepoint: false,
            operators: BTreeMap::new(),
            extra: Vec::new(),
        }
    }

    pub fn files(&self) -> Vec<&FileHandle> {
        self.operators
            .values()
            .flat_map(|o| o.subtasks.iter())
            .flat_map(|s| s.files())
            .collect()
    }

    pub fn shared_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .files()
            .into_iter()
            .filter(|f| f.is_shared())
            .map(|f| f.path.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
