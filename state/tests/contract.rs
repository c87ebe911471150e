//! The state backend contract: every test here runs against every backend
//! (`memory::…` and `rocksdb::…`).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use weir_state::backend::{KeyedStateBackend, SnapshotKind, TimeDomain};
use weir_state::*;

fn single<F: Factory>(env: &Env) -> F::B {
    F::open(config("op", 0, 1), &[], &*env.storage, &env.work())
}

fn value_state<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let mut count = ValueStateDescriptor::<u64>::new("count")
        .register(&mut b)
        .unwrap();
    assert!(matches!(count.value(&mut b), Err(StateError::NoCurrentKey)));
    b.set_current_key(1).unwrap();
    assert_eq!(count.value(&mut b).unwrap(), None);
    count.update(&mut b, 10).unwrap();
    count.update(&mut b, 11).unwrap();
    b.set_current_key(2).unwrap();
    assert_eq!(count.value(&mut b).unwrap(), None);
    count.update(&mut b, 20).unwrap();
    b.set_current_key(1).unwrap();
    assert_eq!(count.value(&mut b).unwrap(), Some(11));
    count.clear(&mut b).unwrap();
    assert_eq!(count.value(&mut b).unwrap(), None);
    b.set_current_key(2).unwrap();
    assert_eq!(count.value(&mut b).unwrap(), Some(20));
    // Re-registering by name gives a handle onto the same state.
    let again = ValueStateDescriptor::<u64>::new("count")
        .register(&mut b)
        .unwrap();
    assert_eq!(again.value(&mut b).unwrap(), Some(20));
    // Namespaces are separate cells of the same state.
    let mut windowed = ValueStateDescriptor::<String, u64>::new("per-window")
        .register(&mut b)
        .unwrap();
    windowed.set_namespace(100);
    windowed.update(&mut b, "a".into()).unwrap();
    windowed.set_namespace(200);
    assert_eq!(windowed.value(&mut b).unwrap(), None);
    windowed.update(&mut b, "b".into()).unwrap();
    windowed.set_namespace(100);
    assert_eq!(windowed.value(&mut b).unwrap().as_deref(), Some("a"));
    count.set_namespace(());
}

fn list_state<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let mut list = ListStateDescriptor::<String, u32>::new("events")
        .register(&mut b)
        .unwrap();
    b.set_current_key(7).unwrap();
    assert!(list.get(&mut b).unwrap().is_empty());
    list.add(&mut b, "x".into()).unwrap();
    list.add(&mut b, "y".into()).unwrap();
    assert_eq!(list.get(&mut b).unwrap(), vec!["x", "y"]);
    list.set_namespace(1);
    assert!(list.get(&mut b).unwrap().is_empty());
    list.update(&mut b, vec!["p".into(), "q".into()]).unwrap();
    list.add(&mut b, "r".into()).unwrap();
    assert_eq!(list.get(&mut b).unwrap(), vec!["p", "q", "r"]);
    list.clear(&mut b).unwrap();
    assert!(list.get(&mut b).unwrap().is_empty());
    list.set_namespace(0);
    assert_eq!(list.get(&mut b).unwrap(), vec!["x", "y"]);
    b.set_current_key(8).unwrap();
    assert!(list.get(&mut b).unwrap().is_empty());
}

fn map_state<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let mut map = MapStateDescriptor::<String, i64, u8>::new("m")
        .register(&mut b)
        .unwrap();
    b.set_current_key(1).unwrap();
    assert!(map.is_empty(&mut b).unwrap());
    map.put(&mut b, "a".into(), 1).unwrap();
    map.put(&mut b, "b".into(), 2).unwrap();
    map.put(&mut b, "a".into(), 3).unwrap();
    assert_eq!(map.get(&mut b, &"a".into()).unwrap(), Some(3));
    assert!(map.contains(&mut b, &"b".into()).unwrap());
    assert!(!map.contains(&mut b, &"c".into()).unwrap());
    let mut entries = map.entries(&mut b).unwrap();
    entries.sort();
    assert_eq!(entries, vec![("a".to_string(), 3), ("b".to_string(), 2)]);
    map.remove(&mut b, &"a".into()).unwrap();
    assert_eq!(map.get(&mut b, &"a".into()).unwrap(), None);
    map.set_namespace(9);
    assert!(map.entries(&mut b).unwrap().is_empty());
    map.put(&mut b, "z".into(), 26).unwrap();
    map.set_namespace(0);
    b.set_current_key(2).unwrap();
    map.put(&mut b, "other".into(), 0).unwrap();
    b.set_current_key(1).unwrap();
    map.clear(&mut b).unwrap();
    assert!(map.is_empty(&mut b).unwrap());
    map.set_namespace(9);
    assert_eq!(map.entries(&mut b).unwrap(), vec![("z".to_string(), 26)]);
    b.set_current_key(2).unwrap();
    map.set_namespace(0);
    assert_eq!(map.entries(&mut b).unwrap(), vec![("other".to_string(), 0)]);
}

struct Average;
impl AggregateFunction<f64, (f64, u64), f64> for Average {
    fn create_accumulator(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, v: f64, (sum, n): (f64, u64)) -> (f64, u64) {
        (sum + v, n + 1)
    }
    fn get_result(&self, (sum, n): &(f64, u64)) -> f64 {
        sum / *n as f64
    }
}

fn reducing_and_aggregating_state<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let max = ReducingStateDescriptor::<i32>::new("max", |a, b| (*a).max(b))
        .register(&mut b)
        .unwrap();
    let avg = AggregatingStateDescriptor::<_, _, _, ()>::new("avg", Average)
        .register(&mut b)
        .unwrap();
    b.set_current_key(3).unwrap();
    assert_eq!(max.get(&mut b).unwrap(), None);
    assert_eq!(avg.get(&mut b).unwrap(), None);
    for v in [4, -1, 9, 2] {
        max.add(&mut b, v).unwrap();
        avg.add(&mut b, f64::from(v)).unwrap();
    }
    assert_eq!(max.get(&mut b).unwrap(), Some(9));
    assert_eq!(avg.get(&mut b).unwrap(), Some(3.5));
    b.set_current_key(4).unwrap();
    assert_eq!(max.get(&mut b).unwrap(), None);
    b.set_current_key(3).unwrap();
    max.clear(&mut b).unwrap();
    avg.clear(&mut b).unwrap();
    assert_eq!(max.get(&mut b).unwrap(), None);
    assert_eq!(avg.get(&mut b).unwrap(), None);
}

fn registration_mismatch_is_refused<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    ValueStateDescriptor::<u64>::new("s")
        .register(&mut b)
        .unwrap();
    assert!(ListStateDescriptor::<u64>::new("s")
        .register(&mut b)
        .is_err());
    // Restored as a list, registered as a value: refused, not misread.
    let l = ListStateDescriptor::<u64>::new("l")
        .register(&mut b)
        .unwrap();
    b.set_current_key(1).unwrap();
    l.add(&mut b, 5).unwrap();
    let h = checkpoint(&mut b, 1, &env);
    let mut restored = F::open(config("op", 0, 1), &[h], &*env.storage, &env.work());
    assert!(ValueStateDescriptor::<u64>::new("l")
        .register(&mut restored)
        .is_err());
    // Keys outside the backend's key groups are refused.
    let mut half = F::open(config("op", 0, 2), &[], &*env.storage, &env.work());
    let foreign = (0..).find(|k| owner(*k, 2) == 1).unwrap();
    assert!(matches!(
        half.set_current_key(foreign),
        Err(StateError::KeyGroupOutOfRange { .. })
    ));
}

fn ttl<F: Factory>() {
    let env = Env::new();
    let clock = ManualClock::new(1_000);
    let cfg = config("op", 0, 1).with_clock(clock.clock());
    let mut b = F::open(cfg.clone(), &[], &*env.storage, &env.work());
    let ttl = TtlConfig::new(Duration::from_millis(100));
    let v = ValueStateDescriptor::<u64>::new("v")
        .with_ttl(ttl)
        .register(&mut b)
        .unwrap();
    let r = ValueStateDescriptor::<u64>::new("r")
        .with_ttl(ttl.refresh_on_read())
        .register(&mut b)
        .unwrap();
    let l = ListStateDescriptor::<u64>::new("l")
        .with_ttl(ttl)
        .register(&mut b)
        .unwrap();
    let m = MapStateDescriptor::<u64, u64>::new("m")
        .with_ttl(ttl)
        .register(&mut b)
        .unwrap();
    b.set_current_key(1).unwrap();
    v.update(&mut b, 1).unwrap();
    r.update(&mut b, 2).unwrap();
    l.add(&mut b, 10).unwrap();
    m.put(&mut b, 1, 100).unwrap();
    clock.advance(60);
    l.add(&mut b, 11).unwrap();
    m.put(&mut b, 2, 200).unwrap();
    assert_eq!(
        r.value(&mut b).unwrap(),
        Some(2),
        "read at 1060 refreshes r"
    );
    clock.advance(50); // 1110: first writes expired, r refreshed at 1060 lives to 1160
    assert_eq!(v.value(&mut b).unwrap(), None);
    assert_eq!(r.value(&mut b).unwrap(), Some(2));
    assert_eq!(l.get(&mut b).unwrap(), vec![11]);
    assert_eq!(m.get(&mut b, &1).unwrap(), None);
    assert_eq!(m.entries(&mut b).unwrap(), vec![(2, 200)]);
    // Set a value that expires before the snapshot is written: it must not come back.
    b.set_current_key(2).unwrap();
    v.update(&mut b, 5).unwrap();
    clock.advance(100); // 1210: key 2's v expired without being read
    b.set_current_key(1).unwrap();
    let savepoint = b
        .snapshot(1, SnapshotKind::Savepoint, env.storage.clone())
        .unwrap()
        .run()
        .unwrap();
    clock.set(0); // even with the clock rewound, expired data is gone from snapshots
    let mut restored = F::open(cfg.clone(), &[savepoint], &*env.storage, &env.work());
    let v = ValueStateDescriptor::<u64>::new("v")
        .with_ttl(ttl)
        .register(&mut restored)
        .unwrap();
    restored.set_current_key(2).unwrap();
    assert_eq!(
        v.value(&mut restored).unwrap(),
        None,
        "expired entry left out of the savepoint"
    );
}

fn timers<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    b.set_current_key(1).unwrap();
    b.register_timer(TimeDomain::EventTime, &10u64, 100)
        .unwrap();
    b.register_timer(TimeDomain::EventTime, &10u64, 100)
        .unwrap();
    b.register_timer(TimeDomain::EventTime, &11u64, 100)
        .unwrap();
    b.register_timer(TimeDomain::ProcessingTime, &10u64, 50)
        .unwrap();
    b.set_current_key(2).unwrap();
    b.register_timer(TimeDomain::EventTime, &10u64, 90).unwrap();
    b.register_timer(TimeDomain::EventTime, &10u64, 300)
        .unwrap();
    b.delete_timer(TimeDomain::EventTime, &10u64, 300).unwrap();
    assert_eq!(b.next_timer(TimeDomain::EventTime), Some(90));
    let h = checkpoint(&mut b, 1, &env);
    let fired = b.fire_timers::<u64>(TimeDomain::EventTime, 100).unwrap();
    let got: Vec<(u64, u64, u64)> = fired.iter().map(|t| (t.time, t.key, t.namespace)).collect();
    assert_eq!(got, vec![(90, 2, 10), (100, 1, 10), (100, 1, 11)]);
    assert!(b
        .fire_timers::<u64>(TimeDomain::EventTime, 1000)
        .unwrap()
        .is_empty());
    // Restored timers fire again exactly as registered before the snapshot.
    let mut r = F::open(config("op", 0, 1), &[h], &*env.storage, &env.work());
    let fired = r
        .fire_timers::<u64>(TimeDomain::EventTime, u64::MAX)
        .unwrap();
    assert_eq!(fired.len(), 3);
    let proc_fired = r
        .fire_timers::<u64>(TimeDomain::ProcessingTime, 50)
        .unwrap();
    assert_eq!(
        proc_fired,
        vec![Timer {
            key: 1,
            namespace: 10,
            time: 50
        }]
    );
}

type KeyState = (Option<u64>, Vec<u64>, Vec<(u32, String)>, Option<u64>);

/// Fills every state kind for keys `0..n` (value = f(key, salt)).
struct Fixture {
    value: ValueState<u64>,
    list: ListState<u64>,
    map: MapState<u32, String>,
    sum: ReducingState<u64>,
}

impl Fixture {
    fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> Self {
        Fixture {
            value: ValueStateDescriptor::new("value").register(b).unwrap(),
            list: ListStateDescriptor::new("list").register(b).unwrap(),
            map: MapStateDescriptor::new("map").register(b).unwrap(),
            sum: ReducingStateDescriptor::new("sum", |a: &u64, b| a + b)
                .register(b)
                .unwrap(),
        }
    }

    fn write<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, key: u64, salt: u64) {
        b.set_current_key(key).unwrap();
        self.value.update(b, key * 1000 + salt).unwrap();
        self.list.add(b, salt).unwrap();
        self.map
            .put(b, salt as u32, format!("{key}/{salt}"))
            .unwrap();
        self.sum.add(b, salt + 1).unwrap();
        b.register_timer(TimeDomain::EventTime, &(), key * 10 + salt)
            .unwrap();
    }

    /// Everything the backend holds for `key`, in a comparable form.
    fn read<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, key: u64) -> KeyState {
        b.set_current_key(key).unwrap();
        let mut map = self.map.entries(b).unwrap();
        map.sort();
        (
            self.value.value(b).unwrap(),
            self.list.get(b).unwrap(),
            map,
            self.sum.get(b).unwrap(),
        )
    }
}

fn snapshot_restore_identity<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let fx = Fixture::register(&mut b);
    for key in 0..500 {
        fx.write(&mut b, key, 1);
        if key % 3 == 0 {
            fx.write(&mut b, key, 2);
        }
    }
    let before: Vec<_> = (0..600).map(|k| fx.read(&mut b, k)).collect();
    for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
        let h = b
            .snapshot(1, kind, env.storage.clone())
            .unwrap()
            .run()
            .unwrap();
        let mut r = F::open(config("op", 0, 1), &[h], &*env.storage, &env.work());
        let fx2 = Fixture::register(&mut r);
        let after: Vec<_> = (0..600).map(|k| fx2.read(&mut r, k)).collect();
        assert_eq!(before, after, "{kind:?}");
        assert_eq!(r.timer_service().len(), 500 + 167);
    }
}

fn snapshot_taken_while_mutating<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let fx = Fixture::register(&mut b);
    for key in 0..200 {
        fx.write(&mut b, key, 1);
    }
    let expected: Vec<_> = (0..200).map(|k| fx.read(&mut b, k)).collect();
    let pending = b
        .snapshot(1, SnapshotKind::Checkpoint, env.storage.clone())
        .unwrap();
    // Mutate everything before the asynchronous part runs (on another thread).
    for key in 0..200 {
        fx.write(&mut b, key, 7);
        if key % 2 == 0 {
            b.set_current_key(key).unwrap();
            fx.value.clear(&mut b).unwrap();
            fx.map.clear(&mut b).unwrap();
        }
    }
    fx.write(&mut b, 999, 7);
    let handle = std::thread::spawn(move || pending.run().unwrap())
        .join()
        .unwrap();
    let live: Vec<_> = (0..200).map(|k| fx.read(&mut b, k)).collect();
    assert_ne!(live, expected);
    let mut r = F::open(config("op", 0, 1), &[handle], &*env.storage, &env.work());
    let fx2 = Fixture::register(&mut r);
    let restored: Vec<_> = (0..200).map(|k| fx2.read(&mut r, k)).collect();
    assert_eq!(restored, expected);
    assert_eq!(fx2.read(&mut r, 999), (None, vec![], vec![], None));
}

/// Rescale 1 → 3 → 2: every key's state ends up at its owner, once.
fn restore_rescaling_1_3_2<F: Factory>() {
    let env = Env::new();
    let mut model: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut one = single::<F>(&env);
    let fx = Fixture::register(&mut one);
    for key in 0..300 {
        fx.write(&mut one, key, 1);
        model.entry(key).or_default().push(1);
    }
    let handles = vec![checkpoint(&mut one, 1, &env)];

    let mut three: Vec<F::B> = (0..3)
        .map(|i| F::open(config("op", i, 3), &handles, &*env.storage, &env.work()))
        .collect();
    for (i, b) in three.iter_mut().enumerate() {
        let fx = Fixture::register(b);
        for key in (0..400).filter(|k| owner(*k, 3) == i as u32) {
            fx.write(b, key, 2);
            model.entry(key).or_default().push(2);
        }
        // Keys of other subtasks are not here.
        for key in (0..300).filter(|k| owner(*k, 3) != i as u32) {
            assert!(b.set_current_key(key).is_err());
        }
    }
    let handles: Vec<_> = three.iter_mut().map(|b| checkpoint(b, 2, &env)).collect();
    // No entry is duplicated across the three snapshots.
    let mut seen = BTreeMap::new();
    for h in &handles {
        weir_state::restore::for_each_entry(
            std::slice::from_ref(h),
            KeyGroupRange::all(MAX_P),
            &*env.storage,
            |meta, _, e| {
                *seen
                    .entry((meta.name.clone(), e.key, e.namespace, e.user_key))
                    .or_insert(0) += 1;
                Ok(())
            },
        )
        .unwrap();
    }
    assert!(seen.values().all(|&n| n == 1));

    let mut two: Vec<F::B> = (0..2)
        .map(|i| F::open(config("op", i, 2), &handles, &*env.storage, &env.work()))
        .collect();
    let mut timers = 0;
    for (i, b) in two.iter_mut().enumerate() {
        let fx = Fixture::register(b);
        for (&key, salts) in model.iter().filter(|(k, _)| owner(**k, 2) == i as u32) {
            let (value, list, map, sum) = fx.read(b, key);
            assert_eq!(value, Some(key * 1000 + salts.last().unwrap()), "key {key}");
            assert_eq!(&list, salts, "key {key}");
            assert_eq!(map.len(), salts.len());
            assert_eq!(sum, Some(salts.iter().map(|s| s + 1).sum()));
        }
        let fired = b
            .fire_timers::<()>(TimeDomain::EventTime, u64::MAX)
            .unwrap();
        assert!(fired.iter().all(|t| owner(t.key, 2) == i as u32));
        timers += fired.len();
    }
    assert_eq!(timers, model.values().map(Vec::len).sum::<usize>());
}

fn restore_reads_only_overlapping_handles<F: Factory>() {
    // A handle whose files are gone entirely must not matter to a subtask that does
    // not own any of its key groups.
    let env = Env::new();
    let mut parts: Vec<F::B> = (0..2)
        .map(|i| F::open(config("op", i, 2), &[], &*env.storage, &env.work()))
        .collect();
    let mut handles = Vec::new();
    for (i, b) in parts.iter_mut().enumerate() {
        let fx = Fixture::register(b);
        for key in (0..50).filter(|k| owner(*k, 2) == i as u32) {
            fx.write(b, key, 3);
        }
        handles.push(checkpoint(b, 1, &env));
    }
    for f in handles[1].files() {
        std::fs::remove_file(env.local.local_path(&f.path)).unwrap();
    }
    let mut b = F::open(config("op", 0, 2), &handles, &*env.storage, &env.work());
    let fx = Fixture::register(&mut b);
    let key = (0..50).find(|k| owner(*k, 2) == 0).unwrap();
    assert_eq!(fx.read(&mut b, key).0, Some(key * 1000 + 3));
}

fn unregistered_state_survives_snapshots<F: Factory>() {
    let env = Env::new();
    let mut b = single::<F>(&env);
    let fx = Fixture::register(&mut b);
    for key in 0..50 {
        fx.write(&mut b, key, 5);
    }
    let expected: Vec<_> = (0..50).map(|k| fx.read(&mut b, k)).collect();
    let h1 = checkpoint(&mut b, 1, &env);
    // An operator version that only uses "value" for a while: the others must be
    // carried through its checkpoints untouched.
    let mut partial = F::open(config("op", 0, 1), &[h1], &*env.storage, &env.work());
    let value = ValueStateDescriptor::<u64>::new("value")
        .register(&mut partial)
        .unwrap();
    partial.set_current_key(0).unwrap();
    assert_eq!(value.value(&mut partial).unwrap(), Some(5));
    let h2 = checkpoint(&mut partial, 2, &env);
    drop(partial);
    let mut full = F::open(config("op", 0, 1), &[h2], &*env.storage, &env.work());
    let fx = Fixture::register(&mut full);
    let restored: Vec<_> = (0..50).map(|k| fx.read(&mut full, k)).collect();
    assert_eq!(restored, expected);
}

macro_rules! contract_suite {
    ($backend:ident, $factory:ty) => {
        mod $backend {
            use super::*;
            #[test]
            fn value_state() {
                super::value_state::<$factory>();
            }
            #[test]
            fn list_state() {
                super::list_state::<$factory>();
            }
            #[test]
            fn map_state() {
                super::map_state::<$factory>();
            }
            #[test]
            fn reducing_and_aggregating_state() {
                super::reducing_and_aggregating_state::<$factory>();
            }
            #[test]
            fn registration_mismatch_is_refused() {
                super::registration_mismatch_is_refused::<$factory>();
            }
            #[test]
            fn ttl() {
                super::ttl::<$factory>();
            }
            #[test]
            fn timers() {
                super::timers::<$factory>();
            }
            #[test]
            fn snapshot_restore_identity() {
                super::snapshot_restore_identity::<$factory>();
            }
            #[test]
            fn snapshot_taken_while_mutating() {
                super::snapshot_taken_while_mutating::<$factory>();
            }
            #[test]
            fn restore_rescaling_1_3_2() {
                super::restore_rescaling_1_3_2::<$factory>();
            }
            #[test]
            fn unregistered_state_survives_snapshots() {
                super::unregistered_state_survives_snapshots::<$factory>();
            }
            #[test]
            fn restore_reads_only_overlapping_handles() {
                super::restore_reads_only_overlapping_handles::<$factory>();
            }
        }
    };
}

contract_suite!(memory, Memory);
contract_suite!(rocksdb, Rocks);

/// Savepoints are backend-independent: switch backend (and parallelism) through one.
#[test]
fn savepoint_switches_backend_and_parallelism() {
    let env = Env::new();
    let mut mem = Memory::open(config("op", 0, 1), &[], &*env.storage, &env.work());
    let fx = Fixture::register(&mut mem);
    for key in 0..100 {
        fx.write(&mut mem, key, 4);
    }
    let expected: Vec<_> = (0..100).map(|k| fx.read(&mut mem, k)).collect();
    let sp = mem
        .snapshot(1, SnapshotKind::Savepoint, env.storage.clone())
        .unwrap()
        .run()
        .unwrap();
    let mut rocks: Vec<_> = (0..2)
        .map(|i| {
            Rocks::open(
                config("op", i, 2),
                std::slice::from_ref(&sp),
                &*env.storage,
                &env.work(),
            )
        })
        .collect();
    let mut got = Vec::new();
    for key in 0..100 {
        let b = &mut rocks[owner(key, 2) as usize];
        let fx = Fixture::register(b);
        got.push(fx.read(b, key));
    }
    assert_eq!(got, expected);
    // And back: RocksDB (native checkpoint and savepoint) into memory at p = 1.
    let mut handles: Vec<_> = rocks.iter_mut().map(|b| checkpoint(b, 2, &env)).collect();
    for (i, b) in rocks.iter_mut().enumerate() {
        if i == 1 {
            handles[1] = b
                .snapshot(3, SnapshotKind::Savepoint, env.storage.clone())
                .unwrap()
                .run()
                .unwrap();
        }
    }
    let mut back = Memory::open(config("op", 0, 1), &handles, &*env.storage, &env.work());
    let fx = Fixture::register(&mut back);
    let again: Vec<_> = (0..100).map(|k| fx.read(&mut back, k)).collect();
    assert_eq!(again, expected);
}

#[test]
fn runtime_enum_dispatches_to_the_chosen_backend() {
    let env = Env::new();
    for kind in [
        BackendKind::Memory,
        BackendKind::RocksDb(RocksDbOptions::new(env.work().join("enum"))),
    ] {
        let mut b =
            KeyedBackend::<String>::open(&kind, config("op", 0, 1), &[], &*env.storage).unwrap();
        let v = ValueStateDescriptor::<u64>::new("v")
            .register(&mut b)
            .unwrap();
        b.set_current_key("k".to_string()).unwrap();
        v.update(&mut b, 3).unwrap();
        let h = b
            .snapshot(1, SnapshotKind::Checkpoint, env.storage.clone())
            .unwrap()
            .run()
            .unwrap();
        drop(b); // a restarted subtask reuses its working directory
        let mut r =
            KeyedBackend::<String>::open(&kind, config("op", 0, 1), &[h], &*env.storage).unwrap();
        let v = ValueStateDescriptor::<u64>::new("v")
            .register(&mut r)
            .unwrap();
        r.set_current_key("k".to_string()).unwrap();
        assert_eq!(v.value(&mut r).unwrap(), Some(3));
    }
}
