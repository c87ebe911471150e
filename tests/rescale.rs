//! Rescaling through checkpoints: a job fails partway, is restored from its
//! checkpoint at another parallelism (and state backend), fails again, is restored
//! once more and finishes; its final keyed sums equal a failure-free run's exactly.
//! Then the CLI: the same with the file source and `weir run --restore`, a corrupt
//! latest checkpoint, `weir checkpoints list/inspect`, and refused restores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::builtins::{GeneratorSource, GeneratorSpec};
use weir::config::StateBackendChoice;
use weir::expr::Expr;
use weir::record::{Record, Value};
use weir::state::checkpoints::load_checkpoint;
use weir::state::checkpoints::{latest_valid, Verify};
use weir::state::storage::parse_checkpoint_dir;
use weir::state::LocalCheckpointStorage;
use weir::{
    CheckpointConfig, CheckpointMode, JobConfig, JobControl, JobError, JobReport, RestartStrategy,
    Sink, StreamJob,
};

const RECORDS: u64 = 100_000;
const KEYS: i64 = 100;

struct Collect {
    out: Arc<Mutex<Vec<(i64, i64)>>>,
    /// Sleeps now and then, so that records queue up in the channels before it.
    slow: bool,
}

impl Sink for Collect {
    type In = (i64, i64);
    fn write(&mut self, record: (i64, i64)) -> anyhow::Result<()> {
        let mut out = self.out.lock().unwrap();
        out.push(record);
        if self.slow && out.len() % 64 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// One run of the keyed running sum over the built-in generator (`i`, rate-limited
/// so that checkpoints complete during the run), failing with a panic once the
/// job has processed `fail_after` records, if given. Returns the outcome and every
/// (key, sum) the sink saw.
fn run(
    parallelism: u32,
    backend: StateBackendChoice,
    checkpoints: &Path,
    restore_from: Option<PathBuf>,
    fail_after: Option<u64>,
) -> (Result<(), JobError>, Vec<(i64, i64)>) {
    let (result, emitted) = run_in_mode(
        parallelism,
        backend,
        checkpoints,
        restore_from,
        (fail_after, None),
        CheckpointMode::Aligned,
    );
    (result.map(|_| ()), emitted)
}

/// `run` in a checkpoint mode, with a slow sink (in-flight records pile up in the
/// channels) when unaligned; `stop_at` asks for a stop with a savepoint once the map
/// has seen that many records.
fn run_in_mode(
    parallelism: u32,
    backend: StateBackendChoice,
    checkpoints: &Path,
    restore_from: Option<PathBuf>,
    (fail_after, stop_at): (Option<u64>, Option<u64>),
    mode: CheckpointMode,
) -> (Result<JobReport, JobError>, Vec<(i64, i64)>) {
    let spec = Arc::new(GeneratorSpec {
        count: Some(RECORDS),
        rate: Some(100_000.0),
        seed: 0,
        fields: vec![(Arc::from("i"), Expr::parse("i", true).unwrap())],
        splits: None,
    });
    let job = StreamJob::new(JobConfig {
        parallelism,
        workers: 2,
        state_backend: backend,
        checkpoint: Some(CheckpointConfig {
            interval: Duration::from_millis(20),
            mode,
            ..CheckpointConfig::new(checkpoints)
        }),
        restore_from,
        // The injected failure fails the job (no in-process restart): the next run
        // restores it, at another parallelism.
        restart: Some(RestartStrategy::None),
        ..JobConfig::default()
    });
    let seen = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let control = JobControl::new();
    let stopper = control.clone();
    let slow = mode == CheckpointMode::Unaligned;
    job.source("numbers", move |info| {
        GeneratorSource::new(spec.clone(), info)
    })
    .map("pair", move |r: Record| {
        let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
        if fail_after == Some(n) {
            panic!("injected failure");
        }
        if stop_at == Some(n) {
            stopper.stop_with_savepoint();
        }
        match r.get("i") {
            Some(Value::Int(i)) => (*i % KEYS, *i),
            other => panic!("a generator record without i: {other:?}"),
        }
    })
    .key_by(|(key, _)| *key)
    .reduce("sum", |(key, a), (_, b)| (*key, a + b))
    .sink("collect", move |_| Collect {
        out: sink.clone(),
        slow,
    });
    let result = job.run_with(control);
    let emitted = out.lock().unwrap().clone();
    (result, emitted)
}

/// The newest checkpoint of `dir` that a restore can use.
fn latest(dir: &Path) -> PathBuf {
    let storage = LocalCheckpointStorage::new(dir).unwrap();
    let found = latest_valid(&storage, Verify::Files)
        .unwrap()
        .expect("a checkpoint completed before the injected failure");
    dir.join(format!("chk-{}", found.metadata.checkpoint_id))
}

/// The last sum emitted per key.
fn final_sums(emitted: &[(i64, i64)]) -> BTreeMap<i64, i64> {
    emitted.iter().copied().collect()
}

fn expected_sums() -> BTreeMap<i64, i64> {
    let mut sums = BTreeMap::new();
    for i in 0..RECORDS as i64 {
        *sums.entry(i % KEYS).or_insert(0) += i;
    }
    sums
}

/// 2 → (fail) → 3 → (fail) → 1, each run restored with `restore_from` from the
/// previous run's own checkpoint directory.
fn rescale_2_3_1(backends: [StateBackendChoice; 3]) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (free, free_out) = run(2, backends[0], &dirs[0].path().join("free"), None, None);
    free.unwrap();
    assert_eq!(final_sums(&free_out), expected_sums());

    let (first, _) = run(2, backends[0], dirs[0].path(), None, Some(50_000));
    assert!(first.unwrap_err().to_string().contains("injected failure"));
    let (second, _) = run(
        3,
        backends[1],
        dirs[1].path(),
        Some(latest(dirs[0].path())),
        Some(20_000),
    );
    assert!(second.unwrap_err().to_string().contains("injected failure"));
    let restored = latest(dirs[1].path());
    let (third, out) = run(1, backends[2], dirs[2].path(), Some(restored), None);
    third.unwrap();
    let sums = final_sums(&out);
    assert_eq!(
        sums.len(),
        KEYS as usize,
        "every key got records after the restore"
    );
    assert_eq!(sums, final_sums(&free_out), "exactly the failure-free sums");
    // The last run started from restored state, not from the beginning (how much
    // the checkpoints covered depends on their timing: RocksDB's take longer).
    assert!(
        out.len() < RECORDS as usize,
        "the last run processed only what the checkpoint had not covered ({} records)",
        out.len()
    );
}

#[test]
fn rescaling_2_3_1_through_checkpoints_gives_exact_sums_in_memory() {
    rescale_2_3_1([StateBackendChoice::Memory; 3]);
}

#[test]
fn rescaling_2_3_1_through_checkpoints_gives_exact_sums_in_rocksdb() {
    rescale_2_3_1([StateBackendChoice::RocksDb; 3]);
}

#[test]
fn rescaling_across_state_backends_gives_exact_sums() {
    rescale_2_3_1([
        StateBackendChoice::Memory,
        StateBackendChoice::RocksDb,
        StateBackendChoice::Memory,
    ]);
}

/// The savepoint's in-flight records (there must be none).
fn channel_state_files(checkpoints: &Path, savepoint: &Path) -> Vec<String> {
    let storage = LocalCheckpointStorage::new(checkpoints).unwrap();
    let id = parse_checkpoint_dir(savepoint.file_name().unwrap().to_str().unwrap()).unwrap();
    let metadata = load_checkpoint(&storage, id, Verify::Files).unwrap();
    metadata
        .files()
        .into_iter()
        .filter(|f| f.path.ends_with(".channels"))
        .map(|f| f.path.clone())
        .collect()
}

#[test]
fn an_unaligned_job_rescales_2_3_1_through_savepoints_and_across_backends() {
    // Each run stops with a savepoint part way (the last one ends), and the next
    // restores it at another parallelism, with another backend.
    let runs = [
        (2, StateBackendChoice::Memory, Some(30_000)),
        (3, StateBackendChoice::RocksDb, Some(20_000)),
        (1, StateBackendChoice::Memory, None),
    ];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut restore = None;
    let mut emitted = Vec::new();
    for ((parallelism, backend, stop_at), dir) in runs.into_iter().zip(&dirs) {
        let (report, out) = run_in_mode(
            parallelism,
            backend,
            dir.path(),
            restore.take(),
            (None, stop_at),
            CheckpointMode::Unaligned,
        );
        let report = report.unwrap_or_else(|e| panic!("parallelism {parallelism}: {e}"));
        assert!(
            !out.is_empty(),
            "parallelism {parallelism} processed records"
        );
        emitted.extend(out);
        if stop_at.is_none() {
            assert_eq!(report.savepoint, None);
            continue;
        }
        let savepoint = report.savepoint.expect("the job stops with a savepoint");
        assert!(
            report.unaligned_checkpoints > 0,
            "the periodic checkpoints before it were unaligned"
        );
        let channel_state = channel_state_files(dir.path(), &savepoint);
        assert!(
            channel_state.is_empty(),
            "a savepoint keeps no in-flight records: {channel_state:?}"
        );
        restore = Some(savepoint);
    }
    assert_eq!(
        emitted.len(),
        RECORDS as usize,
        "each record processed once: sources resume right after each savepoint"
    );
    assert_eq!(
        final_sums(&emitted),
        expected_sums(),
        "exactly the failure-free sums"
    );
}

// ---------------------------------------------------------------------------------
// The CLI

fn weir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last `sum` printed per `key` (JSON lines on stdout).
fn printed_sums(o: &Output) -> BTreeMap<i64, i64> {
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["key"].as_i64().unwrap(), v["sum"].as_i64().unwrap())
        })
        .collect()
}

const LINES: i64 = 300_000;

fn csv_line(i: i64) -> String {
    format!("{},{i}\n", i % KEYS)
}

/// Rewrites line `i` of the CSV (after the header) in place, keeping its length.
fn set_line(path: &Path, i: i64, bad: bool) {
    let text = std::fs::read_to_string(path).unwrap();
    let offset = "key,value\n".len() + (0..i).map(|j| csv_line(j).len()).sum::<usize>();
    let good = csv_line(i);
    let line = if bad {
        good.replacen(&format!(",{i}"), &format!(",X{}", &i.to_string()[1..]), 1)
    } else {
        good.clone()
    };
    assert_eq!(line.len(), good.len());
    let mut bytes = text.into_bytes();
    bytes[offset..offset + line.len()].copy_from_slice(line.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn file_topology(dir: &Path, checkpoints: &str) {
    let mut data = String::from("key,value\n");
    for i in 0..LINES {
        data.push_str(&csv_line(i));
    }
    std::fs::write(dir.join("data.csv"), data).unwrap();
    std::fs::write(
        dir.join("job.toml"),
        format!(
            r#"
[job]
parallelism = 2

[checkpoint]
dir = "{checkpoints}"
interval_ms = 20

# A bad record fails the run; the next run restores it.
[restart]
strategy = "none"

[[source]]
id = "rows"
type = "file"
path = "data.csv"
schema = {{ key = "int", value = "int" }}

[[operator]]
id = "by_key"
type = "key_by"
input = "rows"
key = "key"

[[operator]]
id = "sum"
type = "sum"
input = "by_key"
field = "value"

[[sink]]
id = "out"
type = "stdout"
input = "sum"
"#
        ),
    )
    .unwrap();
}

fn expected_file_sums() -> BTreeMap<i64, i64> {
    let mut sums = BTreeMap::new();
    for i in 0..LINES {
        *sums.entry(i % KEYS).or_insert(0) += i;
    }
    sums
}

/// The file source through the CLI: a bad record fails the run at parallelism 2;
/// with that line fixed (and a later one broken) `--restore` continues at 3 and
/// fails again; with that fixed too, `--restore` at 1 finishes with exact sums.
#[test]
fn the_cli_rescales_a_file_source_2_3_1_with_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    file_topology(d, "chk");
    let data = d.join("data.csv");
    let (first_bad, second_bad) = (LINES * 3 / 10, LINES * 99 / 100);

    let free = weir(d, &["run", "job.toml", "--fresh", "--no-progress"]);
    assert!(free.status.success(), "{}", stderr(&free));
    assert_eq!(printed_sums(&free), expected_file_sums());
    std::fs::remove_dir_all(d.join("chk")).unwrap();

    set_line(&data, first_bad, true);
    let first = weir(d, &["run", "job.toml", "--no-progress"]);
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!("bad record at data.csv:{}", first_bad + 2)),
        "{}",
        stderr(&first)
    );
    let checkpoint = latest(&d.join("chk"));
    set_line(&data, first_bad, false);
    set_line(&data, second_bad, true);

    let restore = checkpoint.to_str().unwrap().to_string();
    let second = weir(
        d,
        &[
            "run",
            "job.toml",
            "--restore",
            &restore,
            "--set",
            "job.parallelism=3",
            "--set",
            "checkpoint.dir=\"chk3\"",
            "--no-progress",
        ],
    );
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains(&format!("bad record at data.csv:{}", second_bad + 2)),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("restoring from checkpoint"),
        "{}",
        stderr(&second)
    );
    set_line(&data, second_bad, false);

    let restore = latest(&d.join("chk3")).to_str().unwrap().to_string();
    let inspect = weir(d, &["checkpoints", "inspect", &restore, "--json"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let details: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let rows = details["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "rows")
        .unwrap();
    assert_eq!(rows["parallelism"], 3);
    let split: serde_json::Value =
        serde_json::from_str(rows["subtasks"][0]["source_splits"][0].as_str().unwrap()).unwrap();
    assert_eq!(split["file"], "data.csv", "{split}");

    let third = weir(
        d,
        &[
            "run",
            "job.toml",
            "--restore",
            &restore,
            "--set",
            "job.parallelism=1",
            "--set",
            "checkpoint.dir=\"chk1\"",
            "--no-progress",
        ],
    );
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(printed_sums(&third), expected_file_sums());
}

fn generator_topology(dir: &Path, sum_id: &str) {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            r#"
[job]
parallelism = 2

[checkpoint]
dir = "chk"
interval_ms = 30
retain = 3

[[source]]
id = "numbers"
type = "generator"
count = {RECORDS}
rate = 150000
fields = {{ key = "i % {KEYS}", value = "i" }}

[[operator]]
id = "by_key"
type = "key_by"
input = "numbers"
key = "key"

[[operator]]
id = "{sum_id}"
type = "sum"
input = "by_key"
field = "value"
output = "sum"

[[sink]]
id = "out"
type = "stdout"
input = "{sum_id}"
"#
        ),
    )
    .unwrap();
}

/// A flipped byte in the newest checkpoint's state file: `list` and `inspect` call
/// it damaged and name the file, and a rerun resumes from the one before it with a
/// warning naming the file, ending with exact sums.
#[test]
fn a_corrupt_latest_checkpoint_is_listed_as_damaged_and_skipped_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generator_topology(d, "sum");
    let first = weir(d, &["run", "job.toml", "--no-progress"]);
    assert!(first.status.success(), "{}", stderr(&first));

    let list = weir(d, &["checkpoints", "list", "chk", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert!(listed.len() >= 2, "{listed:?}");
    assert!(listed.iter().all(|c| c["status"] == "valid"), "{listed:?}");
    let newest = listed.last().unwrap()["id"].as_u64().unwrap();
    let previous = listed[listed.len() - 2]["id"].as_u64().unwrap();

    // Flip a byte in the middle of subtask 0's keyed state file.
    let chk = d.join(format!("chk/chk-{newest}"));
    let state_file = std::fs::read_dir(&chk)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("sum-0"))
        .expect("a keyed state file of subtask 0");
    let path = chk.join(&state_file);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let damaged_file = format!("chk-{newest}/{state_file}");

    let table = weir(d, &["checkpoints", "list", "chk"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("id  completed"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{newest} ")))
        .unwrap();
    assert!(
        row.contains("damaged: corrupt state file") && row.contains(&damaged_file),
        "{row}"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with(&format!("{previous} ")) && l.ends_with("valid")));

    let inspect = weir(d, &["checkpoints", "inspect", &format!("chk/chk-{newest}")]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.starts_with(&format!("checkpoint {newest} (chk/chk-{newest}): damaged:")),
        "{text}"
    );
    assert!(text.contains("operator `sum`: parallelism 2, max parallelism 128"));
    assert!(text.contains("0..64") && text.contains("64..128"), "{text}");
    assert!(text.contains("key_groups_file, 1 file"), "{text}");
    assert!(text.contains("source splits of subtask 1 (64):"), "{text}");
    assert!(text.contains(r#"{"split":1,"of":128,"next":"#), "{text}");

    let resumed = weir(d, &["run", "job.toml", "--no-progress"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let log = stderr(&resumed);
    assert!(
        log.contains("skipping a damaged checkpoint") && log.contains(&damaged_file),
        "{log}"
    );
    assert!(
        log.contains(&format!("resuming from checkpoint checkpoint={previous}")),
        "{log}"
    );
    // A source subtask may have been exhausted already at that checkpoint (exhausted
    // sources still checkpoint): its keys print nothing again. Every key the resumed
    // run prints ends at its exact sum.
    let resumed_sums = printed_sums(&resumed);
    let expected = expected_sums();
    assert!(!resumed_sums.is_empty());
    for (key, sum) in resumed_sums {
        assert_eq!(Some(&sum), expected.get(&key), "key {key}");
    }
}

#[test]
fn a_restore_is_refused_without_metadata_or_with_operators_the_job_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generator_topology(d, "sum");
    let first = weir(d, &["run", "job.toml", "--no-progress"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let checkpoint = latest(&d.join("chk"));
    let restore = checkpoint.to_str().unwrap();

    // An incomplete checkpoint: no _metadata.
    std::fs::create_dir_all(d.join("chk/chk-999")).unwrap();
    let none = weir(d, &["run", "job.toml", "--restore", "chk/chk-999"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("cannot restore: chk/chk-999 is not a valid checkpoint")
            && stderr(&none).contains("chk-999/_metadata is missing"),
        "{}",
        stderr(&none)
    );
    let list = weir(d, &["checkpoints", "list", "chk"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("999 ")
            && l.contains("-")
            && l.contains("incomplete: no _metadata")),
        "{text}"
    );
    std::fs::remove_dir_all(d.join("chk/chk-999")).unwrap();

    // The sum operator renamed: its state has no home.
    generator_topology(d, "total");
    let renamed = weir(
        d,
        &["run", "job.toml", "--restore", restore, "--no-progress"],
    );
    assert_eq!(renamed.status.code(), Some(2), "{}", stderr(&renamed));
    assert!(
        stderr(&renamed).contains("holds state of `sum`, which this job does not have"),
        "{}",
        stderr(&renamed)
    );
    let allowed = weir(
        d,
        &[
            "run",
            "job.toml",
            "--restore",
            restore,
            "--allow-non-restored-state",
            "--no-progress",
        ],
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    // The source resumed, the renamed sum started empty: only the tail is summed.
    let sums = printed_sums(&allowed);
    assert!(sums.values().sum::<i64>() < expected_sums().values().sum::<i64>());
}
