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
//!
//! ```
//! use std::sync::Arc;
//! use weir_state::backend::{KeyedBackendConfig, KeyedStateBackend, SnapshotKind};
//! use weir_state::*;
//!
//! # fn main() -> weir_state::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalCheckpointStorage::new(dir.path())?);
//! // Subtask 0 of 2, max parallelism 128: it owns key groups 0..64.
//! let config = KeyedBackendConfig::new("counter-0", KeyGroupRange::for_subtask(0, 2, 128), 128);
//! let mut backend = KeyedBackend::<String>::open(&BackendKind::Memory, config, &[], &*storage)?;
//! let count = ValueStateDescriptor::<u64>::new("count").register(&mut backend)?;
//!
//! let key = (0..).map(|i| format!("user-{i}"))
//!     .find(|k| key_group::key_group_of(k, 128) < 64).unwrap();
//! backend.set_current_key(key.clone())?;
//! let n = count.value(&mut backend)?.unwrap_or(0);
//! count.update(&mut backend, n + 1)?;
//!
//! // At a barrier: the synchronous part here, the asynchronous part on any thread.
//! let pending = backend.snapshot(1, SnapshotKind::Checkpoint, storage.clone())?;
//! let handle = std::thread::spawn(move || pending.run()).join().unwrap()?;
//! backend.notify_checkpoint_complete(1);
//!
//! // Recovery at parallelism 1: the new subtask reads the key groups it owns.
//! let config = KeyedBackendConfig::new("counter-0", KeyGroupRange::all(128), 128);
//! let mut restored = KeyedBackend::<String>::open(&BackendKind::Memory, config, &[handle], &*storage)?;
//! let count = ValueStateDescriptor::<u64>::new("count").register(&mut restored)?;
//! restored.set_current_key(key)?;
//! assert_eq!(count.value(&mut restored)?, Some(1));
//! # Ok(())
//! # }
//! ```

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
