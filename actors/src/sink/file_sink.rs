//! The exactly-once file sink: records formatted as text into part files of one
//! directory, made visible only when a checkpoint covering them completes.
//!
//! It is the [`Sink`] shell around an [`ExactlyOnceFileWriter`]: `restore` opens the
//! writer (committing what the restored checkpoint lists, deleting what it does not
//! cover), `pre_commit` closes the open part and returns the [`SinkSnapshot`] with
//! the fsyncs of its pending parts (run off-thread before the checkpoint completes),
//! and `commit` renames the covered pending parts to their visible names.

use super::part_files::{ExactlyOnceFileWriter, PartFs, RealFs};
use super::two_phase::{RollingPolicy, SinkSnapshot, Writer};
use crate::checkpoint::coordinator::CheckpointId;
use crate::operator::{Data, PreCommit, Sink, SubtaskInfo};
use anyhow::Context as _;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Appends one record's text (including its line end, if any) to the buffer.
pub type Formatter<T> = Arc<dyn Fn(&T, &mut String) + Send + Sync>;

/// Writes every record exactly once into committed part files
/// `DIR/part-{subtask}-{attempt}-{counter}{suffix}`; parts being written or waiting
/// for their checkpoint have hidden names (`.part-…`) that readers skip.
///
/// With checkpoints, parts become visible when the checkpoint after them completes
/// (a bounded job's last parts at its final checkpoint); without, at the end of
/// input. Exactly-once needs aligned (the default) or unaligned checkpoints:
/// at-least-once barriers let records from after a barrier into its checkpoint,
/// and a replay writes them again. A clone shares the settings but not the open files: build one per
/// subtask, e.g. `stream.sink("out", move |_| files.clone())`.
pub struct ExactlyOnceFileSink<T> {
    dir: PathBuf,
    suffix: String,
    policy: RollingPolicy,
    format: Formatter<T>,
    header: Option<Formatter<T>>,
    /// Set by `open`: who writes, and at which parallelism.
    writer_id: Option<(Writer, u32)>,
    /// Set by `restore`.
    writer: Option<ExactlyOnceFileWriter>,
    started: Instant,
    line: String,
    fs: Arc<dyn PartFs>,
    _records: PhantomData<fn(T)>,
}

impl<T> Clone for ExactlyOnceFileSink<T> {
    fn clone(&self) -> Self {
        ExactlyOnceFileSink {
            dir: self.dir.clone(),
            suffix: self.suffix.clone(),
            policy: self.policy,
            format: self.format.clone(),
            header: self.header.clone(),
            writer_id: None,
            writer: None,
            started: Instant::now(),
            line: String::new(),
            fs: self.fs.clone(),
            _records: PhantomData,
        }
    }
}

impl<T: Data> ExactlyOnceFileSink<T> {
    /// Part files in `dir`, each record formatted by `format` (which writes the line
    /// end too).
    pub fn new(
        dir: impl Into<PathBuf>,
        format: impl Fn(&T, &mut String) + Send + Sync + 'static,
    ) -> Self {
        ExactlyOnceFileSink {
            dir: dir.into(),
            suffix: String::new(),
            policy: RollingPolicy::default(),
            format: Arc::new(format),
            header: None,
            writer_id: None,
            writer: None,
            started: Instant::now(),
            line: String::new(),
            fs: Arc::new(RealFs),
            _records: PhantomData,
        }
    }

    /// Writes and commits parts through `fs` (fault injection) instead of the
    /// plain file system.
    pub fn part_fs(mut self, fs: Arc<dyn PartFs>) -> Self {
        self.fs = fs;
        self
    }

    /// The end of committed part names, e.g. `.jsonl` (default: none).
    pub fn suffix(mut self, suffix: &str) -> Self {
        self.suffix = suffix.to_string();
        self
    }

    /// A part is closed before it grows beyond `bytes` (default 128 MiB).
    pub fn roll_bytes(mut self, bytes: u64) -> Self {
        self.policy.max_part_bytes = bytes;
        self
    }

    /// A part open this long is closed at its next record (default 60 s); every
    /// checkpoint closes the open part anyway.
    pub fn roll_interval(mut self, interval: Duration) -> Self {
        self.policy.max_part_age_ms = interval.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// Every part starts with a header formatted from its first record (e.g. CSV
    /// column names), so each committed part reads on its own.
    pub fn header(mut self, header: impl Fn(&T, &mut String) + Send + Sync + 'static) -> Self {
        self.header = Some(Arc::new(header));
        self
    }

    fn writer(&mut self) -> anyhow::Result<&mut ExactlyOnceFileWriter> {
        self.writer.as_mut().ok_or_else(|| {
            anyhow::anyhow!("the exactly-once file sink was used before it was restored")
        })
    }

    fn failed(&self, what: &str) -> String {
        format!(
            "exactly-once file sink in {}: cannot {what}",
            self.dir.display()
        )
    }
}

impl<T: Data> Sink for ExactlyOnceFileSink<T> {
    type In = T;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        let writer = Writer {
            subtask: info.index,
            attempt: info.attempt,
        };
        self.writer_id = Some((writer, info.parallelism));
        self.started = Instant::now();
        Ok(())
    }

    fn restore(&mut self, states: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let (writer, parallelism) = self.writer_id.ok_or_else(|| {
            anyhow::anyhow!("the exactly-once file sink was restored before it was opened")
        })?;
        let snapshots = states
            .iter()
            .map(|bytes| SinkSnapshot::from_bytes(bytes))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| self.failed("read its state in the checkpoint"))?;
        let opened = ExactlyOnceFileWriter::open_with_fs(
            &self.dir,
            writer,
            parallelism,
            &self.suffix,
            self.policy,
            snapshots,
            self.fs.clone(),
        )
        .with_context(|| self.failed("restore its part files"))?;
        self.writer = Some(opened);
        Ok(())
    }

    fn write(&mut self, record: T) -> anyhow::Result<()> {
        self.line.clear();
        (self.format)(&record, &mut self.line);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let (line, header) = (&self.line, &self.header);
        let Some(writer) = self.writer.as_mut() else {
            anyhow::bail!("the exactly-once file sink was used before it was restored");
        };
        let written = (|| {
            if writer.begin_record(line.len(), now_ms)? {
                if let Some(header) = header {
                    let mut text = String::new();
                    header(&record, &mut text);
                    writer.append(text.as_bytes())?;
                }
            }
            writer.append(line.as_bytes())
        })();
        written.with_context(|| self.failed("write a part file"))
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        // Flush only: the final checkpoint (or, without checkpoints, the runtime
        // right after this) pre-commits and commits the rest.
        let flushed = self.writer()?.flush();
        flushed.with_context(|| self.failed("flush a part file"))
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
        let closed = self.writer()?.snapshot(checkpoint);
        let (snapshot, sync) = closed.with_context(|| self.failed("close a part file"))?;
        let failed = self.failed("sync its part files");
        Ok(Some(
            PreCommit::state(snapshot.to_bytes()).with_sync(move || sync.run().context(failed)),
        ))
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> anyhow::Result<()> {
        let committed = self.writer()?.notify_complete(checkpoint);
        committed.with_context(|| self.failed("commit a part file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn info(index: u32, parallelism: u32, attempt: u32) -> SubtaskInfo {
        SubtaskInfo {
            operator: Arc::from("files"),
            index,
            parallelism,
            max_parallelism: 128,
            attempt,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn csv_sink(dir: &Path) -> ExactlyOnceFileSink<(String, u64)> {
        ExactlyOnceFileSink::new(dir, |(w, n): &(String, u64), out: &mut String| {
            out.push_str(&format!("{w},{n}\n"))
        })
        .suffix(".csv")
        .header(|_, out| out.push_str("word,n\n"))
        .roll_bytes(8)
    }

    #[test]
    fn every_part_has_its_header_and_parts_appear_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = csv_sink(dir.path());
        sink.open(&info(1, 2, 3)).unwrap();
        sink.restore(Vec::new()).unwrap();
        sink.write(("a".into(), 1)).unwrap();
        sink.write(("bb".into(), 22)).unwrap(); // beyond 8 bytes: a second part
        sink.finish().unwrap();
        assert!(names(dir.path()).iter().all(|n| n.starts_with('.')));
        let pre_committed = sink.pre_commit(4).unwrap().expect("the sink has state");
        (pre_committed.sync.expect("pending parts to sync"))().unwrap();
        let state = SinkSnapshot::from_bytes(&pre_committed.state).unwrap();
        assert_eq!(state.pending.len(), 2);
        assert!(names(dir.path()).iter().all(|n| n.starts_with('.')));
        sink.commit(4).unwrap();
        assert_eq!(
            names(dir.path()),
            ["part-1-3-000000.csv", "part-1-3-000001.csv"]
        );
        let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("part-1-3-000000.csv"), "word,n\na,1\n");
        assert_eq!(read("part-1-3-000001.csv"), "word,n\nbb,22\n");
    }

    #[test]
    fn a_restored_sink_commits_the_state_it_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = csv_sink(dir.path());
        first.open(&info(0, 1, 0)).unwrap();
        first.restore(Vec::new()).unwrap();
        first.write(("a".into(), 1)).unwrap();
        let state = first.pre_commit(1).unwrap().unwrap().state;
        first.write(("lost".into(), 2)).unwrap();
        drop(first); // fails before the commit

        let mut second = csv_sink(dir.path());
        second.open(&info(0, 1, 1)).unwrap();
        second.restore(vec![state]).unwrap();
        assert_eq!(names(dir.path()), ["part-0-0-000000.csv"]);
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = csv_sink(dir.path());
        sink.open(&info(0, 1, 0)).unwrap();
        let error = format!("{:#}", sink.restore(vec![vec![0xff; 3]]).unwrap_err());
        assert!(
            error.contains(&dir.path().display().to_string()) && error.contains("state"),
            "{error}"
        );
    }
}
