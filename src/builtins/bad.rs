//! Bad-record policies of sources: `fail` (the default) stops the job with the file
//! and line, `skip` counts and logs (rate-limited), `dead_letter` writes the raw
//! record and the reason to a file. Nothing is dropped silently.

use anyhow::{anyhow, Context as _};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a source does with a record it cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Skip,
    DeadLetter(PathBuf),
}

impl OnError {
    pub const NAMES: &'static [&'static str] = &["fail", "skip", "dead_letter"];
}

/// Counts of bad records of one source, over all its subtasks (for the summary).
#[derive(Debug, Default)]
pub struct BadRecordStats {
    pub skipped: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// The dead-letter file of one source, shared by its subtasks; created (truncated)
/// when the first subtask opens.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    writer: Mutex<Option<BufWriter<File>>>,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf) -> Arc<DeadLetterFile> {
        Arc::new(DeadLetterFile {
            path,
            writer: Mutex::new(None),
        })
    }

    fn open(&self) -> anyhow::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the directory {}", dir.display()))?;
            }
            let f = File::create(&self.path).with_context(|| {
                format!("cannot create the dead-letter file {}", self.path.display())
            })?;
            *w = Some(BufWriter::new(f));
        }
        Ok(())
    }

    fn write_line(&self, line: &str) -> anyhow::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let w = w
            .as_mut()
            .ok_or_else(|| anyhow!("dead-letter file not open"))?;
        w.write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .with_context(|| format!("cannot write the dead-letter file {}", self.path.display()))
    }

    fn flush(&self) -> anyhow::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = w.as_mut() {
            w.flush().with_context(|| {
                format!("cannot write the dead-letter file {}", self.path.display())
            })?;
        }
        Ok(())
    }
}

/// One subtask's handler of bad records.
pub struct BadRecords {
    source: String,
    policy: OnError,
    dead_letter: Option<Arc<DeadLetterFile>>,
    stats: Arc<BadRecordStats>,
    local: u64,
    last_warning: Option<Instant>,
    suppressed: u64,
}

/// At most one warning per interval per subtask; the rest are counted.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

impl BadRecords {
    pub fn new(
        source: &str,
        policy: OnError,
        dead_letter: Option<Arc<DeadLetterFile>>,
        stats: Arc<BadRecordStats>,
    ) -> BadRecords {
        BadRecords {
            source: source.to_string(),
            policy,
            dead_letter,
            stats,
            local: 0,
            last_warning: None,
            suppressed: 0,
        }
    }

    /// Opens the dead-letter file if the policy needs one.
    pub fn open(&mut self) -> anyhow::Result<()> {
        if let (OnError::DeadLetter(_), Some(d)) = (&self.policy, &self.dead_letter) {
            d.open()?;
        }
        Ok(())
    }

    /// Handles one bad record found at `location` ("file.csv:12").
    pub fn handle(&mut self, location: &str, raw: &str, reason: &str) -> anyhow::Result<()> {
        match &self.policy {
            OnError::Fail => Err(anyhow!(
                "bad record at {location}: {reason} (on_error = \"fail\"; set on_error = \"skip\" or \"dead_letter\" on source `{}` to continue past bad records)",
                self.source
            )),
            OnError::Skip => {
                self.local += 1;
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL)
                {
                    let more = if self.suppressed > 0 {
                        format!(" ({} more skipped since the last warning)", self.suppressed)
                    } else {
                        String::new()
                    };
                    tracing::warn!(source = %self.source, "skipped a bad record at {location}: {reason}{more}");
                    self.last_warning = Some(now);
                    self.suppressed = 0;
                } else {
                    self.suppressed += 1;
                }
                Ok(())
            }
            OnError::DeadLetter(_) => {
                let d = self
                    .dead_letter
                    .as_ref()
                    .ok_or_else(|| anyhow!("dead-letter file missing"))?;
                let mut line = String::with_capacity(raw.len() + reason.len() + 64);
                line.push_str("{\"source\":");
                crate::record::write_json_str(&self.source, &mut line);
                line.push_str(",\"location\":");
                crate::record::write_json_str(location, &mut line);
                line.push_str(",\"reason\":");
                crate::record::write_json_str(reason, &mut line);
                line.push_str(",\"record\":");
                crate::record::write_json_str(raw, &mut line);
                line.push('}');
                d.write_line(&line)?;
                self.local += 1;
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Flushes the dead-letter file and logs this subtask's total.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &self.dead_letter {
            d.flush()?;
        }
        if self.local > 0 {
            let what = match self.policy {
                OnError::DeadLetter(_) => "sent to the dead-letter file",
                _ => "skipped",
            };
            tracing::warn!(source = %self.source, "{} bad records {what}", self.local);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_names_location_and_fix() {
        let mut b = BadRecords::new("src", OnError::Fail, None, Arc::default());
        let e = b
            .handle("in.csv:3", "x", "bad thing")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad record at in.csv:3: bad thing"), "{e}");
        assert!(e.contains("on_error = \"skip\""), "{e}");
    }

    #[test]
    fn skip_counts() {
        let stats = Arc::new(BadRecordStats::default());
        let mut b = BadRecords::new("src", OnError::Skip, None, stats.clone());
        for i in 0..5 {
            b.handle(&format!("f:{i}"), "x", "bad").unwrap();
        }
        b.finish().unwrap();
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn dead_letter_writes_raw_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead.jsonl");
        let file = DeadLetterFile::new(path.clone());
        let stats = Arc::new(BadRecordStats::default());
        let mut a = BadRecords::new(
            "src",
            OnError::DeadLetter(path.clone()),
            Some(file.clone()),
            stats.clone(),
        );
        let mut b = BadRecords::new(
            "src",
            OnError::DeadLetter(path.clone()),
            Some(file),
            stats.clone(),
        );
        a.open().unwrap();
        b.open().unwrap();
        a.handle("in.csv:2", "a,\"b", "unterminated").unwrap();
        b.handle("in.csv:5", "zz", "too few").unwrap();
        a.finish().unwrap();
        b.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"source\":\"src\",\"location\":\"in.csv:2\",\"reason\":\"unterminated\",\"record\":\"a,\\\"b\"}\n\
             {\"source\":\"src\",\"location\":\"in.csv:5\",\"reason\":\"too few\",\"record\":\"zz\"}\n"
        );
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 2);
    }
}
