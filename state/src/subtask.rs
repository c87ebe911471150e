//! One subtask's snapshot in one call: the keyed backend (if the operator is keyed)
//! and the operator state store, synchronous parts now, one asynchronous part that
//! yields the [`SubtaskSnapshot`] the coordinator puts into `_metadata`.

use crate::backend::{AsyncSnapshot, KeyedStateBackend, SnapshotKind};
use crate::error::Result;
use crate::handle::SubtaskSnapshot;
use crate::operator_state::OperatorStateStore;
use crate::storage::CheckpointStorage;
use std::sync::Arc;

/// Runs both synchronous parts; `file_prefix` must be unique per operator and
/// subtask (e.g. `"window-3"`).
pub fn snapshot_subtask<B: KeyedStateBackend>(
    keyed: Option<&mut B>,
    operator: &OperatorStateStore,
    checkpoint_id: u64,
    kind: SnapshotKind,
    file_prefix: &str,
    storage: Arc<dyn CheckpointStorage>,
) -> Result<AsyncSnapshot<SubtaskSnapshot>> {
    let keyed = match keyed {
        Some(b) => Some(b.snapshot(checkpoint_id, kind, storage.clone())?),
        None => None,
    };
    let operator = operator.snapshot(checkpoint_id, file_prefix, storage);
    Ok(AsyncSnapshot::new(move || {
        Ok(SubtaskSnapshot {
            keyed: keyed.map(AsyncSnapshot::run).transpose()?,
            operator: Some(operator.run()?),
            extra: Vec::new(),
        })
    }))
}
