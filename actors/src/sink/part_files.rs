//! Carries out the part-file operations of [`super::two_phase`] in a directory.
//!
//! Names, for writer subtask `s`, attempt `a` and counter `n` (zero-padded to 6
//! digits):
//! - in progress: `.part-{s}-{a}-{n}.inprogress` (hidden)
//! - pending:     `.part-{s}-{a}-{n}.pending` (hidden; flushed)
//! - committed:   `part-{s}-{a}-{n}{suffix}` (visible; readers read only these)
//!
//! Closing a part only flushes and renames it: the fsyncs of the pending parts a
//! snapshot lists (and of the directory) are a [`PartSync`] that the checkpoint runs
//! off the subtask's thread before it can complete, so the data plane never waits
//! for the disk at a barrier. Commits fsync the directory, so a committed name
//! survives a crash of the machine, not only of the process.
//!
//! Subtask `i` of `p` owns the hidden parts of every writer subtask `s` with
//! `s % p == i`: the same old subtasks whose snapshots it takes over after a rescale
//! (see [`super::inherited_subtasks`]), so between them the new subtasks clean up
//! after every old one, and never touch each other's files.

use super::two_phase::{FileOp, PartId, PartTracker, RollingPolicy, SinkSnapshot, Writer};
use crate::checkpoint::coordinator::CheckpointId;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file-system calls that write and publish part data: a seam where scenario
/// runs inject disk errors (a failing write) or sink defects (a lost or repeated
/// commit). [`RealFs`] is what every job uses otherwise.
pub trait PartFs: Send + Sync {
    /// Appends `bytes` to the open part.
    fn write(&self, file: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    /// Publishes a pending part under its committed name.
    fn commit(&self, pending: &Path, committed: &Path) -> io::Result<()> {
        fs::rename(pending, committed)
    }
}

/// The plain file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl PartFs for RealFs {}

/// Which name a part file has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartState {
    InProgress,
    Pending,
    Committed,
}

/// Reads a part file's name back (`None`: not a part file of this sink).
pub fn parse_part_name(name: &str, suffix: &str) -> Option<(PartId, PartState)> {
    let (rest, state) = if let Some(hidden) = name.strip_prefix(".part-") {
        if let Some(rest) = hidden.strip_suffix(".inprogress") {
            (rest, PartState::InProgress)
        } else {
            (hidden.strip_suffix(".pending")?, PartState::Pending)
        }
    } else {
        (
            name.strip_prefix("part-")?.strip_suffix(suffix)?,
            PartState::Committed,
        )
    };
    let mut fields = rest.split('-');
    let subtask = fields.next()?.parse().ok()?;
    let attempt = fields.next()?.parse().ok()?;
    let counter = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    let writer = Writer { subtask, attempt };
    Some((PartId { writer, counter }, state))
}

pub struct PartFiles {
    dir: PathBuf,
    /// This subtask and its parallelism: which writers' strays it deletes.
    subtask: u32,
    parallelism: u32,
    suffix: String,
    current: Option<(PartId, BufWriter<File>)>,
    fs: Arc<dyn PartFs>,
}

impl PartFiles {
    pub fn new(
        dir: impl Into<PathBuf>,
        subtask: u32,
        parallelism: u32,
        suffix: &str,
    ) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(PartFiles {
            dir,
            subtask,
            parallelism: parallelism.max(1),
            suffix: suffix.to_string(),
            current: None,
            fs: Arc::new(RealFs),
        })
    }

    fn stem(part: PartId) -> String {
        format!(
            "part-{}-{}-{:06}",
            part.writer.subtask, part.writer.attempt, part.counter
        )
    }

    pub fn committed_path(&self, part: PartId) -> PathBuf {
        self.dir
            .join(format!("{}{}", Self::stem(part), self.suffix))
    }

    fn hidden_path(&self, part: PartId, state: &str) -> PathBuf {
        self.dir.join(format!(".{}.{state}", Self::stem(part)))
    }

    /// The part files in the directory, by id and state.
    fn list(&self) -> io::Result<Vec<(PartId, PartState, String)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((part, state)) = parse_part_name(name, &self.suffix) {
                found.push((part, state, name.to_string()));
            }
        }
        Ok(found)
    }

    /// Above every counter `writer` already uses in the directory, in any state.
    pub fn first_free(&self, writer: Writer) -> io::Result<u64> {
        Ok(self
            .list()?
            .iter()
            .filter(|(part, _, _)| part.writer == writer)
            .map(|(part, _, _)| part.counter + 1)
            .max()
            .unwrap_or(0))
    }

    /// Appends to the open in-progress part.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (_, writer) = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no part file is open"))?;
        self.fs.write(writer, bytes)
    }

    /// Hands buffered bytes of the open part to the file (no fsync).
    pub fn flush(&mut self) -> io::Result<()> {
        match self.current.as_mut() {
            Some((_, writer)) => writer.flush(),
            None => Ok(()),
        }
    }

    /// Carries out `ops`; the directory is fsynced once after their commits.
    pub fn apply(&mut self, ops: Vec<FileOp>) -> io::Result<()> {
        let mut committed = false;
        for op in ops {
            self.apply_one(op, &mut committed)?;
        }
        if committed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// The fsyncs that make the pending parts `snapshot` lists durable.
    pub fn sync_for(&self, snapshot: &SinkSnapshot) -> PartSync {
        PartSync {
            dir: self.dir.clone(),
            parts: snapshot
                .pending
                .iter()
                .map(|p| {
                    (
                        self.hidden_path(p.part, "pending"),
                        self.committed_path(p.part),
                    )
                })
                .collect(),
        }
    }

    fn apply_one(&mut self, op: FileOp, renamed: &mut bool) -> io::Result<()> {
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
                // Flushed here; fsynced by the `PartSync` of the snapshot listing it.
                drop(writer.into_inner().map_err(|e| e.into_error())?);
                fs::rename(
                    self.hidden_path(part, "inprogress"),
                    self.hidden_path(part, "pending"),
                )?;
            }
            FileOp::Commit { part } => {
                let pending = self.hidden_path(part, "pending");
                let committed = self.committed_path(part);
                if pending.exists() {
                    self.fs.commit(&pending, &committed)?;
                    *renamed = true;
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
                for (part, state, name) in self.list()? {
                    let owned = part.writer.subtask % self.parallelism == self.subtask;
                    if owned && state != PartState::Committed {
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

/// Makes the pending parts of a snapshot durable: an fsync of each, then of the
/// directory (their names). Runs off the subtask's thread, before the checkpoint
/// can complete.
#[derive(Debug)]
pub struct PartSync {
    dir: PathBuf,
    /// (pending path, committed path) per part.
    parts: Vec<(PathBuf, PathBuf)>,
}

impl PartSync {
    pub fn run(self) -> io::Result<()> {
        for (pending, committed) in &self.parts {
            match File::open(pending) {
                Ok(file) => file.sync_all()?,
                // Committed meanwhile by an older checkpoint that listed it too,
                // whose own sync ran before it completed.
                Err(e) if e.kind() == io::ErrorKind::NotFound && committed.exists() => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot sync {}: {e}", pending.display()),
                    ))
                }
            }
        }
        if !self.parts.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// An exactly-once writer of byte records into part files: the protocol and the
/// directory together. A sink subtask owns one.
pub struct ExactlyOnceFileWriter {
    tracker: PartTracker,
    files: PartFiles,
}

impl ExactlyOnceFileWriter {
    /// Opens `writer`'s part files in `dir` (the writer is subtask `writer.subtask`
    /// of `parallelism`), restoring from the snapshots of the old subtasks it takes
    /// over (committing what they list, deleting what they left uncovered).
    pub fn open(
        dir: &Path,
        writer: Writer,
        parallelism: u32,
        suffix: &str,
        policy: RollingPolicy,
        snapshots: Vec<SinkSnapshot>,
    ) -> io::Result<Self> {
        Self::open_with_fs(
            dir,
            writer,
            parallelism,
            suffix,
            policy,
            snapshots,
            Arc::new(RealFs),
        )
    }

    /// [`Self::open`] through `fs` instead of the plain file system.
    pub fn open_with_fs(
        dir: &Path,
        writer: Writer,
        parallelism: u32,
        suffix: &str,
        policy: RollingPolicy,
        snapshots: Vec<SinkSnapshot>,
        fs: Arc<dyn PartFs>,
    ) -> io::Result<Self> {
        let mut files = PartFiles::new(dir, writer.subtask, parallelism, suffix)?;
        files.fs = fs;
        let first_free = files.first_free(writer)?;
        let (tracker, ops) = PartTracker::restore(policy, writer, snapshots, first_free);
        files.apply(ops)?;
        Ok(ExactlyOnceFileWriter { tracker, files })
    }

    /// Starts a record of `len` bytes (closing and opening parts as the rolling
    /// policy says); true when it opened a new part. Then [`Self::append`] it.
    pub fn begin_record(&mut self, len: usize, now_ms: u64) -> io::Result<bool> {
        let ops = self.tracker.before_write(len as u64, now_ms);
        let opened = ops.iter().any(|op| matches!(op, FileOp::Open { .. }));
        self.files.apply(ops)?;
        Ok(opened)
    }

    /// Appends to the open part (after [`Self::begin_record`]).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.files.write(bytes)
    }

    /// One record: [`Self::begin_record`] and [`Self::append`].
    pub fn write(&mut self, bytes: &[u8], now_ms: u64) -> io::Result<()> {
        self.begin_record(bytes.len(), now_ms)?;
        self.files.write(bytes)
    }

    pub fn on_tick(&mut self, now_ms: u64) -> io::Result<()> {
        let ops = self.tracker.on_tick(now_ms);
        self.files.apply(ops)
    }

    /// Hands buffered bytes to the open part's file (the end of input; the part is
    /// closed by the next snapshot).
    pub fn flush(&mut self) -> io::Result<()> {
        self.files.flush()
    }

    /// The pre-commit at checkpoint `id`'s barrier: closes the open part; the
    /// snapshot is valid once its `PartSync` has run.
    pub fn snapshot(&mut self, id: CheckpointId) -> io::Result<(SinkSnapshot, PartSync)> {
        let (ops, snapshot) = self.tracker.snapshot(id);
        self.files.apply(ops)?;
        let sync = self.files.sync_for(&snapshot);
        Ok((snapshot, sync))
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

    fn writer(subtask: u32, attempt: u32) -> Writer {
        Writer { subtask, attempt }
    }

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

    /// The pre-commit, with its sync run at once.
    fn pre_commit(w: &mut ExactlyOnceFileWriter, id: CheckpointId) -> SinkSnapshot {
        let (snapshot, sync) = w.snapshot(id).unwrap();
        sync.run().unwrap();
        snapshot
    }

    fn write_range(w: &mut ExactlyOnceFileWriter, range: std::ops::Range<u32>) {
        for i in range {
            w.write(format!("{i}\n").as_bytes(), 0).unwrap();
        }
    }

    #[test]
    fn readers_see_only_committed_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 0),
            1,
            ".txt",
            RollingPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        write_range(&mut w, 0..10);
        assert!(
            visible_lines(dir.path()).is_empty(),
            "nothing visible before a commit"
        );
        pre_commit(&mut w, 1);
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
        let mut w =
            ExactlyOnceFileWriter::open(dir.path(), writer(3, 0), 4, "", policy, Vec::new())
                .unwrap();
        write_range(&mut w, 0..20);
        let snapshot = pre_commit(&mut w, 1); // durable in checkpoint 1
        write_range(&mut w, 20..30); // after the barrier: not covered
        drop(w); // crash before notify-complete reached the sink

        let mut w = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(3, 0),
            4,
            "",
            policy,
            vec![snapshot.clone()],
        )
        .unwrap();
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
        let mut w =
            ExactlyOnceFileWriter::open(dir.path(), writer(3, 0), 4, "", policy, vec![snapshot])
                .unwrap();
        write_range(&mut w, 20..30);
        pre_commit(&mut w, 2);
        w.notify_complete(2).unwrap();
        assert_eq!(
            visible_lines(dir.path()),
            (0..30).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_missing_pending_part_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 0),
            1,
            "",
            RollingPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        write_range(&mut w, 0..3);
        let snapshot = pre_commit(&mut w, 1);
        drop(w);
        fs::remove_file(dir.path().join(".part-0-0-000000.pending")).unwrap();
        let error = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 0),
            1,
            "",
            RollingPolicy::default(),
            vec![snapshot],
        )
        .err()
        .expect("restore must fail")
        .to_string();
        assert!(
            error.contains(".part-0-0-000000.pending") && error.contains("part-0-0-000000"),
            "{error}"
        );
    }

    #[test]
    fn other_subtasks_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(1, 0),
            2,
            "",
            RollingPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        write_range(&mut other, 0..3);
        ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 0),
            2,
            "",
            RollingPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        assert!(dir.path().join(".part-1-0-000000.inprogress").exists());
    }

    fn hidden_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn part_names_read_back() {
        let part = PartId {
            writer: writer(3, 2),
            counter: 17,
        };
        let files = PartFiles::new(tempfile::tempdir().unwrap().path(), 0, 1, ".jsonl").unwrap();
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name(files.committed_path(part)), "part-3-2-000017.jsonl");
        assert_eq!(
            parse_part_name(&name(files.committed_path(part)), ".jsonl"),
            Some((part, PartState::Committed))
        );
        assert_eq!(
            parse_part_name(&name(files.hidden_path(part, "pending")), ".jsonl"),
            Some((part, PartState::Pending))
        );
        assert_eq!(
            parse_part_name(".part-3-2-000017.inprogress", ""),
            Some((part, PartState::InProgress))
        );
        for other in [
            "part-3-2.jsonl",
            "part-3-2-x.jsonl",
            "notes.txt",
            ".part-1-2-3-4.pending",
        ] {
            assert_eq!(parse_part_name(other, ".jsonl"), None, "{other}");
        }
    }

    #[test]
    fn a_rescaled_restore_commits_and_cleans_up_for_every_old_subtask_it_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RollingPolicy::default();
        // Three old subtasks (p = 3) pre-commit at checkpoint 1, then write more.
        let snapshots: Vec<SinkSnapshot> = (0..3)
            .map(|s| {
                let mut w = ExactlyOnceFileWriter::open(
                    dir.path(),
                    writer(s, 0),
                    3,
                    "",
                    policy,
                    Vec::new(),
                )
                .unwrap();
                let first = s * 100;
                write_range(&mut w, first..first + 5);
                let snapshot = pre_commit(&mut w, 1);
                write_range(&mut w, first + 5..first + 10); // not covered
                snapshot
            })
            .collect();
        // At p = 2, new subtask 0 takes old 0 and 2, new subtask 1 takes old 1.
        let mut new0 = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 1),
            2,
            "",
            policy,
            vec![snapshots[0].clone(), snapshots[2].clone()],
        )
        .unwrap();
        assert_eq!(
            hidden_names(dir.path()),
            [".part-1-0-000000.pending", ".part-1-0-000001.inprogress"],
            "only old subtask 1's files are left, for new subtask 1"
        );
        let mut new1 = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(1, 1),
            2,
            "",
            policy,
            vec![snapshots[1].clone()],
        )
        .unwrap();
        assert!(hidden_names(dir.path()).is_empty());
        let mut lines = visible_lines(dir.path());
        lines.sort();
        let mut expected: Vec<String> = [0, 100, 200]
            .iter()
            .flat_map(|f| (*f..f + 5).map(|i| i.to_string()))
            .collect();
        expected.sort();
        assert_eq!(lines, expected);
        write_range(&mut new0, 1000..1001);
        write_range(&mut new1, 1001..1002);
        pre_commit(&mut new0, 2);
        pre_commit(&mut new1, 2);
        new0.notify_complete(2).unwrap();
        new1.notify_complete(2).unwrap();
        assert_eq!(visible_lines(dir.path()).len(), 17);
    }

    #[test]
    fn a_fresh_run_never_overwrites_committed_parts_of_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RollingPolicy::default();
        for run in 0..2 {
            let mut w =
                ExactlyOnceFileWriter::open(dir.path(), writer(0, 0), 1, "", policy, Vec::new())
                    .unwrap();
            write_range(&mut w, run * 10..run * 10 + 3);
            pre_commit(&mut w, 1);
            w.notify_complete(1).unwrap();
        }
        let mut lines = visible_lines(dir.path());
        lines.sort();
        assert_eq!(lines, ["0", "1", "10", "11", "12", "2"]);
    }

    #[test]
    fn a_sync_tolerates_parts_committed_meanwhile_but_not_vanished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ExactlyOnceFileWriter::open(
            dir.path(),
            writer(0, 0),
            1,
            "",
            RollingPolicy::default(),
            Vec::new(),
        )
        .unwrap();
        write_range(&mut w, 0..3);
        let (_, first) = w.snapshot(1).unwrap();
        // Checkpoint 1 aborted; checkpoint 2 lists the part again, and 1's sync runs
        // late, after 2 completed and committed it.
        let (_, second) = w.snapshot(2).unwrap();
        second.run().unwrap();
        w.notify_complete(2).unwrap();
        first.run().unwrap();

        write_range(&mut w, 3..4);
        let (_, third) = w.snapshot(3).unwrap();
        fs::remove_file(dir.path().join(".part-0-0-000001.pending")).unwrap();
        let error = third.run().unwrap_err().to_string();
        assert!(error.contains(".part-0-0-000001.pending"), "{error}");
    }
}
