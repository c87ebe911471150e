//! Model-based test: random operation sequences run against each backend (split
//! across subtasks at a changing parallelism) and against a plain in-memory model;
//! every read is compared, and the whole state after every snapshot/restore.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use weir_state::backend::{KeyedStateBackend, SnapshotKind, TimeDomain};
use weir_state::*;

const KEYS: u64 = 16;
const NAMESPACES: u8 = 3;

#[derive(Debug, Clone)]
enum Op {
    ValuePut(u64, u8, u32),
    ValueGet(u64, u8),
    ValueClear(u64, u8),
    ListAdd(u64, u8, u32),
    ListPut(u64, u8, Vec<u32>),
    ListGet(u64, u8),
    MapPut(u64, u8, u8, u32),
    MapRemove(u64, u8, u8),
    MapGet(u64, u8, u8),
    MapEntries(u64, u8),
    MapClear(u64, u8),
    Timer(u64, u8, u16),
    FireTimers(u16),
    /// Snapshot every subtask (mutating between the synchronous and asynchronous
    /// parts), then restore at a new parallelism, optionally through a savepoint.
    SnapshotRestore {
        parallelism: u32,
        savepoint: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    let n = 0..NAMESPACES;
    prop_oneof![
        4 => (k.clone(), n.clone(), any::<u32>()).prop_map(|(k, n, v)| Op::ValuePut(k, n, v)),
        3 => (k.clone(), n.clone()).prop_map(|(k, n)| Op::ValueGet(k, n)),
        1 => (k.clone(), n.clone()).prop_map(|(k, n)| Op::ValueClear(k, n)),
        3 => (k.clone(), n.clone(), any::<u32>()).prop_map(|(k, n, v)| Op::ListAdd(k, n, v)),
        1 => (k.clone(), n.clone(), proptest::collection::vec(any::<u32>(), 0..3)).prop_map(|(k, n, v)| Op::ListPut(k, n, v)),
        2 => (k.clone(), n.clone()).prop_map(|(k, n)| Op::ListGet(k, n)),
        3 => (k.clone(), n.clone(), 0u8..4, any::<u32>()).prop_map(|(k, n, u, v)| Op::MapPut(k, n, u, v)),
        1 => (k.clone(), n.clone(), 0u8..4).prop_map(|(k, n, u)| Op::MapRemove(k, n, u)),
        2 => (k.clone(), n.clone(), 0u8..4).prop_map(|(k, n, u)| Op::MapGet(k, n, u)),
        1 => (k.clone(), n.clone()).prop_map(|(k, n)| Op::MapEntries(k, n)),
        1 => (k.clone(), n.clone()).prop_map(|(k, n)| Op::MapClear(k, n)),
        2 => (k, n, 0u16..1000).prop_map(|(k, n, t)| Op::Timer(k, n, t)),
        1 => (0u16..1000).prop_map(Op::FireTimers),
        1 => (1u32..5, any::<bool>()).prop_map(|(parallelism, savepoint)| Op::SnapshotRestore { parallelism, savepoint }),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    values: BTreeMap<(u64, u8), u32>,
    lists: BTreeMap<(u64, u8), Vec<u32>>,
    maps: BTreeMap<(u64, u8), BTreeMap<u8, u32>>,
    timers: BTreeSet<(u16, u64, u8)>,
}

struct Handles {
    value: ValueState<u32, u8>,
    list: ListState<u32, u8>,
    map: MapState<u8, u32, u8>,
}

impl Handles {
    fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> Self {
        Handles {
            value: ValueStateDescriptor::new("value").register(b).unwrap(),
            list: ListStateDescriptor::new("list").register(b).unwrap(),
            map: MapStateDescriptor::new("map").register(b).unwrap(),
        }
    }
}

struct Job<F: Factory> {
    env: Env,
    parallelism: u32,
    subtasks: Vec<(F::B, Handles)>,
    next_checkpoint: u64,
}

impl<F: Factory> Job<F> {
    fn new() -> Self {
        let env = Env::new();
        let mut b = F::open(config("op", 0, 1), &[], &*env.storage, &env.work());
        let h = Handles::register(&mut b);
        Job {
            env,
            parallelism: 1,
            subtasks: vec![(b, h)],
            next_checkpoint: 1,
        }
    }

    /// The owning subtask with `key` current and the handles at namespace `ns`.
    fn at(&mut self, key: u64, ns: u8) -> (&mut F::B, &mut Handles) {
        let (b, h) = &mut self.subtasks[owner(key, self.parallelism) as usize];
        b.set_current_key(key).unwrap();
        h.value.set_namespace(ns);
        h.list.set_namespace(ns);
        h.map.set_namespace(ns);
        (b, h)
    }

    fn check_all(&mut self, model: &Model) -> std::result::Result<(), TestCaseError> {
        for key in 0..KEYS {
            for ns in 0..NAMESPACES {
                let (b, h) = self.at(key, ns);
                prop_assert_eq!(
                    h.value.value(b).unwrap(),
                    model.values.get(&(key, ns)).copied()
                );
                prop_assert_eq!(
                    h.list.get(b).unwrap(),
                    model.lists.get(&(key, ns)).cloned().unwrap_or_default()
                );
                let mut entries = h.map.entries(b).unwrap();
                entries.sort();
                let expected: Vec<(u8, u32)> = model
                    .maps
                    .get(&(key, ns))
                    .map(|m| m.clone().into_iter().collect())
                    .unwrap_or_default();
                prop_assert_eq!(entries, expected);
            }
        }
        let timers: usize = self
            .subtasks
            .iter_mut()
            .map(|(b, _)| b.timer_service().len())
            .sum();
        prop_assert_eq!(timers, model.timers.len());
        Ok(())
    }

    fn snapshot_restore(&mut self, parallelism: u32, savepoint: bool) {
        let id = self.next_checkpoint;
        self.next_checkpoint += 1;
        let kind = if savepoint {
            SnapshotKind::Savepoint
        } else {
            SnapshotKind::Checkpoint
        };
        let storage = self.env.storage.clone();
        let pending: Vec<_> = self
            .subtasks
            .iter_mut()
            .map(|(b, _)| b.snapshot(id, kind, storage.clone()).unwrap())
            .collect();
        // Writes after the synchronous part must not reach the snapshot.
        for key in 0..KEYS {
            let (b, h) = self.at(key, 0);
            h.value.update(b, u32::MAX).unwrap();
            h.list.add(b, u32::MAX).unwrap();
            h.map.put(b, 99, u32::MAX).unwrap();
            b.register_timer(TimeDomain::EventTime, &0u8, 5000).unwrap();
        }
        let handles: Vec<_> = pending.into_iter().map(|p| p.run().unwrap()).collect();
        for (b, _) in &mut self.subtasks {
            b.notify_checkpoint_complete(id);
        }
        self.subtasks.clear();
        self.parallelism = parallelism;
        for i in 0..parallelism {
            let mut b = F::open(
                config("op", i, parallelism),
                &handles,
                &*self.env.storage,
                &self.env.work(),
            );
            let h = Handles::register(&mut b);
            self.subtasks.push((b, h));
        }
    }
}

fn run<F: Factory>(ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
    let mut job = Job::<F>::new();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::ValuePut(k, n, v) => {
                let (b, h) = job.at(k, n);
                h.value.update(b, v).unwrap();
                model.values.insert((k, n), v);
            }
            Op::ValueGet(k, n) => {
                let (b, h) = job.at(k, n);
                prop_assert_eq!(
                    h.value.value(b).unwrap(),
                    model.values.get(&(k, n)).copied()
                );
            }
            Op::ValueClear(k, n) => {
                let (b, h) = job.at(k, n);
                h.value.clear(b).unwrap();
                model.values.remove(&(k, n));
            }
            Op::ListAdd(k, n, v) => {
                let (b, h) = job.at(k, n);
                h.list.add(b, v).unwrap();
                model.lists.entry((k, n)).or_default().push(v);
            }
            Op::ListPut(k, n, v) => {
                let (b, h) = job.at(k, n);
                h.list.update(b, v.clone()).unwrap();
                if v.is_empty() {
                    model.lists.remove(&(k, n));
                } else {
                    model.lists.insert((k, n), v);
                }
            }
            Op::ListGet(k, n) => {
                let (b, h) = job.at(k, n);
                prop_assert_eq!(
                    h.list.get(b).unwrap(),
                    model.lists.get(&(k, n)).cloned().unwrap_or_default()
                );
            }
            Op::MapPut(k, n, u, v) => {
                let (b, h) = job.at(k, n);
                h.map.put(b, u, v).unwrap();
                model.maps.entry((k, n)).or_default().insert(u, v);
            }
            Op::MapRemove(k, n, u) => {
                let (b, h) = job.at(k, n);
                h.map.remove(b, &u).unwrap();
                if let Some(m) = model.maps.get_mut(&(k, n)) {
                    m.remove(&u);
                    if m.is_empty() {
                        model.maps.remove(&(k, n));
                    }
                }
            }
            Op::MapGet(k, n, u) => {
                let (b, h) = job.at(k, n);
                let expected = model.maps.get(&(k, n)).and_then(|m| m.get(&u)).copied();
                prop_assert_eq!(h.map.get(b, &u).unwrap(), expected);
            }
            Op::MapEntries(k, n) => {
                let (b, h) = job.at(k, n);
                let mut entries = h.map.entries(b).unwrap();
                entries.sort();
                let expected: Vec<(u8, u32)> = model
                    .maps
                    .get(&(k, n))
                    .map(|m| m.clone().into_iter().collect())
                    .unwrap_or_default();
                prop_assert_eq!(entries, expected);
            }
            Op::MapClear(k, n) => {
                let (b, h) = job.at(k, n);
                h.map.clear(b).unwrap();
                model.maps.remove(&(k, n));
            }
            Op::Timer(k, n, t) => {
                let (b, _) = job.at(k, n);
                b.register_timer(TimeDomain::EventTime, &n, u64::from(t))
                    .unwrap();
                model.timers.insert((t, k, n));
            }
            Op::FireTimers(up_to) => {
                let mut fired = BTreeSet::new();
                for (b, _) in &mut job.subtasks {
                    for t in b
                        .fire_timers::<u8>(TimeDomain::EventTime, u64::from(up_to))
                        .unwrap()
                    {
                        prop_assert!(
                            fired.insert((t.time as u16, t.key, t.namespace)),
                            "fired twice"
                        );
                    }
                }
                let due: BTreeSet<_> = model
                    .timers
                    .iter()
                    .filter(|t| t.0 <= up_to)
                    .copied()
                    .collect();
                model.timers.retain(|t| t.0 > up_to);
                prop_assert_eq!(fired, due);
            }
            Op::SnapshotRestore {
                parallelism,
                savepoint,
            } => {
                job.snapshot_restore(parallelism, savepoint);
                job.check_all(&model)?;
            }
        }
    }
    job.snapshot_restore(2, false);
    job.check_all(&model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn memory_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run::<Memory>(ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn rocksdb_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run::<Rocks>(ops)?;
    }
}
