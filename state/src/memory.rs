//! The memory backend: live objects in per-key-group hash maps, serialized only when
//! snapshotting (like Flink's heap backend).
//!
//! Each registered state is a typed `Table<K, N, S>` (behind `dyn ErasedTable`) with
//! one `Arc`'d map per key group of the subtask's range, keyed by `(key, namespace)`.
//! Snapshots are copy-on-write at key-group granularity: the synchronous part clones
//! the `Arc`s of every group (O(states × key groups), independent of the number of
//! entries) and flags them shared; the first write to a shared group after that copies
//! that group's map once (`Arc::make_mut`), later writes go straight to the private
//! copy. The asynchronous part encodes the frozen maps into a key-group file.
//!
//! States restored from a snapshot stay as raw entries until the operator registers
//! them (only then are the types known); unregistered states are carried into the next
//! snapshot unchanged, so state is never dropped because an operator did not ask.

use crate::backend::{AsyncSnapshot, KeyedBackendConfig, KeyedStateBackend, SnapshotKind, StateId};
use crate::error::{Result, StateError};
use crate::handle::{KeyedStateHandle, StateKind, StateMeta};
use crate::key_group::KeyGroup;
use crate::kg_file::{KeyGroupsWriter, RawEntry};
use crate::storage::{checkpoint_dir, CheckpointStorage};
use crate::timers::{timer_metas, TimerService};
use crate::ttl::{is_expired, refreshes_on_read, TtlConfig};
use crate::value::{
    decode, decode_concatenated, encode, encode_into, Stamped, StateKey, StateValue,
};
use hashbrown::{Equivalent, HashMap};
use rustc_hash::FxBuildHasher;
use std::any::Any;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// Borrowed `(key, namespace)` lookup key: hashes exactly like the owned tuple.
struct Pair<'a, K, N>(&'a K, &'a N);

impl<K: Hash, N: Hash> Hash for Pair<'_, K, N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl<K: Eq, N: Eq> Equivalent<(K, N)> for Pair<'_, K, N> {
    fn equivalent(&self, owned: &(K, N)) -> bool {
        *self.0 == owned.0 && *self.1 == owned.1
    }
}

/// The live form of one `(key, namespace)` slot and its conversion to stored entries.
trait Stored: Clone + Send + Sync + 'static {
    /// Appends the slot's live entries (expired ones are left out).
    fn encode(
        &self,
        key: &[u8],
        ns: &[u8],
        ttl: Option<&TtlConfig>,
        now: u64,
        out: &mut Vec<RawEntry>,
    ) -> Result<()>;
    /// Merges a stored entry into the slot.
    fn absorb(slot: Option<Self>, entry: &RawEntry) -> Result<Self>;
}

fn raw(key: &[u8], ns: &[u8], user_key: Vec<u8>, value: Vec<u8>) -> RawEntry {
    RawEntry {
        key: key.to_vec(),
        namespace: ns.to_vec(),
        user_key,
        value,
    }
}

impl<T: StateValue> Stored for Stamped<T> {
    fn encode(
        &self,
        key: &[u8],
        ns: &[u8],
        ttl: Option<&TtlConfig>,
        now: u64,
        out: &mut Vec<RawEntry>,
    ) -> Result<()> {
        if !is_expired(ttl, self.ts, now) {
            out.push(raw(key, ns, Vec::new(), encode(self)?));
        }
        Ok(())
    }
    fn absorb(_slot: Option<Self>, entry: &RawEntry) -> Result<Self> {
        decode(&entry.value)
    }
}

impl<T: StateValue> Stored for Vec<Stamped<T>> {
    fn encode(
        &self,
        key: &[u8],
        ns: &[u8],
        ttl: Option<&TtlConfig>,
        now: u64,
        out: &mut Vec<RawEntry>,
    ) -> Result<()> {
        let mut value = Vec::new();
        for item in self.iter().filter(|s| !is_expired(ttl, s.ts, now)) {
            encode_into(item, &mut value)?;
        }
        if !value.is_empty() {
            out.push(raw(key, ns, Vec::new(), value));
        }
        Ok(())
    }
    fn absorb(slot: Option<Self>, entry: &RawEntry) -> Result<Self> {
        let mut list = slot.unwrap_or_default();
        list.extend(decode_concatenated::<Stamped<T>>(&entry.value)?);
        Ok(list)
    }
}

impl<UK: StateKey, UV: StateValue> Stored for FxMap<UK, Stamped<UV>> {
    fn encode(
        &self,
        key: &[u8],
        ns: &[u8],
        ttl: Option<&TtlConfig>,
        now: u64,
        out: &mut Vec<RawEntry>,
    ) -> Result<()> {
        for (uk, v) in self.iter().filter(|(_, v)| !is_expired(ttl, v.ts, now)) {
            out.push(raw(key, ns, encode(uk)?, encode(v)?));
        }
        Ok(())
    }
    fn absorb(slot: Option<Self>, entry: &RawEntry) -> Result<Self> {
        let mut map = slot.unwrap_or_default();
        map.insert(decode(&entry.user_key)?, decode(&entry.value)?);
        Ok(map)
    }
}

struct Table<K, N, S> {
    meta: StateMeta,
    groups: Vec<Arc<FxMap<(K, N), S>>>,
    /// Set when a snapshot may still share the group's map.
    shared: Vec<bool>,
}

impl<K: StateKey, N: StateKey, S: Stored> Table<K, N, S> {
    fn new(meta: StateMeta, groups: usize) -> Self {
        Table {
            meta,
            groups: (0..groups).map(|_| Arc::new(FxMap::default())).collect(),
            shared: vec![false; groups],
        }
    }

    #[inline]
    fn group_mut(&mut self, idx: usize) -> &mut FxMap<(K, N), S> {
        if self.shared[idx] {
            // First write since a snapshot froze this group: copy it if the snapshot
            // still holds it; from now on the map is ours alone.
            self.shared[idx] = false;
            return Arc::make_mut(&mut self.groups[idx]);
        }
        Arc::get_mut(&mut self.groups[idx]).expect("an unshared group has exactly one owner")
    }
}

trait ErasedTable<K>: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn meta(&self) -> &StateMeta;
    fn freeze(&mut self) -> Box<dyn FrozenTable>;
    fn absorb(&mut self, group_idx: usize, entry: &RawEntry) -> Result<()>;
}

trait FrozenTable: Send + Sync {
    fn meta(&self) -> &StateMeta;
    fn encode_group(&self, group_idx: usize, now: u64) -> Result<Vec<RawEntry>>;
}

impl<K: StateKey, N: StateKey, S: Stored> ErasedTable<K> for Table<K, N, S> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn freeze(&mut self) -> Box<dyn FrozenTable> {
        self.shared.iter_mut().for_each(|s| *s = true);
        Box::new(Frozen {
            meta: self.meta.clone(),
            groups: self.groups.clone(),
        })
    }
    fn absorb(&mut self, group_idx: usize, entry: &RawEntry) -> Result<()> {
        let slot_key: (K, N) = (decode(&entry.key)?, decode(&entry.namespace)?);
        let group = self.group_mut(group_idx);
        let merged = S::absorb(group.remove(&slot_key), entry)?;
        group.insert(slot_key, merged);
        Ok(())
    }
}

struct Frozen<K, N, S> {
    meta: StateMeta,
    groups: Vec<Arc<FxMap<(K, N), S>>>,
}

impl<K: StateKey, N: StateKey, S: Stored> FrozenTable for Frozen<K, N, S> {
    fn meta(&self) -> &StateMeta {
        &self.meta
    }
    fn encode_group(&self, group_idx: usize, now: u64) -> Result<Vec<RawEntry>> {
        let mut out = Vec::new();
        let (mut kb, mut nb) = (Vec::new(), Vec::new());
        for ((k, n), slot) in self.groups[group_idx].iter() {
            kb.clear();
            nb.clear();
            encode_into(k, &mut kb)?;
            encode_into(n, &mut nb)?;
            slot.encode(&kb, &nb, self.meta.ttl.as_ref(), now, &mut out)?;
        }
        // Sorted so equal state gives byte-identical files.
        out.sort_unstable();
        Ok(out)
    }
}

/// Restored entries of a state the operator has not registered (yet).
#[derive(Clone)]
struct PendingState {
    meta: StateMeta,
    entries: Vec<(KeyGroup, RawEntry)>,
}

pub struct MemoryBackend<K: StateKey> {
    config: KeyedBackendConfig,
    current: Option<(K, KeyGroup)>,
    /// Index of the current key group within the range.
    current_idx: usize,
    tables: Vec<Box<dyn ErasedTable<K>>>,
    by_name: BTreeMap<String, StateId>,
    pending: Arc<BTreeMap<String, PendingState>>,
    timers: TimerService,
}

type Parts<'a, K> = (
    &'a K,
    usize,
    &'a mut Box<dyn ErasedTable<K>>,
    &'a KeyedBackendConfig,
);

impl<K: StateKey> MemoryBackend<K> {
    /// # Panics
    /// If the config's key-group range does not fit its max parallelism.
    pub fn new(config: KeyedBackendConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        MemoryBackend {
            config,
            current: None,
            current_idx: 0,
            tables: Vec::new(),
            by_name: BTreeMap::new(),
            pending: Arc::new(BTreeMap::new()),
            timers: TimerService::default(),
        }
    }

    /// A backend holding the key groups of `config.key_group_range` found in `handles`
    /// (of any backend and any old parallelism).
    pub fn restore(
        config: KeyedBackendConfig,
        handles: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
    ) -> Result<Self> {
        config.validate()?;
        let mut backend = Self::new(config);
        let range = backend.config.key_group_range;
        let mut pending: BTreeMap<String, PendingState> = BTreeMap::new();
        crate::restore::for_each_entry(handles, range, storage, |meta, kg, entry| {
            if meta.kind == StateKind::Timers {
                backend.timers.restore_entry(&meta.name, kg, entry);
            } else {
                pending
                    .entry(meta.name.clone())
                    .or_insert_with(|| PendingState {
                        meta: meta.clone(),
                        entries: Vec::new(),
                    })
                    .entries
                    .push((kg, entry));
            }
            Ok(())
        })?;
        backend.pending = Arc::new(pending);
        Ok(backend)
    }

    #[inline]
    fn parts(&mut self, id: StateId) -> Result<Parts<'_, K>> {
        let (key, _) = self.current.as_ref().ok_or(StateError::NoCurrentKey)?;
        Ok((
            key,
            self.current_idx,
            &mut self.tables[id as usize],
            &self.config,
        ))
    }

    fn register<N: StateKey, S: Stored>(&mut self, meta: StateMeta) -> Result<StateId> {
        if let Some(&id) = self.by_name.get(&meta.name) {
            let table = &mut self.tables[id as usize];
            if table.meta().kind != meta.kind
                || table
                    .as_any_mut()
                    .downcast_mut::<Table<K, N, S>>()
                    .is_none()
            {
                return Err(StateError::Registration {
                    name: meta.name,
                    reason: "registered again with a different kind or type".into(),
                });
            }
            return Ok(id);
        }
        let mut table = Table::<K, N, S>::new(meta.clone(), self.config.key_group_range.len());
        if let Some(p) = Arc::make_mut(&mut self.pending).remove(&meta.name) {
            if p.meta.kind != meta.kind {
                return Err(StateError::Registration {
                    name: meta.name,
                    reason: format!(
                        "restored as {:?} but registered as {:?}",
                        p.meta.kind, meta.kind
                    ),
                });
            }
            let start = self.config.key_group_range.start;
            for (kg, entry) in &p.entries {
                table.absorb(usize::from(kg - start), entry)?;
            }
        }
        let id = self.tables.len() as StateId;
        self.tables.push(Box::new(table));
        self.by_name.insert(meta.name, id);
        Ok(id)
    }
}

#[inline]
fn typed<K: StateKey, N: StateKey, S: Stored>(
    table: &mut Box<dyn ErasedTable<K>>,
) -> Result<&mut Table<K, N, S>> {
    // Registration checked the types; a mismatch here means a handle from another
    // backend instance was used with this one.
    table
        .as_any_mut()
        .downcast_mut::<Table<K, N, S>>()
        .ok_or_else(|| StateError::Registration {
            name: String::from("(state handle)"),
            reason: "used with a backend that registered a different state under its id".into(),
        })
}

fn ttl_now(config: &KeyedBackendConfig, ttl: Option<&TtlConfig>) -> u64 {
    if ttl.is_some() {
        config.clock.now()
    } else {
        0
    }
}

type CellTable<K, N, T> = Table<K, N, Stamped<T>>;
type ListTable<K, N, T> = Table<K, N, Vec<Stamped<T>>>;
type MapTable<K, N, UK, UV> = Table<K, N, FxMap<UK, Stamped<UV>>>;

impl<K: StateKey> KeyedStateBackend for MemoryBackend<K> {
    type Key = K;

    fn config(&self) -> &KeyedBackendConfig {
        &self.config
    }

    #[inline]
    fn set_current_key_in_group(&mut self, key: K, key_group: KeyGroup) -> Result<()> {
        self.config.check_key_group(key_group)?;
        self.current_idx = usize::from(key_group - self.config.key_group_range.start);
        self.current = Some((key, key_group));
        Ok(())
    }

    fn current_key(&self) -> Option<&K> {
        self.current.as_ref().map(|(k, _)| k)
    }

    fn current_key_group(&self) -> Option<KeyGroup> {
        self.current.as_ref().map(|(_, kg)| *kg)
    }

    fn register_cell<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId> {
        self.register::<N, Stamped<T>>(meta)
    }

    fn register_list<N: StateKey, T: StateValue>(&mut self, meta: StateMeta) -> Result<StateId> {
        self.register::<N, Vec<Stamped<T>>>(meta)
    }

    fn register_map<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        meta: StateMeta,
    ) -> Result<StateId> {
        self.register::<N, FxMap<UK, Stamped<UV>>>(meta)
    }

    #[inline]
    fn cell_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Option<T>> {
        let (key, idx, table, config) = self.parts(id)?;
        let t = typed::<K, N, Stamped<T>>(table)?;
        let Some(ttl) = t.meta.ttl else {
            return Ok(t.groups[idx].get(&Pair(key, ns)).map(|s| s.value.clone()));
        };
        let now = config.clock.now();
        let Some(slot) = t.groups[idx].get(&Pair(key, ns)) else {
            return Ok(None);
        };
        if is_expired(Some(&ttl), slot.ts, now) {
            t.group_mut(idx).remove(&Pair(key, ns));
            return Ok(None);
        }
        if !refreshes_on_read(Some(&ttl)) {
            return Ok(Some(slot.value.clone()));
        }
        let slot = t.group_mut(idx).get_mut(&Pair(key, ns)).expect("present");
        slot.ts = now;
        Ok(Some(slot.value.clone()))
    }

    #[inline]
    fn cell_put<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut CellTable<K, N, T> = typed(table)?;
        let ts = ttl_now(config, t.meta.ttl.as_ref());
        let group = t.group_mut(idx);
        match group.get_mut(&Pair(key, ns)) {
            Some(slot) => *slot = Stamped { ts, value },
            None => {
                group.insert((key.clone(), ns.clone()), Stamped { ts, value });
            }
        }
        Ok(())
    }

    fn cell_clear<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<()> {
        let (key, idx, table, _) = self.parts(id)?;
        let t: &mut CellTable<K, N, T> = typed(table)?;
        if t.groups[idx].contains_key(&Pair(key, ns)) {
            t.group_mut(idx).remove(&Pair(key, ns));
        }
        Ok(())
    }

    fn list_get<N: StateKey, T: StateValue>(&mut self, id: StateId, ns: &N) -> Result<Vec<T>> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut ListTable<K, N, T> = typed(table)?;
        let ttl = t.meta.ttl;
        let now = ttl_now(config, ttl.as_ref());
        let Some(list) = t.groups[idx].get(&Pair(key, ns)) else {
            return Ok(Vec::new());
        };
        let live: Vec<T> = list
            .iter()
            .filter(|s| !is_expired(ttl.as_ref(), s.ts, now))
            .map(|s| s.value.clone())
            .collect();
        if live.len() != list.len() || (refreshes_on_read(ttl.as_ref()) && !live.is_empty()) {
            let group = t.group_mut(idx);
            let list = group.get_mut(&Pair(key, ns)).expect("present");
            list.retain(|s| !is_expired(ttl.as_ref(), s.ts, now));
            if refreshes_on_read(ttl.as_ref()) {
                list.iter_mut().for_each(|s| s.ts = now);
            }
            if list.is_empty() {
                group.remove(&Pair(key, ns));
            }
        }
        Ok(live)
    }

    fn list_add<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut ListTable<K, N, T> = typed(table)?;
        let ts = ttl_now(config, t.meta.ttl.as_ref());
        let group = t.group_mut(idx);
        match group.get_mut(&Pair(key, ns)) {
            Some(list) => list.push(Stamped { ts, value }),
            None => {
                group.insert((key.clone(), ns.clone()), vec![Stamped { ts, value }]);
            }
        }
        Ok(())
    }

    fn list_put<N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut ListTable<K, N, T> = typed(table)?;
        let ts = ttl_now(config, t.meta.ttl.as_ref());
        if values.is_empty() {
            if t.groups[idx].contains_key(&Pair(key, ns)) {
                t.group_mut(idx).remove(&Pair(key, ns));
            }
            return Ok(());
        }
        let list = values
            .into_iter()
            .map(|value| Stamped { ts, value })
            .collect();
        t.group_mut(idx).insert((key.clone(), ns.clone()), list);
        Ok(())
    }

    fn map_get<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut MapTable<K, N, UK, UV> = typed(table)?;
        let ttl = t.meta.ttl;
        let Some(slot) = t.groups[idx]
            .get(&Pair(key, ns))
            .and_then(|m| m.get(user_key))
        else {
            return Ok(None);
        };
        if ttl.is_none() {
            return Ok(Some(slot.value.clone()));
        }
        let now = config.clock.now();
        let expired = is_expired(ttl.as_ref(), slot.ts, now);
        if !expired && !refreshes_on_read(ttl.as_ref()) {
            return Ok(Some(slot.value.clone()));
        }
        let group = t.group_mut(idx);
        let map = group.get_mut(&Pair(key, ns)).expect("present");
        if expired {
            map.remove(user_key);
            if map.is_empty() {
                group.remove(&Pair(key, ns));
            }
            return Ok(None);
        }
        let slot = map.get_mut(user_key).expect("present");
        slot.ts = now;
        Ok(Some(slot.value.clone()))
    }

    fn map_put<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut MapTable<K, N, UK, UV> = typed(table)?;
        let ts = ttl_now(config, t.meta.ttl.as_ref());
        let group = t.group_mut(idx);
        match group.get_mut(&Pair(key, ns)) {
            Some(map) => {
                map.insert(user_key, Stamped { ts, value });
            }
            None => {
                let mut map = FxMap::default();
                map.insert(user_key, Stamped { ts, value });
                group.insert((key.clone(), ns.clone()), map);
            }
        }
        Ok(())
    }

    fn map_remove<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (key, idx, table, _) = self.parts(id)?;
        let t: &mut MapTable<K, N, UK, UV> = typed(table)?;
        if !t.groups[idx]
            .get(&Pair(key, ns))
            .is_some_and(|m| m.contains_key(user_key))
        {
            return Ok(());
        }
        let group = t.group_mut(idx);
        let map = group.get_mut(&Pair(key, ns)).expect("present");
        map.remove(user_key);
        if map.is_empty() {
            group.remove(&Pair(key, ns));
        }
        Ok(())
    }

    fn map_entries<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let (key, idx, table, config) = self.parts(id)?;
        let t: &mut MapTable<K, N, UK, UV> = typed(table)?;
        let ttl = t.meta.ttl;
        let now = ttl_now(config, ttl.as_ref());
        let Some(map) = t.groups[idx].get(&Pair(key, ns)) else {
            return Ok(Vec::new());
        };
        let live: Vec<(UK, UV)> = map
            .iter()
            .filter(|(_, v)| !is_expired(ttl.as_ref(), v.ts, now))
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        if live.len() != map.len() {
            let group = t.group_mut(idx);
            let map = group.get_mut(&Pair(key, ns)).expect("present");
            map.retain(|_, v| !is_expired(ttl.as_ref(), v.ts, now));
            if map.is_empty() {
                group.remove(&Pair(key, ns));
            }
        }
        Ok(live)
    }

    fn map_clear<N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        ns: &N,
    ) -> Result<()> {
        let (key, idx, table, _) = self.parts(id)?;
        let t: &mut MapTable<K, N, UK, UV> = typed(table)?;
        if t.groups[idx].contains_key(&Pair(key, ns)) {
            t.group_mut(idx).remove(&Pair(key, ns));
        }
        Ok(())
    }

    fn timer_service(&mut self) -> &mut crate::timers::TimerService {
        &mut self.timers
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        _kind: SnapshotKind,
        storage: Arc<dyn CheckpointStorage>,
    ) -> Result<AsyncSnapshot<KeyedStateHandle>> {
        let frozen: Vec<Box<dyn FrozenTable>> =
            self.tables.iter_mut().map(|t| t.freeze()).collect();
        let pending = self.pending.clone();
        let timers = self.timers.freeze();
        let range = self.config.key_group_range;
        let now = self.config.clock.now();
        let path = format!(
            "{}/{}-keyed.kg",
            checkpoint_dir(checkpoint_id),
            self.config.name
        );
        Ok(AsyncSnapshot::new(move || {
            let mut metas: Vec<StateMeta> = frozen.iter().map(|f| f.meta().clone()).collect();
            metas.extend(pending.values().map(|p| p.meta.clone()));
            metas.extend(timer_metas());
            let mut pending_by_group: BTreeMap<KeyGroup, Vec<(u32, Vec<RawEntry>)>> =
                BTreeMap::new();
            for (i, p) in pending.values().enumerate() {
                let state_idx = (frozen.len() + i) as u32;
                for (kg, e) in &p.entries {
                    let blocks = pending_by_group.entry(*kg).or_default();
                    match blocks.last_mut() {
                        Some((idx, entries)) if *idx == state_idx => entries.push(e.clone()),
                        _ => blocks.push((state_idx, vec![e.clone()])),
                    }
                }
            }
            let mut timer_groups = timers.by_key_group(range);
            let timer_base = (metas.len() - 2) as u32;
            let mut writer = KeyGroupsWriter::new(range, metas);
            for kg in range.iter() {
                let idx = usize::from(kg - range.start);
                let mut states = Vec::new();
                for (i, f) in frozen.iter().enumerate() {
                    states.push((i as u32, f.encode_group(idx, now)?));
                }
                states.extend(pending_by_group.remove(&kg).unwrap_or_default());
                if let Some([event, processing]) = timer_groups.remove(&kg) {
                    states.push((timer_base, event));
                    states.push((timer_base + 1, processing));
                }
                writer.add_group(kg, states)?;
            }
            Ok(KeyedStateHandle::KeyGroups(
                writer.finish(&*storage, &path)?,
            ))
        }))
    }
}
