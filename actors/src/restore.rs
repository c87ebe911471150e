//! Which checkpoint a job starts from, and whether the job can take it.
//!
//! A job starts from the checkpoint directory `JobConfig::restore_from` names (any
//! checkpoint storage, e.g. another job's), else, with checkpointing and `resume`,
//! from the newest valid checkpoint of its own storage (damaged newer ones are
//! skipped with a warning naming the file), else from nothing. Either way every
//! operator whose state the checkpoint holds must exist in the job (Flink's rule:
//! state is never dropped silently) unless `allow_non_restored_state` says to drop
//! it. Parallelism and state backend may differ from the checkpoint's: keyed state
//! is redistributed by key group, source splits by operator-state split lists.

use crate::config::JobConfig;
use crate::error::JobError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_state::checkpoints::{latest_valid, load_checkpoint, Verify};
use weir_state::handle::CheckpointMetadata;
use weir_state::storage::{parse_checkpoint_dir, METADATA_FILE};
use weir_state::{CheckpointStorage, LocalCheckpointStorage};

/// A checkpoint a job starts from, with the storage its handles are relative to.
#[derive(Debug, Clone)]
pub(crate) struct Restore {
    pub metadata: CheckpointMetadata,
    pub storage: Arc<dyn CheckpointStorage>,
}

/// Splits a checkpoint path (`…/chk-<id>` or `…/chk-<id>/_metadata`) into its
/// storage root and id.
pub fn locate_checkpoint(path: &Path) -> Result<(PathBuf, u64), String> {
    let dir = if path.file_name().is_some_and(|n| n == METADATA_FILE) {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_dir)
        .ok_or_else(|| {
            format!(
                "{} is not a checkpoint directory: name one like DIR/chk-12",
                path.display()
            )
        })?;
    let root = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((root, id))
}

/// Opens the checkpoint at `path` and verifies every byte it references.
pub fn open_checkpoint(
    path: &Path,
) -> Result<(CheckpointMetadata, LocalCheckpointStorage), String> {
    let (root, id) = locate_checkpoint(path)?;
    if !root.join(format!("chk-{id}")).is_dir() {
        return Err(format!("{}: no such checkpoint directory", path.display()));
    }
    let storage = LocalCheckpointStorage::new(&root)
        .map_err(|e| format!("cannot open the checkpoint storage {}: {e}", root.display()))?;
    let metadata = load_checkpoint(&storage, id, Verify::Files).map_err(|e| {
        format!(
            "{} is not a valid checkpoint: {e} (a checkpoint without an intact _metadata never completed)",
            path.display()
        )
    })?;
    Ok((metadata, storage))
}

/// The checkpoint this job starts from (see the module docs).
pub(crate) fn select(
    config: &JobConfig,
    own_storage: &Arc<dyn CheckpointStorage>,
    operators: &[&str],
) -> Result<Option<Restore>, JobError> {
    let restore = if let Some(path) = &config.restore_from {
        let (metadata, storage) = open_checkpoint(path).map_err(JobError::Restore)?;
        tracing::info!(checkpoint = metadata.checkpoint_id, path = %path.display(), "restoring from checkpoint");
        Some(Restore {
            metadata,
            storage: Arc::new(storage),
        })
    } else {
        match &config.checkpoint {
            Some(checkpoint) if checkpoint.resume => {
                latest_valid(own_storage.as_ref(), Verify::Files)
                    .map_err(|e| {
                        JobError::Runtime(format!(
                            "cannot read the checkpoints in {}: {e}",
                            checkpoint.dir.display()
                        ))
                    })?
                    .map(|recovered| {
                        for (id, why) in &recovered.skipped {
                            tracing::warn!(checkpoint = id, reason = %why, "skipping a damaged checkpoint");
                        }
                        for id in &recovered.incomplete {
                            tracing::info!(checkpoint = id, "ignoring a checkpoint that never completed (no _metadata)");
                        }
                        tracing::info!(checkpoint = recovered.metadata.checkpoint_id, dir = %checkpoint.dir.display(), "resuming from checkpoint");
                        Restore {
                            metadata: recovered.metadata,
                            storage: own_storage.clone(),
                        }
                    })
            }
            _ => None,
        }
    };
    let Some(restore) = restore else {
        return Ok(None);
    };
    let unmatched = unmatched_operators(&restore.metadata, operators);
    if unmatched.is_empty() {
        return Ok(Some(restore));
    }
    let names = unmatched
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if !config.allow_non_restored_state {
        return Err(JobError::Restore(format!(
            "checkpoint {} holds state of {names}, which this job does not have: keep those operator names, or allow dropping their state (--allow-non-restored-state)",
            restore.metadata.checkpoint_id
        )));
    }
    tracing::warn!(checkpoint = restore.metadata.checkpoint_id, operators = %names, "dropping the state of operators this job does not have");
    let mut restore = restore;
    restore
        .metadata
        .operators
        .retain(|name, _| operators.contains(&name.as_str()));
    Ok(Some(restore))
}

/// Operators whose state the checkpoint holds but the job lacks.
fn unmatched_operators<'a>(metadata: &'a CheckpointMetadata, operators: &[&str]) -> Vec<&'a str> {
    metadata
        .operators
        .keys()
        .map(String::as_str)
        .filter(|name| !operators.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::handle::OperatorSnapshot;

    #[test]
    fn checkpoint_paths_name_a_root_and_an_id() {
        assert_eq!(
            locate_checkpoint(Path::new("/x/chk/chk-12")).unwrap(),
            (PathBuf::from("/x/chk"), 12)
        );
        assert_eq!(
            locate_checkpoint(Path::new("chk-3/_metadata")).unwrap(),
            (PathBuf::from("."), 3)
        );
        let e = locate_checkpoint(Path::new("/x/chk")).unwrap_err();
        assert!(e.contains("not a checkpoint directory"), "{e}");
    }

    #[test]
    fn operators_missing_from_the_job_are_named() {
        let mut metadata = CheckpointMetadata::new(4);
        for name in ["src", "sum", "old"] {
            metadata.operators.insert(
                name.into(),
                OperatorSnapshot {
                    max_parallelism: 128,
                    subtasks: Vec::new(),
                },
            );
        }
        assert_eq!(
            unmatched_operators(&metadata, &["src", "sum", "new"]),
            ["old"]
        );
        assert!(unmatched_operators(&metadata, &["old", "src", "sum"]).is_empty());
    }
}
