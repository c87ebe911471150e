//! Reading the entries of a key-group range out of old subtasks' handles, whatever
//! backend wrote them: the common path for restoring at a new parallelism and for
//! switching backends.

use crate::error::Result;
use crate::handle::{KeyedStateHandle, StateMeta};
use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::kg_file::{read_key_groups, RawEntry};
use crate::storage::CheckpointStorage;

/// Calls `f` for every entry in `range` held by `handles`; handles whose range does
/// not overlap are not read at all.
pub fn for_each_entry(
    handles: &[KeyedStateHandle],
    range: KeyGroupRange,
    storage: &dyn CheckpointStorage,
    mut f: impl FnMut(&StateMeta, KeyGroup, RawEntry) -> Result<()>,
) -> Result<()> {
    for handle in handles {
        let overlap = handle.range().intersect(&range);
        if overlap.is_empty() {
            continue;
        }
        match handle {
            KeyedStateHandle::KeyGroups(h) => read_key_groups(storage, h, overlap, &mut f)?,
            KeyedStateHandle::RocksDb(h) => {
                crate::rocks::read_rocksdb_handle(storage, h, overlap, &mut f)?
            }
        }
    }
    Ok(())
}
