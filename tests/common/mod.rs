//! Shared by the integration tests of checkpointed jobs: a paced numbers source
//! with positions and injectable faults, a collecting sink, and the exactness check.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::{Context, Sink, Source, SourcePoll};

pub const RECORDS: u64 = 40_000;
pub const KEYS: u64 = 97;
/// A `Numbers` subtask finishes only after this many snapshots of its position.
pub const MIN_SNAPSHOTS: u32 = 3;

/// A fault that fires once: the first time its condition holds while it is armed.
#[derive(Clone, Default)]
pub struct Fault(Arc<AtomicBool>);

impl Fault {
    pub fn armed() -> Self {
        Fault(Arc::new(AtomicBool::new(true)))
    }

    pub fn fires(&self, condition: bool) -> bool {
        condition && self.0.swap(false, Ordering::SeqCst)
    }

    pub fn fired(&self) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

/// Where the job fails once.
#[derive(Clone, Default)]
pub struct Faults {
    /// A source subtask fails in `poll` once it reached this record.
    pub poll_at: Option<(u64, Fault)>,
    /// A source subtask fails to snapshot its position at the `n`th checkpoint it
    /// takes (counted per subtask, the final checkpoint included).
    pub snapshot: Option<(u32, Fault)>,
    /// A source subtask fails to snapshot its position once it has finished (in the
    /// final checkpoint).
    pub final_snapshot: Option<Fault>,
    /// A source subtask fails to restore its position.
    pub restore: Option<Fault>,
}

/// Numbers `index, index + p, …` below `RECORDS`, paced at 100 per ms per subtask so
/// that periodic checkpoints complete while it runs (and it finishes only after
/// `MIN_SNAPSHOTS` of them).
pub struct Numbers {
    next: u64,
    step: u64,
    started: Option<Instant>,
    snapshots: u32,
    min_snapshots: u32,
    faults: Faults,
}

impl Numbers {
    pub fn new(info: &weir::SubtaskInfo, faults: Faults) -> Self {
        Numbers {
            next: info.index as u64,
            step: info.parallelism as u64,
            started: None,
            snapshots: 0,
            min_snapshots: MIN_SNAPSHOTS,
            faults,
        }
    }

    /// For a job without checkpoints: it finishes at the end of its input.
    pub fn unchecked(info: &weir::SubtaskInfo) -> Self {
        Numbers {
            min_snapshots: 0,
            ..Numbers::new(info, Faults::default())
        }
    }
}

impl Source for Numbers {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        if let Some((at, fault)) = &self.faults.poll_at {
            // After two snapshots (one checkpoint at a time: the first completed).
            if fault.fires(self.next >= *at && self.snapshots >= 2) {
                anyhow::bail!("injected failure at record {}", self.next);
            }
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = (started.elapsed().as_millis() as u64 + 1) * 100 * self.step;
        let mut emitted = 0;
        while self.next < RECORDS && self.next < due && emitted < max {
            ctx.emit(self.next);
            self.next += self.step;
            emitted += 1;
        }
        Ok(match (self.next >= RECORDS, emitted) {
            // However slow the machine, some periodic checkpoints happen first.
            (true, _) if self.snapshots < self.min_snapshots => {
                SourcePoll::Pending(Duration::from_millis(1))
            }
            (true, _) => SourcePoll::Finished,
            (false, 0) => SourcePoll::Pending(Duration::from_millis(1)),
            _ => SourcePoll::Ready,
        })
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.snapshots += 1;
        if let Some((n, fault)) = &self.faults.snapshot {
            if fault.fires(self.snapshots == *n) {
                anyhow::bail!("injected snapshot failure");
            }
        }
        if let Some(fault) = &self.faults.final_snapshot {
            if fault.fires(self.next >= RECORDS) {
                anyhow::bail!("injected failure in the final checkpoint");
            }
        }
        Ok(Some(self.next.to_le_bytes().to_vec()))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        if let Some(fault) = &self.faults.restore {
            if fault.fires(true) {
                anyhow::bail!("injected restore failure");
            }
        }
        self.next = u64::from_le_bytes(position.try_into()?);
        Ok(())
    }
}

pub struct Collect(pub Arc<Mutex<Vec<(u64, u64)>>>);
impl Sink for Collect {
    type In = (u64, u64);
    fn write(&mut self, record: (u64, u64)) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

/// State counted every record exactly once: each key's counts went 1, 2, … up to its
/// exact total (replayed records repeat some counts: this sink is not transactional).
pub fn assert_exact(output: &[(u64, u64)]) {
    let mut seen: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (k, c) in output {
        seen.entry(*k).or_default().insert(*c);
    }
    assert_eq!(seen.len() as u64, KEYS);
    for (key, counts) in &seen {
        let total = (0..RECORDS).filter(|n| n % KEYS == *key).count() as u64;
        assert_eq!(counts, &(1..=total).collect::<BTreeSet<_>>(), "key {key}");
    }
}

// The committed output of an exactly-once file sink of `key,count` lines.

/// Every running count exactly once: each key's counts 1, 2, … up to its total.
pub fn expected_lines() -> Vec<String> {
    let mut totals: BTreeMap<u64, u64> = BTreeMap::new();
    for n in 0..RECORDS {
        *totals.entry(n % KEYS).or_default() += 1;
    }
    let mut lines: Vec<String> = totals
        .iter()
        .flat_map(|(key, total)| (1..=*total).map(move |c| format!("{key},{c}")))
        .collect();
    lines.sort();
    lines
}

pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The sorted lines of the committed (visible) files.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = names(dir)
        .iter()
        .filter(|n| !is_hidden(n))
        .flat_map(|n| {
            fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

pub fn hidden(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| is_hidden(n)).collect()
}

/// No line twice, and none that a failure-free run would not write.
pub fn assert_no_duplicates_so_far(dir: &Path) {
    let lines = committed_lines(dir);
    let mut unique = lines.clone();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "a committed line is duplicated");
    let expected = expected_lines();
    assert!(lines.iter().all(|l| expected.binary_search(l).is_ok()));
}

pub fn assert_exactly_once(dir: &Path) {
    assert_eq!(committed_lines(dir), expected_lines());
    assert!(hidden(dir).is_empty(), "left behind: {:?}", hidden(dir));
}
