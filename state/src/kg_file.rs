//! The key-group file: weir's backend-independent snapshot format.
//!
//! ```text
//! file  = MAGIC (8 bytes: "WEIRKG" 0x00 VERSION) block*
//! block = postcard(Block { key_group, states: [(state index, [RawEntry])] })
//! ```
//! One block per non-empty key group, ascending. The [`KeyGroupsHandle`] lists every
//! block's offset, length and crc32c, so a restoring subtask reads and verifies only
//! the blocks of the key groups it now owns; the file's own crc32c covers the rest.
//! A `RawEntry` is `(key, namespace, user_key, value)` with the postcard bytes of
//! each part exactly as the RocksDB backend stores them (see [`crate::value`]), which
//! is what makes this format usable for savepoints across backends.

use crate::error::{Result, StateError};
use crate::handle::{KeyGroupOffset, KeyGroupsHandle, StateMeta};
use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::storage::CheckpointStorage;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u8 = 1;
const MAGIC: [u8; 8] = [b'W', b'E', b'I', b'R', b'K', b'G', 0, FORMAT_VERSION];

/// One logical state entry in its stored byte form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RawEntry {
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
    /// Empty except for map state (the map key) and timers (the time, big-endian).
    pub user_key: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Block {
    key_group: KeyGroup,
    states: Vec<(u32, Vec<RawEntry>)>,
}

/// Builds a key-group file in memory, one key group at a time, ascending.
pub struct KeyGroupsWriter {
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    buf: Vec<u8>,
    groups: Vec<KeyGroupOffset>,
}

impl KeyGroupsWriter {
    pub fn new(range: KeyGroupRange, states: Vec<StateMeta>) -> Self {
        KeyGroupsWriter {
            range,
            states,
            buf: MAGIC.to_vec(),
            groups: Vec::new(),
        }
    }

    /// Adds a key group's entries by state index; empty states are dropped.
    pub fn add_group(
        &mut self,
        key_group: KeyGroup,
        states: Vec<(u32, Vec<RawEntry>)>,
    ) -> Result<()> {
        debug_assert!(self.range.contains(key_group));
        debug_assert!(self.groups.last().is_none_or(|g| g.key_group < key_group));
        let states: Vec<_> = states.into_iter().filter(|(_, e)| !e.is_empty()).collect();
        if states.is_empty() {
            return Ok(());
        }
        let offset = self.buf.len();
        crate::value::encode_into(&Block { key_group, states }, &mut self.buf)?;
        self.groups.push(KeyGroupOffset {
            key_group,
            offset: offset as u64,
            len: (self.buf.len() - offset) as u64,
            crc32c: crc32c::crc32c(&self.buf[offset..]),
        });
        Ok(())
    }

    pub fn finish(self, storage: &dyn CheckpointStorage, path: &str) -> Result<KeyGroupsHandle> {
        let file = storage.write_file(path, &self.buf)?;
        Ok(KeyGroupsHandle {
            range: self.range,
            file,
            states: self.states,
            groups: self.groups,
        })
    }
}

/// Calls `f` for every entry of the key groups of `handle` that lie in `range`,
/// verifying every block it reads.
pub fn read_key_groups(
    storage: &dyn CheckpointStorage,
    handle: &KeyGroupsHandle,
    range: KeyGroupRange,
    mut f: impl FnMut(&StateMeta, KeyGroup, RawEntry) -> Result<()>,
) -> Result<()> {
    let path = &handle.file.path;
    let wanted: Vec<&KeyGroupOffset> = handle
        .groups
        .iter()
        .filter(|g| range.contains(g.key_group))
        .collect();
    let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
        return Ok(());
    };
    let whole = wanted.len() == handle.groups.len();
    // One read covers the contiguous span of wanted blocks (they are ascending).
    let (base, bytes) = if whole {
        let bytes = storage.read_file(&handle.file)?;
        if bytes.get(..8) != Some(&MAGIC[..]) {
            return Err(StateError::corrupt(
                path,
                "bad magic or unsupported format version",
            ));
        }
        (0, bytes)
    } else {
        let start = first.offset;
        let end = last.offset + last.len;
        (start, storage.read_range(&handle.file, start, end - start)?)
    };
    for g in wanted {
        let lo = (g.offset - base) as usize;
        let block_bytes = bytes
            .get(lo..lo + g.len as usize)
            .ok_or_else(|| StateError::corrupt(path, "block beyond end of file"))?;
        if crc32c::crc32c(block_bytes) != g.crc32c {
            return Err(StateError::corrupt(
                path,
                format!("checksum mismatch in key group {}", g.key_group),
            ));
        }
        let block: Block = postcard::from_bytes(block_bytes)
            .map_err(|e| StateError::corrupt(path, format!("key group {}: {e}", g.key_group)))?;
        if block.key_group != g.key_group {
            return Err(StateError::corrupt(
                path,
                "block key group does not match its offset",
            ));
        }
        for (idx, entries) in block.states {
            let meta = handle
                .states
                .get(idx as usize)
                .ok_or_else(|| StateError::corrupt(path, format!("unknown state index {idx}")))?;
            for e in entries {
                f(meta, block.key_group, e)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::StateKind;
    use crate::storage::LocalCheckpointStorage;

    fn entry(k: u8) -> RawEntry {
        RawEntry {
            key: vec![k],
            namespace: vec![],
            user_key: vec![],
            value: vec![k, k],
        }
    }

    #[test]
    fn reads_back_only_the_requested_key_groups() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
        let meta = StateMeta {
            name: "s".into(),
            kind: StateKind::Value,
            ttl: None,
        };
        let mut w = KeyGroupsWriter::new(KeyGroupRange { start: 0, end: 8 }, vec![meta]);
        for kg in 0..8u16 {
            w.add_group(kg, vec![(0, vec![entry(kg as u8)])]).unwrap();
        }
        let h = w.finish(&storage, "chk-1/x").unwrap();
        let mut seen = Vec::new();
        read_key_groups(
            &storage,
            &h,
            KeyGroupRange { start: 3, end: 5 },
            |_, kg, e| {
                seen.push((kg, e.key[0]));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![(3, 3), (4, 4)]);

        // Corrupt key group 6 only: reading 3..5 still works, reading 6 fails.
        let full = storage.local_path("chk-1/x");
        let mut bytes = std::fs::read(&full).unwrap();
        let g6 = h.groups[6];
        bytes[(g6.offset + g6.len - 1) as usize] ^= 0xff;
        std::fs::write(&full, bytes).unwrap();
        read_key_groups(
            &storage,
            &h,
            KeyGroupRange { start: 3, end: 5 },
            |_, _, _| Ok(()),
        )
        .unwrap();
        let err = read_key_groups(
            &storage,
            &h,
            KeyGroupRange { start: 6, end: 7 },
            |_, _, _| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("chk-1/x") && err.contains("key group 6"),
            "{err}"
        );
    }
}
