//! State backend benchmarks. Criterion measures per-operation throughput; the
//! snapshot figures at 1M keys are one-shot measurements (median of 3) printed at
//! the end, since each run takes seconds.
//!
//! Run: `cargo bench -p weir-state --bench state`

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_state::backend::{KeyedBackendConfig, KeyedStateBackend, SnapshotKind};
use weir_state::key_group::{hash_key, key_group_of_hash};
use weir_state::*;

const MAX_P: u32 = 128;
const BATCH: u64 = 1000;

fn config() -> KeyedBackendConfig {
    KeyedBackendConfig::new("bench", KeyGroupRange::all(MAX_P), MAX_P)
}

/// Keys with their precomputed key group, as the runtime passes them.
fn keys(n: u64) -> Vec<(u64, KeyGroup)> {
    // A multiplicative permutation so consecutive operations hit unrelated keys.
    (0..n)
        .map(|i| (i * 2_654_435_761) % n)
        .map(|k| (k, key_group_of_hash(hash_key(&k), MAX_P)))
        .collect()
}

fn bench_ops<B: KeyedStateBackend<Key = u64>>(
    c: &mut Criterion,
    name: &str,
    mut b: B,
    key_count: u64,
) {
    let value = ValueStateDescriptor::<u64>::new("value")
        .register(&mut b)
        .unwrap();
    let list = ListStateDescriptor::<u64>::new("list")
        .register(&mut b)
        .unwrap();
    let map = MapStateDescriptor::<u32, u64>::new("map")
        .register(&mut b)
        .unwrap();
    let keys = keys(key_count);
    for &(k, kg) in &keys {
        b.set_current_key_in_group(k, kg).unwrap();
        value.update(&mut b, k).unwrap();
        map.put(&mut b, (k % 16) as u32, k).unwrap();
    }
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(BATCH));
    let mut cursor = 0usize;
    let mut next = |keys: &[(u64, KeyGroup)]| {
        cursor = (cursor + 1) % keys.len();
        keys[cursor]
    };
    group.bench_function("value get", |bencher| {
        bencher.iter(|| {
            for _ in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                black_box(value.value(&mut b).unwrap());
            }
        })
    });
    group.bench_function("value update", |bencher| {
        bencher.iter(|| {
            for i in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                value.update(&mut b, i).unwrap();
            }
        })
    });
    group.bench_function("value get+update", |bencher| {
        bencher.iter(|| {
            for _ in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                let v = value.value(&mut b).unwrap().unwrap_or(0);
                value.update(&mut b, v + 1).unwrap();
            }
        })
    });
    group.bench_function("list add", |bencher| {
        bencher.iter(|| {
            for _ in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                list.add(&mut b, k).unwrap();
            }
        });
        // Keep lists short so list-add cost does not drift with the sample count.
        for &(k, kg) in &keys {
            b.set_current_key_in_group(k, kg).unwrap();
            list.clear(&mut b).unwrap();
        }
    });
    group.bench_function("map get", |bencher| {
        bencher.iter(|| {
            for i in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                black_box(map.get(&mut b, &((i % 16) as u32)).unwrap());
            }
        })
    });
    group.bench_function("map put", |bencher| {
        bencher.iter(|| {
            for i in 0..BATCH {
                let (k, kg) = next(&keys);
                b.set_current_key_in_group(k, kg).unwrap();
                map.put(&mut b, (i % 16) as u32, i).unwrap();
            }
        })
    });
    group.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct SnapshotFigures {
    sync: Duration,
    write: Duration,
    size: u64,
    restore: Duration,
    incremental_size: Option<u64>,
}

fn populate<B: KeyedStateBackend<Key = u64>>(
    b: &mut B,
    keys: &[(u64, KeyGroup)],
    salt: u64,
) -> ValueState<u64> {
    let value = ValueStateDescriptor::<u64>::new("value")
        .register(b)
        .unwrap();
    for &(k, kg) in keys {
        b.set_current_key_in_group(k, kg).unwrap();
        value.update(b, k ^ salt).unwrap();
    }
    value
}

fn snapshot_figures(kind: &BackendKind, keys: &[(u64, KeyGroup)]) -> SnapshotFigures {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalCheckpointStorage::new(dir.path().join("chk")).unwrap());
    let kind = match kind {
        BackendKind::Memory => BackendKind::Memory,
        BackendKind::RocksDb(_) => {
            BackendKind::RocksDb(RocksDbOptions::new(dir.path().join("work")))
        }
    };
    let mut b = KeyedBackend::<u64>::open(&kind, config(), &[], &*storage).unwrap();
    let value = populate(&mut b, keys, 0);
    let t = Instant::now();
    let pending = b
        .snapshot(1, SnapshotKind::Checkpoint, storage.clone())
        .unwrap();
    let sync = t.elapsed();
    let t = Instant::now();
    let handle = pending.run().unwrap();
    let write = t.elapsed();
    b.notify_checkpoint_complete(1);
    let size: u64 = handle.files().iter().map(|f| f.size).sum();
    // 1% of the keys change, then an incremental checkpoint (RocksDB only).
    let incremental_size = matches!(kind, BackendKind::RocksDb(_)).then(|| {
        for &(k, kg) in keys.iter().step_by(100) {
            b.set_current_key_in_group(k, kg).unwrap();
            value.update(&mut b, 0).unwrap();
        }
        let h2 = b
            .snapshot(2, SnapshotKind::Checkpoint, storage.clone())
            .unwrap()
            .run()
            .unwrap();
        let old: std::collections::BTreeSet<&str> =
            handle.files().iter().map(|f| f.path.as_str()).collect();
        h2.files()
            .iter()
            .filter(|f| !old.contains(f.path.as_str()))
            .map(|f| f.size)
            .sum()
    });
    drop(b);
    let kind = match kind {
        BackendKind::Memory => BackendKind::Memory,
        BackendKind::RocksDb(_) => {
            BackendKind::RocksDb(RocksDbOptions::new(dir.path().join("restore")))
        }
    };
    let t = Instant::now();
    let mut r = KeyedBackend::<u64>::open(&kind, config(), &[handle], &*storage).unwrap();
    let v = ValueStateDescriptor::<u64>::new("value")
        .register(&mut r)
        .unwrap();
    let restore = t.elapsed();
    let (k, kg) = keys[keys.len() / 2];
    r.set_current_key_in_group(k, kg).unwrap();
    assert_eq!(v.value(&mut r).unwrap(), Some(k));
    SnapshotFigures {
        sync,
        write,
        size,
        restore,
        incremental_size,
    }
}

fn print_snapshot_figures() {
    let keys = keys(1_000_000);
    println!("\nsnapshot figures, 1M keys of ValueState<u64>, median of 3:");
    let rocks_dir = tempfile::tempdir().unwrap();
    for (name, kind) in [
        ("memory", BackendKind::Memory),
        (
            "rocksdb",
            BackendKind::RocksDb(RocksDbOptions::new(rocks_dir.path())),
        ),
    ] {
        let runs: Vec<SnapshotFigures> = (0..3).map(|_| snapshot_figures(&kind, &keys)).collect();
        let sync = median(runs.iter().map(|r| r.sync).collect());
        let write = median(runs.iter().map(|r| r.write).collect());
        let restore = median(runs.iter().map(|r| r.restore).collect());
        let size = runs[0].size;
        println!(
            "  {name:8} sync part {:>9.3} ms | async write {:>8.1} ms | size {:>6.1} MB | restore {:>8.1} ms",
            sync.as_secs_f64() * 1e3,
            write.as_secs_f64() * 1e3,
            size as f64 / 1e6,
            restore.as_secs_f64() * 1e3
        );
        if let Some(incr) = runs[0].incremental_size {
            println!(
                "  {name:8} incremental after 1% change: {:.2} MB = {:.2}% of full",
                incr as f64 / 1e6,
                100.0 * incr as f64 / size as f64
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    // 100k keys in random order: bound by cache misses on the hash tables.
    bench_ops(&mut c, "memory", MemoryBackend::new(config()), 100_000);
    // 1k hot keys: cache-resident, the backend's own per-access cost.
    bench_ops(
        &mut c,
        "memory-1k-keys",
        MemoryBackend::new(config()),
        1_000,
    );
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbBackend::new(config(), RocksDbOptions::new(dir.path())).unwrap();
    bench_ops(&mut c, "rocksdb", rocks, 100_000);
    c.final_summary();
    // WEIR_BENCH_OPS_ONLY=1 skips the (slow) 1M-key snapshot figures.
    if std::env::var_os("WEIR_BENCH_OPS_ONLY").is_none() {
        print_snapshot_figures();
    }
}
