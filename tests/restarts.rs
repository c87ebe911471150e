//! In-process restarts: a failure anywhere in a checkpointed job (user code, a
//! snapshot, a restore, the final checkpoint) makes the supervisor redeploy the job
//! from its latest checkpoint, and keyed state ends exactly as in a failure-free run,
//! on both state backends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::config::StateBackendChoice;
use weir::{
    CheckpointConfig, Context, JobConfig, JobReport, RestartStrategy, Sink, Source, SourcePoll,
    StreamJob,
};

const RECORDS: u64 = 40_000;
const KEYS: u64 = 97;

/// A fault that fires once: the first time its condition holds while it is armed.
#[derive(Clone, Default)]
struct Fault(Arc<AtomicBool>);

impl Fault {
    fn armed() -> Self {
        Fault(Arc::new(AtomicBool::new(true)))
    }

    fn fires(&self, condition: bool) -> bool {
        condition && self.0.swap(false, Ordering::SeqCst)
    }

    fn fired(&self) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

/// Where the job fails once.
#[derive(Clone, Default)]
struct Faults {
    /// A source subtask fails in `poll` once it reached this record.
    poll_at: Option<(u64, Fault)>,
    /// A source subtask fails to snapshot its position at the `n`th checkpoint it
    /// takes (counted per subtask, the final checkpoint included).
    snapshot: Option<(u32, Fault)>,
    /// A source subtask fails to snapshot its position once it has finished (in the
    /// final checkpoint).
    final_snapshot: Option<Fault>,
    /// A source subtask fails to restore its position.
    restore: Option<Fault>,
}

/// Numbers `index, index + p, …` below `RECORDS`, paced at 100 per ms per subtask so
/// that periodic checkpoints complete while it runs.
struct Numbers {
    next: u64,
    step: u64,
    started: Option<Instant>,
    snapshots: u32,
    faults: Faults,
}

impl Source for Numbers {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        if let Some((at, fault)) = &self.faults.poll_at {
            if fault.fires(self.next >= *at) {
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

struct Collect(Arc<Mutex<Vec<(u64, u64)>>>);
impl Sink for Collect {
    type In = (u64, u64);
    fn write(&mut self, record: (u64, u64)) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

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
    job.source("numbers", move |info| Numbers {
        next: info.index as u64,
        step: info.parallelism as u64,
        started: None,
        snapshots: 0,
        faults: faults.clone(),
    })
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

/// State counted every record exactly once: each key's counts went 1, 2, … up to its
/// exact total (replayed records repeat some counts: this sink is not transactional).
fn assert_exact(output: &[(u64, u64)]) {
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
