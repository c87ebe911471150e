//! Checkpoint modes beyond aligned. Unaligned: barriers overtake in-flight records,
//! which the checkpoint keeps as channel state and a restored job replays first;
//! state stays exact across failures, and under backpressure unaligned checkpoints
//! complete where aligned ones time out. Aligned with a timeout: aligned until an
//! alignment lasts too long, then unaligned; exact all the same. At least once:
//! nothing is lost.

mod common;

use common::{assert_exact, Collect, Fault, Faults, Numbers, KEYS, RECORDS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::config::StateBackendChoice;
use weir::{CheckpointConfig, CheckpointMode, JobConfig, JobReport, RestartStrategy, StreamJob};

/// `numbers → (n % KEYS, 1) → key_by → running count → collect`, unaligned, with a
/// map that sleeps `slow_per_record` (backpressure) and panics once at `panic_at`.
fn run(
    mode: CheckpointMode,
    backend: StateBackendChoice,
    timeout: Duration,
    slow_per_record: Duration,
    panic_at: Option<(u64, Fault)>,
) -> (JobReport, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        state_backend: backend,
        channel_capacity: 16,
        batch_size: 256,
        checkpoint: Some(CheckpointConfig {
            interval: Duration::from_millis(20),
            timeout,
            tolerable_failures: 1_000,
            mode,
            ..CheckpointConfig::new(dir.path())
        }),
        restart: Some(RestartStrategy::FixedDelay {
            attempts: 2,
            delay_ms: 5,
        }),
        ..JobConfig::default()
    });
    let sink = out.clone();
    job.source("numbers", |info| Numbers::new(info, Faults::default()))
        .map("pair", |n| (n % KEYS, 1u64))
        .key_by(|(k, _)| *k)
        .reduce("count", |(k, a), (_, b)| (*k, a + b))
        .map("slow", move |pair| {
            if let Some((at, fault)) = &panic_at {
                assert!(!fault.fires(pair.1 >= *at), "injected panic at count {at}");
            }
            std::thread::sleep(slow_per_record);
            pair
        })
        .sink("collect", move |_| Collect(sink.clone()));
    let report = job.run().expect("the job completes");
    let output = out.lock().unwrap().clone();
    (report, output)
}

/// A run with light backpressure (so that barriers overtake records) whose
/// operator panics once, two thirds through; one restart.
fn run_failing_once(
    mode: CheckpointMode,
    backend: StateBackendChoice,
) -> (JobReport, Vec<(u64, u64)>) {
    let fault = Fault::armed();
    let (report, output) = run(
        mode,
        backend,
        Duration::from_secs(30),
        Duration::from_micros(20),
        Some((RECORDS / KEYS * 2 / 3, fault.clone())),
    );
    assert!(fault.fired());
    assert_eq!(report.restarts, 1, "{mode:?} {backend:?}");
    (report, output)
}

#[test]
fn a_failure_after_unaligned_checkpoints_restores_in_flight_records_exactly() {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        assert_exact(&run_failing_once(CheckpointMode::Unaligned, backend).1);
    }
}

#[test]
fn a_failure_after_checkpoints_that_switched_to_unaligned_restores_exactly() {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        // A 1 ms timeout under light backpressure: some alignments finish in time,
        // others switch part way.
        let mode = CheckpointMode::AlignedWithTimeout { timeout_ms: 1 };
        let (report, output) = run_failing_once(mode, backend);
        assert!(
            report.unaligned_checkpoints > 0,
            "{backend:?}: some alignments timed out ({} of {} checkpoints unaligned)",
            report.unaligned_checkpoints,
            report.checkpoints
        );
        assert_exact(&output);
    }
}

#[test]
fn an_at_least_once_job_loses_nothing_across_a_failure() {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        let (_, output) = run_failing_once(CheckpointMode::AtLeastOnce, backend);
        // A superset of the failure-free output: every count 1..=n of every key was
        // emitted (records after a barrier may be counted twice, so counts may go on).
        let mut seen: std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>> =
            Default::default();
        for (k, c) in &output {
            seen.entry(*k).or_default().insert(*c);
        }
        assert_eq!(seen.len() as u64, KEYS, "{backend:?}");
        for (key, counts) in &seen {
            let total = (0..RECORDS).filter(|n| n % KEYS == *key).count() as u64;
            assert!(
                (1..=total).all(|c| counts.contains(&c)),
                "{backend:?}: key {key} lost a count"
            );
        }
    }
}

#[test]
fn under_backpressure_unaligned_checkpoints_complete_where_aligned_ones_time_out() {
    let slow = Duration::from_micros(150);
    let timeout = Duration::from_millis(700);
    let (aligned, aligned_output) = run(
        CheckpointMode::Aligned,
        StateBackendChoice::Memory,
        timeout,
        slow,
        None,
    );
    let (unaligned, unaligned_output) = run(
        CheckpointMode::Unaligned,
        StateBackendChoice::Memory,
        timeout,
        slow,
        None,
    );
    let (switching, switching_output) = run(
        CheckpointMode::AlignedWithTimeout { timeout_ms: 20 },
        StateBackendChoice::Memory,
        timeout,
        slow,
        None,
    );
    assert_exact(&aligned_output);
    assert_exact(&unaligned_output);
    assert_exact(&switching_output);
    eprintln!(
        "completed checkpoints (final included): aligned {}, unaligned {}, aligned with a 20 ms timeout {} ({} switched)",
        aligned.checkpoints, unaligned.checkpoints, switching.checkpoints, switching.unaligned_checkpoints
    );
    for (name, report) in [
        ("aligned", &aligned),
        ("unaligned", &unaligned),
        ("aligned with timeout", &switching),
    ] {
        let mut ms: Vec<f64> = report
            .checkpoint_durations
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: checkpoint durations median {:.0} ms, max {:.0} ms ({} completed)",
            ms.get(ms.len() / 2).unwrap_or(&0.0),
            ms.last().unwrap_or(&0.0),
            ms.len()
        );
    }
    assert_eq!(aligned.unaligned_checkpoints, 0);
    assert!(
        unaligned.checkpoints >= aligned.checkpoints + 3,
        "aligned {} vs unaligned {}",
        aligned.checkpoints,
        unaligned.checkpoints
    );
    assert!(
        switching.checkpoints >= aligned.checkpoints + 3,
        "aligned {} vs aligned with timeout {}",
        aligned.checkpoints,
        switching.checkpoints
    );
    assert!(switching.unaligned_checkpoints > 0);
}
