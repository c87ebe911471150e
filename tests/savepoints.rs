//! Stop with a savepoint: the job stops on request with a self-contained savepoint,
//! and a run started on the same checkpoint directory resumes from it with exact
//! state; `weir run` does it on SIGTERM.

mod common;

use common::{assert_exact, Collect, Fault, Faults, Numbers, RECORDS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::config::StateBackendChoice;
use weir::state::checkpoints::{load_checkpoint, Verify};
use weir::state::storage::parse_checkpoint_dir;
use weir::state::LocalCheckpointStorage;
use weir::{CheckpointConfig, JobConfig, JobControl, JobReport, StreamJob};

/// Runs the keyed running count on `dir`; once the map sees record `stop_at` it asks
/// for a stop with a savepoint (a point in the data rather than a time, so that the
/// paced source still has most of its input ahead of it on a slow machine).
fn run(
    dir: &std::path::Path,
    backend: StateBackendChoice,
    stop_at: Option<u64>,
) -> (JobReport, Vec<(u64, u64)>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        state_backend: backend,
        checkpoint: Some(CheckpointConfig {
            interval: Duration::from_millis(30),
            ..CheckpointConfig::new(dir)
        }),
        ..JobConfig::default()
    });
    let sink = out.clone();
    let control = JobControl::new();
    let stop = stop_at.map(|at| (at, Fault::armed(), control.clone()));
    job.source("numbers", |info| Numbers::new(info, Faults::default()))
        .map("pair", move |n| {
            if let Some((at, once, control)) = &stop {
                if once.fires(n >= *at) {
                    control.stop_with_savepoint();
                }
            }
            (n % common::KEYS, 1u64)
        })
        .key_by(|(k, _)| *k)
        .reduce("count", |(k, a), (_, b)| (*k, a + b))
        .sink("collect", move |_| Collect(sink.clone()));
    let report = job.run_with(control).expect("the job runs");
    let output = out.lock().unwrap().clone();
    (report, output)
}

#[test]
fn a_stopped_job_leaves_a_self_contained_savepoint_and_resumes_from_it_exactly() {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        let dir = tempfile::tempdir().unwrap();
        let (stopped, before) = run(dir.path(), backend, Some(RECORDS / 10));
        let savepoint = stopped.savepoint.expect("the job stopped with a savepoint");
        assert!(
            (before.len() as u64) < RECORDS,
            "{backend:?}: stopped before the end ({} records)",
            before.len()
        );
        let id = parse_checkpoint_dir(savepoint.file_name().unwrap().to_str().unwrap())
            .expect("the savepoint is a chk-<id> directory");
        let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
        let metadata = load_checkpoint(&storage, id, Verify::Files).unwrap();
        assert!(metadata.is_savepoint);
        assert!(
            metadata.shared_files().is_empty(),
            "{backend:?}: a savepoint references no shared (incremental) files"
        );

        let (resumed, after) = run(dir.path(), backend, None);
        assert_eq!(resumed.savepoint, None);
        assert_eq!(
            before.len() + after.len(),
            RECORDS as usize,
            "{backend:?}: sources emitted nothing after the savepoint, and resumed right after it"
        );
        assert_exact(&[before, after].concat());
    }
}

#[test]
fn a_stop_requested_of_a_job_without_checkpoints_fails_clearly() {
    let job = StreamJob::new(JobConfig {
        parallelism: 1,
        ..JobConfig::default()
    });
    job.source("numbers", Numbers::unchecked)
        .map("pair", |n| (n, 1u64))
        .sink("collect", |_| Collect(Arc::new(Mutex::new(Vec::new()))));
    let control = JobControl::new();
    control.stop_with_savepoint();
    let error = job.run_with(control).unwrap_err().to_string();
    assert!(
        error.contains("cannot stop with a savepoint: the job does not checkpoint"),
        "{error}"
    );
}
