//! In-process restarts: a failure anywhere in a checkpointed job (user code, a
//! snapshot, a restore, the final checkpoint) makes the supervisor redeploy the job
//! from its latest checkpoint, and keyed state ends exactly as in a failure-free run,
//! on both state backends.

mod common;

use common::{assert_exact, Collect, Fault, Faults, Numbers, KEYS, RECORDS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::config::StateBackendChoice;
use weir::{CheckpointConfig, JobConfig, JobReport, RestartStrategy, StreamJob};

/// Runs `numbers → (n % KEYS, 1) → key_by → running count → collect` with 20 ms
/// checkpoints and up to three restarts; `panic_at` makes the map panic once.
fn run(
    backend: StateBackendChoice,
    faults: Faults,
    panic_at: Option<(u64, Fault)>,
) -> (JobReport, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        state_backend: backend,
        checkpoint: Some(CheckpointConfig {
            interval: Duration::from_millis(20),
            ..CheckpointConfig::new(dir.path())
        }),
        restart: Some(RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 5,
        }),
        ..JobConfig::default()
    });
    let sink = out.clone();
    job.source("numbers", move |info| Numbers::new(info, faults.clone()))
        .map("pair", move |n| {
            if let Some((at, fault)) = &panic_at {
                assert!(!fault.fires(n >= *at), "injected panic at record {n}");
            }
            (n % KEYS, 1u64)
        })
        .key_by(|(k, _)| *k)
        .reduce("count", |(k, a), (_, b)| (*k, a + b))
        .sink("collect", move |_| Collect(sink.clone()));
    let report = job.run().expect("the job recovers and completes");
    let output = out.lock().unwrap().clone();
    (report, output)
}

fn both_backends(test: impl Fn(StateBackendChoice)) {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        test(backend);
    }
}

#[test]
fn a_panic_in_an_operator_restarts_the_job_from_its_latest_checkpoint() {
    both_backends(|backend| {
        let fault = Fault::armed();
        let (report, output) = run(
            backend,
            Faults::default(),
            Some((RECORDS / 2, fault.clone())),
        );
        assert!(fault.fired());
        assert_eq!(report.restarts, 1, "{backend:?}");
        assert_eq!(report.recoveries.len(), 1);
        assert_exact(&output);
        assert!(
            output.len() < 2 * RECORDS as usize,
            "{backend:?}: replayed from a checkpoint, not from the start"
        );
    });
}

#[test]
fn a_failed_source_restarts_the_job() {
    let fault = Fault::armed();
    let faults = Faults {
        poll_at: Some((RECORDS / 3, fault.clone())),
        ..Faults::default()
    };
    let (report, output) = run(StateBackendChoice::Memory, faults, None);
    assert!(fault.fired());
    assert_eq!(report.restarts, 1);
    assert_exact(&output);
}

#[test]
fn a_failed_snapshot_restarts_the_job() {
    both_backends(|backend| {
        let fault = Fault::armed();
        let faults = Faults {
            snapshot: Some((3, fault.clone())),
            ..Faults::default()
        };
        let (report, output) = run(backend, faults, None);
        assert!(fault.fired());
        assert_eq!(report.restarts, 1, "{backend:?}");
        assert_exact(&output);
    });
}

#[test]
fn a_failure_while_restoring_is_restarted_again() {
    let (poll, restore) = (Fault::armed(), Fault::armed());
    let faults = Faults {
        poll_at: Some((RECORDS / 2, poll.clone())),
        restore: Some(restore.clone()),
        ..Faults::default()
    };
    let (report, output) = run(StateBackendChoice::Memory, faults, None);
    assert!(poll.fired() && restore.fired());
    assert_eq!(
        report.restarts, 2,
        "the first restore failed, the second held"
    );
    assert_exact(&output);
}

#[test]
fn a_failure_in_the_final_checkpoint_restarts_and_the_job_still_ends() {
    both_backends(|backend| {
        let fault = Fault::armed();
        let faults = Faults {
            final_snapshot: Some(fault.clone()),
            ..Faults::default()
        };
        let (report, output) = run(backend, faults, None);
        assert!(fault.fired());
        assert_eq!(report.restarts, 1, "{backend:?}");
        assert_exact(&output);
    });
}

#[test]
fn a_failure_free_checkpointed_job_ends_with_a_final_checkpoint() {
    let (report, output) = run(StateBackendChoice::Memory, Faults::default(), None);
    assert_eq!(report.restarts, 0);
    assert!(report.recoveries.is_empty());
    assert!(report.checkpoints >= 2, "periodic ones and the final one");
    assert_exact(&output);
    assert_eq!(output.len() as u64, RECORDS, "nothing replayed");
}

/// `n → (n % KEYS, 1)`, after a union (which takes a process operator).
struct Pair;
impl weir::Operator for Pair {
    type In = u64;
    type Out = (u64, u64);
    fn process(&mut self, n: u64, ctx: &mut weir::Context<'_, (u64, u64)>) -> anyhow::Result<()> {
        ctx.emit((n % KEYS, 1));
        Ok(())
    }
}

/// Emits a few numbers (keyed apart from `Numbers`' keys) and is done at once.
struct Short(u64);
impl weir::Source for Short {
    type Out = u64;
    fn poll(
        &mut self,
        ctx: &mut weir::Context<'_, u64>,
        _max: usize,
    ) -> anyhow::Result<weir::SourcePoll> {
        while self.0 < 100 {
            ctx.emit(RECORDS + self.0);
            self.0 += 1;
        }
        Ok(weir::SourcePoll::Finished)
    }
}

#[test]
fn a_source_that_finishes_early_does_not_stop_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let (sink, path) = (out.clone(), dir.path().to_path_buf());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let job = StreamJob::new(JobConfig {
            parallelism: 2,
            workers: 2,
            checkpoint: Some(CheckpointConfig {
                interval: Duration::from_millis(20),
                ..CheckpointConfig::new(path)
            }),
            ..JobConfig::default()
        });
        let short = job.source("short", |_| Short(0));
        // `Numbers` ends only after several snapshots of its own: if checkpoints
        // stopped when `short` finished, this job would never end.
        job.source("numbers", |info| Numbers::new(info, Faults::default()))
            .union(vec![short])
            .process("pair", |_| Pair)
            .key_by(|(k, _)| *k)
            .reduce("count", |(k, a), (_, b)| (*k, a + b))
            .sink("collect", move |_| Collect(sink.clone()));
        done.send(job.run().map(|r| r.checkpoints))
    });
    let checkpoints = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the job ends")
        .expect("the job succeeds");
    assert!(checkpoints >= 3, "{checkpoints}");
    let output = out.lock().unwrap();
    assert_eq!(output.len() as u64, RECORDS + 2 * 100);
}
