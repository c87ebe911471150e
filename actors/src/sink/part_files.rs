//! Carries out the part-file operations of [`super::two_phase`] in a directory.
//!
//! Names, for subtask `s` and part `n` (`{n}` zero-padded to 6 digits):
//! - in progress: `.part-{s}-{n}.inprogress` (hidden)
//! - pending:     `.part-{s}-{n}.pending` (hidden; flushed and fsynced)
//! - committed:   `part-{s}-{n}{suffix}` (visible; readers read only these)
//!
//! Every rename is followed by an fsync of the directory, so a committed name survives
//! a crash of the machine, not only of the process.

use super::two_phase::{FileOp, PartTracker, RollingPolicy, SinkSnapshot};
use crate::checkpoint::coordinator::CheckpointId;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct PartFiles {
    dir: PathBuf,
    subtask: u32,
    suffix: String,
    current: Option<(u64, BufWriter<File>)>,
}

impl PartFiles {
    pub fn new(dir: impl Into<PathBuf>, subtask: u32, suffix: &str) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(PartFiles {
            dir,
            subtask,
            suffix: suffix.to_string(),
            current: None,
        })
    }

    pub fn committed_path(&self, part: u64) -> PathBuf {
        self.dir
            .join(format!("part-{}-{part:06}{}", self.subtask, self.suffix))
    }

    fn hidden_path(&self, part: u64, state: &str) -> PathBuf {
        self.dir
            .join(format!(".part-{}-{part:06}.{state}", self.subtask))
    }

    /// Appends to the open in-progress part.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (_, writer) = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no part file is open"))?;
        writer.write_all(bytes)
    }

    pub fn apply(&mut self, ops: Vec<FileOp>) -> io::Result<()> {
        ops.into_iter().try_for_each(|op| self.apply_one(op))
    }

    fn apply_one(&mut self, op: FileOp) -> io::Result<()> {
        match op {
            FileOp::Open { part } => {
                let file = File::create(self.hidden_path(part, "inprogress"))?;
                self.current = Some((part, BufWriter::with_capacity(64 << 10, file)));
            }
            FileOp::Close { part } => {
                let (open, writer) = self
                    .current
                    .take()
                    .ok_or_else(|| io::Error::other("no part file is open"))?;
                debug_assert_eq!(open, part);
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                fs::rename(
                    self.hidden_path(part, "inprogress"),
                    self.hidden_path(part, "pending"),
                )?;
                self.sync_dir()?;
            }
            FileOp::Commit { part } => {
                let pending = self.hidden_path(part, "pending");
                let committed = self.committed_path(part);
                if pending.exists() {
                    fs::rename(&pending, &committed)?;
                    self.sync_dir()?;
                } else if !committed.exists() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "the checkpoint lists pending part {} but neither it nor its committed name {} exists: \
                             the output directory was changed outside weir",
                            pending.display(),
                            committed.display()
                        ),
                    ));
                }
            }
            FileOp::DeleteStrays => {
                let prefix = format!(".part-{}-", self.subtask);
                for entry in fs::read_dir(&self.dir)? {
                    let name = entry?.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let Some(rest) = name.strip_prefix(&prefix) else {
                        continue;
                    };
                    let is_part = rest
                        .split('.')
                        .next()
                        .is_some_and(|n| n.parse::<u64>().is_ok());
                    if is_part {
                        fs::remove_file(self.dir.join(name))?;
                    }
                }
                self.sync_dir()?;
            }
        }
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// An exactly-once writer of byte records into part files: the protocol and the
/// directory together. A sink subtask owns one.
pub struct ExactlyOnceFileWriter {
    tracker: PartTracker,
    files: PartFiles,
}

impl ExactlyOnceFileWriter {
    /// Opens subtask `subtask`'s writer in `dir`, restoring from `snapshot` if any
    /// (committing what it lists, deleting what it does not).
    pub fn open(
        dir: &Path,
        subtask: u32,
        suffix: &str,
        policy: RollingPolicy,
        snapshot: Option<SinkSnapshot>,
    ) -> io::Result<Self> {
        let mut files = PartFiles::new(dir, subtask, suffix)?;
        let (tracker, ops) = PartTracker::restore(policy, snapshot);
        files.apply(ops)?;
        Ok(ExactlyOnceFileWriter { tracker, files })
    }

    pub fn write(&mut self, bytes: &[u8], now_ms: u64) -> io::Result<()> {
        let ops = self.tracker.before_write(bytes.len() as u64, now_ms);
        self.files.apply(ops)?;
        self.files.write(bytes)
    }

    pub fn on_tick(&mut self, now_ms: u64) -> io::Result<()> {
        let ops = self.tracker.on_tick(now_ms);
        self.files.apply(ops)
    }

    /// The pre-commit at checkpoint `id`'s barrier.
    pub fn snapshot(&mut self, id: CheckpointId) -> io::Result<SinkSnapshot> {
        let (ops, snapshot) = self.tracker.snapshot(id);
        self.files.apply(ops)?;
        Ok(snapshot)
    }

    /// The commit, once checkpoint `id` is complete.
    pub fn notify_complete(&mut self, id: CheckpointId) -> io::Result<()> {
        let ops = self.tracker.notify_complete(id);
        self.files.apply(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible_lines(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|n| {
                fs::read_to_string(dir.join(n))
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn write_range(w: &mut ExactlyOnceFileWriter, range: std::ops::Range<u32>) {
        for i in range {
            w.write(format!("{i}\n").as_bytes(), 0).unwrap();
        }
    }

    #[test]
    fn readers_see_only_committed_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ExactlyOnceFileWriter::open(dir.path(), 0, ".txt", RollingPolicy::default(), None)
                .unwrap();
        write_range(&mut w, 0..10);
        assert!(
            visible_lines(dir.path()).is_empty(),
            "nothing visible before a commit"
        );
        w.snapshot(1).unwrap();
        assert!(
            visible_lines(dir.path()).is_empty(),
            "pending is not visible"
        );
        w.notify_complete(1).unwrap();
        assert_eq!(
            visible_lines(dir.path()),
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_crash_after_pre_commit_recovers_to_exactly_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RollingPolicy {
            max_part_bytes: 16,
            max_part_age_ms: u64::MAX,
        };
        let mut w = ExactlyOnceFileWriter::open(dir.path(), 3, "", policy, None).unwrap();
        write_range(&mut w, 0..20);
        let snapshot = w.snapshot(1).unwrap(); // durable in checkpoint 1
        write_range(&mut w, 20..30); // after the barrier: not covered
        drop(w); // crash before notify-complete reached the sink

        let mut w =
            ExactlyOnceFileWriter::open(dir.path(), 3, "", policy, Some(snapshot.clone())).unwrap();
        assert_eq!(
            visible_lines(dir.path()),
            (0..20).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        let hidden = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with('.')
            })
            .count();
        assert_eq!(
            hidden, 0,
            "uncovered in-progress and pending parts are deleted"
        );
        // The replay from the checkpoint's position, then a second recovery from the
        // same checkpoint: committing again is harmless.
        write_range(&mut w, 20..30);
        drop(w);
        let mut w = ExactlyOnceFileWriter::open(dir.path(), 3, "", policy, Some(snapshot)).unwrap();
        write_range(&mut w, 20..30);
        w.snapshot(2).unwrap();
        w.notify_complete(2).unwrap();
        assert_eq!(
            visible_lines(dir.path()),
            (0..30).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_missing_pending_part_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ExactlyOnceFileWriter::open(dir.path(), 0, "", RollingPolicy::default(), None).unwrap();
        write_range(&mut w, 0..3);
        let snapshot = w.snapshot(1).unwrap();
        drop(w);
        fs::remove_file(dir.path().join(".part-0-000000.pending")).unwrap();
        let error = ExactlyOnceFileWriter::open(
            dir.path(),
            0,
            "",
            RollingPolicy::default(),
            Some(snapshot),
        )
        .err()
        .expect("restore must fail")
        .to_string();
        assert!(
            error.contains(".part-0-000000.pending") && error.contains("part-0-000000"),
            "{error}"
        );
    }

    #[test]
    fn other_subtasks_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut other =
            ExactlyOnceFileWriter::open(dir.path(), 1, "", RollingPolicy::default(), None).unwrap();
        write_range(&mut other, 0..3);
        ExactlyOnceFileWriter::open(dir.path(), 0, "", RollingPolicy::default(), None).unwrap();
        assert!(dir.path().join(".part-1-000000.inprogress").exists());
    }
}
