//! Checkpoint storage end to end: corruption is detected and skipped (never used),
//! retention with incremental RocksDB checkpoints neither leaks nor deletes early.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use weir_state::backend::{KeyedStateBackend, SnapshotKind};
use weir_state::checkpoints::{latest_valid, CompletedCheckpointStore, Verify};
use weir_state::handle::{CheckpointMetadata, OperatorSnapshot, SubtaskSnapshot};
use weir_state::*;

fn metadata(id: u64, keyed: KeyedStateHandle) -> CheckpointMetadata {
    let mut m = CheckpointMetadata::new(id);
    m.operators.insert(
        "op".into(),
        OperatorSnapshot {
            max_parallelism: MAX_P,
            subtasks: vec![SubtaskSnapshot {
                keyed: Some(keyed),
                ..Default::default()
            }],
        },
    );
    m
}

/// Two completed checkpoints of one subtask: key k holds k+1 after checkpoint 1 and
/// k+2 after checkpoint 2.
fn two_checkpoints<F: Factory>(env: &Env) -> CompletedCheckpointStore {
    let mut store = CompletedCheckpointStore::open(env.storage.clone(), 5).unwrap();
    let mut b = F::open(config("op", 0, 1), &[], &*env.storage, &env.work());
    let v = ValueStateDescriptor::<u64>::new("v")
        .register(&mut b)
        .unwrap();
    for round in 1..=2u64 {
        for key in 0..1000 {
            b.set_current_key(key).unwrap();
            v.update(&mut b, key + round).unwrap();
        }
        let h = b
            .snapshot(round, SnapshotKind::Checkpoint, env.storage.clone())
            .unwrap()
            .run()
            .unwrap();
        store.add(&metadata(round, h)).unwrap();
        b.notify_checkpoint_complete(round);
    }
    store
}

fn value_of<F: Factory>(
    env: &Env,
    meta: &CheckpointMetadata,
    key: u64,
) -> weir_state::Result<Option<u64>> {
    let handles = meta.operators["op"].keyed_handles();
    let dir = env
        .work()
        .join(format!("restore-{}-{key}", meta.checkpoint_id));
    let mut b = F::try_open(config("op", 0, 1), &handles, &*env.storage, &dir)?;
    let v = ValueStateDescriptor::<u64>::new("v").register(&mut b)?;
    b.set_current_key(key)?;
    v.value(&mut b)
}

/// Damages one file of checkpoint 2 and checks that recovery names it, falls back
/// to checkpoint 1, and that checkpoint 1's data is what comes back.
fn damaged_file_falls_back<F: Factory>(
    damage: fn(&std::path::Path),
    pick: fn(&CheckpointMetadata) -> String,
    verify: Verify,
) {
    let env = Env::new();
    two_checkpoints::<F>(&env);
    let latest = latest_valid(&*env.storage, verify).unwrap().unwrap();
    assert_eq!(latest.metadata.checkpoint_id, 2);
    let victim = pick(&latest.metadata);
    damage(&env.local.local_path(&victim));
    let recovered = latest_valid(&*env.storage, verify).unwrap().unwrap();
    assert_eq!(
        recovered.metadata.checkpoint_id, 1,
        "fell back past the damaged checkpoint"
    );
    assert_eq!(recovered.skipped.len(), 1);
    let (id, err) = &recovered.skipped[0];
    assert_eq!(*id, 2);
    assert!(
        err.to_string().contains(&victim),
        "error names the file: {err}"
    );
    assert_eq!(
        value_of::<F>(&env, &recovered.metadata, 7).unwrap(),
        Some(8)
    );
}

fn flip_byte(p: &std::path::Path) {
    let mut bytes = std::fs::read(p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(p, bytes).unwrap();
}

fn truncate(p: &std::path::Path) {
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..bytes.len() * 2 / 3]).unwrap();
}

fn delete(p: &std::path::Path) {
    std::fs::remove_file(p).unwrap();
}

/// The largest data file of the checkpoint (a key-group file or an SST).
fn largest_file(m: &CheckpointMetadata) -> String {
    m.files()
        .into_iter()
        .max_by_key(|f| f.size)
        .unwrap()
        .path
        .clone()
}

/// A shared file that checkpoint 2 introduced (checkpoint 1 does not use it).
fn new_shared_file(m: &CheckpointMetadata) -> String {
    let files = m.shared_files();
    files
        .into_iter()
        .max()
        .expect("incremental checkpoints reference shared files")
}

fn metadata_of(m: &CheckpointMetadata) -> String {
    format!("chk-{}/_metadata", m.checkpoint_id)
}

macro_rules! corruption_suite {
    ($backend:ident, $factory:ty) => {
        mod $backend {
            use super::*;
            #[test]
            fn flipped_byte_is_detected() {
                damaged_file_falls_back::<$factory>(flip_byte, largest_file, Verify::Files);
            }
            #[test]
            fn truncated_file_is_detected() {
                damaged_file_falls_back::<$factory>(truncate, largest_file, Verify::Files);
            }
            #[test]
            fn half_written_metadata_is_detected() {
                damaged_file_falls_back::<$factory>(truncate, metadata_of, Verify::Metadata);
            }
            #[test]
            fn restoring_a_damaged_handle_fails_naming_the_file() {
                let env = Env::new();
                two_checkpoints::<$factory>(&env);
                let m = latest_valid(&*env.storage, Verify::Files)
                    .unwrap()
                    .unwrap()
                    .metadata;
                let victim = largest_file(&m);
                flip_byte(&env.local.local_path(&victim));
                let handles = m.operators["op"].keyed_handles();
                let err = match <$factory>::try_open(
                    config("op", 0, 1),
                    &handles,
                    &*env.storage,
                    &env.work().join("r"),
                ) {
                    Ok(_) => panic!("restored from a corrupt file"),
                    Err(e) => e.to_string(),
                };
                assert!(err.contains(&victim), "{err}");
            }
        }
    };
}

corruption_suite!(memory, Memory);
corruption_suite!(rocksdb, Rocks);

#[test]
fn deleted_shared_file_is_detected() {
    damaged_file_falls_back::<Rocks>(delete, new_shared_file, Verify::Metadata);
}

#[test]
fn metadata_never_renamed_means_no_checkpoint() {
    let env = Env::new();
    two_checkpoints::<Memory>(&env);
    // A crash between writing the temporary and the rename leaves only the temporary.
    std::fs::rename(
        env.local.local_path("chk-2/_metadata"),
        env.local.local_path("chk-2/_metadata.tmp"),
    )
    .unwrap();
    let r = latest_valid(&*env.storage, Verify::Files).unwrap().unwrap();
    assert_eq!(r.metadata.checkpoint_id, 1);
    assert_eq!(r.incomplete, vec![2], "no _metadata: it never completed");
    assert!(r.skipped.is_empty(), "which is no damage");
}

fn shared_dir(env: &Env) -> BTreeSet<String> {
    env.storage
        .list_dir("shared")
        .unwrap()
        .into_iter()
        .map(|n| format!("shared/{n}"))
        .collect()
}

/// 100 incremental RocksDB checkpoints with retain = 3 (every 10th aborted): after
/// every step each file a retained checkpoint references exists, and at the end
/// `shared/` holds exactly what the retained checkpoints reference.
#[test]
fn retention_of_100_incremental_checkpoints() {
    let env = Env::new();
    let mut store = CompletedCheckpointStore::open(env.storage.clone(), 3).unwrap();
    let mut b = Rocks::open(config("op", 0, 1), &[], &*env.storage, &env.work());
    let v = ValueStateDescriptor::<u64>::new("v")
        .register(&mut b)
        .unwrap();
    let mut model = BTreeMap::new();
    let mut retained: Vec<CheckpointMetadata> = Vec::new();
    for id in 1..=100u64 {
        for i in 0..40 {
            let key = (id * 37 + i * 101) % 2000;
            b.set_current_key(key).unwrap();
            v.update(&mut b, id).unwrap();
            model.insert(key, id);
        }
        let h = b
            .snapshot(id, SnapshotKind::Checkpoint, env.storage.clone())
            .unwrap()
            .run()
            .unwrap();
        let meta = metadata(id, h);
        if id % 10 == 5 {
            let files: Vec<FileHandle> = meta.files().into_iter().cloned().collect();
            store.discard_uncompleted(id, &files).unwrap();
            b.notify_checkpoint_aborted(id);
            continue;
        }
        let dropped = store.add(&meta).unwrap();
        b.notify_checkpoint_complete(id);
        retained.push(meta);
        retained.retain(|m| !dropped.contains(&m.checkpoint_id));
        assert!(retained.len() <= 3);
        for m in &retained {
            for f in m.files() {
                assert!(
                    env.storage.exists(&f.path).unwrap(),
                    "checkpoint {} lost {}",
                    m.checkpoint_id,
                    f.path
                );
            }
        }
    }
    let referenced: BTreeSet<String> = retained.iter().flat_map(|m| m.shared_files()).collect();
    assert_eq!(shared_dir(&env), referenced, "no leaked shared file");
    assert!(store.orphaned_shared_files().unwrap().is_empty());
    let ids: Vec<u64> = store.completed().to_vec();
    assert_eq!(ids, vec![98, 99, 100]);
    let dirs: Vec<String> = env
        .storage
        .list_dir("")
        .unwrap()
        .into_iter()
        .filter(|d| d.starts_with("chk-"))
        .collect();
    assert_eq!(dirs, vec!["chk-100", "chk-98", "chk-99"]);
    // The retained state is complete and correct.
    let latest = latest_valid(&*env.storage, Verify::Files)
        .unwrap()
        .unwrap()
        .metadata;
    drop(b);
    let mut r = Rocks::open(
        config("op", 0, 1),
        &latest.operators["op"].keyed_handles(),
        &*env.storage,
        &env.work(),
    );
    let v = ValueStateDescriptor::<u64>::new("v")
        .register(&mut r)
        .unwrap();
    for (key, expected) in model {
        r.set_current_key(key).unwrap();
        assert_eq!(v.value(&mut r).unwrap(), Some(expected));
    }
    // A store reopened over the same directory knows the same references.
    let reopened = CompletedCheckpointStore::open(env.storage.clone(), 3).unwrap();
    assert_eq!(reopened.completed(), &[98, 99, 100]);
    assert!(reopened.orphaned_shared_files().unwrap().is_empty());
}

/// After changing 1% of the keys, an incremental checkpoint uploads a small fraction
/// of the full size, and the restored subtask continues incrementally.
#[test]
fn incremental_checkpoint_uploads_only_new_files() {
    let env = Env::new();
    let mut b = Rocks::open(config("op", 0, 1), &[], &*env.storage, &env.work());
    let v = ValueStateDescriptor::<[u64; 8]>::new("v")
        .register(&mut b)
        .unwrap();
    for key in 0..20_000 {
        b.set_current_key(key).unwrap();
        v.update(&mut b, [key; 8]).unwrap();
    }
    let full = checkpoint(&mut b, 1, &env);
    let full_bytes: u64 = full.files().iter().map(|f| f.size).sum();
    for key in 0..200 {
        b.set_current_key(key * 100).unwrap();
        v.update(&mut b, [0; 8]).unwrap();
    }
    let incr = checkpoint(&mut b, 2, &env);
    let old: BTreeSet<&str> = full.files().iter().map(|f| f.path.as_str()).collect();
    let uploaded: u64 = incr
        .files()
        .iter()
        .filter(|f| !old.contains(f.path.as_str()))
        .map(|f| f.size)
        .sum();
    assert!(
        uploaded * 20 <= full_bytes,
        "incremental {uploaded} B vs full {full_bytes} B"
    );

    drop(b);
    let mut r = Rocks::open(
        config("op", 0, 1),
        std::slice::from_ref(&incr),
        &*env.storage,
        &env.work(),
    );
    let v = ValueStateDescriptor::<[u64; 8]>::new("v")
        .register(&mut r)
        .unwrap();
    r.set_current_key(100).unwrap();
    assert_eq!(v.value(&mut r).unwrap(), Some([0; 8]));
    r.set_current_key(101).unwrap();
    assert_eq!(v.value(&mut r).unwrap(), Some([101; 8]));
    v.update(&mut r, [1; 8]).unwrap();
    let after_restore = checkpoint(&mut r, 3, &env);
    let before: BTreeSet<&str> = incr.files().iter().map(|f| f.path.as_str()).collect();
    let reused = after_restore
        .files()
        .iter()
        .filter(|f| f.is_shared() && before.contains(f.path.as_str()))
        .count();
    assert!(
        reused > 0,
        "the first checkpoint after a restore reuses the restored SST files"
    );
}

/// The flow the runtime follows: per subtask `snapshot_subtask` (sync) → run (async)
/// → coordinator adds `_metadata` → recovery picks the latest valid checkpoint and
/// restores keyed and operator state at a new parallelism (2 → 3).
#[test]
fn runtime_flow_checkpoint_and_rescaled_recovery() {
    use weir_state::subtask::snapshot_subtask;
    let env = Env::new();
    let mut store = CompletedCheckpointStore::open(env.storage.clone(), 2).unwrap();
    let kind = BackendKind::RocksDb(RocksDbOptions::new(env.work().join("p2")));
    let mut subtasks = Vec::new();
    for i in 0..2u32 {
        let kind = match &kind {
            BackendKind::RocksDb(o) => {
                BackendKind::RocksDb(RocksDbOptions::new(o.working_dir.join(i.to_string())))
            }
            BackendKind::Memory => BackendKind::Memory,
        };
        let mut keyed =
            KeyedBackend::<u64>::open(&kind, config("sum", i, 2), &[], &*env.storage).unwrap();
        let mut ops = OperatorStateStore::new();
        let sum = ValueStateDescriptor::<u64>::new("sum")
            .register(&mut keyed)
            .unwrap();
        for key in (0..100).filter(|k| owner(*k, 2) == i) {
            keyed.set_current_key(key).unwrap();
            sum.update(&mut keyed, key * 3).unwrap();
        }
        let offsets = ops.list_state::<u64>("offsets").unwrap();
        offsets
            .update(&mut ops, &[u64::from(i) * 1000, u64::from(i) * 1000 + 1])
            .unwrap();
        subtasks.push((keyed, ops));
    }
    let pending: Vec<_> = subtasks
        .iter_mut()
        .enumerate()
        .map(|(i, (k, o))| {
            snapshot_subtask(
                Some(k),
                o,
                1,
                SnapshotKind::Checkpoint,
                &format!("sum-{i}"),
                env.storage.clone(),
            )
            .unwrap()
        })
        .collect();
    let snapshots = std::thread::spawn(move || {
        pending
            .into_iter()
            .map(|p| p.run().unwrap())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let mut meta = CheckpointMetadata::new(1);
    meta.operators.insert(
        "sum".into(),
        OperatorSnapshot {
            max_parallelism: MAX_P,
            subtasks: snapshots,
        },
    );
    store.add(&meta).unwrap();
    for (k, _) in &mut subtasks {
        k.notify_checkpoint_complete(1);
    }
    drop(subtasks);

    let recovered = latest_valid(&*env.storage, Verify::Files)
        .unwrap()
        .unwrap()
        .metadata;
    let op = &recovered.operators["sum"];
    let mut offsets = Vec::new();
    for i in 0..3u32 {
        let kind = BackendKind::RocksDb(RocksDbOptions::new(env.work().join(format!("p3-{i}"))));
        let mut keyed = KeyedBackend::<u64>::open(
            &kind,
            config("sum", i, 3),
            &op.keyed_handles(),
            &*env.storage,
        )
        .unwrap();
        let sum = ValueStateDescriptor::<u64>::new("sum")
            .register(&mut keyed)
            .unwrap();
        for key in (0..100).filter(|k| owner(*k, 3) == i) {
            keyed.set_current_key(key).unwrap();
            assert_eq!(sum.value(&mut keyed).unwrap(), Some(key * 3));
        }
        let mut ops =
            OperatorStateStore::restore(&op.operator_handles(), i as usize, 3, &*env.storage)
                .unwrap();
        offsets.extend(
            ops.list_state::<u64>("offsets")
                .unwrap()
                .get(&mut ops)
                .unwrap(),
        );
    }
    assert_eq!(offsets, vec![0, 1, 1000, 1001]);
}

/// Restored from one handle of its own range, a RocksDB backend takes the handle's
/// SST files as its incremental base; when its checkpoints go to another storage
/// (a job restored from another job's directory) they must still hold every file.
#[test]
fn rocksdb_restored_from_another_storage_checkpoints_every_file_it_references() {
    let (from, to) = (Env::new(), Env::new());
    let mut b = Rocks::open(config("op", 0, 1), &[], &*from.storage, &from.work());
    let v = ValueStateDescriptor::<u64>::new("v")
        .register(&mut b)
        .unwrap();
    for key in 0..1000 {
        b.set_current_key(key).unwrap();
        v.update(&mut b, key).unwrap();
    }
    let first = checkpoint(&mut b, 1, &from);
    drop(b);
    let mut r = Rocks::open(
        config("op", 0, 1),
        std::slice::from_ref(&first),
        &*from.storage,
        &to.work(),
    );
    let handle = r
        .snapshot(2, SnapshotKind::Checkpoint, to.storage.clone())
        .unwrap()
        .run()
        .unwrap();
    let shared: Vec<&FileHandle> = handle
        .files()
        .into_iter()
        .filter(|f| f.is_shared())
        .collect();
    assert!(!shared.is_empty());
    for f in handle.files() {
        to.storage
            .read_file(f)
            .unwrap_or_else(|e| panic!("the new storage lacks {}: {e}", f.path));
    }
}
