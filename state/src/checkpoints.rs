//! Completed checkpoints: publishing `_metadata`, retention, and finding the latest
//! checkpoint that is intact.
//!
//! `_metadata` format: `"WEIRMETA" | version u32 LE | payload length u64 LE |
//! crc32c(payload) u32 LE | postcard(CheckpointMetadata)`. It is written last, through
//! [`CheckpointStorage::write_atomically`], so a checkpoint exists only once all its
//! files are durable. Recovery walks checkpoints from the newest down, skipping (with
//! a warning that names the file) any whose metadata is torn or whose files are
//! missing or fail their checksum; it never hands out state it could not verify.

use crate::error::{Result, StateError};
use crate::handle::{CheckpointMetadata, FileHandle};
use crate::retention::{checkpoints_to_drop, SharedRegistry};
use crate::storage::{checkpoint_dir, parse_checkpoint_dir, CheckpointStorage, METADATA_FILE};
use std::sync::Arc;

pub const METADATA_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"WEIRMETA";
const HEADER: usize = 8 + 4 + 8 + 4;

pub fn encode_metadata(meta: &CheckpointMetadata) -> Result<Vec<u8>> {
    let payload = crate::value::encode(meta)?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&METADATA_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode_metadata(path: &str, bytes: &[u8]) -> Result<CheckpointMetadata> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(StateError::corrupt(
            path,
            "truncated or not a weir metadata file",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != METADATA_VERSION {
        return Err(StateError::corrupt(
            path,
            format!("unsupported metadata version {version}"),
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(StateError::corrupt(
            path,
            format!("payload is {} bytes, header says {len}", payload.len()),
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(StateError::corrupt(path, "metadata checksum mismatch"));
    }
    postcard::from_bytes(payload).map_err(|e| StateError::corrupt(path, e.to_string()))
}

/// How thoroughly to check a checkpoint before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The metadata checksum and that every referenced file exists.
    Metadata,
    /// Additionally read every referenced file and check its size and crc32c.
    Files,
}

/// Loads and checks one checkpoint.
pub fn load_checkpoint(
    storage: &dyn CheckpointStorage,
    checkpoint_id: u64,
    verify: Verify,
) -> Result<CheckpointMetadata> {
    let path = format!("{}/{METADATA_FILE}", checkpoint_dir(checkpoint_id));
    let meta = decode_metadata(&path, &storage.read_raw(&path)?)?;
    if meta.checkpoint_id != checkpoint_id {
        return Err(StateError::corrupt(
            &path,
            format!("describes checkpoint {}", meta.checkpoint_id),
        ));
    }
    for file in meta.files() {
        match verify {
            Verify::Metadata => {
                if !storage.exists(&file.path)? {
                    return Err(StateError::Missing {
                        path: file.path.clone(),
                    });
                }
            }
            Verify::Files => {
                storage.read_file(file)?;
            }
        }
    }
    Ok(meta)
}

/// Ids of all `chk-<id>` directories, ascending (complete or not).
pub fn list_checkpoint_ids(storage: &dyn CheckpointStorage) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = storage
        .list_dir("")?
        .iter()
        .filter_map(|n| parse_checkpoint_dir(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

#[derive(Debug)]
pub struct RecoveredCheckpoint {
    pub metadata: CheckpointMetadata,
    /// Newer checkpoints that were damaged (their `_metadata` or a file it lists
    /// failed verification), with why.
    pub skipped: Vec<(u64, StateError)>,
    /// Newer checkpoint directories without `_metadata`: they never completed (in
    /// progress when the process died, or aborted), which is no damage.
    pub incomplete: Vec<u64>,
}

/// The newest checkpoint that passes `verify`, falling back past broken and
/// incomplete ones (the caller reports them).
pub fn latest_valid(
    storage: &dyn CheckpointStorage,
    verify: Verify,
) -> Result<Option<RecoveredCheckpoint>> {
    let (mut skipped, mut incomplete) = (Vec::new(), Vec::new());
    for id in list_checkpoint_ids(storage)?.into_iter().rev() {
        match load_checkpoint(storage, id, verify) {
            Ok(metadata) => {
                return Ok(Some(RecoveredCheckpoint {
                    metadata,
                    skipped,
                    incomplete,
                }))
            }
            Err(StateError::Missing { path })
                if path == format!("{}/{METADATA_FILE}", checkpoint_dir(id)) =>
            {
                incomplete.push(id)
            }
            Err(e) => skipped.push((id, e)),
        }
    }
    Ok(None)
}

/// Publishes completed checkpoints and enforces retention.
#[derive(Debug)]
pub struct CompletedCheckpointStore {
    storage: Arc<dyn CheckpointStorage>,
    retain: usize,
    completed: Vec<u64>,
    registry: SharedRegistry,
}

impl CompletedCheckpointStore {
    /// Opens the store, registering every existing checkpoint with intact metadata.
    pub fn open(storage: Arc<dyn CheckpointStorage>, retain: usize) -> Result<Self> {
        let mut store = CompletedCheckpointStore {
            storage,
            retain: retain.max(1),
            completed: Vec::new(),
            registry: SharedRegistry::default(),
        };
        for id in list_checkpoint_ids(&*store.storage)? {
            match load_checkpoint(&*store.storage, id, Verify::Metadata) {
                Ok(meta) if !meta.is_savepoint => {
                    store.registry.register(id, &meta.shared_files());
                    store.completed.push(id);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "ignoring incomplete or damaged checkpoint")
                }
            }
        }
        Ok(store)
    }

    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.storage
    }

    /// Retained completed checkpoints, ascending.
    pub fn completed(&self) -> &[u64] {
        &self.completed
    }

    /// Makes a checkpoint complete (its `_metadata` durable, written last), then drops
    /// checkpoints beyond the retention count. Returns the dropped ids.
    pub fn add(&mut self, meta: &CheckpointMetadata) -> Result<Vec<u64>> {
        let id = meta.checkpoint_id;
        let path = format!("{}/{METADATA_FILE}", checkpoint_dir(id));
        self.storage
            .write_atomically(&path, &encode_metadata(meta)?)?;
        if meta.is_savepoint {
            return Ok(Vec::new());
        }
        self.registry.register(id, &meta.shared_files());
        self.completed.push(id);
        self.completed.sort_unstable();
        let dropped = checkpoints_to_drop(&self.completed, self.retain);
        for &old in &dropped {
            self.completed.retain(|c| *c != old);
            // Metadata first: a half-deleted checkpoint must never look complete.
            self.storage
                .delete_file(&format!("{}/{METADATA_FILE}", checkpoint_dir(old)))?;
            self.storage.delete_dir(&checkpoint_dir(old))?;
            for file in self.registry.release(old) {
                self.storage.delete_file(&file)?;
            }
        }
        Ok(dropped)
    }

    /// Cleans up after a checkpoint that will never complete: its private directory
    /// and any shared file it uploaded that no retained checkpoint references.
    pub fn discard_uncompleted(&self, checkpoint_id: u64, files: &[FileHandle]) -> Result<()> {
        for f in files.iter().filter(|f| f.is_shared()) {
            if !self.registry.is_referenced(&f.path) {
                self.storage.delete_file(&f.path)?;
            }
        }
        self.storage.delete_dir(&checkpoint_dir(checkpoint_id))
    }

    /// Shared files present in storage that no retained checkpoint references (left
    /// by a crash mid-checkpoint). Safe to delete only while no checkpoint is in flight.
    pub fn orphaned_shared_files(&self) -> Result<Vec<String>> {
        Ok(self
            .storage
            .list_dir("shared")?
            .into_iter()
            .map(|n| format!("shared/{n}"))
            .filter(|p| !self.registry.is_referenced(p))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_detects_truncation() {
        let mut m = CheckpointMetadata::new(7);
        m.extra = vec![1, 2, 3];
        let bytes = encode_metadata(&m).unwrap();
        assert_eq!(decode_metadata("x", &bytes).unwrap(), m);
        for cut in [0, 5, HEADER, bytes.len() - 1] {
            let err = decode_metadata("chk-7/_metadata", &bytes[..cut])
                .unwrap_err()
                .to_string();
            assert!(err.contains("chk-7/_metadata"), "{err}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_metadata("x", &flipped).is_err());
    }
}
