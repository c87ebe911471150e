//! Fault injection into a topology's nodes: [`Faulty`] wraps a source, operator or
//! sink and lets the faults of its subtask strike at their record or checkpoint
//! counts; [`FaultyFs`] is the exactly-once file sink's file system with disk
//! errors and commit defects.

use super::faults::{kill_process, slow_down, FaultKind, Injector, SinkDefect};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_actors::operator::{FiredTimer, KeyedContext};
use weir_actors::sink::part_files::PartFs;
use weir_actors::{
    CheckpointId, Context, EventTime, KeyedOperator, Operator, PreCommit, Sink, Source, SourcePoll,
    SubtaskInfo,
};
use weir_state::KeyedBackend;

/// The faults of one subtask and the counts they fire at (this attempt's).
pub struct Strikes {
    injector: Arc<Injector>,
    faults: Vec<usize>,
    /// Records taken (operators, sinks) or emitted (sources).
    records: u64,
    snapshots: u64,
    commits: u64,
    /// A `slow` fault in progress: the record count where it ends, its delay.
    slowing: Option<(u64, u64)>,
    at: String,
}

impl Strikes {
    pub fn new(injector: &Arc<Injector>, node: &str, info: &SubtaskInfo) -> Strikes {
        Strikes {
            injector: injector.clone(),
            faults: injector.targets(node, info.index),
            records: 0,
            snapshots: 0,
            commits: 0,
            slowing: None,
            at: format!("{node} subtask {} (attempt {})", info.index, info.attempt),
        }
    }

    /// Before the next record: the record faults whose count is reached fire.
    fn before_record(&mut self) {
        let records = self.records;
        for &i in &self.faults {
            let injector = &self.injector;
            let due = |after: u64| records >= after && injector.is_armed(i);
            match injector.fault(i).kind {
                FaultKind::Panic { after_records } if due(after_records) && injector.fire(i) => {
                    panic!("injected panic in {} after {records} records", self.at);
                }
                FaultKind::Kill { after_records, .. }
                | FaultKind::CorruptCheckpoint { after_records }
                    if due(after_records) && injector.fire(i) =>
                {
                    kill_process();
                }
                FaultKind::Slow {
                    after_records,
                    records: slow_records,
                    delay_us,
                } if due(after_records) && injector.fire(i) => {
                    self.slowing = Some((records + slow_records, delay_us));
                }
                _ => {}
            }
        }
        if let Some((until, delay_us)) = self.slowing {
            if self.records < until {
                slow_down(delay_us);
            } else {
                self.slowing = None;
            }
        }
    }

    /// How many records may pass before the next record fault is due.
    fn budget(&self, max: usize) -> usize {
        let mut budget = max as u64;
        if self.slowing.is_some() {
            budget = 1;
        }
        for &i in &self.faults {
            if !self.injector.is_armed(i) {
                continue;
            }
            let after = match self.injector.fault(i).kind {
                FaultKind::Panic { after_records }
                | FaultKind::Kill { after_records, .. }
                | FaultKind::CorruptCheckpoint { after_records }
                | FaultKind::Slow { after_records, .. } => after_records,
                _ => continue,
            };
            if after > self.records {
                budget = budget.min(after - self.records);
            }
        }
        budget.max(1) as usize
    }

    fn snapshot(&mut self) -> anyhow::Result<()> {
        self.snapshots += 1;
        for &i in &self.faults {
            if let FaultKind::SnapshotError { checkpoint } = self.injector.fault(i).kind {
                if checkpoint == self.snapshots && self.injector.fire(i) {
                    anyhow::bail!(
                        "injected snapshot error in {} at its checkpoint #{checkpoint}",
                        self.at
                    );
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        self.commits += 1;
        for &i in &self.faults {
            if let FaultKind::CommitError { checkpoint } = self.injector.fault(i).kind {
                if checkpoint == self.commits && self.injector.fire(i) {
                    anyhow::bail!(
                        "injected failure in {} after pre-commit, before commit #{checkpoint}",
                        self.at
                    );
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self) -> anyhow::Result<()> {
        for &i in &self.faults {
            if self.injector.fault(i).kind == FaultKind::RestoreError && self.injector.fire(i) {
                anyhow::bail!("injected restore error in {}", self.at);
            }
        }
        Ok(())
    }
}

/// A node with the faults of its subtask.
pub struct Faulty<T> {
    inner: T,
    strikes: Strikes,
}

impl<T> Faulty<T> {
    pub fn new(inner: T, strikes: Strikes) -> Self {
        Faulty { inner, strikes }
    }
}

impl<S: Source> Source for Faulty<S> {
    type Out = S::Out;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        self.inner.open(info)
    }

    fn poll(&mut self, ctx: &mut Context<'_, S::Out>, max: usize) -> anyhow::Result<SourcePoll> {
        self.strikes.before_record();
        // A batch ends where the next fault is due, so it strikes at its exact count.
        let before = ctx.emitted();
        let polled = self.inner.poll(ctx, self.strikes.budget(max))?;
        self.strikes.records += (ctx.emitted() - before) as u64;
        Ok(polled)
    }

    fn snapshot_splits(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        self.strikes.snapshot()?;
        self.inner.snapshot_splits()
    }

    fn restore_splits(&mut self, splits: Vec<Vec<u8>>) -> anyhow::Result<()> {
        self.strikes.restore()?;
        self.inner.restore_splits(splits)
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.inner.snapshot_position()
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.inner.restore_position(position)
    }
}

impl<O: Operator> Operator for Faulty<O> {
    type In = O::In;
    type Out = O::Out;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        self.inner.open(info)
    }

    fn process(&mut self, record: O::In, ctx: &mut Context<'_, O::Out>) -> anyhow::Result<()> {
        self.strikes.before_record();
        self.strikes.records += 1;
        self.inner.process(record, ctx)
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut Context<'_, O::Out>,
    ) -> anyhow::Result<()> {
        self.inner.on_watermark(watermark, ctx)
    }

    fn finish(&mut self, ctx: &mut Context<'_, O::Out>) -> anyhow::Result<()> {
        self.inner.finish(ctx)
    }
}

impl<O: KeyedOperator> KeyedOperator for Faulty<O> {
    type Key = O::Key;
    type In = O::In;
    type Out = O::Out;

    fn open(&mut self, info: &SubtaskInfo, state: &mut KeyedBackend<O::Key>) -> anyhow::Result<()> {
        self.inner.open(info, state)
    }

    fn process(
        &mut self,
        record: O::In,
        ctx: &mut KeyedContext<'_, O::Key, O::Out>,
    ) -> anyhow::Result<()> {
        self.strikes.before_record();
        self.strikes.records += 1;
        self.inner.process(record, ctx)
    }

    fn on_timer(
        &mut self,
        timer: &FiredTimer,
        ctx: &mut KeyedContext<'_, O::Key, O::Out>,
    ) -> anyhow::Result<()> {
        self.inner.on_timer(timer, ctx)
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut KeyedContext<'_, O::Key, O::Out>,
    ) -> anyhow::Result<()> {
        self.inner.on_watermark(watermark, ctx)
    }

    fn finish(&mut self, ctx: &mut KeyedContext<'_, O::Key, O::Out>) -> anyhow::Result<()> {
        self.inner.finish(ctx)
    }
}

impl<S: Sink> Sink for Faulty<S> {
    type In = S::In;

    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        self.inner.open(info)
    }

    fn restore(&mut self, states: Vec<Vec<u8>>) -> anyhow::Result<()> {
        if !states.is_empty() {
            self.strikes.restore()?;
        }
        self.inner.restore(states)
    }

    fn write(&mut self, record: S::In) -> anyhow::Result<()> {
        self.strikes.before_record();
        self.strikes.records += 1;
        self.inner.write(record)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.inner.flush()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.inner.finish()
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
        self.strikes.snapshot()?;
        self.inner.pre_commit(checkpoint)
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> anyhow::Result<()> {
        self.strikes.commit()?;
        self.inner.commit(checkpoint)
    }
}

/// The exactly-once file sink's file system for one subtask, with its disk-write
/// and broken-sink faults.
pub struct FaultyFs {
    injector: Arc<Injector>,
    faults: Vec<usize>,
    written: AtomicU64,
}

impl FaultyFs {
    /// `None` when no file-system fault strikes that subtask.
    pub fn new(injector: &Arc<Injector>, node: &str, subtask: u32) -> Option<Arc<FaultyFs>> {
        let faults: Vec<usize> = injector
            .targets(node, subtask)
            .into_iter()
            .filter(|&i| {
                matches!(
                    injector.fault(i).kind,
                    FaultKind::SinkWriteError { .. } | FaultKind::BrokenSink { .. }
                )
            })
            .collect();
        (!faults.is_empty()).then(|| {
            Arc::new(FaultyFs {
                injector: injector.clone(),
                faults,
                written: AtomicU64::new(0),
            })
        })
    }

    fn defect(&self) -> Option<(usize, SinkDefect)> {
        self.faults
            .iter()
            .find_map(|&i| match self.injector.fault(i).kind {
                FaultKind::BrokenSink { defect } => Some((i, defect)),
                _ => None,
            })
    }
}

impl PartFs for FaultyFs {
    fn write(&self, file: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
        let written = self
            .written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        for &i in &self.faults {
            if let FaultKind::SinkWriteError { after_bytes } = self.injector.fault(i).kind {
                if written + bytes.len() as u64 > after_bytes && self.injector.fire(i) {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "No space left on device (injected)",
                    ));
                }
            }
        }
        file.write_all(bytes)
    }

    fn commit(&self, pending: &Path, committed: &Path) -> io::Result<()> {
        match self.defect() {
            Some((i, SinkDefect::DropPending)) if self.injector.fire(i) => Ok(()),
            Some((i, SinkDefect::CommitTwice)) => {
                self.injector.fire(i);
                std::fs::rename(pending, committed)?;
                let mut again = committed.as_os_str().to_owned();
                again.push(".again");
                std::fs::copy(committed, again).map(drop)
            }
            _ => std::fs::rename(pending, committed),
        }
    }
}
