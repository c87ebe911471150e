//! The TOML exactly-once file sink: a checkpointed keyed sum written as part files,
//! with `weir run` killed (SIGKILL) twice and run again to the end. The committed
//! parts hold every running sum exactly once; nothing hidden is left behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const COUNT: i64 = 400_000;

fn topology_toml(format: &str) -> String {
    format!(
        r#"
[job]
parallelism = 2

[checkpoint]
dir = "chk"
interval_ms = 50

[[source]]
id = "numbers"
type = "generator"
count = {COUNT}
rate = 200000
# One split per subtask: each key's records come from one split in order, so every
# running sum is the same in any run.
splits = 2
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
type = "file"
input = "sum"
path = "out"
semantics = "exactly_once"
format = "{format}"
roll_bytes = 65536
"#
    )
}

fn weir_run(topology: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .args(["run", topology.to_str().unwrap(), "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Every running sum of a failure-free run: per key, the sums after each record.
fn expected() -> Vec<(i64, i64)> {
    let mut sums: BTreeMap<i64, i64> = BTreeMap::new();
    let mut all: Vec<(i64, i64)> = (0..COUNT)
        .map(|i| {
            let sum = sums.entry(i % 100).or_default();
            *sum += i;
            (i % 100, *sum)
        })
        .collect();
    all.sort();
    all
}

fn visible_and_hidden(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names.into_iter().partition(|n| !n.starts_with('.'))
}

#[test]
fn a_killed_weir_run_rerun_to_the_end_commits_every_sum_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("job.toml");
    std::fs::write(&topology, topology_toml("json")).unwrap();
    for after_ms in [700, 400] {
        let mut child = weir_run(&topology).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(after_ms));
        child.kill().unwrap(); // SIGKILL: in-progress and pending parts stay behind
        child.wait().unwrap();
    }
    let (committed_before, _) = visible_and_hidden(&dir.path().join("out"));
    assert!(
        !committed_before.is_empty(),
        "the killed runs committed parts that the last run must not write again"
    );
    let output = weir_run(&topology).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = dir.path().join("out");
    let (visible, hidden) = visible_and_hidden(&out);
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
    assert!(visible
        .iter()
        .all(|n| n.starts_with("part-") && n.ends_with(".jsonl")));
    let mut sums: Vec<(i64, i64)> = visible
        .iter()
        .flat_map(|name| {
            std::fs::read_to_string(out.join(name))
                .unwrap()
                .lines()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    (v["key"].as_i64().unwrap(), v["sum"].as_i64().unwrap())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    sums.sort();
    assert_eq!(sums.len(), expected().len(), "no sum lost or doubled");
    assert_eq!(sums, expected());
}

#[test]
fn csv_parts_each_carry_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let topology_path = dir.path().join("job.toml");
    let text = topology_toml("csv").replace(&format!("count = {COUNT}"), "count = 20000");
    std::fs::write(&topology_path, text).unwrap();
    let output = weir_run(&topology_path).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = dir.path().join("out");
    let (visible, hidden) = visible_and_hidden(&out);
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
    let mut rows = 0;
    for name in &visible {
        assert!(name.ends_with(".csv"), "{name}");
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("key,sum"), "{name}");
        rows += lines.count();
    }
    assert_eq!(rows, 20_000);
}
