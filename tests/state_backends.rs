//! Keyed state lives in the job's state backend: the same jobs give the same exact
//! results on the memory and the RocksDB backend, through the typed API and TOML.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use weir::config::StateBackendChoice;
use weir::{Context, JobConfig, Sink, Source, SourcePoll, StreamJob, SubtaskInfo};

struct Words {
    words: Arc<Vec<String>>,
    next: usize,
    step: usize,
}

impl Source for Words {
    type Out = String;
    fn poll(&mut self, ctx: &mut Context<'_, String>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max {
            let Some(word) = self.words.get(self.next) else {
                return Ok(SourcePoll::Finished);
            };
            ctx.emit(word.clone());
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

struct Latest(Arc<Mutex<BTreeMap<String, Vec<u64>>>>);
impl Sink for Latest {
    type In = (String, u64);
    fn write(&mut self, (word, count): (String, u64)) -> anyhow::Result<()> {
        self.0.lock().unwrap().entry(word).or_default().push(count);
        Ok(())
    }
}

fn words() -> Arc<Vec<String>> {
    // 2,000 distinct words, word w appearing (w % 7) + 1 times.
    Arc::new(
        (0..2_000u32)
            .flat_map(|w| std::iter::repeat_n(format!("w{w}"), (w % 7) as usize + 1))
            .collect(),
    )
}

fn counts(
    backend: StateBackendChoice,
    parallelism: u32,
    state_dir: Option<std::path::PathBuf>,
) -> BTreeMap<String, Vec<u64>> {
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let config = JobConfig {
        parallelism,
        workers: 2,
        state_backend: backend,
        state_dir,
        ..JobConfig::default()
    };
    let job = StreamJob::new(config);
    let (input, sink) = (words(), out.clone());
    job.source("words", move |info: &SubtaskInfo| Words {
        words: input.clone(),
        next: info.index as usize,
        step: info.parallelism as usize,
    })
    .map("one", |w| (w, 1u64))
    .key_by(|(w, _)| w.clone())
    .reduce("count", |(w, a), (_, b)| (w.clone(), a + b))
    .sink("latest", move |_| Latest(sink.clone()));
    job.run().expect("job runs");
    let mut result = out.lock().unwrap().clone();
    result
        .values_mut()
        .for_each(|counts| counts.sort_unstable());
    result
}

#[test]
fn rocksdb_and_memory_backends_give_the_same_exact_running_counts() {
    let expected: BTreeMap<String, Vec<u64>> = (0..2_000u64)
        .map(|w| (format!("w{w}"), (1..=(w % 7) + 1).collect()))
        .collect();
    for parallelism in [1, 2, 4] {
        assert_eq!(
            counts(StateBackendChoice::Memory, parallelism, None),
            expected,
            "memory, p={parallelism}"
        );
        assert_eq!(
            counts(StateBackendChoice::RocksDb, parallelism, None),
            expected,
            "rocksdb, p={parallelism}"
        );
    }
}

#[test]
fn rocksdb_state_lives_in_the_state_dir_per_subtask() {
    let dir = tempfile::tempdir().unwrap();
    counts(
        StateBackendChoice::RocksDb,
        2,
        Some(dir.path().to_path_buf()),
    );
    // Each attempt (a restart is a new one) works in a directory of its own.
    let attempt = dir.path().join("attempt-0");
    let mut subtask_dirs: Vec<String> = std::fs::read_dir(&attempt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("count-"))
        .collect();
    subtask_dirs.sort();
    assert_eq!(subtask_dirs, vec!["count-0", "count-1"]);
    assert!(
        attempt.join("count-0/db").is_dir(),
        "a RocksDB database per keyed subtask"
    );
}

#[test]
fn a_toml_job_on_rocksdb_matches_the_memory_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..3_000)
        .map(|i| format!("alpha beta w{} gamma w{}\n", i % 50, i % 13))
        .collect();
    std::fs::write(dir.path().join("in.txt"), text).unwrap();
    let topology = dir.path().join("job.toml");
    std::fs::write(
        &topology,
        r#"
[job]
parallelism = 3

[[source]]
id = "lines"
type = "file"
path = "in.txt"

[[operator]]
id = "words"
type = "flat_map"
input = "lines"
field = "line"

[[operator]]
id = "by_word"
type = "key_by"
input = "words"
key = "word"

[[operator]]
id = "counts"
type = "count"
input = "by_word"

[[sink]]
id = "out"
type = "stdout"
input = "counts"
"#,
    )
    .unwrap();
    let run = |backend: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", topology.to_str().unwrap(), "--no-progress", "--set"])
            .arg(format!("job.state_backend=\"{backend}\""))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    let memory = run("memory");
    assert_eq!(memory.len(), 3_000 * 5);
    assert_eq!(run("rocksdb"), memory);
}

#[test]
fn an_unknown_state_backend_is_a_clear_topology_error() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("job.toml");
    std::fs::write(
        &topology,
        "[job]\nstate_backend = \"rocksbd\"\n\n[[source]]\nid = \"g\"\ntype = \"generator\"\ncount = 1\n\n[[sink]]\nid = \"n\"\ntype = \"null\"\ninput = \"g\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["validate", topology.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("job.toml:2:17: unknown state_backend `rocksbd`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `rocksdb`?"), "{stderr}");
}

#[test]
fn a_temporary_state_dir_is_removed_when_the_job_ends() {
    let job = StreamJob::new(JobConfig {
        name: "tempdir cleanup".into(),
        parallelism: 2,
        state_backend: StateBackendChoice::RocksDb,
        ..JobConfig::default()
    });
    let input = words();
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = out.clone();
    job.source("words", move |info: &SubtaskInfo| Words {
        words: input.clone(),
        next: info.index as usize,
        step: info.parallelism as usize,
    })
    .map("one", |w| (w, 1u64))
    .key_by(|(w, _)| w.clone())
    .reduce("count", |(w, a), (_, b)| (w.clone(), a + b))
    .sink("latest", move |_| Latest(sink.clone()));
    job.run().unwrap();
    let prefix = format!("weir-tempdir_cleanup-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(out.lock().unwrap().len(), 2_000);
}
