//! The keyed state backend contract, shared by the memory and RocksDB backends.
//!
//! Protocol, per subtask, all on the subtask's thread:
//! 1. `open` a backend for the subtask's key-group range, restoring from the state
//!    handles of every old subtask of the operator (each backend reads only the key
//!    groups it owns; restoring at a new parallelism is the same call).
//! 2. Operators register states from descriptors (idempotent per name) and keep the
//!    returned typed handles. Before user code runs for a record, the runtime calls
//!    `set_current_key` (or `set_current_key_in_group` when it already knows the key
//!    group); every state access is scoped to that key and the handle's namespace.
//! 3. At a barrier: `snapshot` is the synchronous part (short: it freezes
//!    copy-on-write tables, or hard-links a RocksDB checkpoint); the returned
//!    [`AsyncSnapshot`] is `Send`, writes the files on another thread and yields the
//!    [`KeyedStateHandle`]. Processing continues meanwhile.
//! 4. `notify_checkpoint_complete` tells an incremental backend which upload is
//!    durable and may be the base of the next increment.

use crate::error::{Result, StateError};
use crate::handle::{KeyedStateHandle, StateMeta};
use crate::key_group::{key_group_of, KeyGroup, KeyGroupRange};
use crate::memory::MemoryBackend;
use crate::rocks::{RocksDbBackend, RocksDbOptions};
use crate::storage::CheckpointStorage;
pub use crate::timers::TimeDomain;
use crate::timers::{RawTimer, TimerService};
use crate::ttl::Clock;
use crate::value::{decode, encode, StateKey, StateValue};
use std::sync::Arc;

pub type StateId = u32;

/// Checkpoints may use a backend's native (incremental) format; savepoints always
/// use the backend-independent key-group format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

/// The asynchronous part of a snapshot: run it on any thread.
pub struct AsyncSnapshot<T>(Box<dyn FnOnce() -> Result<T> + Send>);

impl<T> AsyncSnapshot<T> {
    pub fn new(f: impl FnOnce() -> Result<T> + Send + 'static) -> Self {
        AsyncSnapshot(Box::new(f))
    }

    pub fn run(self) -> Result<T> {
        (self.0)()
    }
}

impl<T> std::fmt::Debug for AsyncSnapshot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncSnapshot")
    }
}

/// A fired timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer<K, N> {
    pub key: K,
    pub namespace: N,
    pub time: u64,
}

#[derive(Debug, Clone)]
pub struct KeyedBackendConfig {
    pub max_parallelism: u32,
    pub key_group_range: KeyGroupRange,
    /// Prefix of the files this backend writes, unique per operator and subtask
    /// (e.g. `"window-3"`).
    pub name: String,
    /// Processing time for TTL.
    pub clock: Clock,
}

impl KeyedBackendConfig {
    pub fn new(
        name: impl Into<String>,
        key_group_range: KeyGroupRange,
        max_parallelism: u32,
    ) -> Self {
        KeyedBackendConfig {
            max_parallelism,
            key_group_range,
            name: name.into(),
            clock: Clock::system(),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Rejects ranges outside `0..max_parallelism` (a wiring error in the runtime).
    pub fn validate(&self) -> Result<()> {
        let r = self.key_group_range;
        let max_p = self.max_parallelism;
        if max_p == 0
            || max_p > crate::key_group::MAX_MAX_PARALLELISM
            || r.start > r.end
            || u32::from(r.end) > max_p
        {
            return Err(StateError::Registration {
                name: self.name.clone(),
                reason: format!(
                    "key-group range {}..{} does not fit max parallelism {max_p}",
                    r.start, r.end
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn check_key_group(&self, key_group: KeyGroup) -> Result<()> {
        let r = self.key_group_range;
        if r.contains(key_group) {
            Ok(())
        } else {
            Err(StateError::KeyGroupOutOfRange {
                key_group,
                start: r.start,
                end: r.end,
            })
        }
    }
}

pub trait KeyedStateBackend {
    type Key: StateKey;

    fn config(&self) -> &KeyedBackendConfig;

    fn set_current_key_in_group(&mut self, key: Self::Key, key_group: KeyGroup) -> Result<()>;
    fn current_key(&self) -> Option<&Self::Key>;
    fn current_key_group(&self) -> Option<KeyGroup>;

    fn set_current_key(&mut self, key: Self::Key) -> Result<()> {
        let kg = key_group_of(&key, self.config().max_parallelism);
        self.set_current_key_in_group(key, kg)
    }

    fn register_cell<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId>;
    fn register_list<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId>;
    fn register_map<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        meta: StateMeta,
    ) -> Result<StateId>;

    fn cell_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Option<T>>;
    fn cell_put<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N, value: T)
        -> Result<()>;
    fn cell_clear<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<()>;

    fn list_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Vec<T>>;
    fn list_add<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N, value: T)
        -> Result<()>;
    /// Replaces the list; an empty list clears it.
    fn list_put<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()>;

    fn map_get<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: &UK,
    ) -> Result<Option<UV>>;
    fn map_put<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: UK,
        value: UV,
    ) -> Result<()>;
    fn map_remove<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: &UK,
    ) -> Result<()>;
    /// All live entries, in no particular order.
    fn map_entries<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>>;
    fn map_clear<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<()>;

    fn timer_service(&mut self) -> &mut TimerService;

    /// The synchronous part of a snapshot.
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        kind: SnapshotKind,
        storage: Arc<dyn CheckpointStorage>,
    ) -> Result<AsyncSnapshot<KeyedStateHandle>>;

    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) {}
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) {}

    /// Registers a timer for the current key; registering it twice fires it once.
    fn register_timer<N: StateKey>(&mut self, domain: TimeDomain, ns: &N, time: u64) -> Result<()> {
        let timer = self.current_timer(ns, time)?;
        self.timer_service().register(domain, timer);
        Ok(())
    }

    fn delete_timer<N: StateKey>(&mut self, domain: TimeDomain, ns: &N, time: u64) -> Result<()> {
        let timer = self.current_timer(ns, time)?;
        self.timer_service().delete(domain, &timer);
        Ok(())
    }

    fn next_timer(&mut self, domain: TimeDomain) -> Option<u64> {
        self.timer_service().next_time(domain)
    }

    /// Removes and returns the timers due at `up_to` (a watermark or processing time),
    /// in time order. The caller sets each timer's key as current before handling it.
    fn fire_timers<N: StateKey>(
        &mut self,
        domain: TimeDomain,
        up_to: u64,
    ) -> Result<Vec<Timer<Self::Key, N>>> {
        self.timer_service()
            .pop_due(domain, up_to)
            .into_iter()
            .map(|t| {
                Ok(Timer {
                    key: decode(&t.key)?,
                    namespace: decode(&t.namespace)?,
                    time: t.time,
                })
            })
            .collect()
    }

    #[doc(hidden)]
    fn current_timer<N: StateKey>(&self, ns: &N, time: u64) -> Result<RawTimer> {
        let (Some(key), Some(key_group)) = (self.current_key(), self.current_key_group()) else {
            return Err(StateError::NoCurrentKey);
        };
        Ok(RawTimer {
            time,
            key_group,
            key: encode(key)?,
            namespace: encode(ns)?,
        })
    }
}

/// Which backend a job uses.
#[derive(Debug, Clone)]
pub enum BackendKind {
    Memory,
    RocksDb(RocksDbOptions),
}

/// A backend chosen at run time; dispatches to the memory or RocksDB backend.
pub enum KeyedBackend<K: StateKey> {
    Memory(MemoryBackend<K>),
    RocksDb(RocksDbBackend<K>),
}

impl<K: StateKey> KeyedBackend<K> {
    /// Opens a backend, restoring the key groups of `config.key_group_range` from the
    /// handles of all old subtasks (empty for a fresh start).
    pub fn open(
        kind: &BackendKind,
        config: KeyedBackendConfig,
        restore: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
    ) -> Result<Self> {
        Ok(match kind {
            BackendKind::Memory => {
                KeyedBackend::Memory(MemoryBackend::restore(config, restore, storage)?)
            }
            BackendKind::RocksDb(opts) => KeyedBackend::RocksDb(RocksDbBackend::restore(
                config,
                opts.clone(),
                restore,
                storage,
            )?),
        })
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            KeyedBackend::Memory($b) => $e,
            KeyedBackend::RocksDb($b) => $e,
        }
    };
}

impl<K: StateKey> KeyedStateBackend for KeyedBackend<K> {
    type Key = K;

    fn config(&self) -> &KeyedBackendConfig {
        dispatch!(self, b => b.config())
    }
    fn set_current_key_in_group(&mut self, key: K, key_group: KeyGroup) -> Result<()> {
        dispatch!(self, b => b.set_current_key_in_group(key, key_group))
    }
    fn current_key(&self) -> Option<&K> {
        dispatch!(self, b => b.current_key())
    }
    fn current_key_group(&self) -> Option<KeyGroup> {
        dispatch!(self, b => b.current_key_group())
    }
    fn register_cell<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId> {
        dispatch!(self, b => b.register_cell::<N, T>(meta))
    }
    fn register_list<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId> {
        dispatch!(self, b => b.register_list::<N, T>(meta))
    }
    fn register_map<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        meta: StateMeta,
    ) -> Result<StateId> {
        dispatch!(self, b => b.register_map::<N, UK, UV>(meta))
    }
    fn cell_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Option<T>> {
        dispatch!(self, b => b.cell_get(id, ns))
    }
    fn cell_put<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        value: T,
    ) -> Result<()> {
        dispatch!(self, b => b.cell_put(id, ns, value))
    }
    fn cell_clear<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<()> {
        dispatch!(self, b => b.cell_clear::<N, T>(id, ns))
    }
    fn list_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Vec<T>> {
        dispatch!(self, b => b.list_get(id, ns))
    }
    fn list_add<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        value: T,
    ) -> Result<()> {
        dispatch!(self, b => b.list_add(id, ns, value))
    }
    fn list_put<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        dispatch!(self, b => b.list_put(id, ns, values))
    }
    fn map_get<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: &UK,
    ) -> Result<Option<UV>> {
        dispatch!(self, b => b.map_get(id, ns, key))
    }
    fn map_put<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: UK,
        value: UV,
    ) -> Result<()> {
        dispatch!(self, b => b.map_put(id, ns, key, value))
    }
    fn map_remove<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        key: &UK,
    ) -> Result<()> {
        dispatch!(self, b => b.map_remove::<N, UK, UV>(id, ns, key))
    }
    fn map_entries<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        dispatch!(self, b => b.map_entries(id, ns))
    }
    fn map_clear<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<()> {
        dispatch!(self, b => b.map_clear::<N, UK, UV>(id, ns))
    }
    fn timer_service(&mut self) -> &mut TimerService {
        dispatch!(self, b => b.timer_service())
    }
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        kind: SnapshotKind,
        storage: Arc<dyn CheckpointStorage>,
    ) -> Result<AsyncSnapshot<KeyedStateHandle>> {
        dispatch!(self, b => b.snapshot(checkpoint_id, kind, storage))
    }
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) {
        dispatch!(self, b => b.notify_checkpoint_complete(checkpoint_id))
    }
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) {
        dispatch!(self, b => b.notify_checkpoint_aborted(checkpoint_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn backends_and_snapshots_can_move_between_threads() {
        // The runtime builds a subtask's state on one thread and may run it on an
        // arbiter; the asynchronous snapshot part always runs on another thread.
        assert_send::<KeyedBackend<String>>();
        assert_send::<crate::operator_state::OperatorStateStore>();
        assert_send::<AsyncSnapshot<KeyedStateHandle>>();
    }

    #[test]
    fn config_rejects_a_range_beyond_max_parallelism() {
        let ok = KeyedBackendConfig::new("op-0", KeyGroupRange::for_subtask(1, 2, 128), 128);
        assert!(ok.validate().is_ok());
        let bad = KeyedBackendConfig::new("op-0", KeyGroupRange { start: 0, end: 129 }, 128);
        assert!(bad.validate().unwrap_err().to_string().contains("op-0"));
        assert!(
            KeyedBackendConfig::new("z", KeyGroupRange { start: 0, end: 0 }, 0)
                .validate()
                .is_err()
        );
    }
}
