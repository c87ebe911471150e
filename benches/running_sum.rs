//! The keyed running-sum workload (design.md "Calibration"; Flink's peer benchmark):
//! a generator of N records, key = i % K, key_by → keyed sum emitting (key, sum) per
//! record → null sink, parallelism 2. Prints records/s per run, the median, and the
//! process's peak RSS. Not a timed test: figures for notes and comparisons.
//!
//!     cargo bench --bench running_sum                       # 10M records, 5 runs
//!     WEIR_BENCH_RECORDS=100000000 WEIR_BENCH_RUNS=1 cargo bench --bench running_sum
//!     WEIR_BENCH_CHECKPOINT_MS=1000 cargo bench --bench running_sum  # aligned checkpoints
//!     WEIR_BENCH_BACKEND=rocksdb cargo bench --bench running_sum
//!     WEIR_BENCH_CHECKPOINT_MS=1000 WEIR_BENCH_MODE=unaligned cargo bench --bench running_sum
//!     WEIR_BENCH_CHECKPOINT_MS=1000 WEIR_BENCH_FAIL_AT=5000000 cargo bench --bench running_sum
//!         # one injected failure per run: prints the recovery time (failure → running)
//!     WEIR_BENCH_CHECKPOINT_MS=200 WEIR_BENCH_MODE=unaligned WEIR_BENCH_SLOW_US=50 \
//!         WEIR_BENCH_RECORDS=200000 cargo bench --bench running_sum
//!         # full backpressure: a map after the sum takes 50 µs per record; compare the
//!         # checkpoint durations of aligned, unaligned and aligned_with_timeout
//!         # (WEIR_BENCH_ALIGNMENT_TIMEOUT_MS, default 100)
//!     WEIR_BENCH_SINK=files cargo bench --bench running_sum
//!         # the exactly-once file sink ("key,sum" lines) instead of the null sink;
//!         # checks that the committed parts hold exactly one line per record

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env, median_min_max, peak_rss_mb, Discard, Sequence};
use weir::config::StateBackendChoice;
use weir::state::checkpoints::list_checkpoint_ids;
use weir::state::LocalCheckpointStorage;
use weir::CheckpointConfig;
use weir::{Context, ExactlyOnceFileSink, JobConfig, Source, SourcePoll, StreamJob};

/// The sequence, failing once in the first subtask to reach `fail_at` while `armed`.
struct Failing {
    sequence: Sequence,
    fail_at: u64,
    armed: Arc<AtomicBool>,
}

impl Source for Failing {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        let next = self.sequence.next;
        if next >= self.fail_at && self.armed.swap(false, Ordering::SeqCst) {
            anyhow::bail!("injected failure at record {next}");
        }
        self.sequence.poll(ctx, max)
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.sequence.snapshot_position()
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.sequence.restore_position(position)
    }
}

/// Lines in the committed (visible) part files of `dir`.
fn committed_lines(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("the sink's directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            use std::io::BufRead;
            let file = std::fs::File::open(&p).expect("a committed part");
            std::io::BufReader::new(file).lines().count() as u64
        })
        .sum()
}

fn main() {
    let records = env("WEIR_BENCH_RECORDS", 10_000_000);
    let keys = env("WEIR_BENCH_KEYS", 100_000);
    let runs = env("WEIR_BENCH_RUNS", 5);
    let checkpoint_ms = env("WEIR_BENCH_CHECKPOINT_MS", 0);
    let fail_at = env("WEIR_BENCH_FAIL_AT", u64::MAX);
    let files = std::env::var("WEIR_BENCH_SINK").as_deref() == Ok("files");
    let slow = Duration::from_micros(env("WEIR_BENCH_SLOW_US", 0));
    let mode = match std::env::var("WEIR_BENCH_MODE").as_deref() {
        Ok("unaligned") => weir::CheckpointMode::Unaligned,
        Ok("at_least_once") => weir::CheckpointMode::AtLeastOnce,
        Ok("aligned_with_timeout") => weir::CheckpointMode::AlignedWithTimeout {
            timeout_ms: env("WEIR_BENCH_ALIGNMENT_TIMEOUT_MS", 100),
        },
        _ => weir::CheckpointMode::Aligned,
    };
    let backend = match std::env::var("WEIR_BENCH_BACKEND").as_deref() {
        Ok("rocksdb") => StateBackendChoice::RocksDb,
        _ => StateBackendChoice::Memory,
    };
    if checkpoint_ms > 0 {
        // Each completed checkpoint is logged with its duration and state size.
        tracing_subscriber::fmt()
            .with_env_filter("weir_actors=info")
            .with_writer(std::io::stderr)
            .init();
    }
    let mut rates = Vec::new();
    let mut checkpoints = Vec::new();
    let mut recoveries = Vec::new();
    let mut durations = Vec::new();
    let mut unaligned = 0;
    for run in 1..=runs {
        let armed = Arc::new(AtomicBool::new(fail_at < records));
        let dir = tempfile::tempdir().expect("a temporary checkpoint directory");
        let checkpoint = (checkpoint_ms > 0).then(|| CheckpointConfig {
            interval: Duration::from_millis(checkpoint_ms),
            mode,
            ..CheckpointConfig::new(dir.path())
        });
        let job = StreamJob::new(JobConfig {
            parallelism: 2,
            workers: 2,
            state_backend: backend,
            checkpoint,
            restart: Some(weir::RestartStrategy::FixedDelay {
                attempts: 1,
                delay_ms: 0,
            }),
            ..JobConfig::default()
        });
        let sums = job
            .source("generator", move |info| Failing {
                sequence: Sequence::new(info, records),
                fail_at,
                armed: armed.clone(),
            })
            .map("pair", move |i| (i % keys, i))
            .key_by(|(key, _)| *key)
            .reduce("sum", |(key, sum), (_, i)| (*key, sum + i));
        let sums = if slow.is_zero() {
            sums
        } else {
            sums.map("slow", move |pair| {
                std::thread::sleep(slow);
                pair
            })
        };
        let out = tempfile::tempdir().expect("a temporary output directory");
        if files {
            let sink = ExactlyOnceFileSink::new(out.path(), |(key, sum): &(u64, u64), line| {
                use std::fmt::Write;
                let _ = writeln!(line, "{key},{sum}");
            });
            sums.sink("sink", move |_| sink.clone());
        } else {
            sums.sink("sink", |_| Discard::new());
        }
        let started = Instant::now();
        let report = job.run().expect("benchmark job runs");
        let seconds = started.elapsed().as_secs_f64();
        if report.restarts == 0 {
            assert_eq!(report.operator("sink").map(|o| o.records_in), Some(records));
        }
        if files {
            assert_eq!(committed_lines(out.path()), records, "exactly once");
        }
        unaligned += report.unaligned_checkpoints;
        durations.extend(
            report
                .checkpoint_durations
                .iter()
                .map(|d| d.as_secs_f64() * 1e3),
        );
        for recovery in &report.recoveries {
            println!(
                "run {run}: recovered in {:.1} ms",
                recovery.as_secs_f64() * 1e3
            );
            recoveries.push(recovery.as_secs_f64() * 1e3);
        }
        let rate = records as f64 / seconds;
        if checkpoint_ms > 0 {
            let storage = LocalCheckpointStorage::new(dir.path()).expect("checkpoint storage");
            checkpoints.push(
                list_checkpoint_ids(&storage)
                    .expect("listing")
                    .last()
                    .copied()
                    .unwrap_or(0),
            );
        }
        println!(
            "run {run}: {records} records in {seconds:.3} s = {:.2} M records/s",
            rate / 1e6
        );
        rates.push(rate);
    }
    if !recoveries.is_empty() {
        let (median, min, max) = median_min_max(&mut recoveries);
        println!(
            "recovery (failure → every subtask running again) median={median:.1} ms min={min:.1} max={max:.1}"
        );
    }
    if !durations.is_empty() {
        let (median, _, max) = median_min_max(&mut durations);
        println!(
            "checkpoint duration ({mode:?}, {} checkpoints, {unaligned} of them unaligned, final ones included) median={median:.1} ms max={max:.1} ms",
            durations.len(),
        );
    }
    if checkpoint_ms > 0 {
        println!("checkpoints completed per run (every {checkpoint_ms} ms): {checkpoints:?}");
    }
    let (median, min, max) = median_min_max(&mut rates);
    println!(
        "running_sum records={records} keys={keys} p=2 backend={backend:?} checkpoint_ms={checkpoint_ms} slow_us={} sink={} runs={runs} median={:.2} M records/s min={:.2} max={:.2} peak_rss={:.1} MB",
        slow.as_micros(),
        if files { "files" } else { "null" },
        median / 1e6,
        min / 1e6,
        max / 1e6,
        peak_rss_mb()
    );
}
