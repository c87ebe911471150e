//! The async I/O operator against a simulated service with a fixed latency (a tokio
//! timer, 1 ms by default): `numbers → async_map (sleep, then the record) → null
//! sink`, capacity 100 against 1000, ordered and unordered, runs interleaved.
//! Prints records/s per run and the median per setting. With a fixed latency the
//! ceiling is `capacity / latency` per subtask; the figures show how close the
//! operator gets. Not a timed test: figures for notes and comparisons.
//!
//!     cargo bench --bench async_io                  # 200k records, 5 runs, p = 1
//!     WEIR_BENCH_RECORDS=1000000 WEIR_BENCH_RUNS=3 WEIR_BENCH_PARALLELISM=2 \
//!         WEIR_BENCH_LATENCY_US=2000 WEIR_BENCH_CAPACITIES=10,100,1000 cargo bench --bench async_io

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{env, median_min_max, peak_rss_mb, Discard, Sequence};
use weir::{AsyncMode, AsyncOptions, JobConfig, StreamJob};

/// One run: records/s.
fn run(records: u64, parallelism: u32, mode: AsyncMode, capacity: usize, latency: Duration) -> f64 {
    let job = StreamJob::new(JobConfig {
        parallelism,
        workers: parallelism as usize,
        ..JobConfig::default()
    });
    let options = AsyncOptions {
        mode,
        capacity,
        ..AsyncOptions::default()
    };
    job.source("numbers", move |info| Sequence::new(info, records))
        .async_map("service", options, move |_| {
            move |n: u64| async move {
                tokio::time::sleep(latency).await;
                Ok(n)
            }
        })
        .sink("sink", |_| Discard::new());
    let started = Instant::now();
    let report = job.run().expect("benchmark job runs");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.operator("sink").map(|o| o.records_in), Some(records));
    records as f64 / seconds
}

fn main() {
    let records = env("WEIR_BENCH_RECORDS", 200_000);
    let runs = env("WEIR_BENCH_RUNS", 5);
    let parallelism = env("WEIR_BENCH_PARALLELISM", 1) as u32;
    let latency = Duration::from_micros(env("WEIR_BENCH_LATENCY_US", 1000));
    let capacities: Vec<usize> = std::env::var("WEIR_BENCH_CAPACITIES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|c| c.trim().parse().expect("WEIR_BENCH_CAPACITIES: numbers"))
        .collect();
    let mut rates: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for run_number in 1..=runs {
        for mode in [AsyncMode::Ordered, AsyncMode::Unordered] {
            for &capacity in &capacities {
                let rate = run(records, parallelism, mode, capacity, latency);
                println!(
                    "run {run_number}: {mode:?} capacity={capacity}: {:.0} records/s",
                    rate
                );
                rates
                    .entry((format!("{mode:?}"), capacity))
                    .or_default()
                    .push(rate);
            }
        }
    }
    for ((mode, capacity), rates) in &mut rates {
        let (median, min, max) = median_min_max(rates);
        let ceiling = capacity.to_owned() as f64 * parallelism as f64 / latency.as_secs_f64();
        println!(
            "async_io records={records} p={parallelism} latency={latency:?} mode={mode} capacity={capacity} runs={runs} median={median:.0} records/s min={min:.0} max={max:.0} (ceiling capacity/latency = {ceiling:.0})"
        );
    }
    println!("peak_rss={:.1} MB", peak_rss_mb());
}
