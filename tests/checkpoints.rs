//! Periodic checkpoints of a running job: barriers flow, keyed state is snapshotted,
//! `_metadata` becomes durable, retention holds, ids keep growing across runs, and
//! the output is exactly that of a run without checkpoints.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::state::checkpoints::{list_checkpoint_ids, load_checkpoint, Verify};
use weir::state::LocalCheckpointStorage;
use weir::{
    CheckpointConfig, CheckpointMode, Context, JobConfig, JobError, JobReport, RestartStrategy,
    Sink, Source, SourcePoll, StreamJob,
};

/// `count` numbers at about `per_ms` per millisecond (per subtask), so the job runs
/// long enough for several checkpoints.
struct Paced {
    next: u64,
    end: u64,
    step: u64,
    per_ms: u64,
    started: Option<Instant>,
}

impl Source for Paced {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = (started.elapsed().as_millis() as u64 + 1) * self.per_ms * self.step;
        let mut emitted = 0;
        while self.next < self.end && self.next < due && emitted < max {
            ctx.emit(self.next);
            self.next += self.step;
            emitted += 1;
        }
        Ok(match (self.next >= self.end, emitted) {
            (true, _) => SourcePoll::Finished,
            (false, 0) => SourcePoll::Pending(Duration::from_millis(1)),
            _ => SourcePoll::Ready,
        })
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

const RECORDS: u64 = 60_000;

fn run(checkpoint: Option<CheckpointConfig>) -> Result<BTreeMap<u64, Vec<u64>>, JobError> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        checkpoint,
        ..JobConfig::default()
    });
    let sink = out.clone();
    job.source("numbers", |info| Paced {
        next: info.index as u64,
        end: RECORDS,
        step: info.parallelism as u64,
        per_ms: 100,
        started: None,
    })
    .map("pair", |n| (n % 97, 1u64))
    .key_by(|(k, _)| *k)
    .reduce("count", |(k, a), (_, b)| (*k, a + b))
    .sink("collect", move |_| Collect(sink.clone()));
    job.run()?;
    let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, c) in out.lock().unwrap().drain(..) {
        per_key.entry(k).or_default().push(c);
    }
    per_key.values_mut().for_each(|v| v.sort_unstable());
    Ok(per_key)
}

fn config(dir: &std::path::Path, mode: CheckpointMode) -> CheckpointConfig {
    CheckpointConfig {
        interval: Duration::from_millis(20),
        retain: 2,
        mode,
        ..CheckpointConfig::new(dir)
    }
}

#[test]
fn aligned_checkpoints_complete_durably_while_the_output_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let without = run(None).unwrap();
    assert_eq!(
        without.values().map(Vec::len).sum::<usize>(),
        RECORDS as usize
    );
    let with = run(Some(config(dir.path(), CheckpointMode::Aligned))).unwrap();
    assert_eq!(with, without, "checkpoints change nothing in the output");

    let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
    let ids = list_checkpoint_ids(&storage).unwrap();
    let valid: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| load_checkpoint(&storage, id, Verify::Files).is_ok())
        .collect();
    assert_eq!(
        valid.len(),
        2,
        "retention keeps the 2 newest completed checkpoints: {ids:?}"
    );
    let newest = *valid.last().unwrap();
    assert!(
        newest >= 3,
        "several checkpoints completed during the run: {ids:?}"
    );
    let metadata = load_checkpoint(&storage, newest, Verify::Files).unwrap();
    let count = &metadata.operators["count"];
    assert_eq!(count.subtasks.len(), 2);
    assert!(
        count.subtasks.iter().all(|s| s.keyed.is_some()),
        "every keyed subtask's state is in the checkpoint"
    );

    // A second run on the same storage continues the ids.
    run(Some(config(dir.path(), CheckpointMode::Aligned))).unwrap();
    let after = list_checkpoint_ids(&storage).unwrap();
    assert!(
        after.iter().min().unwrap() > &newest,
        "ids grow across runs: {after:?} after {newest}"
    );
}

#[test]
fn at_least_once_checkpoints_complete_too() {
    let dir = tempfile::tempdir().unwrap();
    let without = run(None).unwrap();
    let with = run(Some(config(dir.path(), CheckpointMode::AtLeastOnce))).unwrap();
    assert_eq!(with, without);
    let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
    assert!(!list_checkpoint_ids(&storage).unwrap().is_empty());
}

#[test]
fn unaligned_checkpoints_complete_and_change_nothing_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let without = run(None).unwrap();
    let with = run(Some(config(dir.path(), CheckpointMode::Unaligned))).unwrap();
    assert_eq!(with, without);
    let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
    assert!(!list_checkpoint_ids(&storage).unwrap().is_empty());
}

#[test]
fn aligned_with_timeout_checkpoints_complete_and_change_nothing_in_the_output() {
    for timeout_ms in [0, 100] {
        let dir = tempfile::tempdir().unwrap();
        let without = run(None).unwrap();
        let mode = CheckpointMode::AlignedWithTimeout { timeout_ms };
        let with = run(Some(config(dir.path(), mode))).unwrap();
        assert_eq!(with, without, "timeout {timeout_ms} ms");
        let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
        assert!(!list_checkpoint_ids(&storage).unwrap().is_empty());
    }
}

/// A keyed sum over a rate-limited generator, checkpointed into `chk`; the
/// `[checkpoint]` settings, the record count and the sink type vary per test.
fn checkpointed_topology(checkpoint_settings: &str, count: u64, sink: &str) -> String {
    format!(
        r#"
[job]
parallelism = 2

[checkpoint]
dir = "chk"
{checkpoint_settings}

[[source]]
id = "numbers"
type = "generator"
count = {count}
rate = 200000
fields = {{ key = "i % 100", value = "i" }}

[[operator]]
id = "by_key"
type = "key_by"
input = "numbers"
key = "key"

[[operator]]
id = "sum"
type = "sum"
input = "by_key"
field = "value"

[[sink]]
id = "out"
type = "{sink}"
input = "sum"
"#
    )
}

fn weir_on(dir: &std::path::Path, mode_line: &str, command: &str) -> std::process::Output {
    let topology = dir.join("job.toml");
    let settings = format!("interval_ms = 20\nretain = 2\n{mode_line}");
    std::fs::write(&topology, checkpointed_topology(&settings, 100_000, "null")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([command, topology.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn a_toml_checkpoint_table_checkpoints_the_job_into_its_dir() {
    let dir = tempfile::tempdir().unwrap();
    let output = weir_on(dir.path(), "mode = \"aligned\"", "run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let storage = LocalCheckpointStorage::new(dir.path().join("chk")).unwrap();
    let ids = list_checkpoint_ids(&storage).unwrap();
    let valid: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| load_checkpoint(&storage, id, Verify::Files).is_ok())
        .collect();
    assert_eq!(valid.len(), 2, "two retained: {ids:?}");
    let metadata = load_checkpoint(&storage, *valid.last().unwrap(), Verify::Files).unwrap();
    assert_eq!(metadata.operators["sum"].subtasks.len(), 2);
}

#[test]
fn a_misspelled_checkpoint_mode_is_a_topology_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = weir_on(dir.path(), "mode = \"alinged\"", "validate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("job.toml:9:8: unknown checkpoint mode `alinged`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `aligned`?"), "{stderr}");
}

/// `Paced` that can fail once at a given record (while `armed`), but only after its
/// second snapshot (with one checkpoint at a time, the first has then completed), and
/// reports its position so a restarted job resumes it.
struct Failing {
    inner: Paced,
    fail_at: u64,
    armed: Arc<std::sync::atomic::AtomicBool>,
    snapshots: u32,
}

impl Source for Failing {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        let armed = self.armed.load(std::sync::atomic::Ordering::SeqCst);
        if self.inner.next >= self.fail_at
            && self.snapshots >= 2
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            anyhow::bail!("injected failure at record {}", self.inner.next);
        }
        if armed && self.inner.next >= self.inner.end {
            // However slow the machine: the failure comes before the end.
            return Ok(SourcePoll::Pending(Duration::from_millis(1)));
        }
        self.inner.poll(ctx, max)
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.snapshots += 1;
        Ok(Some(self.inner.next.to_le_bytes().to_vec()))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.inner.next = u64::from_le_bytes(position.try_into()?);
        Ok(())
    }
}

fn run_failing(
    dir: &std::path::Path,
    armed: Arc<std::sync::atomic::AtomicBool>,
    restart: RestartStrategy,
) -> (Result<JobReport, JobError>, Vec<(u64, u64)>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let checkpoint = Some(CheckpointConfig {
        interval: Duration::from_millis(20),
        ..CheckpointConfig::new(dir)
    });
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        checkpoint,
        restart: Some(restart),
        ..JobConfig::default()
    });
    let sink = out.clone();
    job.source("numbers", move |info| Failing {
        inner: Paced {
            next: info.index as u64,
            end: RECORDS,
            step: info.parallelism as u64,
            per_ms: 100,
            started: None,
        },
        fail_at: RECORDS / 2,
        armed: armed.clone(),
        snapshots: 0,
    })
    .map("pair", |n| (n % 97, 1u64))
    .key_by(|(k, _)| *k)
    .reduce("count", |(k, a), (_, b)| (*k, a + b))
    .sink("collect", move |_| Collect(sink.clone()));
    let result = job.run();
    let output = out.lock().unwrap().clone();
    (result, output)
}

/// Every key's counts, over all runs, went 1, 2, … up to its exact total: state
/// counted each record once (records after the restored checkpoint are replayed, so
/// some counts repeat: this sink is not transactional).
fn assert_counted_exactly_once(outputs: &[(u64, u64)]) {
    let expected = |key: u64| (0..RECORDS).filter(|n| n % 97 == key).count() as u64;
    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, c) in outputs {
        seen.entry(*k).or_default().push(*c);
    }
    assert_eq!(seen.len(), 97);
    for (key, counts) in &seen {
        let n = expected(*key);
        assert_eq!(counts.iter().max(), Some(&n), "key {key}");
        let distinct: std::collections::BTreeSet<u64> = counts.iter().copied().collect();
        assert_eq!(distinct, (1..=n).collect(), "key {key}");
    }
}

#[test]
fn a_failed_job_resumes_from_its_latest_checkpoint_with_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (first, before) = run_failing(dir.path(), armed.clone(), RestartStrategy::None);
    assert!(first.unwrap_err().to_string().contains("injected failure"));
    let storage = LocalCheckpointStorage::new(dir.path()).unwrap();
    assert!(
        !list_checkpoint_ids(&storage).unwrap().is_empty(),
        "checkpoints completed before the failure"
    );

    let (second, after) = run_failing(dir.path(), armed, RestartStrategy::None);
    second.expect("the resumed run completes");
    assert_counted_exactly_once(&[before, after.clone()].concat());
    // The second run started from restored state, not from zero.
    let resumed_from = after.iter().map(|(_, c)| *c).min().unwrap();
    assert!(
        resumed_from > 1,
        "the resumed run continued the counts (lowest count {resumed_from})"
    );
}

#[test]
fn a_failed_subtask_is_restarted_in_process_from_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let restart = RestartStrategy::FixedDelay {
        attempts: 2,
        delay_ms: 10,
    };
    let (result, output) = run_failing(dir.path(), armed, restart);
    let report = result.expect("the job recovers and completes");
    assert_eq!(report.restarts, 1);
    assert!(report.checkpoints >= 2, "periodic and final checkpoints");
    assert_counted_exactly_once(&output);
    // The restart resumed from a checkpoint: some count was emitted twice, not all.
    let distinct: std::collections::BTreeSet<&(u64, u64)> = output.iter().collect();
    assert!(
        distinct.len() < output.len(),
        "records after the checkpoint were replayed"
    );
    assert!(
        output.len() < 2 * RECORDS as usize,
        "not replayed from the start"
    );
}

#[test]
fn a_job_whose_restarts_run_out_fails_with_every_failure_listed() {
    let dir = tempfile::tempdir().unwrap();
    let job = StreamJob::new(JobConfig {
        parallelism: 1,
        checkpoint: Some(CheckpointConfig {
            interval: Duration::from_millis(20),
            ..CheckpointConfig::new(dir.path())
        }),
        restart: Some(RestartStrategy::FixedDelay {
            attempts: 2,
            delay_ms: 1,
        }),
        ..JobConfig::default()
    });
    job.source("numbers", |_| Paced {
        next: 0,
        end: 1_000,
        step: 1,
        per_ms: 100,
        started: None,
    })
    .map("explode", |n: u64| {
        assert!(n < 500, "always fails at {n}");
        (n, 1)
    })
    .sink("collect", |_| Collect(Arc::new(Mutex::new(Vec::new()))));
    let error = job.run().unwrap_err().to_string();
    assert!(
        error.contains("the job failed 3 times and the restart strategy gave up"),
        "{error}"
    );
    assert_eq!(error.matches("always fails at 500").count(), 3, "{error}");
}

/// `weir run` of a checkpointed running sum over 400 000 numbers (100 keys) to
/// stdout, in `dir`; the command captures stdout and stderr.
fn running_sums_to_stdout(dir: &std::path::Path) -> impl Fn() -> std::process::Command {
    let topology = dir.join("job.toml");
    std::fs::write(
        &topology,
        checkpointed_topology("interval_ms = 50", 400_000, "stdout"),
    )
    .unwrap();
    move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        command.args(["run", topology.to_str().unwrap(), "--no-progress"]);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }
}

#[test]
fn sigterm_stops_weir_run_with_a_savepoint_that_the_next_run_resumes_from() {
    let dir = tempfile::tempdir().unwrap();
    let weir = running_sums_to_stdout(dir.path());
    let mut child = weir().spawn().unwrap();
    // Signal only once the job runs (its output flows), however slow the machine.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let reader = std::thread::spawn(move || {
        std::io::Read::read_to_string(&mut stdout, &mut first).unwrap();
        first
    });
    std::thread::sleep(Duration::from_millis(200));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped = child.wait_with_output().unwrap();
    let first = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{stderr}");
    assert!(stderr.contains("stopped with savepoint"), "{stderr}");
    let resumed = weir().output().unwrap();
    assert!(resumed.status.success());
    let second = String::from_utf8(resumed.stdout).unwrap();
    // Aligned, and the sources emit nothing after the savepoint: even this
    // at-least-once sink wrote every running sum exactly once over the two runs.
    assert!(first.lines().count() < 400_000, "stopped early");
    assert_eq!(first.lines().count() + second.lines().count(), 400_000);
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for line in first.lines().chain(second.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        last.insert(v["key"].as_i64().unwrap(), v["sum"].as_i64().unwrap());
    }
    for (key, sum) in last {
        let expected: i64 = (0..400_000i64).filter(|i| i % 100 == key).sum();
        assert_eq!(sum, expected, "key {key}");
    }
}

#[test]
fn a_killed_weir_run_resumes_and_ends_with_exact_sums() {
    let dir = tempfile::tempdir().unwrap();
    let weir = running_sums_to_stdout(dir.path());
    // Kill it twice at different moments, then let it finish.
    for after_ms in [700, 400] {
        let mut child = weir().spawn().unwrap();
        std::thread::sleep(Duration::from_millis(after_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let output = weir().output().unwrap();
    assert!(output.status.success());
    let storage = LocalCheckpointStorage::new(dir.path().join("chk")).unwrap();
    assert!(list_checkpoint_ids(&storage).unwrap().len() >= 2);
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        last.insert(v["key"].as_i64().unwrap(), v["sum"].as_i64().unwrap());
    }
    assert_eq!(last.len(), 100);
    for (key, sum) in last {
        let expected: i64 = (0..400_000i64).filter(|i| i % 100 == key).sum();
        assert_eq!(sum, expected, "key {key}");
    }
}
