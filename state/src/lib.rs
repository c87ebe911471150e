//! weir-state: key groups, keyed and operator state, backends, snapshots, checkpoint
//! storage and state handles. Stands alone: no actors, no runtime.
//!
//! The runtime creates, per subtask, one keyed backend ([`backend::KeyedBackend`],
//! memory or RocksDB) for the subtask's [`key_group::KeyGroupRange`] and one
//! [`operator_state::OperatorStateStore`]. Operators register typed state from
//! descriptors ([`descriptor`]) and read/write it for the current key. At a barrier
//! the runtime calls the synchronous `snapshot` (short) and runs the returned
//! [`backend::AsyncSnapshot`] on another thread; it yields serializable state handles
//! ([`handle`]) that go into the checkpoint's `_metadata`, written last by
//! [`checkpoints::CompletedCheckpointStore`] on a [`storage::CheckpointStorage`].

pub mod backend;
pub mod checkpoints;
pub mod descriptor;
pub mod error;
pub mod handle;
pub mod key_group;
pub mod kg_file;
pub mod memory;
pub mod operator_state;
pub mod restore;
pub mod retention;
pub mod rocks;
pub mod storage;
pub mod subtask;
pub mod timers;
pub mod ttl;
pub mod value;

pub use backend::{
    AsyncSnapshot, BackendKind, KeyedBackend, KeyedBackendConfig, KeyedStateBackend, SnapshotKind,
    TimeDomain, Timer,
};
pub use descriptor::*;
pub use error::{Result, StateError};
pub use handle::{CheckpointMetadata, FileHandle, KeyedStateHandle, OperatorStateHandle};
pub use key_group::{KeyGroup, KeyGroupRange};
pub use memory::MemoryBackend;
pub use operator_state::{OperatorStateStore, RedistributionMode};
pub use rocks::{RocksDbBackend, RocksDbOptions};
pub use storage::{CheckpointStorage, LocalCheckpointStorage};
pub use ttl::{Clock, ManualClock, TtlConfig, TtlUpdate};
