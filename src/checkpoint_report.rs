//! `weir checkpoints list` and `weir checkpoints inspect`: what a checkpoint
//! directory holds, read without running anything, as text tables or as JSON.
//!
//! Listing verifies every checkpoint the way a restore would (every referenced file's
//! size and crc32c), so "valid" means a restore can use it, and a damaged one says
//! which file failed and why. Inspecting decodes `_metadata` and the operator-state
//! files (source splits are shown as their sources wrote them; the built-in sources
//! write JSON).

use serde::Serialize;
use std::path::Path;
use weir_actors::SOURCE_SPLITS_STATE;
use weir_state::checkpoints::{decode_metadata, list_checkpoint_ids, load_checkpoint, Verify};
use weir_state::handle::{CheckpointMetadata, KeyedStateHandle, SubtaskSnapshot};
use weir_state::storage::{checkpoint_dir, METADATA_FILE};
use weir_state::{
    CheckpointStorage, LocalCheckpointStorage, OperatorStateStore, RedistributionMode, StateError,
};

/// Whether a restore can use a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Status {
    Valid,
    /// Its `_metadata` or a file it references is torn, missing or fails its checksum.
    Damaged(String),
    /// No `_metadata`: still in progress, aborted, or the process died before it.
    Incomplete(String),
}

/// One line of `weir checkpoints list`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointListing {
    pub id: u64,
    pub path: String,
    /// When its `_metadata` was written (RFC 3339, UTC); none without one.
    pub completed: Option<String>,
    /// Bytes of `_metadata` and every file it references (shared ones included);
    /// without readable metadata, of the files in its directory.
    pub size_bytes: u64,
    #[serde(flatten)]
    pub status: Status,
}

/// What `weir checkpoints inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointDetails {
    #[serde(flatten)]
    pub summary: CheckpointListing,
    pub is_savepoint: bool,
    pub operators: Vec<OperatorDetails>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorDetails {
    pub name: String,
    pub parallelism: usize,
    pub max_parallelism: u32,
    pub subtasks: Vec<SubtaskDetails>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubtaskDetails {
    pub index: usize,
    pub keyed: Option<KeyedDetails>,
    pub operator_state: Option<OperatorStateDetails>,
    /// The source's splits with their positions, as the source wrote them.
    pub source_splits: Option<Vec<String>>,
    pub extra: Vec<FileDetails>,
    /// In-flight records of unaligned checkpoints (the format holds none yet).
    pub channel_state: Vec<FileDetails>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyedDetails {
    /// `[start, end)` of the key groups it holds.
    pub key_groups: (u16, u16),
    /// `key_groups_file` (memory backend, savepoints) or `rocksdb` (native, incremental).
    pub kind: &'static str,
    /// State names with their kinds, e.g. `sum (Value)`.
    pub states: Vec<String>,
    pub files: usize,
    pub size_bytes: u64,
    /// Files in `shared/` (RocksDB SSTs reused by later incremental checkpoints).
    pub shared_files: usize,
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorStateDetails {
    pub file: FileDetails,
    /// (name, redistribution, elements)
    pub lists: Vec<(String, String, usize)>,
    /// (name, entries)
    pub broadcast: Vec<(String, usize)>,
    /// Why the file could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileDetails {
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
}

/// Every `chk-<id>` directory in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<CheckpointListing>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such directory", dir.display()));
    }
    let storage = LocalCheckpointStorage::new(dir)
        .map_err(|e| format!("cannot open the checkpoint directory: {e}"))?;
    let ids =
        list_checkpoint_ids(&storage).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    Ok(ids.into_iter().map(|id| summarize(&storage, id)).collect())
}

fn summarize(storage: &LocalCheckpointStorage, id: u64) -> CheckpointListing {
    let metadata_path = format!("{}/{METADATA_FILE}", checkpoint_dir(id));
    let metadata_file = storage.local_path(&metadata_path);
    let completed = std::fs::metadata(&metadata_file)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let readable = storage.read_raw(&metadata_path).ok().and_then(|bytes| {
        Some((
            bytes.len() as u64,
            decode_metadata(&metadata_path, &bytes).ok()?,
        ))
    });
    let size_bytes = match &readable {
        Some((len, metadata)) => len + metadata.files().iter().map(|f| f.size).sum::<u64>(),
        None => dir_size(&storage.local_path(&checkpoint_dir(id))),
    };
    let status = match load_checkpoint(storage, id, Verify::Files) {
        Ok(_) => Status::Valid,
        Err(StateError::Missing { path }) if path == metadata_path => Status::Incomplete(
            "no _metadata: in progress, aborted, or its process died before it completed".into(),
        ),
        Err(e) => Status::Damaged(e.to_string()),
    };
    CheckpointListing {
        id,
        path: storage
            .local_path(&checkpoint_dir(id))
            .display()
            .to_string(),
        completed,
        size_bytes,
        status,
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// The checkpoint at `path` (`…/chk-<id>` or its `_metadata`), operator by operator.
pub fn inspect(path: &Path) -> Result<CheckpointDetails, String> {
    let (root, id) = weir_actors::restore::locate_checkpoint(path)?;
    if !root.join(checkpoint_dir(id)).is_dir() {
        return Err(format!("{}: no such checkpoint directory", path.display()));
    }
    let storage = LocalCheckpointStorage::new(&root)
        .map_err(|e| format!("cannot open the checkpoint storage: {e}"))?;
    let metadata_path = format!("{}/{METADATA_FILE}", checkpoint_dir(id));
    let metadata = match storage.read_raw(&metadata_path) {
        Err(StateError::Missing { .. }) => {
            return Err(format!(
                "{}: no _metadata, so the checkpoint never completed (in progress, aborted, or its process died)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(bytes) => decode_metadata(&metadata_path, &bytes)
            .map_err(|e| format!("{}: its _metadata is damaged: {e}", path.display()))?,
    };
    Ok(CheckpointDetails {
        summary: summarize(&storage, id),
        is_savepoint: metadata.is_savepoint,
        operators: operators(&metadata, &storage),
    })
}

fn operators(
    metadata: &CheckpointMetadata,
    storage: &dyn CheckpointStorage,
) -> Vec<OperatorDetails> {
    metadata
        .operators
        .iter()
        .map(|(name, op)| OperatorDetails {
            name: name.clone(),
            parallelism: op.subtasks.len(),
            max_parallelism: op.max_parallelism,
            subtasks: op
                .subtasks
                .iter()
                .enumerate()
                .map(|(index, s)| subtask(index, s, storage))
                .collect(),
        })
        .collect()
}

fn subtask(index: usize, s: &SubtaskSnapshot, storage: &dyn CheckpointStorage) -> SubtaskDetails {
    let keyed = s.keyed.as_ref().map(|k| {
        let files = k.files();
        let shared: Vec<_> = files.iter().filter(|f| f.is_shared()).collect();
        let (kind, states) = match k {
            KeyedStateHandle::KeyGroups(h) => ("key_groups_file", &h.states),
            KeyedStateHandle::RocksDb(h) => ("rocksdb", &h.states),
        };
        KeyedDetails {
            key_groups: (k.range().start, k.range().end),
            kind,
            states: states
                .iter()
                .map(|m| format!("{} ({:?})", m.name, m.kind))
                .collect(),
            files: files.len(),
            size_bytes: files.iter().map(|f| f.size).sum(),
            shared_files: shared.len(),
            shared_bytes: shared.iter().map(|f| f.size).sum(),
        }
    });
    let mut source_splits = None;
    let operator_state = s.operator.as_ref().map(|h| {
        let file = FileDetails {
            name: "operator state".into(),
            path: h.file.path.clone(),
            size_bytes: h.file.size,
        };
        match OperatorStateStore::restore(&[Some(h.clone())], 0, 1, storage) {
            Ok(mut store) => {
                let lists = store
                    .lists()
                    .map(|(name, mode, elements)| {
                        let mode = match mode {
                            RedistributionMode::SplitList => "split",
                            RedistributionMode::UnionList => "union",
                            RedistributionMode::Broadcast => "broadcast",
                        };
                        (name.to_string(), mode.to_string(), elements.len())
                    })
                    .collect();
                let broadcast = store
                    .broadcast_maps()
                    .map(|(name, n)| (name.to_string(), n))
                    .collect();
                if lists_contain(&store, SOURCE_SPLITS_STATE) {
                    source_splits = store
                        .list_state::<Vec<u8>>(SOURCE_SPLITS_STATE)
                        .and_then(|l| l.get(&mut store))
                        .ok()
                        .map(|splits| splits.iter().map(|b| printable(b)).collect());
                }
                OperatorStateDetails {
                    file,
                    lists,
                    broadcast,
                    error: None,
                }
            }
            Err(e) => OperatorStateDetails {
                file,
                lists: Vec::new(),
                broadcast: Vec::new(),
                error: Some(e.to_string()),
            },
        }
    });
    let (channel_state, extra): (Vec<_>, Vec<_>) = s
        .extra
        .iter()
        .map(|(name, f)| FileDetails {
            name: name.clone(),
            path: f.path.clone(),
            size_bytes: f.size,
        })
        .partition(|f| f.name.starts_with("channel"));
    SubtaskDetails {
        index,
        keyed,
        operator_state,
        source_splits,
        extra,
        channel_state,
    }
}

fn lists_contain(store: &OperatorStateStore, name: &str) -> bool {
    store.lists().any(|(n, _, _)| n == name)
}

/// UTF-8 text as it is; anything else as hex.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if x < 1024.0 {
            break;
        }
        x /= 1024.0;
        unit = u;
    }
    format!("{x:.1} {unit}")
}

fn status_text(status: &Status) -> String {
    match status {
        Status::Valid => "valid".into(),
        Status::Damaged(why) => format!("damaged: {why}"),
        Status::Incomplete(why) => format!("incomplete: {why}"),
    }
}

/// `weir checkpoints list` as a table.
pub fn render_list(dir: &Path, listings: &[CheckpointListing]) -> String {
    if listings.is_empty() {
        return format!("{}: no checkpoints\n", dir.display());
    }
    let rows: Vec<[String; 4]> = listings
        .iter()
        .map(|l| {
            [
                l.id.to_string(),
                l.completed.clone().unwrap_or_else(|| "-".into()),
                human_bytes(l.size_bytes),
                status_text(&l.status),
            ]
        })
        .collect();
    crate::cli::table(&["id", "completed", "size", "status"], &rows)
}

/// `weir checkpoints inspect` as text: a summary, then a table per operator and the
/// splits of its sources.
pub fn render_details(d: &CheckpointDetails) -> String {
    let s = &d.summary;
    let mut out = format!(
        "{} {} ({}): {}\ncompleted {}, {}, {} operators\n",
        if d.is_savepoint {
            "savepoint"
        } else {
            "checkpoint"
        },
        s.id,
        s.path,
        status_text(&s.status),
        s.completed.as_deref().unwrap_or("-"),
        human_bytes(s.size_bytes),
        d.operators.len()
    );
    for op in &d.operators {
        out.push_str(&format!(
            "\noperator `{}`: parallelism {}, max parallelism {}\n",
            op.name, op.parallelism, op.max_parallelism
        ));
        let rows: Vec<[String; 6]> = op
            .subtasks
            .iter()
            .map(|t| {
                [
                    t.index.to_string(),
                    t.keyed.as_ref().map_or("-".into(), |k| {
                        format!("{}..{}", k.key_groups.0, k.key_groups.1)
                    }),
                    t.keyed.as_ref().map_or("-".into(), keyed_text),
                    t.operator_state
                        .as_ref()
                        .map_or("-".into(), operator_state_text),
                    if t.extra.is_empty() {
                        "-".into()
                    } else {
                        t.extra
                            .iter()
                            .map(|f| {
                                format!("{} {} ({})", f.name, f.path, human_bytes(f.size_bytes))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    if t.channel_state.is_empty() {
                        "none".into()
                    } else {
                        t.channel_state
                            .iter()
                            .map(|f| format!("{} ({})", f.path, human_bytes(f.size_bytes)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ]
            })
            .collect();
        for line in crate::cli::table(
            &[
                "subtask",
                "key groups",
                "keyed state",
                "operator state",
                "extra",
                "channel state",
            ],
            &rows,
        )
        .lines()
        {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        for t in &op.subtasks {
            if let Some(splits) = &t.source_splits {
                out.push_str(&format!(
                    "  source splits of subtask {} ({}):\n",
                    t.index,
                    splits.len()
                ));
                for split in splits {
                    out.push_str(&format!("    {split}\n"));
                }
            }
        }
    }
    out
}

fn keyed_text(k: &KeyedDetails) -> String {
    let mut text = format!(
        "{}, {} file{}, {}",
        k.kind,
        k.files,
        if k.files == 1 { "" } else { "s" },
        human_bytes(k.size_bytes)
    );
    if k.shared_files > 0 {
        text.push_str(&format!(
            " ({} shared, {})",
            k.shared_files,
            human_bytes(k.shared_bytes)
        ));
    }
    text.push_str(&format!("; states: {}", k.states.join(", ")));
    text
}

fn operator_state_text(o: &OperatorStateDetails) -> String {
    let mut parts = vec![format!(
        "{} ({})",
        o.file.path,
        human_bytes(o.file.size_bytes)
    )];
    if let Some(e) = &o.error {
        parts.push(format!("unreadable: {e}"));
    }
    parts.extend(
        o.lists
            .iter()
            .map(|(name, mode, n)| format!("{mode} list {name}: {n}")),
    );
    parts.extend(
        o.broadcast
            .iter()
            .map(|(name, n)| format!("broadcast {name}: {n}")),
    );
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_split_text_read_well() {
        assert_eq!(human_bytes(532), "532 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(printable(br#"{"split":1}"#), r#"{"split":1}"#);
        assert_eq!(printable(&[0, 255]), "0x00ff");
    }
}
