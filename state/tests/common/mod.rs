//! Shared test scaffolding: one factory per backend so every suite runs on both.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use weir_state::backend::{KeyedBackendConfig, KeyedStateBackend, SnapshotKind};
use weir_state::{
    CheckpointStorage, KeyGroupRange, KeyedStateHandle, LocalCheckpointStorage, MemoryBackend,
    RocksDbBackend, RocksDbOptions,
};

pub trait Factory {
    type B: KeyedStateBackend<Key = u64>;
    fn try_open(
        config: KeyedBackendConfig,
        handles: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
        work: &Path,
    ) -> weir_state::Result<Self::B>;

    fn open(
        config: KeyedBackendConfig,
        handles: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
        work: &Path,
    ) -> Self::B {
        Self::try_open(config, handles, storage, work).unwrap()
    }
}

pub struct Memory;
pub struct Rocks;

impl Factory for Memory {
    type B = MemoryBackend<u64>;
    fn try_open(
        config: KeyedBackendConfig,
        handles: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
        _: &Path,
    ) -> weir_state::Result<Self::B> {
        MemoryBackend::restore(config, handles, storage)
    }
}

impl Factory for Rocks {
    type B = RocksDbBackend<u64>;
    fn try_open(
        config: KeyedBackendConfig,
        handles: &[KeyedStateHandle],
        storage: &dyn CheckpointStorage,
        work: &Path,
    ) -> weir_state::Result<Self::B> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = work.join(format!(
            "rocks-{}",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        RocksDbBackend::restore(config, RocksDbOptions::new(dir), handles, storage)
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub storage: Arc<dyn CheckpointStorage>,
    pub local: LocalCheckpointStorage,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCheckpointStorage::new(dir.path().join("checkpoints")).unwrap();
        Env {
            storage: Arc::new(local.clone()),
            local,
            dir,
        }
    }

    pub fn work(&self) -> std::path::PathBuf {
        self.dir.path().join("work")
    }
}

pub const MAX_P: u32 = 128;

pub fn config(name: &str, index: u32, parallelism: u32) -> KeyedBackendConfig {
    KeyedBackendConfig::new(
        format!("{name}-{index}"),
        KeyGroupRange::for_subtask(index, parallelism, MAX_P),
        MAX_P,
    )
}

pub fn checkpoint<B: KeyedStateBackend>(b: &mut B, id: u64, env: &Env) -> KeyedStateHandle {
    let h = b
        .snapshot(id, SnapshotKind::Checkpoint, env.storage.clone())
        .unwrap()
        .run()
        .unwrap();
    b.notify_checkpoint_complete(id);
    h
}

pub fn owner(key: u64, parallelism: u32) -> u32 {
    let kg = weir_state::key_group::key_group_of(&key, MAX_P);
    weir_state::key_group::subtask_for_key_group(kg, MAX_P, parallelism)
}
