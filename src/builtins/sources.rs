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
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_actors::{Context, Source, SourcePoll, SubtaskInfo};
use weir_state::operator_state::split_range;

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
    /// How many splits the sequence has (record `i` is in split `i % splits`); `None`:
    /// the job's max_parallelism, so any parallelism has a split for every subtask.
    /// Fixed by the first run: a restored job keeps the checkpoint's splits.
    pub splits: Option<u32>,
}

/// One split of a generator's sequence and where it is, as kept in checkpoints
/// (JSON, so `weir checkpoints inspect` shows it as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorSplit {
    /// Records `split, split + of, split + 2·of, …` belong to this split.
    pub split: u64,
    /// The number of splits of the sequence.
    pub of: u64,
    /// The next record to emit (`>= count`: the split is done).
    pub next: u64,
}

/// The sequence is cut into splits (`i % splits`); a fresh subtask `k` of `p` owns the
/// splits `k, k + p, …` and serves them round robin, so with `p` dividing the split
/// count it emits `i = k, k + p, k + 2p, …` in order. A record's values depend on `i`
/// and the seed only, so the output is the same at any parallelism, also after a
/// restore has dealt the splits out anew.
pub struct GeneratorSource {
    spec: Arc<GeneratorSpec>,
    /// The number of splits of the sequence.
    of: u64,
    /// This subtask's splits; finished ones stay, so a checkpoint keeps them finished.
    owned: Vec<GeneratorSplit>,
    /// Indices into `owned` of the splits not known to be done, served round robin.
    active: Vec<usize>,
    cursor: usize,
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
        let of = u64::from(spec.splits.unwrap_or(info.max_parallelism).max(1));
        let owned = (u64::from(info.index)..of)
            .step_by(p as usize)
            .map(|split| GeneratorSplit {
                split,
                of,
                next: split,
            })
            .collect();
        let mut source = GeneratorSource {
            rate: None,
            of,
            owned,
            active: Vec::new(),
            cursor: 0,
            spec,
            started: None,
            emitted: 0,
            only_i,
        };
        source.share_changed();
        source
    }

    /// After the owned splits changed: serve the unfinished ones, at this subtask's
    /// share of the rate (its part of the splits).
    fn share_changed(&mut self) {
        self.active = (0..self.owned.len())
            .filter(|&slot| !self.is_done(self.owned[slot].next))
            .collect();
        self.cursor = 0;
        self.rate = self
            .spec
            .rate
            .map(|r| r * self.owned.len() as f64 / self.of as f64);
        // The rate counts from here.
        (self.started, self.emitted) = (None, 0);
    }

    fn is_done(&self, next: u64) -> bool {
        self.spec.count.is_some_and(|c| next >= c)
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
        let mut emitted = 0;
        while emitted < budget && !self.active.is_empty() {
            if self.cursor >= self.active.len() {
                self.cursor = 0;
            }
            let slot = self.active[self.cursor];
            let i = self.owned[slot].next;
            if self.is_done(i) {
                self.active.remove(self.cursor);
                continue;
            }
            let r = self.make(i)?;
            ctx.emit(r);
            self.owned[slot].next = i.saturating_add(self.of);
            self.cursor += 1;
            emitted += 1;
        }
        self.emitted += emitted;
        let (owned, count) = (&self.owned, self.spec.count);
        let done = |slot: &usize| count.is_some_and(|c| owned[*slot].next >= c);
        if self.active.iter().all(done) {
            return Ok(SourcePoll::Finished);
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_splits(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        let splits = self
            .owned
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()?;
        Ok(Some(splits))
    }

    fn restore_splits(&mut self, splits: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let owned: Vec<GeneratorSplit> = splits
            .iter()
            .map(|bytes| serde_json::from_slice(bytes).context("a generator split"))
            .collect::<anyhow::Result<_>>()?;
        if let Some(first) = owned.first() {
            if let Some(other) = owned.iter().find(|s| s.of != first.of || s.split >= s.of) {
                anyhow::bail!(
                    "inconsistent generator splits in the checkpoint: split {} of {} next to one of {}",
                    other.split,
                    other.of,
                    first.of
                );
            }
            self.of = first.of;
        }
        self.owned = owned;
        // Splits are served round robin in split order; resume the round where the
        // checkpoint left it (at the split furthest behind), so records come in the
        // order of a run without the failure: restarting the round at the first
        // split would emit a round's tail after the next round's head, and with
        // event time those records could be late.
        self.owned.sort_by_key(|s| s.split);
        self.share_changed();
        let owned = &self.owned;
        if let Some(behind) = (0..self.active.len()).min_by_key(|&a| owned[self.active[a]].next) {
            self.cursor = behind;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// File

/// One input file of a file source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// How messages and checkpoints name the file (as the topology wrote it).
    pub display: String,
}

/// A bounded source over local files of text, CSV or JSON lines.
#[derive(Debug, Clone)]
pub struct FileSourceSpec {
    /// Read in this order (a glob's matches sorted).
    pub files: Vec<InputFile>,
    pub decode: Arc<DecodeSpec>,
    pub on_error: OnError,
    /// How many splits the files are cut into, in total (each file gets a share by
    /// size, at least one); `None`: the job's max_parallelism. Fixed by the first
    /// run: a restored job keeps the checkpoint's splits.
    pub splits: Option<u32>,
}

/// A range of whole lines of one file and where reading it got to, as kept in
/// checkpoints (JSON, so `weir checkpoints inspect` shows it as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSplit {
    /// The file, as the topology names it.
    pub file: String,
    /// Byte offset of the split's first line.
    pub start: u64,
    /// Byte offset just after its last line.
    pub end: u64,
    /// Byte offset of the next line to read (`end`: the split is done).
    pub offset: u64,
    /// 0-based number of the line at `offset` in the file.
    pub line: u64,
}

/// The byte ranges, before alignment to lines, of `splits` splits over files of the
/// given sizes: (file, from, to), in file order. Each file gets a share of the splits
/// by its size, at least one.
pub fn split_targets(sizes: &[u64], splits: u64) -> Vec<(usize, u64, u64)> {
    let total: u64 = sizes.iter().sum();
    let mut out = Vec::new();
    for (file, &size) in sizes.iter().enumerate() {
        let share = if total == 0 {
            1
        } else {
            (u128::from(splits) * u128::from(size)).div_ceil(u128::from(total)) as u64
        };
        let n = share.clamp(1, size.max(1));
        for j in 0..n {
            let at = |k: u64| (u128::from(size) * u128::from(k) / u128::from(n)) as u64;
            out.push((file, at(j), at(j + 1)));
        }
    }
    out
}

/// For every target offset (ascending), the first line start at or after it (the
/// input's length if none) and the number of lines before that: the boundaries of
/// splits made of whole lines. Reads only as far as the last target needs.
pub fn line_boundaries(mut input: impl Read, targets: &[u64]) -> std::io::Result<Vec<(u64, u64)>> {
    debug_assert!(targets.windows(2).all(|w| w[0] <= w[1]));
    let mut out = Vec::with_capacity(targets.len());
    let mut next = 0;
    // Line start 0 precedes everything.
    while next < targets.len() && targets[next] == 0 {
        out.push((0, 0));
        next += 1;
    }
    let (mut pos, mut lines) = (0u64, 0u64);
    let mut chunk = vec![0u8; 64 * 1024];
    while next < targets.len() {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        for newline in memchr::memchr_iter(b'\n', &chunk[..n]) {
            let line_start = pos + newline as u64 + 1;
            lines += 1;
            while next < targets.len() && targets[next] <= line_start {
                out.push((line_start, lines));
                next += 1;
            }
            if next == targets.len() {
                break;
            }
        }
        pos += n as u64;
    }
    // Past the last line start: the end of the input.
    out.extend((next..targets.len()).map(|_| (pos, lines)));
    Ok(out)
}

/// The splits a fresh subtask `index` of `parallelism` reads: a contiguous part of
/// all splits (weir-state's split redistribution, as a restore deals them out), cut
/// at line starts; empty ones are left out.
pub fn fresh_file_splits(
    files: &[InputFile],
    splits: u64,
    index: usize,
    parallelism: usize,
) -> anyhow::Result<Vec<FileSplit>> {
    let sizes = files
        .iter()
        .map(|f| {
            std::fs::metadata(&f.path)
                .map(|m| m.len())
                .with_context(|| format!("cannot read {}", f.display))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let targets = split_targets(&sizes, splits);
    let mine = &targets[split_range(targets.len(), index, parallelism)];
    let mut out = Vec::new();
    for (file, input) in files.iter().enumerate() {
        let ranges: Vec<(u64, u64)> = mine
            .iter()
            .filter(|(f, _, _)| *f == file)
            .map(|&(_, from, to)| (from, to))
            .collect();
        if ranges.is_empty() {
            continue;
        }
        let mut wanted: Vec<u64> = ranges.iter().flat_map(|&(a, b)| [a, b]).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let reader =
            File::open(&input.path).with_context(|| format!("cannot open {}", input.display))?;
        let found = line_boundaries(BufReader::new(reader), &wanted)
            .with_context(|| format!("cannot read {}", input.display))?;
        let at = |t: u64| found[wanted.binary_search(&t).expect("a wanted target")];
        for (from, to) in ranges {
            let ((start, line), (end, _)) = (at(from), at(to));
            if start < end {
                out.push(FileSplit {
                    file: input.display.clone(),
                    start,
                    end,
                    offset: start,
                    line,
                });
            }
        }
    }
    Ok(out)
}

/// The file that is open, and the byte offset its reader is at.
struct OpenFile {
    file: usize,
    reader: BufReader<File>,
    at: u64,
}

/// Reads its splits one after the other, a line at a time; every record a split
/// holds is emitted by exactly one subtask, whatever the parallelism. A fresh
/// subtask computes its splits at the first poll (a restored one gets them from the
/// checkpoint instead). A CSV header is read from line 1 of each file it opens.
pub struct FileSource {
    spec: Arc<FileSourceSpec>,
    decoder: Decoder,
    bad: BadRecords,
    /// This subtask's splits (with the index of their file); `None` until known.
    splits: Option<Vec<(usize, FileSplit)>>,
    /// The first split that may not be done.
    current: usize,
    open: Option<OpenFile>,
    index: usize,
    parallelism: usize,
    default_splits: u64,
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
            splits: None,
            current: 0,
            open: None,
            index: info.index as usize,
            parallelism: info.parallelism.max(1) as usize,
            default_splits: u64::from(info.max_parallelism.max(1)),
            spec,
            buf: Vec::with_capacity(256),
        }
    }

    fn display(&self, file: usize) -> &str {
        &self.spec.files[file].display
    }

    /// Positions the reader at the next line of split `at`, opening its file (and
    /// reading the file's CSV header) when another file was open.
    fn reader_for(&mut self, at: usize) -> anyhow::Result<&mut BufReader<File>> {
        let (file, offset) = {
            let (file, split) = &self.splits.as_ref().expect("splits are known")[at];
            (*file, split.offset)
        };
        if self.open.as_ref().is_none_or(|o| o.file != file) {
            let input = &self.spec.files[file];
            let f = File::open(&input.path)
                .with_context(|| format!("cannot open {}", input.display))?;
            let mut reader = BufReader::with_capacity(64 * 1024, f);
            // Each file names its own columns.
            self.decoder = Decoder::new(self.spec.decode.clone());
            if self.decoder.expects_header() {
                self.buf.clear();
                reader
                    .read_until(b'\n', &mut self.buf)
                    .with_context(|| format!("cannot read {}", input.display))?;
                let header = String::from_utf8_lossy(&self.buf);
                // A broken header leaves no way to read the file: always fatal.
                self.decoder
                    .header(header.strip_suffix('\n').unwrap_or(&header))
                    .map_err(|e| anyhow::anyhow!("{}:1: {e}", input.display))?;
            }
            self.open = Some(OpenFile {
                file,
                reader,
                at: u64::MAX,
            });
        }
        let open = self.open.as_mut().expect("opened above");
        if open.at != offset {
            open.reader
                .seek(SeekFrom::Start(offset))
                .with_context(|| format!("cannot seek in {}", self.spec.files[file].display))?;
            open.at = offset;
        }
        Ok(&mut open.reader)
    }
}

impl Source for FileSource {
    type Out = Record;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        for input in &self.spec.files {
            File::open(&input.path).with_context(|| format!("cannot open {}", input.display))?;
        }
        self.bad.open()
    }

    fn poll(&mut self, ctx: &mut Context<'_, Record>, max: usize) -> anyhow::Result<SourcePoll> {
        if self.splits.is_none() {
            let splits = self.spec.splits.map_or(self.default_splits, u64::from);
            let fresh = fresh_file_splits(&self.spec.files, splits, self.index, self.parallelism)?;
            self.splits = Some(
                fresh
                    .into_iter()
                    .map(|s| (self.file_of(&s.file), s))
                    .collect(),
            );
        }
        let mut emitted = 0;
        // Bound the work of one poll: records plus the lines that carry none.
        let mut lines_left = 2 * max.max(1) as u64;
        while emitted < max && lines_left > 0 {
            let splits = self.splits.as_ref().expect("splits are known");
            while splits
                .get(self.current)
                .is_some_and(|(_, s)| s.offset >= s.end)
            {
                self.current += 1;
            }
            if self.current == splits.len() {
                self.bad.finish()?;
                return Ok(SourcePoll::Finished);
            }
            let at = self.current;
            let (file, end) = (splits[at].0, splits[at].1.end);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let read = self.reader_for(at)?.read_until(b'\n', &mut buf);
            self.buf = buf;
            let n = read.with_context(|| format!("cannot read {}", self.display(file)))?;
            let display = &self.spec.files[file].display;
            let split = &mut self.splits.as_mut().expect("splits are known")[at].1;
            if n == 0 {
                anyhow::bail!(
                    "{display} ends at byte {}, inside a split that reaches byte {end}: was the file changed while the job ran?",
                    split.offset
                );
            }
            lines_left -= 1;
            let number = split.line; // 0-based
            split.line += 1;
            split.offset += n as u64;
            self.open.as_mut().expect("a file is open").at = split.offset;
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            if number == 0 && self.decoder.expects_header() {
                // Read when the file was opened.
                continue;
            }
            let location = format!("{}:{}", self.display(file), number + 1);
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

    fn snapshot_splits(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        if self.splits.is_none() {
            // Not polled yet: the fresh splits, unread.
            let splits = self.spec.splits.map_or(self.default_splits, u64::from);
            let fresh = fresh_file_splits(&self.spec.files, splits, self.index, self.parallelism)?;
            self.splits = Some(
                fresh
                    .into_iter()
                    .map(|s| (self.file_of(&s.file), s))
                    .collect(),
            );
        }
        let splits = self.splits.as_ref().expect("splits are known");
        let encoded = splits
            .iter()
            .map(|(_, s)| serde_json::to_vec(s))
            .collect::<Result<_, _>>()?;
        Ok(Some(encoded))
    }

    fn restore_splits(&mut self, splits: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let mut restored = Vec::with_capacity(splits.len());
        for bytes in &splits {
            let split: FileSplit = serde_json::from_slice(bytes).context("a file split")?;
            let Some(file) = self.spec.files.iter().position(|f| f.display == split.file) else {
                anyhow::bail!(
                    "the checkpoint reads `{}`, which this source does not list (it reads {}): keep the source's `path`",
                    split.file,
                    self.spec
                        .files
                        .iter()
                        .map(|f| format!("`{}`", f.display))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            restored.push((file, split));
        }
        (self.splits, self.current, self.open) = (Some(restored), 0, None);
        Ok(())
    }
}

impl FileSource {
    /// The index of the file a fresh split names (splits are made from `files`).
    fn file_of(&self, display: &str) -> usize {
        self.spec
            .files
            .iter()
            .position(|f| f.display == display)
            .expect("fresh splits name listed files")
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
            splits: None,
        })
    }

    #[test]
    fn a_restored_generator_continues_in_the_order_of_an_uninterrupted_one() {
        let spec = gen(1_000, &[("i", "i")]);
        let i = info("g", 0, 1);
        let ids = |records: &[Record]| -> Vec<i64> {
            records
                .iter()
                .map(|r| match r.get("i") {
                    Some(Value::Int(n)) => *n,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let whole = ids(&drain(&mut GeneratorSource::new(spec.clone(), &i), &i).unwrap());
        // Stop in the middle of a round of the 128 splits.
        let mut first = GeneratorSource::new(spec.clone(), &i);
        first.open(&i).unwrap();
        let mut head = Vec::new();
        while head.len() < 300 {
            first.poll(&mut Context::new(&mut head, &i), 7).unwrap();
        }
        let mut splits = first.snapshot_splits().unwrap().unwrap();
        splits.reverse();
        let mut second = GeneratorSource::new(spec, &i);
        second.open(&i).unwrap();
        second.restore_splits(splits).unwrap();
        let mut resumed = ids(&head);
        resumed.extend(ids(&drain(&mut second, &i).unwrap()));
        assert_eq!(resumed, whole);
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
            // Record i is in split i % 128 (max_parallelism); subtask k owns the
            // splits k, k + 3, ….
            assert!(part
                .iter()
                .all(|r| matches!(r.get("i"), Some(Value::Int(n)) if (*n as u32 % 128) % 3 == k)));
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
            splits: None,
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
            files: vec![InputFile {
                path,
                display: "in.txt".into(),
            }],
            decode: Arc::new(decode),
            on_error,
            splits: None,
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

    /// Polls `sources` (subtask order) in turns of random size until `stop` says so,
    /// then takes their splits as a checkpoint would: returns what they emitted and
    /// the split lists.
    fn run_then_snapshot<S: Source<Out = Record>>(
        sources: &mut [(S, SubtaskInfo)],
        turns: &[usize],
    ) -> (Vec<Record>, Vec<Vec<Vec<u8>>>) {
        let mut out = Vec::new();
        for (turn, &max) in turns.iter().enumerate() {
            let (s, info) = &mut sources[turn % sources.len()];
            let mut batch = Vec::new();
            s.poll(&mut Context::new(&mut batch, info), max).unwrap();
            out.extend(batch);
        }
        let splits = sources
            .iter_mut()
            .map(|(s, _)| s.snapshot_splits().unwrap().unwrap())
            .collect();
        (out, splits)
    }

    /// Restores `parallelism` subtasks from the old subtasks' split lists, dealing
    /// them out as the runtime does (weir-state's split redistribution).
    fn restored<S: Source<Out = Record>>(
        old: &[Vec<Vec<u8>>],
        parallelism: u32,
        make: impl Fn(&SubtaskInfo) -> S,
    ) -> Vec<(S, SubtaskInfo)> {
        (0..parallelism)
            .map(|k| {
                let i = info("s", k, parallelism);
                let mut s = make(&i);
                s.open(&i).unwrap();
                let share = weir_state::operator_state::redistribute(
                    weir_state::RedistributionMode::SplitList,
                    old,
                    k as usize,
                    parallelism as usize,
                );
                s.restore_splits(share).unwrap();
                (s, i)
            })
            .collect()
    }

    fn ints(records: &[Record], field: &str) -> Vec<i64> {
        let mut v: Vec<i64> = records
            .iter()
            .map(|r| match r.get(field) {
                Some(Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            })
            .collect();
        v.sort_unstable();
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Checkpointed mid-run and restored at other parallelisms any number of
        /// times, a generator emits every record exactly once.
        #[test]
        fn a_rescaled_generator_emits_every_record_once(
            parallelisms in proptest::collection::vec(1u32..6, 1..5),
            turns in proptest::collection::vec(proptest::collection::vec(0usize..40, 0..12), 4),
            splits in proptest::option::of(1u32..20),
        ) {
            let spec = Arc::new(GeneratorSpec { splits, ..(*gen(300, &[("i", "i")])).clone() });
            let make = |i: &SubtaskInfo| GeneratorSource::new(spec.clone(), i);
            let mut sources: Vec<_> = (0..parallelisms[0]).map(|k| {
                let i = info("s", k, parallelisms[0]);
                let mut s = make(&i);
                s.open(&i).unwrap();
                (s, i)
            }).collect();
            let mut all = Vec::new();
            for (stage, &p) in parallelisms.iter().enumerate().skip(1) {
                let (out, splits) = run_then_snapshot(&mut sources, &turns[stage % turns.len()]);
                all.extend(out);
                sources = restored(&splits, p, make);
            }
            for (s, i) in &mut sources {
                all.extend(drain_opened(s, i).unwrap());
            }
            proptest::prop_assert_eq!(ints(&all, "i"), (0..300).collect::<Vec<_>>());
        }

        /// Split boundaries fall on line starts, cover the input without overlap, and
        /// carry the right line numbers, for any lines and any split count.
        #[test]
        fn file_splits_are_whole_lines_that_cover_the_input(
            lines in proptest::collection::vec("[a-z]{0,12}", 0..40),
            trailing_newline in proptest::bool::ANY,
            splits in 1u64..30,
        ) {
            let mut text = lines.join("\n");
            if trailing_newline && !lines.is_empty() {
                text.push('\n');
            }
            let bytes = text.as_bytes();
            let targets: Vec<u64> = split_targets(&[bytes.len() as u64], splits)
                .iter()
                .flat_map(|&(_, a, b)| [a, b])
                .collect();
            let found = line_boundaries(std::io::Cursor::new(bytes), &targets).unwrap();
            let mut covered = Vec::new();
            for pair in found.chunks(2) {
                let ((start, line), (end, _)) = (pair[0], pair[1]);
                proptest::prop_assert!(start <= end);
                proptest::prop_assert!(
                    start == 0 || start as usize == bytes.len() || bytes[start as usize - 1] == b'\n'
                );
                proptest::prop_assert_eq!(
                    line as usize,
                    bytes[..start as usize].iter().filter(|&&b| b == b'\n').count()
                );
                covered.extend_from_slice(&bytes[start as usize..end as usize]);
            }
            proptest::prop_assert_eq!(covered, bytes.to_vec());
        }
    }

    /// Polls an opened source to the end.
    fn drain_opened<S: Source<Out = Record>>(
        s: &mut S,
        info: &SubtaskInfo,
    ) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            let poll = s.poll(&mut Context::new(&mut batch, info), 7)?;
            out.extend(batch);
            if poll == SourcePoll::Finished {
                return Ok(out);
            }
        }
    }

    #[test]
    fn a_fresh_generator_subtask_emits_its_records_in_order() {
        let spec = gen(20, &[("i", "i")]);
        let i = info("g", 1, 2);
        let out = drain(&mut GeneratorSource::new(spec, &i), &i).unwrap();
        let seen: Vec<i64> = out
            .iter()
            .map(|r| match r.get("i") {
                Some(Value::Int(n)) => *n,
                _ => panic!(),
            })
            .collect();
        assert_eq!(seen, (1..20).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_source_rescaled_twice_reads_every_line_once_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut n = 0;
        for (name, lines) in [("a.csv", 120), ("b.csv", 7), ("c.csv", 0), ("d.csv", 64)] {
            let path = dir.path().join(name);
            let mut f = File::create(&path).unwrap();
            writeln!(f, "w,n").unwrap();
            for _ in 0..lines {
                writeln!(f, "w{n},{n}").unwrap();
                n += 1;
            }
            files.push(InputFile {
                path,
                display: name.into(),
            });
        }
        let spec = Arc::new(FileSourceSpec {
            files,
            decode: Arc::new(DecodeSpec {
                format: Format::Csv,
                header: true,
                ..DecodeSpec::text()
            }),
            on_error: OnError::Fail,
            splits: Some(16),
        });
        let make = |i: &SubtaskInfo| FileSource::new(spec.clone(), i, None, Arc::default());
        let mut sources: Vec<_> = (0..2)
            .map(|k| {
                let i = info("s", k, 2);
                let mut s = make(&i);
                s.open(&i).unwrap();
                (s, i)
            })
            .collect();
        let (mut all, splits) = run_then_snapshot(&mut sources, &[9, 30, 1, 17]);
        assert!(splits.iter().flatten().count() > 2);
        let mut sources = restored(&splits, 3, make);
        let (out, splits) = run_then_snapshot(&mut sources, &[5, 12, 40, 3, 3, 8]);
        all.extend(out);
        for (s, i) in &mut restored(&splits, 1, make) {
            all.extend(drain_opened(s, i).unwrap());
        }
        assert_eq!(ints(&all, "n"), (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_split_names_its_file_and_a_restore_refuses_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        let spec = file_spec(path, DecodeSpec::text(), OnError::Fail);
        let i = info("f", 0, 1);
        let mut s = FileSource::new(spec.clone(), &i, None, Arc::default());
        s.open(&i).unwrap();
        let mut batch = Vec::new();
        s.poll(&mut Context::new(&mut batch, &i), 2).unwrap();
        assert_eq!(batch.len(), 2);
        let splits = s.snapshot_splits().unwrap().unwrap();
        let json: Vec<String> = splits
            .iter()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .collect();
        // Three one-line splits (max_parallelism 128 asks for more than there are
        // lines): two done, one unread.
        assert_eq!(
            json,
            [
                r#"{"file":"in.txt","start":0,"end":2,"offset":2,"line":1}"#,
                r#"{"file":"in.txt","start":2,"end":4,"offset":4,"line":2}"#,
                r#"{"file":"in.txt","start":4,"end":6,"offset":4,"line":2}"#,
            ]
        );
        let other = br#"{"file":"gone.txt","start":0,"end":6,"offset":0,"line":0}"#.to_vec();
        let e = s.restore_splits(vec![other]).unwrap_err().to_string();
        assert!(
            e.contains("reads `gone.txt`, which this source does not list"),
            "{e}"
        );
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
