//! Windowed aggregation throughput (issue 6's benchmark): N records of K keys with
//! event times spread evenly over a span, key_by → sliding windows (1 h every 1 min,
//! 60 slices per window) or tumbling windows (1 h) summing a value → null sink,
//! parallelism 2, memory backend. Prints records/s per run, the median, results
//! emitted and the process's peak RSS. Not a timed test: figures for notes.
//!
//!     cargo bench --bench windows                                   # both kinds, 10M records, 3 runs
//!     WEIR_BENCH_WINDOWS=sliding WEIR_BENCH_RUNS=5 cargo bench --bench windows
//!     WEIR_BENCH_SPAN_MS=3600000 cargo bench --bench windows        # event times over 1 h
//!
//! Run one kind per process for a peak RSS of that kind alone.

mod support;

use std::time::{Duration, Instant};
use support::{env, median_min_max, peak_rss_mb, Discard};
use weir::config::StateBackendChoice;
use weir::{
    Context, JobConfig, Source, SourcePoll, StreamJob, SubtaskInfo, WatermarkStrategy, Windows,
};

/// (key, event time, value)
type Event = (u64, i64, u64);

/// Subtask j of p emits i = j, j+p, … below `end`: key i % keys, event time
/// i * span / end (monotonous per subtask).
struct Events {
    next: u64,
    step: u64,
    end: u64,
    keys: u64,
    span_ms: u64,
}

impl Events {
    fn new(info: &SubtaskInfo, end: u64, keys: u64, span_ms: u64) -> Self {
        Events {
            next: info.index as u64,
            step: info.parallelism as u64,
            end,
            keys,
            span_ms,
        }
    }
}

impl Source for Events {
    type Out = Event;
    fn poll(&mut self, ctx: &mut Context<'_, Event>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max {
            if self.next >= self.end {
                return Ok(SourcePoll::Finished);
            }
            let i = self.next;
            let ts = (u128::from(i) * u128::from(self.span_ms) / u128::from(self.end)) as i64;
            ctx.emit((i % self.keys, ts, i % 100));
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

fn bench(kind: &str, records: u64, keys: u64, span_ms: u64, runs: u64) {
    let mut rates = Vec::new();
    let mut results = 0;
    for run in 1..=runs {
        let job = StreamJob::new(JobConfig {
            parallelism: 2,
            workers: 2,
            state_backend: StateBackendChoice::Memory,
            ..JobConfig::default()
        });
        let hour = Duration::from_secs(3600);
        let windows = match kind {
            "sliding" => Windows::sliding(hour, Duration::from_secs(60)),
            _ => Windows::tumbling(hour),
        };
        job.source_with_watermarks(
            "events",
            WatermarkStrategy::monotonous(|e: &Event| e.1),
            move |info| Events::new(info, records, keys, span_ms),
        )
        .key_by(|e| e.0)
        .window(windows.event_time(|e: &Event| e.1))
        .sum("sum", |e| e.2)
        .sink("null", |_| Discard::new());
        let started = Instant::now();
        let report = job.run().expect("benchmark job runs");
        let seconds = started.elapsed().as_secs_f64();
        results = report.operator("null").map_or(0, |o| o.records_in);
        let rate = records as f64 / seconds;
        println!(
            "{kind} run {run}: {records} records in {seconds:.3} s = {:.2} M records/s, {results} window results",
            rate / 1e6
        );
        rates.push(rate);
    }
    let (median, min, max) = median_min_max(&mut rates);
    println!(
        "windows kind={kind} records={records} keys={keys} span_ms={span_ms} p=2 runs={runs} median={:.2} M records/s min={:.2} max={:.2} results={results} peak_rss={:.1} MB",
        median / 1e6,
        min / 1e6,
        max / 1e6,
        peak_rss_mb()
    );
}

fn main() {
    let records = env("WEIR_BENCH_RECORDS", 10_000_000);
    let keys = env("WEIR_BENCH_KEYS", 100_000);
    let runs = env("WEIR_BENCH_RUNS", 3);
    let span_ms = env("WEIR_BENCH_SPAN_MS", 600_000);
    let kinds = std::env::var("WEIR_BENCH_WINDOWS").unwrap_or_else(|_| "sliding,tumbling".into());
    for kind in kinds.split(',') {
        bench(kind.trim(), records, keys, span_ms, runs);
    }
}
