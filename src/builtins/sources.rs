//! Built-in sources on the dynamic record: generator, file and stdin.
//!
//! None of them blocks in `poll`: the generator computes, the file source reads a
//! bounded number of lines from a local file per poll, and stdin is read by a
//! separate thread into a bounded channel that `poll` drains without waiting.

use super::bad::{BadRecordStats, BadRecords, DeadLetterFile, OnError};
use super::decode::{DecodeSpec, Decoder};
use crate::expr::{Env, Expr};
use crate::record::{Record, Value};
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_actors::{Context, Source, SourcePoll, SubtaskInfo};

// ---------------------------------------------------------------------------------
// Generator

/// A generator: record `i` for `i` in `0..count` (or forever), each with the fields
/// computed by expressions over `i` (and seeded randomness).
#[derive(Debug, Clone)]
pub struct GeneratorSpec {
    /// How many records in total (over all subtasks); `None`: unbounded.
    pub count: Option<u64>,
    /// Records per second in total; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Seed of `random_int` / `random_float`.
    pub seed: u64,
    /// Output fields and the expressions computing them, in order.
    pub fields: Vec<(Arc<str>, Expr)>,
}

/// Subtask `k` of `p` emits `i = k, k + p, k + 2p, ...`; a record's values depend on
/// `i` and the seed only, so the output is the same at any parallelism.
pub struct GeneratorSource {
    spec: Arc<GeneratorSpec>,
    next: u64,
    step: u64,
    rate: Option<f64>,
    started: Option<Instant>,
    emitted: u64,
    /// The default `{ i = "i" }` needs no expression evaluation.
    only_i: Option<Arc<str>>,
}

impl GeneratorSource {
    pub fn new(spec: Arc<GeneratorSpec>, info: &SubtaskInfo) -> GeneratorSource {
        let p = u64::from(info.parallelism.max(1));
        // Own copies of the field names: records clone and drop them all the time, and
        // reference counts shared between subtasks on different cores would bounce
        // their cache line between those cores.
        let spec = Arc::new(GeneratorSpec {
            fields: spec
                .fields
                .iter()
                .map(|(n, e)| (Arc::from(&**n), e.clone()))
                .collect(),
            ..(*spec).clone()
        });
        let only_i = match spec.fields.as_slice() {
            [(name, e)] if e.text().trim() == "i" => Some(name.clone()),
            _ => None,
        };
        GeneratorSource {
            rate: spec.rate.map(|r| r / p as f64),
            next: u64::from(info.index),
            step: p,
            spec,
            started: None,
            emitted: 0,
            only_i,
        }
    }

    fn make(&self, i: u64) -> anyhow::Result<Record> {
        let iv = Value::Int(i as i64);
        if let Some(name) = &self.only_i {
            let mut r = Record::with_capacity(1);
            r.push_unchecked(name.clone(), iv);
            return Ok(r);
        }
        let mut env = GenEnv {
            i: iv,
            record: Record::with_capacity(self.spec.fields.len()),
            rng: splitmix(self.spec.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        for (name, e) in &self.spec.fields {
            let v = e.eval(&mut env).map_err(anyhow::Error::msg)?;
            // TOML table keys are unique: no need to look for an existing field.
            env.record.push_unchecked(name.clone(), v);
        }
        Ok(env.record)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct GenEnv {
    i: Value,
    record: Record,
    rng: u64,
}

impl Env for GenEnv {
    fn field(&self, name: &str) -> Option<&Value> {
        match self.record.get(name) {
            Some(v) => Some(v),
            None if name == "i" => Some(&self.i),
            None => None,
        }
    }
    fn describe_fields(&self) -> String {
        let mut names = vec!["`i`".to_string()];
        names.extend(
            self.record
                .names()
                .filter(|n| *n != "i")
                .map(|n| format!("`{n}`")),
        );
        names.join(", ")
    }
    fn random(&mut self) -> Option<u64> {
        self.rng = splitmix(self.rng);
        Some(self.rng)
    }
}

impl Source for GeneratorSource {
    type Out = Record;

    fn poll(&mut self, ctx: &mut Context<'_, Record>, max: usize) -> anyhow::Result<SourcePoll> {
        let mut budget = max as u64;
        if let Some(rate) = self.rate {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
            let allowed = due.saturating_sub(self.emitted);
            if allowed == 0 {
                let next_at = (self.emitted as f64) / rate;
                let wait = next_at - started.elapsed().as_secs_f64();
                return Ok(SourcePoll::Pending(Duration::from_secs_f64(
                    wait.clamp(0.0001, 0.1),
                )));
            }
            budget = budget.min(allowed);
        }
        for _ in 0..budget {
            if self.spec.count.is_some_and(|c| self.next >= c) {
                return Ok(SourcePoll::Finished);
            }
            let r = self.make(self.next)?;
            ctx.emit(r);
            self.next += self.step;
            self.emitted += 1;
        }
        if self.spec.count.is_some_and(|c| self.next >= c) {
            return Ok(SourcePoll::Finished);
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(Some(postcard::to_stdvec(&self.next)?))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.next = postcard::from_bytes(position).context("a generator position")?;
        // The rate counts from the restart.
        (self.started, self.emitted) = (None, 0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// File

/// A bounded source over one local file of text, CSV or JSON lines.
#[derive(Debug, Clone)]
pub struct FileSourceSpec {
    pub path: PathBuf,
    /// How messages name the file (as written in the topology).
    pub display: String,
    pub decode: Arc<DecodeSpec>,
    pub on_error: OnError,
}

/// Subtask `k` of `p` decodes the lines whose 0-based number `n` has `n % p == k`
/// (a CSV header is read by every subtask). `line` and `offset` are the position a
/// checkpoint will snapshot.
pub struct FileSource {
    spec: Arc<FileSourceSpec>,
    decoder: Decoder,
    bad: BadRecords,
    reader: Option<BufReader<File>>,
    /// Lines read so far (the 1-based number of the last line read).
    pub line: u64,
    /// Byte offset of the next line.
    pub offset: u64,
    index: u64,
    parallelism: u64,
    buf: Vec<u8>,
}

impl FileSource {
    pub fn new(
        spec: Arc<FileSourceSpec>,
        info: &SubtaskInfo,
        dead_letter: Option<Arc<DeadLetterFile>>,
        stats: Arc<BadRecordStats>,
    ) -> FileSource {
        FileSource {
            decoder: Decoder::new(spec.decode.clone()),
            bad: BadRecords::new(&info.operator, spec.on_error.clone(), dead_letter, stats),
            spec,
            reader: None,
            line: 0,
            offset: 0,
            index: u64::from(info.index),
            parallelism: u64::from(info.parallelism.max(1)),
            buf: Vec::with_capacity(256),
        }
    }
}

impl Source for FileSource {
    type Out = Record;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        let f = File::open(&self.spec.path)
            .with_context(|| format!("cannot open {}", self.spec.display))?;
        self.reader = Some(BufReader::with_capacity(64 * 1024, f));
        self.bad.open()
    }

    fn poll(&mut self, ctx: &mut Context<'_, Record>, max: usize) -> anyhow::Result<SourcePoll> {
        let Some(reader) = self.reader.as_mut() else {
            anyhow::bail!("the file source was polled before it was opened");
        };
        let mut emitted = 0;
        // Bound the work of one poll: this subtask's records plus the others' lines.
        let mut lines_left = max.max(1) as u64 * self.parallelism;
        while emitted < max && lines_left > 0 {
            self.buf.clear();
            let n = reader
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read {}", self.spec.display))?;
            if n == 0 {
                self.bad.finish()?;
                return Ok(SourcePoll::Finished);
            }
            lines_left -= 1;
            let number = self.line; // 0-based
            self.line += 1;
            self.offset += n as u64;
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            let header = number == 0 && self.decoder.expects_header();
            if !header && number % self.parallelism != self.index {
                continue;
            }
            let location = format!("{}:{}", self.spec.display, self.line);
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t,
                Err(e) => {
                    let raw = String::from_utf8_lossy(&self.buf).into_owned();
                    self.bad.handle(
                        &location,
                        &raw,
                        &format!("the line is not valid UTF-8 ({e})"),
                    )?;
                    continue;
                }
            };
            if header {
                // A broken header leaves no way to read the file: always fatal.
                self.decoder
                    .header(text)
                    .map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
                continue;
            }
            if self.decoder.is_blank(text) {
                continue;
            }
            match self.decoder.decode(text) {
                Ok(r) => {
                    ctx.emit(r);
                    emitted += 1;
                }
                Err(reason) => {
                    let raw = text.to_string();
                    self.bad.handle(&location, &raw, &reason)?
                }
            }
        }
        Ok(SourcePoll::Ready)
    }

    /// The number of lines read and the byte offset of the next one.
    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(Some(postcard::to_stdvec(&(self.line, self.offset))?))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        let (line, offset): (u64, u64) =
            postcard::from_bytes(position).context("a file position")?;
        let reader = self
            .reader
            .as_mut()
            .context("the file source restores after it is opened")?;
        if line > 0 && self.decoder.expects_header() {
            // The header names the fields of every later line: read it again.
            self.buf.clear();
            reader
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read {}", self.spec.display))?;
            let header = String::from_utf8_lossy(&self.buf);
            self.decoder
                .header(header.strip_suffix('\n').unwrap_or(&header))
                .map_err(|e| anyhow::anyhow!("{}:1: {e}", self.spec.display))?;
        }
        reader
            .seek(SeekFrom::Start(offset))
            .with_context(|| format!("cannot seek in {}", self.spec.display))?;
        (self.line, self.offset) = (line, offset);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Stdin

/// Lines read ahead from stdin, at most.
pub const STDIN_BUFFER_LINES: usize = 1024;

/// Reads standard input (always with parallelism 1).
#[derive(Debug, Clone)]
pub struct StdinSpec {
    pub decode: Arc<DecodeSpec>,
    pub on_error: OnError,
}

type LineResult = Result<Vec<u8>, String>;

/// A reader thread fills a bounded channel with lines; `poll` takes what is there
/// and returns `Pending` when it is empty, so the actor never blocks on stdin.
pub struct StdinSource {
    decoder: Decoder,
    bad: BadRecords,
    input: Option<Box<dyn Read + Send>>,
    lines: Option<Receiver<LineResult>>,
    pub line: u64,
}

impl StdinSource {
    pub fn new(
        spec: Arc<StdinSpec>,
        info: &SubtaskInfo,
        dead_letter: Option<Arc<DeadLetterFile>>,
        stats: Arc<BadRecordStats>,
    ) -> StdinSource {
        Self::with_reader(spec, info, dead_letter, stats, Box::new(std::io::stdin()))
    }

    /// Reads from `input` instead of the process's stdin (tests).
    pub fn with_reader(
        spec: Arc<StdinSpec>,
        info: &SubtaskInfo,
        dead_letter: Option<Arc<DeadLetterFile>>,
        stats: Arc<BadRecordStats>,
        input: Box<dyn Read + Send>,
    ) -> StdinSource {
        StdinSource {
            decoder: Decoder::new(spec.decode.clone()),
            bad: BadRecords::new(&info.operator, spec.on_error.clone(), dead_letter, stats),
            input: Some(input),
            lines: None,
            line: 0,
        }
    }
}

impl Source for StdinSource {
    type Out = Record;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        let input = self
            .input
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdin source opened twice"))?;
        let (tx, rx) = sync_channel::<LineResult>(STDIN_BUFFER_LINES);
        std::thread::Builder::new()
            .name("weir-stdin".into())
            .spawn(move || {
                let mut reader = BufReader::new(input);
                loop {
                    let mut buf = Vec::new();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) => return,
                        Ok(_) => {
                            if buf.last() == Some(&b'\n') {
                                buf.pop();
                            }
                            if tx.send(Ok(buf)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            })
            .context("cannot start the stdin reader thread")?;
        self.lines = Some(rx);
        self.bad.open()
    }

    fn poll(&mut self, ctx: &mut Context<'_, Record>, max: usize) -> anyhow::Result<SourcePoll> {
        let Some(rx) = self.lines.as_ref() else {
            anyhow::bail!("the stdin source was polled before it was opened");
        };
        let mut emitted = 0;
        while emitted < max {
            let buf = match rx.try_recv() {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => anyhow::bail!("cannot read stdin: {e}"),
                Err(TryRecvError::Empty) => {
                    return Ok(if emitted > 0 {
                        SourcePoll::Ready
                    } else {
                        SourcePoll::Pending(Duration::from_millis(1))
                    })
                }
                Err(TryRecvError::Disconnected) => {
                    self.bad.finish()?;
                    return Ok(SourcePoll::Finished);
                }
            };
            self.line += 1;
            let location = format!("stdin:{}", self.line);
            let text = match String::from_utf8(buf) {
                Ok(t) => t,
                Err(e) => {
                    let raw = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    self.bad
                        .handle(&location, &raw, "the line is not valid UTF-8")?;
                    continue;
                }
            };
            if self.line == 1 && self.decoder.expects_header() {
                self.decoder
                    .header(&text)
                    .map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
                continue;
            }
            if self.decoder.is_blank(&text) {
                continue;
            }
            match self.decoder.decode(&text) {
                Ok(r) => {
                    ctx.emit(r);
                    emitted += 1;
                }
                Err(reason) => self.bad.handle(&location, &text, &reason)?,
            }
        }
        Ok(SourcePoll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::decode::Format;
    use std::io::Write;

    pub(crate) fn info(name: &str, index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo {
            operator: Arc::from(name),
            index,
            parallelism,
            max_parallelism: 128,
            attempt: 0,
        }
    }

    /// Polls a source to the end, collecting what it emits.
    fn drain<S: Source<Out = Record>>(
        s: &mut S,
        info: &SubtaskInfo,
    ) -> anyhow::Result<Vec<Record>> {
        s.open(info)?;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let mut batch = Vec::new();
            let poll = s.poll(&mut Context::new(&mut batch, info), 7)?;
            assert!(batch.len() <= 7);
            out.extend(batch);
            match poll {
                SourcePoll::Finished => return Ok(out),
                SourcePoll::Pending(d) => std::thread::sleep(d),
                SourcePoll::Ready => {}
            }
        }
        panic!("source did not finish");
    }

    fn gen(count: u64, fields: &[(&str, &str)]) -> Arc<GeneratorSpec> {
        Arc::new(GeneratorSpec {
            count: Some(count),
            rate: None,
            seed: 42,
            fields: fields
                .iter()
                .map(|(n, e)| (Arc::from(*n), Expr::parse(e, true).unwrap()))
                .collect(),
        })
    }

    #[test]
    fn generator_splits_the_sequence_and_is_parallelism_independent() {
        let spec = gen(
            20,
            &[("i", "i"), ("key", "i % 3"), ("r", "random_int(0, 1000)")],
        );
        let mut one = drain(
            &mut GeneratorSource::new(spec.clone(), &info("g", 0, 1)),
            &info("g", 0, 1),
        )
        .unwrap();
        let mut all = Vec::new();
        for k in 0..3 {
            let i = info("g", k, 3);
            let part = drain(&mut GeneratorSource::new(spec.clone(), &i), &i).unwrap();
            assert!(part
                .iter()
                .all(|r| matches!(r.get("i"), Some(Value::Int(n)) if *n as u32 % 3 == k)));
            all.extend(part);
        }
        let key = |r: &Record| match r.get("i") {
            Some(Value::Int(n)) => *n,
            _ => panic!(),
        };
        one.sort_by_key(key);
        all.sort_by_key(key);
        assert_eq!(one.len(), 20);
        assert_eq!(one, all);
        assert_eq!(one[5].get("key"), Some(&Value::Int(2)));
        // Seeded randomness varies between records.
        let distinct: std::collections::HashSet<_> =
            one.iter().map(|r| r.get("r").cloned()).collect();
        assert!(distinct.len() > 10);
    }

    #[test]
    fn generator_fast_path_and_rate() {
        let spec = Arc::new(GeneratorSpec {
            count: Some(30),
            rate: Some(1000.0),
            seed: 0,
            fields: vec![(Arc::from("n"), Expr::parse("i", true).unwrap())],
        });
        let i = info("g", 0, 1);
        let started = Instant::now();
        let out = drain(&mut GeneratorSource::new(spec, &i), &i).unwrap();
        assert_eq!(out.len(), 30);
        assert_eq!(out[29].to_json(), r#"{"n":29}"#);
        // 30 records at 1000/s take about 29 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(25),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn generator_fields_see_earlier_fields() {
        let spec = gen(2, &[("a", "i * 10"), ("b", "a + 1")]);
        let i = info("g", 0, 1);
        let out = drain(&mut GeneratorSource::new(spec, &i), &i).unwrap();
        assert_eq!(out[1].to_json(), r#"{"a":10,"b":11}"#);
    }

    fn file_spec(path: PathBuf, decode: DecodeSpec, on_error: OnError) -> Arc<FileSourceSpec> {
        Arc::new(FileSourceSpec {
            display: "in.txt".into(),
            path,
            decode: Arc::new(decode),
            on_error,
        })
    }

    #[test]
    fn file_source_splits_lines_across_subtasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "w,n").unwrap();
        for i in 0..50 {
            writeln!(f, "w{i},{i}").unwrap();
        }
        drop(f);
        let decode = DecodeSpec {
            format: Format::Csv,
            header: true,
            ..DecodeSpec::text()
        };
        let spec = file_spec(path, decode, OnError::Fail);
        let mut seen = Vec::new();
        for k in 0..4 {
            let i = info("f", k, 4);
            let out = drain(
                &mut FileSource::new(spec.clone(), &i, None, Arc::default()),
                &i,
            )
            .unwrap();
            seen.extend(out.iter().map(|r| match r.get("n") {
                Some(Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            }));
        }
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn file_source_bad_records_follow_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":\n\n{\"a\":3}\n\u{0}\u{ff}\n").unwrap();
        let json = || DecodeSpec {
            format: Format::Json,
            ..DecodeSpec::text()
        };
        let i = info("src", 0, 1);
        let e = drain(
            &mut FileSource::new(
                file_spec(path.clone(), json(), OnError::Fail),
                &i,
                None,
                Arc::default(),
            ),
            &i,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("bad record at in.txt:2: invalid JSON: EOF while parsing"),
            "{e}"
        );

        let stats = Arc::new(BadRecordStats::default());
        let out = drain(
            &mut FileSource::new(
                file_spec(path.clone(), json(), OnError::Skip),
                &i,
                None,
                stats.clone(),
            ),
            &i,
        )
        .unwrap();
        // Line 5 (a NUL and U+00FF) is valid UTF-8 but not JSON: skipped too.
        assert_eq!(out.len(), 2);
        assert_eq!(stats.skipped.load(std::sync::atomic::Ordering::Relaxed), 2);

        // std::fs::write wrote valid UTF-8 (U+00FF); write raw invalid bytes now.
        std::fs::write(&path, b"{\"a\":1}\n\xff\xfe\n").unwrap();
        let dead = dir.path().join("dead.jsonl");
        let mut s = FileSource::new(
            file_spec(path, json(), OnError::DeadLetter(dead.clone())),
            &i,
            Some(DeadLetterFile::new(dead.clone())),
            Arc::default(),
        );
        let out = drain(&mut s, &i).unwrap();
        assert_eq!(out.len(), 1);
        let text = std::fs::read_to_string(dead).unwrap();
        assert!(
            text.contains("\"location\":\"in.txt:2\",\"reason\":\"the line is not valid UTF-8"),
            "{text}"
        );
    }

    #[test]
    fn missing_file_fails_on_open() {
        let i = info("src", 0, 1);
        let mut s = FileSource::new(
            file_spec("/nonexistent/x".into(), DecodeSpec::text(), OnError::Fail),
            &i,
            None,
            Arc::default(),
        );
        assert!(s
            .open(&i)
            .unwrap_err()
            .to_string()
            .starts_with("cannot open in.txt"));
    }

    #[test]
    fn stdin_source_reads_through_a_bounded_channel() {
        let input = b"name,n\na,1\nb,x\nc,3\n".to_vec();
        let spec = Arc::new(StdinSpec {
            decode: Arc::new(DecodeSpec {
                format: Format::Csv,
                header: true,
                schema: Some(vec![(
                    Arc::from("n"),
                    crate::builtins::decode::FieldType::Int,
                )]),
                ..DecodeSpec::text()
            }),
            on_error: OnError::Skip,
        });
        let i = info("in", 0, 1);
        let stats = Arc::new(BadRecordStats::default());
        let mut s = StdinSource::with_reader(
            spec,
            &i,
            None,
            stats.clone(),
            Box::new(std::io::Cursor::new(input)),
        );
        let out = drain(&mut s, &i).unwrap();
        assert_eq!(
            out.iter().map(Record::to_json).collect::<Vec<_>>(),
            [r#"{"name":"a","n":1}"#, r#"{"name":"c","n":3}"#]
        );
        assert_eq!(stats.skipped.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
