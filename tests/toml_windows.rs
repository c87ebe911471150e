//! TOML window nodes end to end through `weir run`: tumbling, sliding and session
//! windows over a generator with event time, each result equal to a batch
//! computation over the input minus the records the window reported late (which
//! must all be the deliberately late ones); and the topology errors of window nodes.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");
const RECORDS: i64 = 6_000;

fn weir(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bursts of 200 records 10 ms apart, 5 s of silence between bursts; every 50th
/// record claims event time 0 (late once the watermark has passed its windows).
fn event_time(i: i64) -> i64 {
    if i % 50 == 49 {
        0
    } else {
        i * 10 + (i / 200) * 5_000
    }
}

const TOPOLOGY: &str = r#"
[job]
parallelism = 2

[[source]]
id = "events"
type = "generator"
count = 6000
fields = { i = "i", user = "i % 3", amount = "i % 13", ts = "(i * 10 + (i / 200) * 5000) * (1 - i % 50 / 49)" }
timestamp = "ts"
out_of_orderness = "100ms"
# A watermark after every batch, so the late records are late however fast the run.
watermark_interval = 0
# One source subtask: with two, the window's watermark is the minimum over both
# channels, and a slow-starting subtask can hold it back until every late record
# has gone through (no record late at all).
parallelism = 1

[[operator]]
id = "by_user"
type = "key_by"
input = "events"
key = ["user"]

[[operator]]
id = "tumbling"
type = "window"
input = "by_user"
kind = "tumbling"
size = "1s"
aggregate = "sum"
field = "amount"
output = "total"
late = "tumbling_late"

[[operator]]
id = "sessions"
type = "window"
input = "by_user"
kind = "session"
gap = "1s"
aggregate = "count"
late = "sessions_late"

[[operator]]
id = "on_time"
type = "filter"
input = "events"
where = "i % 50 != 49"

[[operator]]
id = "on_time_by_user"
type = "key_by"
input = "on_time"
key = ["user"]

[[operator]]
id = "sliding"
type = "window"
input = "on_time_by_user"
kind = "sliding"
size = "2s"
slide = "500ms"
aggregate = "max"
field = "amount"

[[sink]]
id = "tumbling_out"
type = "file"
path = "tumbling.jsonl"
input = "tumbling"
parallelism = 1

[[sink]]
id = "tumbling_late"
type = "file"
path = "tumbling_late.jsonl"
input = "tumbling"
parallelism = 1

[[sink]]
id = "sessions_out"
type = "file"
path = "sessions.jsonl"
input = "sessions"
parallelism = 1

[[sink]]
id = "sessions_late"
type = "file"
path = "sessions_late.jsonl"
input = "sessions"
parallelism = 1

[[sink]]
id = "sliding_out"
type = "file"
path = "sliding.jsonl"
input = "sliding"
parallelism = 1
"#;

fn lines(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// (user, window_start, window_end) -> value
fn results(dir: &Path, file: &str, output: &str) -> BTreeMap<(i64, i64, i64), i64> {
    let mut out = BTreeMap::new();
    for r in lines(dir, file) {
        let key = (
            int(&r, "user"),
            int(&r, "window_start"),
            int(&r, "window_end"),
        );
        assert!(
            out.insert(key, int(&r, output)).is_none(),
            "window {key:?} emitted twice"
        );
    }
    out
}

fn late(dir: &Path, file: &str) -> BTreeSet<i64> {
    let records = lines(dir, file);
    let ids: BTreeSet<i64> = records.iter().map(|r| int(r, "i")).collect();
    assert_eq!(ids.len(), records.len());
    for i in &ids {
        assert_eq!(i % 50, 49, "record {i} is not one of the late ones");
    }
    ids
}

#[test]
fn toml_windows_equal_the_batch_computation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("windows.toml"), TOPOLOGY).unwrap();
    let (code, stderr) = weir(dir.path(), &["run", "windows.toml"]);
    assert_eq!(code, 0, "{stderr}");

    // (i, user, amount, ts)
    let input: Vec<(i64, i64, i64, i64)> = (0..RECORDS)
        .map(|i| (i, i % 3, i % 13, event_time(i)))
        .collect();

    let tumbling_late = late(dir.path(), "tumbling_late.jsonl");
    assert!(!tumbling_late.is_empty(), "some records were late");
    let mut tumbling = BTreeMap::new();
    for &(i, user, amount, ts) in &input {
        if !tumbling_late.contains(&i) {
            let start = ts.div_euclid(1000) * 1000;
            *tumbling.entry((user, start, start + 1000)).or_insert(0) += amount;
        }
    }
    assert_eq!(results(dir.path(), "tumbling.jsonl", "total"), tumbling);

    let sessions_late = late(dir.path(), "sessions_late.jsonl");
    let mut per_user: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &(i, user, _, ts) in &input {
        if !sessions_late.contains(&i) {
            per_user.entry(user).or_default().push(ts);
        }
    }
    let mut sessions = BTreeMap::new();
    for (user, mut times) in per_user {
        times.sort_unstable();
        let mut current: Option<(i64, i64, i64)> = None; // start, end, count
        for t in times {
            current = match current {
                Some((s, e, n)) if t <= e => Some((s, e.max(t + 1000), n + 1)),
                Some((s, e, n)) => {
                    sessions.insert((user, s, e), n);
                    Some((t, t + 1000, 1))
                }
                None => Some((t, t + 1000, 1)),
            };
        }
        let (s, e, n) = current.unwrap();
        sessions.insert((user, s, e), n);
    }
    assert_eq!(results(dir.path(), "sessions.jsonl", "count"), sessions);

    let mut sliding = BTreeMap::new();
    for &(i, user, amount, ts) in &input {
        if i % 50 == 49 {
            continue;
        }
        let mut start = ts.div_euclid(500) * 500;
        while start > ts - 2000 {
            let max = sliding
                .entry((user, start, start + 2000))
                .or_insert(i64::MIN);
            *max = (*max).max(amount);
            start -= 500;
        }
    }
    assert_eq!(results(dir.path(), "sliding.jsonl", "max"), sliding);
}

fn error_of(topology: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), topology).unwrap();
    let (code, stderr) = weir(dir.path(), &["validate", "bad.toml"]);
    assert_eq!(code, 2, "{stderr}");
    stderr
}

fn with_window(source_extra: &str, window: &str) -> String {
    format!(
        r#"[[source]]
id = "events"
type = "generator"
count = 10
fields = {{ user = "i % 3", ts = "i" }}
{source_extra}

[[operator]]
id = "by_user"
type = "key_by"
input = "events"
key = ["user"]

[[operator]]
id = "w"
type = "window"
input = "by_user"
{window}

[[sink]]
id = "out"
type = "null"
input = "w"
"#
    )
}

#[test]
fn window_topology_errors_point_at_the_setting_and_say_how_to_fix_it() {
    let timed = "timestamp = \"ts\"";
    let e = error_of(&with_window(
        "",
        "kind = \"tumbling\"\nsize = \"1s\"\naggregate = \"count\"",
    ));
    assert!(e.contains("bad.toml:15:6"), "{e}");
    assert!(
        e.contains("works in event time, but source `events` gives its records none"),
        "{e}"
    );
    assert!(e.contains("fix: add `timestamp = \"FIELD\"`"), "{e}");

    let e = error_of(&with_window(
        timed,
        "kind = \"tumbeling\"\nsize = \"1s\"\naggregate = \"count\"",
    ));
    assert!(e.contains("bad.toml:18:8"), "{e}");
    assert!(
        e.contains("unknown window kind `tumbeling`") && e.contains("did you mean `tumbling`?"),
        "{e}"
    );

    let e = error_of(&with_window(
        timed,
        "kind = \"sliding\"\nsize = \"1m\"\nslide = \"2m\"\naggregate = \"count\"",
    ));
    assert!(
        e.contains("exceeds the window size") && e.contains("fix: make `slide` at most `size`"),
        "{e}"
    );

    let e = error_of(&with_window(
        timed,
        "kind = \"tumbling\"\nsize = \"5 parsecs\"\naggregate = \"count\"",
    ));
    assert!(
        e.contains("`size` in operator `w` must be a duration, found \"5 parsecs\""),
        "{e}"
    );
    assert!(e.contains("units: ms, s, m, h, d"), "{e}");

    let e = error_of(&with_window(
        timed,
        "kind = \"session\"\ngap = \"1s\"\naggregate = \"sum\"",
    ));
    assert!(e.contains("operator `w` needs `field`"), "{e}");

    let e = error_of(&with_window(
        timed,
        "kind = \"session\"\ngap = \"1s\"\naggregate = \"count\"\nlate = \"outt\"",
    ));
    assert!(
        e.contains("`late` of window `w` names `outt`, which is not a sink")
            && e.contains("did you mean `out`?"),
        "{e}"
    );

    let e = error_of(&with_window(
        timed,
        "kind = \"tumbling\"\nsize = \"1s\"\naggregate = \"count\"\ntimestamp = \"tss\"",
    ));
    assert!(e.contains("bad.toml:21:13"), "{e}");
    assert!(
        e.contains("reads field `tss` (in `timestamp`)") && e.contains("did you mean `ts`?"),
        "{e}"
    );

    let e = error_of(&with_window(
        timed,
        "kind = \"tumbling\"\nsize = \"1s\"\naggregate = \"count\"\ntime = \"processing\"\nallowed_lateness = \"1s\"",
    ));
    assert!(
        e.contains("processing-time windows have no late records"),
        "{e}"
    );
}

#[test]
fn processing_time_windows_need_no_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let topology = with_window(
        "",
        "kind = \"tumbling\"\nsize = \"50ms\"\naggregate = \"count\"\ntime = \"processing\"",
    )
    .replace("count = 10", "count = 3000\nrate = 10000")
    .replace(
        "type = \"null\"",
        "type = \"file\"\npath = \"out.jsonl\"\nparallelism = 1",
    );
    std::fs::write(dir.path().join("job.toml"), topology).unwrap();
    let (code, stderr) = weir(dir.path(), &["run", "job.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let results = lines(dir.path(), "out.jsonl");
    // Windows still open when the input ends do not fire (as in Flink).
    let counted: i64 = results.iter().map(|r| int(r, "count")).sum();
    assert!((1..=3000).contains(&counted), "{counted}");
    let mut seen = BTreeSet::new();
    for r in &results {
        let (start, end) = (int(r, "window_start"), int(r, "window_end"));
        assert_eq!((end - start, start % 50), (50, 0), "{r}");
        assert!(seen.insert((int(r, "user"), start)), "{r} fired twice");
    }
}
