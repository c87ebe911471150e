//! Built-in sinks on the dynamic record: stdout (at-least-once), file (one file per
//! subtask, at-least-once; or exactly-once part files in a directory) and null.

use crate::record::Record;
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_actors::sink::part_files::{PartFs, RealFs};
use weir_actors::{CheckpointId, ExactlyOnceFileSink, PreCommit, Sink, SubtaskInfo};

/// The line format of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// One JSON object per line.
    Json,
    /// CSV with a header row named after the first record's fields.
    Csv,
}

impl SinkFormat {
    pub const NAMES: &'static [&'static str] = &["json", "csv"];

    pub fn parse(s: &str) -> Option<SinkFormat> {
        match s {
            "json" | "jsonl" | "ndjson" => Some(SinkFormat::Json),
            "csv" => Some(SinkFormat::Csv),
            _ => None,
        }
    }
}

/// Appends one line per record to `out`.
fn encode(format: SinkFormat, record: &Record, out: &mut String) {
    match format {
        SinkFormat::Json => record.write_json(out),
        SinkFormat::Csv => record.write_csv_values(out),
    }
    out.push('\n');
}

/// Flush the buffer once it holds this much.
const FLUSH_BYTES: usize = 64 * 1024;

/// Writes to standard output. Subtasks write whole buffers of whole lines under the
/// stdout lock, so lines never interleave; the CSV header is written once per job.
pub struct StdoutSink {
    format: SinkFormat,
    header_written: Arc<AtomicBool>,
    header: Option<String>,
    buf: String,
}

impl StdoutSink {
    /// `header_written` is shared by all subtasks of the sink.
    pub fn new(format: SinkFormat, header_written: Arc<AtomicBool>) -> StdoutSink {
        StdoutSink {
            format,
            header_written,
            header: None,
            buf: String::with_capacity(FLUSH_BYTES + 1024),
        }
    }

    fn write_buffer(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        if let Some(h) = &self.header {
            if !self.header_written.swap(true, Ordering::SeqCst) {
                lock.write_all(h.as_bytes())
                    .context("cannot write to stdout")?;
            }
        }
        lock.write_all(self.buf.as_bytes())
            .and_then(|_| lock.flush())
            .context("cannot write to stdout")?;
        self.buf.clear();
        Ok(())
    }
}

impl Sink for StdoutSink {
    type In = Record;

    fn write(&mut self, record: Record) -> anyhow::Result<()> {
        if self.format == SinkFormat::Csv && self.header.is_none() {
            let mut h = String::new();
            record.write_csv_header(&mut h);
            h.push('\n');
            self.header = Some(h);
        }
        encode(self.format, &record, &mut self.buf);
        if self.buf.len() >= FLUSH_BYTES {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.write_buffer()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.write_buffer()
    }
}

/// The file subtask `index` of `parallelism` writes: `path` itself at parallelism 1,
/// otherwise `stem-index.ext` (`counts.jsonl` → `counts-0.jsonl`, `counts-1.jsonl`).
pub fn part_path(path: &Path, index: u32, parallelism: u32) -> PathBuf {
    if parallelism <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or_else(|| "part".into(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

/// Writes lines to a file per subtask (see [`part_path`]). At-least-once: a fresh run
/// creates (truncates) the file; every checkpoint flushes it and keeps its length,
/// and a restore cuts the file back to that length and appends (the records after
/// the checkpoint are replayed), so a failure neither loses nor, for a replay in the
/// same order, repeats lines. Readers may see lines that a restore then cuts.
pub struct FileSink {
    path: PathBuf,
    format: SinkFormat,
    writer: Option<BufWriter<File>>,
    /// Where writes go through (scenario runs inject disk errors there).
    fs: Arc<dyn PartFs>,
    /// Bytes handed to the file so far.
    written: u64,
    header_done: bool,
    buf: String,
}

impl FileSink {
    pub fn new(path: PathBuf, format: SinkFormat) -> FileSink {
        FileSink {
            path,
            format,
            writer: None,
            fs: Arc::new(RealFs),
            written: 0,
            header_done: false,
            buf: String::with_capacity(1024),
        }
    }

    /// Writes through `fs` instead of the plain file system.
    pub fn with_fs(mut self, fs: Arc<dyn PartFs>) -> FileSink {
        self.fs = fs;
        self
    }

    /// The checkpointed state: the file's length, then its path.
    fn state(&self) -> Vec<u8> {
        let mut state = self.written.to_le_bytes().to_vec();
        state.extend_from_slice(self.path.to_string_lossy().as_bytes());
        state
    }

    fn read_state(state: &[u8]) -> anyhow::Result<(u64, PathBuf)> {
        anyhow::ensure!(
            state.len() >= 8,
            "the file sink's checkpointed state is {} bytes, too short",
            state.len()
        );
        let (len, path) = state.split_at(8);
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        Ok((
            len,
            PathBuf::from(String::from_utf8_lossy(path).into_owned()),
        ))
    }
}

impl Sink for FileSink {
    type In = Record;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        self.path = part_path(&self.path, info.index, info.parallelism);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        Ok(())
    }

    fn restore(&mut self, states: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let mut resumed = None;
        for state in &states {
            let (len, path) = Self::read_state(state)?;
            if path == self.path {
                resumed = Some(len);
            }
        }
        let path = &self.path;
        let f = match resumed {
            // Restored at another parallelism, files of the old subtasks stay as
            // they are and this one starts its own.
            None => {
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?
            }
            Some(len) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot reopen {} to resume it", path.display()))?;
                f.set_len(len).with_context(|| {
                    format!("cannot cut {} back to the checkpoint", path.display())
                })?;
                f
            }
        };
        self.written = resumed.unwrap_or(0);
        self.header_done = self.written > 0;
        self.writer = Some(BufWriter::with_capacity(FLUSH_BYTES, f));
        Ok(())
    }

    fn write(&mut self, record: Record) -> anyhow::Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("file sink written before it was opened"))?;
        self.buf.clear();
        if self.format == SinkFormat::Csv && !self.header_done {
            record.write_csv_header(&mut self.buf);
            self.buf.push('\n');
            self.header_done = true;
        }
        encode(self.format, &record, &mut self.buf);
        self.written += self.buf.len() as u64;
        self.fs
            .write(w, self.buf.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()
                .with_context(|| format!("cannot write {}", self.path.display()))?;
            w.get_ref()
                .sync_data()
                .with_context(|| format!("cannot sync {}", self.path.display()))?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
        // `flush` ran just before: the length is on disk.
        Ok(Some(PreCommit::state(self.state())))
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        Sink::flush(self)
    }
}

/// How the exactly-once file sink of a topology writes (`semantics = "exactly_once"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactlyOnceFilesSpec {
    pub dir: PathBuf,
    pub format: SinkFormat,
    pub roll_bytes: u64,
    pub roll_interval: Duration,
}

impl ExactlyOnceFilesSpec {
    pub const DEFAULT_ROLL_BYTES: u64 = 128 << 20;
    pub const DEFAULT_ROLL_INTERVAL: Duration = Duration::from_secs(60);
}

/// Exactly-once part files of records as JSON lines or CSV (each CSV part starts
/// with a header row named after its first record's fields).
pub fn exactly_once_file_sink(spec: &ExactlyOnceFilesSpec) -> ExactlyOnceFileSink<Record> {
    let format = spec.format;
    let sink = ExactlyOnceFileSink::new(&spec.dir, move |record: &Record, line: &mut String| {
        encode(format, record, line)
    })
    .roll_bytes(spec.roll_bytes)
    .roll_interval(spec.roll_interval);
    match format {
        SinkFormat::Json => sink.suffix(".jsonl"),
        SinkFormat::Csv => sink
            .suffix(".csv")
            .header(|record: &Record, line: &mut String| {
                record.write_csv_header(line);
                line.push('\n');
            }),
    }
}

/// Discards records (they are still counted in the job's metrics).
pub struct NullSink;

impl Sink for NullSink {
    type In = Record;

    fn write(&mut self, record: Record) -> anyhow::Result<()> {
        std::hint::black_box(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    fn info(index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo {
            operator: Arc::from("out"),
            index,
            parallelism,
            max_parallelism: 128,
            attempt: 0,
        }
    }

    #[test]
    fn part_paths() {
        assert_eq!(
            part_path(Path::new("o/c.jsonl"), 0, 1),
            Path::new("o/c.jsonl")
        );
        assert_eq!(
            part_path(Path::new("o/c.jsonl"), 2, 4),
            Path::new("o/c-2.jsonl")
        );
        assert_eq!(part_path(Path::new("out"), 1, 2), Path::new("out-1"));
    }

    #[test]
    fn file_sink_writes_csv_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.csv");
        let mut s = FileSink::new(path.clone(), SinkFormat::Csv);
        s.open(&info(1, 2)).unwrap();
        s.restore(Vec::new()).unwrap();
        for (w, n) in [("a,b", 1), ("c", 2)] {
            s.write(Record::from_pairs([
                ("w", Value::str(w)),
                ("n", Value::Int(n)),
            ]))
            .unwrap();
        }
        s.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("sub/out-1.csv")).unwrap();
        assert_eq!(text, "w,n\n\"a,b\",1\nc,2\n");
    }

    #[test]
    fn file_sink_writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut s = FileSink::new(path.clone(), SinkFormat::Json);
        s.open(&info(0, 1)).unwrap();
        s.restore(Vec::new()).unwrap();
        s.write(Record::from_pairs([("w", "x")])).unwrap();
        s.finish().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "{\"w\":\"x\"}\n");
    }

    #[test]
    fn a_restored_file_sink_cuts_back_to_its_checkpoint_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let n = |n: i64| Record::from_pairs([("n", Value::Int(n))]);
        let mut s = FileSink::new(path.clone(), SinkFormat::Csv);
        s.open(&info(0, 1)).unwrap();
        s.restore(Vec::new()).unwrap();
        s.write(n(1)).unwrap();
        Sink::flush(&mut s).unwrap();
        let state = s.pre_commit(1).unwrap().unwrap().state;
        s.write(n(2)).unwrap();
        s.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "n\n1\n2\n");

        // The failure came after checkpoint 1: 2 is replayed.
        let mut restored = FileSink::new(path.clone(), SinkFormat::Csv);
        restored.open(&info(0, 1)).unwrap();
        restored.restore(vec![state]).unwrap();
        restored.write(n(2)).unwrap();
        restored.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "n\n1\n2\n");

        // A fresh run starts the file over.
        let mut fresh = FileSink::new(path.clone(), SinkFormat::Csv);
        fresh.open(&info(0, 1)).unwrap();
        fresh.restore(Vec::new()).unwrap();
        fresh.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn exactly_once_csv_parts_each_start_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ExactlyOnceFilesSpec {
            dir: dir.path().join("out"),
            format: SinkFormat::Csv,
            roll_bytes: 3,
            roll_interval: ExactlyOnceFilesSpec::DEFAULT_ROLL_INTERVAL,
        };
        let mut s = exactly_once_file_sink(&spec);
        s.open(&info(0, 1)).unwrap();
        s.restore(Vec::new()).unwrap();
        for n in [1, 2] {
            s.write(Record::from_pairs([("n", Value::Int(n))])).unwrap();
        }
        s.finish().unwrap();
        let pre_committed = s.pre_commit(1).unwrap().unwrap();
        (pre_committed.sync.unwrap())().unwrap();
        s.commit(1).unwrap();
        for (part, n) in [("part-0-0-000000.csv", 1), ("part-0-0-000001.csv", 2)] {
            let text = std::fs::read_to_string(spec.dir.join(part)).unwrap();
            assert_eq!(text, format!("n\n{n}\n"));
        }
    }

    #[test]
    fn file_sink_reports_unwritable_paths() {
        let mut s = FileSink::new(PathBuf::from("/proc/weir-cannot/x.txt"), SinkFormat::Json);
        let e = s.open(&info(0, 1)).unwrap_err().to_string();
        assert!(e.starts_with("cannot create"), "{e}");
    }
}
