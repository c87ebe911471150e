//! Built-in sinks on the dynamic record: stdout, file (lines; at-least-once until the
//! checkpoint issue makes it exactly-once) and null.

use crate::record::Record;
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use weir_actors::{Sink, SubtaskInfo};

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

/// Writes lines to a file per subtask (see [`part_path`]). At-least-once: the file is
/// created (truncated) on open and flushed on finish.
pub struct FileSink {
    path: PathBuf,
    format: SinkFormat,
    writer: Option<BufWriter<File>>,
    header_done: bool,
    buf: String,
}

impl FileSink {
    pub fn new(path: PathBuf, format: SinkFormat) -> FileSink {
        FileSink {
            path,
            format,
            writer: None,
            header_done: false,
            buf: String::with_capacity(1024),
        }
    }
}

impl Sink for FileSink {
    type In = Record;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        let path = part_path(&self.path, info.index, info.parallelism);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        self.path = path;
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
        w.write_all(self.buf.as_bytes())
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

    fn finish(&mut self) -> anyhow::Result<()> {
        Sink::flush(self)
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
        s.write(Record::from_pairs([("w", "x")])).unwrap();
        s.finish().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "{\"w\":\"x\"}\n");
    }

    #[test]
    fn file_sink_reports_unwritable_paths() {
        let mut s = FileSink::new(PathBuf::from("/proc/weir-cannot/x.txt"), SinkFormat::Json);
        let e = s.open(&info(0, 1)).unwrap_err().to_string();
        assert!(e.starts_with("cannot create"), "{e}");
    }
}
