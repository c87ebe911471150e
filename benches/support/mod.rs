//! Shared by the benchmarks: settings from the environment, figures.
#![allow(dead_code)]

/// `name` from the environment, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process's peak resident set size.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The median, lowest and highest of `values` (sorted in place).
pub fn median_min_max(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

use weir::{Context, Data, Sink, Source, SourcePoll, SubtaskInfo};

/// Subtask j of p emits j, j+p, j+2p, … below `end`; it resumes from its position.
pub struct Sequence {
    pub next: u64,
    step: u64,
    end: u64,
}

impl Sequence {
    pub fn new(info: &SubtaskInfo, end: u64) -> Self {
        Sequence {
            next: info.index as u64,
            step: info.parallelism as u64,
            end,
        }
    }
}

impl Source for Sequence {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max {
            if self.next >= self.end {
                return Ok(SourcePoll::Finished);
            }
            ctx.emit(self.next);
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(Some(self.next.to_le_bytes().to_vec()))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.next = u64::from_le_bytes(position.try_into()?);
        Ok(())
    }
}

/// A sink that drops its records.
pub struct Discard<T>(std::marker::PhantomData<fn(T)>);

impl<T> Discard<T> {
    pub fn new() -> Self {
        Discard(std::marker::PhantomData)
    }
}

impl<T: Data> Sink for Discard<T> {
    type In = T;
    fn write(&mut self, record: T) -> anyhow::Result<()> {
        std::hint::black_box(record);
        Ok(())
    }
}
