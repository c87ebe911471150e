//! The exactly-once file sink end to end: a keyed running count written into part
//! files, with failures injected in an operator and between pre-commit and commit,
//! recovered by a rerun from the checkpoint directory or by an in-process restart.
//! The committed files must hold exactly the lines of a failure-free run, on both
//! state backends, and readers must never see a part that is not complete.

mod common;

use common::{
    assert_exactly_once, assert_no_duplicates_so_far, committed_lines, expected_lines, hidden,
    is_hidden, names, Fault, Faults, Numbers, KEYS, RECORDS,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir::config::StateBackendChoice;
use weir::{
    CheckpointConfig, CheckpointId, CheckpointMode, ExactlyOnceFileSink, JobConfig, JobControl,
    JobError, JobReport, PreCommit, RestartStrategy, Sink, StreamJob, SubtaskInfo,
};

/// The exactly-once file sink, with a commit that panics once in subtask `index`
/// while `fault` is armed: a failure after the pre-commit of a completed checkpoint,
/// once that pre-commit left a pending part to commit.
struct FailingCommit {
    files: ExactlyOnceFileSink<(u64, u64)>,
    fault: Option<(u32, Fault)>,
    /// Fails its second pre-commit (a failed snapshot of the sink) once.
    pre_commit_fault: Option<Fault>,
    pre_commits: u32,
    /// Fails a restore that takes over some state (not a fresh start) once.
    restore_fault: Option<Fault>,
    /// Fails a write once a checkpoint has committed (so there is state to restore).
    write_fault: Option<Fault>,
    committed: bool,
    index: u32,
    /// Records written since the last pre-commit; and whether one pre-committed some.
    wrote: bool,
    pending: bool,
}

impl Sink for FailingCommit {
    type In = (u64, u64);
    fn open(&mut self, info: &SubtaskInfo) -> anyhow::Result<()> {
        self.index = info.index;
        self.files.open(info)
    }
    fn restore(&mut self, states: Vec<Vec<u8>>) -> anyhow::Result<()> {
        if let Some(fault) = &self.restore_fault {
            if fault.fires(!states.is_empty()) {
                anyhow::bail!("injected failure while restoring the sink");
            }
        }
        self.files.restore(states)
    }
    fn write(&mut self, record: (u64, u64)) -> anyhow::Result<()> {
        if let Some(fault) = &self.write_fault {
            if fault.fires(self.committed) {
                anyhow::bail!("injected failure writing after a commit");
            }
        }
        self.wrote = true;
        self.files.write(record)
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.files.finish()
    }
    fn pre_commit(&mut self, id: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
        self.pre_commits += 1;
        if let Some(fault) = &self.pre_commit_fault {
            if fault.fires(self.pre_commits == 2) {
                anyhow::bail!("injected failure in the pre-commit of checkpoint {id}");
            }
        }
        self.pending |= std::mem::take(&mut self.wrote);
        self.files.pre_commit(id)
    }
    fn commit(&mut self, id: CheckpointId) -> anyhow::Result<()> {
        self.committed = true;
        if let Some((index, fault)) = &self.fault {
            assert!(
                !fault.fires(self.index == *index && self.pending),
                "injected panic in the commit of checkpoint {id}"
            );
        }
        self.files.commit(id)
    }
}

/// How one run of the job goes.
struct Run<'a> {
    backend: StateBackendChoice,
    checkpoints: Option<&'a Path>,
    out: &'a Path,
    restart: RestartStrategy,
    /// The map panics once it reaches this record.
    panic_at: Option<(u64, Fault)>,
    commit_fault: Option<(u32, Fault)>,
    pre_commit_fault: Option<Fault>,
    restore_fault: Option<Fault>,
    write_fault: Option<Fault>,
    sink_parallelism: u32,
    /// Ask for a stop with a savepoint once the map has seen this record: a point in
    /// the data, not in time, so that a slow machine still stops part way (the paced
    /// source has most of its input ahead of it then).
    stop_at: Option<u64>,
    mode: CheckpointMode,
}

impl<'a> Run<'a> {
    fn new(checkpoints: &'a Path, out: &'a Path) -> Self {
        Run {
            backend: StateBackendChoice::Memory,
            checkpoints: Some(checkpoints),
            out,
            restart: RestartStrategy::None,
            panic_at: None,
            commit_fault: None,
            pre_commit_fault: None,
            restore_fault: None,
            write_fault: None,
            sink_parallelism: 2,
            stop_at: None,
            mode: CheckpointMode::Aligned,
        }
    }

    /// `numbers → (n % KEYS, 1) → key_by → running count → part files` at
    /// parallelism 2, 20 ms checkpoints, parts rolled at 4 KiB.
    fn go(self) -> Result<JobReport, JobError> {
        let job = StreamJob::new(JobConfig {
            parallelism: 2,
            workers: 2,
            state_backend: self.backend,
            checkpoint: self.checkpoints.map(|dir| CheckpointConfig {
                interval: Duration::from_millis(20),
                mode: self.mode,
                ..CheckpointConfig::new(dir)
            }),
            restart: Some(self.restart),
            ..JobConfig::default()
        });
        let files = ExactlyOnceFileSink::new(self.out, |(key, count): &(u64, u64), line| {
            line.push_str(&format!("{key},{count}\n"))
        })
        .suffix(".csv")
        .roll_bytes(4096);
        let (panic_at, commit_fault) = (self.panic_at, self.commit_fault);
        let (pre_commit_fault, restore_fault) = (self.pre_commit_fault, self.restore_fault);
        let write_fault = self.write_fault;
        let checkpointed = self.checkpoints.is_some();
        let control = JobControl::new();
        let stop = self.stop_at.map(|at| (at, Fault::armed(), control.clone()));
        job.source("numbers", move |info| {
            if checkpointed {
                Numbers::new(info, Faults::default())
            } else {
                Numbers::unchecked(info)
            }
        })
        .map("pair", move |n| {
            if let Some((at, fault)) = &panic_at {
                assert!(!fault.fires(n >= *at), "injected panic at record {n}");
            }
            if let Some((at, once, control)) = &stop {
                if once.fires(n >= *at) {
                    control.stop_with_savepoint();
                }
            }
            (n % KEYS, 1u64)
        })
        .key_by(|(k, _)| *k)
        .reduce("count", |(k, a), (_, b)| (*k, a + b))
        .sink_with_parallelism("files", self.sink_parallelism, move |_| FailingCommit {
            files: files.clone(),
            fault: commit_fault.clone(),
            pre_commit_fault: pre_commit_fault.clone(),
            pre_commits: 0,
            restore_fault: restore_fault.clone(),
            write_fault: write_fault.clone(),
            committed: false,
            index: 0,
            wrote: false,
            pending: false,
        });
        job.run_with(control)
    }
}

fn both_backends(test: impl Fn(StateBackendChoice)) {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        test(backend);
    }
}

#[test]
fn a_failure_free_run_commits_every_line_once_by_its_final_checkpoint() {
    let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let report = Run::new(chk.path(), out.path()).go().unwrap();
    // However fast the run (periodic ones may not complete first), the final
    // checkpoint commits the rest.
    assert!(report.checkpoints >= 1, "the final checkpoint");
    assert_exactly_once(out.path());
    assert!(
        names(out.path()).len() > 2,
        "parts rolled by size: {:?}",
        names(out.path())
    );
}

#[test]
fn without_checkpoints_the_end_of_input_commits() {
    let out = tempfile::tempdir().unwrap();
    let run = Run {
        checkpoints: None,
        ..Run::new(Path::new("unused"), out.path())
    };
    run.go().unwrap();
    assert_exactly_once(out.path());
}

#[test]
fn a_panicking_operator_fails_the_job_and_a_rerun_resumes_exactly_once() {
    both_backends(|backend| {
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fault = Fault::armed();
        let failed = Run {
            backend,
            panic_at: Some((RECORDS / 2, fault.clone())),
            ..Run::new(chk.path(), out.path())
        }
        .go();
        assert!(fault.fired());
        let error = failed.expect_err("no restarts: the job fails").to_string();
        assert!(error.contains("injected panic"), "{error}");
        assert_no_duplicates_so_far(out.path());
        assert!(
            committed_lines(out.path()).len() < expected_lines().len(),
            "{backend:?}: the failed run committed only what its checkpoints covered"
        );

        Run {
            backend,
            ..Run::new(chk.path(), out.path())
        }
        .go()
        .unwrap();
        assert_exactly_once(out.path());
    });
}

#[test]
fn an_in_process_restart_keeps_the_output_exactly_once() {
    both_backends(|backend| {
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fault = Fault::armed();
        let report = Run {
            backend,
            panic_at: Some((RECORDS / 2, fault.clone())),
            restart: RestartStrategy::FixedDelay {
                attempts: 3,
                delay_ms: 5,
            },
            ..Run::new(chk.path(), out.path())
        }
        .go()
        .unwrap();
        assert!(fault.fired());
        assert_eq!(report.restarts, 1, "{backend:?}");
        assert_exactly_once(out.path());
        let attempts: Vec<String> = names(out.path())
            .iter()
            .map(|n| n.split('-').nth(2).unwrap().to_string())
            .collect();
        assert!(
            attempts.iter().any(|a| a == "1"),
            "the second attempt writes under names of its own: {attempts:?}"
        );
    });
}

#[test]
fn unaligned_checkpoints_keep_the_output_exactly_once_across_a_restart() {
    let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fault = Fault::armed();
    let report = Run {
        mode: CheckpointMode::Unaligned,
        panic_at: Some((RECORDS / 2, fault.clone())),
        restart: RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 5,
        },
        sink_parallelism: 3, // a network edge before the sink: barriers overtake data
        ..Run::new(chk.path(), out.path())
    }
    .go()
    .unwrap();
    assert!(fault.fired());
    assert_eq!(report.restarts, 1);
    assert_exactly_once(out.path());
}

#[test]
fn a_failed_snapshot_of_the_sink_restarts_and_the_output_stays_exactly_once() {
    both_backends(|backend| {
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fault = Fault::armed();
        let report = Run {
            backend,
            restart: RestartStrategy::FixedDelay {
                attempts: 3,
                delay_ms: 5,
            },
            pre_commit_fault: Some(fault.clone()),
            ..Run::new(chk.path(), out.path())
        }
        .go()
        .unwrap();
        assert!(fault.fired());
        assert!(report.restarts >= 1, "{backend:?}");
        assert_exactly_once(out.path());
    });
}

#[test]
fn a_failure_while_restoring_the_sink_is_restarted_again_and_stays_exactly_once() {
    both_backends(|backend| {
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (panic, restore) = (Fault::armed(), Fault::armed());
        let report = Run {
            backend,
            restart: RestartStrategy::FixedDelay {
                attempts: 3,
                delay_ms: 5,
            },
            write_fault: Some(panic.clone()),
            restore_fault: Some(restore.clone()),
            ..Run::new(chk.path(), out.path())
        }
        .go()
        .unwrap();
        assert!(panic.fired() && restore.fired(), "{backend:?}");
        assert!(report.restarts >= 2, "{backend:?}: the restore failed once");
        assert_exactly_once(out.path());
    });
}

#[test]
fn a_failure_between_pre_commit_and_commit_is_committed_by_the_rerun() {
    both_backends(|backend| {
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fault = Fault::armed();
        let failed = Run {
            backend,
            commit_fault: Some((1, fault.clone())),
            ..Run::new(chk.path(), out.path())
        }
        .go();
        assert!(fault.fired());
        let error = failed.expect_err("no restarts: the job fails").to_string();
        assert!(error.contains("injected panic in the commit"), "{error}");
        assert!(
            hidden(out.path())
                .iter()
                .any(|n| n.starts_with(".part-1-") && n.ends_with(".pending")),
            "{backend:?}: the failed commit left pending parts: {:?}",
            names(out.path())
        );
        assert_no_duplicates_so_far(out.path());

        Run {
            backend,
            ..Run::new(chk.path(), out.path())
        }
        .go()
        .unwrap();
        assert_exactly_once(out.path());
    });
}

#[test]
fn a_rerun_at_a_lower_sink_parallelism_commits_every_old_subtasks_pending_parts() {
    let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fault = Fault::armed();
    let failed = Run {
        commit_fault: Some((2, fault.clone())),
        sink_parallelism: 3,
        ..Run::new(chk.path(), out.path())
    }
    .go();
    assert!(fault.fired() && failed.is_err());
    assert!(
        hidden(out.path())
            .iter()
            .any(|n| n.starts_with(".part-2-") && n.ends_with(".pending")),
        "old subtask 2 left pending parts: {:?}",
        names(out.path())
    );

    Run {
        sink_parallelism: 2,
        ..Run::new(chk.path(), out.path())
    }
    .go()
    .unwrap();
    assert_exactly_once(out.path());
}

#[test]
fn readers_only_ever_see_complete_committed_parts() {
    let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir: PathBuf = out.path().to_path_buf();
    let done = Arc::new(AtomicBool::new(false));
    // A reader polls the directory while the job runs (and fails and restarts):
    // whatever visible file it reads must never change afterwards.
    let reader = {
        let (dir, done) = (dir.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, String> = BTreeMap::new();
            while !done.load(Ordering::SeqCst) {
                for name in names(&dir).into_iter().filter(|n| !is_hidden(n)) {
                    if let std::collections::btree_map::Entry::Vacant(slot) = seen.entry(name) {
                        if let Ok(text) = fs::read_to_string(dir.join(slot.key())) {
                            slot.insert(text);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    let fault = Fault::armed();
    Run {
        panic_at: Some((RECORDS / 2, fault.clone())),
        restart: RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 5,
        },
        ..Run::new(chk.path(), out.path())
    }
    .go()
    .unwrap();
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    assert!(!seen.is_empty(), "the reader saw parts while the job ran");
    for (name, text) in &seen {
        assert!(
            name.starts_with("part-") && name.ends_with(".csv"),
            "{name}"
        );
        assert_eq!(
            &fs::read_to_string(dir.join(name)).unwrap(),
            text,
            "{name} changed after it became visible"
        );
    }
    assert_exactly_once(&dir);
}

#[test]
fn a_stop_with_savepoint_commits_everything_before_it_and_the_resumed_run_the_rest() {
    let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stopped = Run {
        stop_at: Some(RECORDS / 10),
        ..Run::new(chk.path(), out.path())
    }
    .go()
    .unwrap();
    assert!(
        stopped.savepoint.is_some(),
        "the job stopped with a savepoint"
    );
    let before = committed_lines(out.path());
    assert!(
        !before.is_empty() && before.len() < expected_lines().len(),
        "stopped part way: {} lines",
        before.len()
    );
    assert!(
        hidden(out.path()).is_empty(),
        "the savepoint's completion committed every part: {:?}",
        hidden(out.path())
    );
    assert_no_duplicates_so_far(out.path());

    Run::new(chk.path(), out.path()).go().unwrap();
    assert_exactly_once(out.path());
}
