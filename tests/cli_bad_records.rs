//! Bad records through the `weir` binary, one test per policy: `fail` (the default)
//! stops the job naming file and line (exit 1), `skip` counts and logs and goes on,
//! `dead_letter` writes the raw record and the reason to a file. Plus failures of
//! operator code at run time: exit 1 with the operator, the subtask and the cause.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 10 data rows; rows 4 (line 5: `x` is not an int) and 7 (line 8: too few fields)
/// are bad.
const PEOPLE: &str =
    "name,age\nada,36\nbob,41\ncy,29\ndee,x\neve,52\nfay,33\ngus\nhal,61\nivy,19\njo,25\n";

fn topology(source_extra: &str) -> String {
    format!(
        r#"
[job]
parallelism = 2

[[source]]
id = "people"
type = "file"
path = "people.csv"
schema = {{ name = "string", age = "int" }}
{source_extra}

[[operator]]
id = "older"
type = "map"
input = "people"
set = {{ next_year = "age + 1" }}

[[sink]]
id = "out"
type = "stdout"
input = "older"
parallelism = 1
"#
    )
}

fn setup(source_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("people.csv"), PEOPLE).unwrap();
    std::fs::write(dir.path().join("t.toml"), topology(source_extra)).unwrap();
    dir
}

fn names(stdout: &str) -> Vec<String> {
    let mut v: Vec<String> = stdout
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                j["next_year"].as_i64().unwrap(),
                j["age"].as_i64().unwrap() + 1
            );
            j["name"].as_str().unwrap().to_string()
        })
        .collect();
    v.sort();
    v
}

const GOOD: &[&str] = &["ada", "bob", "cy", "eve", "fay", "hal", "ivy", "jo"];

#[test]
fn fail_is_the_default_and_names_file_and_line() {
    let dir = setup("");
    let (code, _, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    // Subtask 2 of 2 reads odd line numbers (0-based 4 = line 5); subtask 1 reads line 8.
    let line5 = "bad record at people.csv:5: field `age` should be an int, found \"x\"";
    let line8 = "bad record at people.csv:8: expected 2 CSV fields (name, age), found 1";
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        error.starts_with("error: job `t` failed: operator people (subtask "),
        "{error}"
    );
    assert!(error.contains(line5) || error.contains(line8), "{error}");
    assert!(
        error.ends_with("(on_error = \"fail\"; set on_error = \"skip\" or \"dead_letter\" on source `people` to continue past bad records)"),
        "{error}"
    );
    let explicit = setup("on_error = \"fail\"");
    let (code, _, _) = run_in(explicit.path(), &["run", "t.toml"]);
    assert_eq!(code, 1);
}

#[test]
fn skip_counts_logs_and_goes_on() {
    let dir = setup("on_error = \"skip\"");
    let (code, stdout, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), GOOD);
    assert!(stderr.contains("people: 2 bad records skipped"), "{stderr}");
    assert!(
        stderr.contains(
            "skipped a bad record at people.csv:5: field `age` should be an int, found \"x\""
        ),
        "logged:\n{stderr}"
    );
    assert!(
        stderr.contains(
            "skipped a bad record at people.csv:8: expected 2 CSV fields (name, age), found 1"
        ),
        "logged:\n{stderr}"
    );
}

#[test]
fn dead_letter_writes_raw_record_and_reason() {
    let dir = setup("on_error = \"dead_letter\"\ndead_letter_path = \"bad/people.jsonl\"");
    let (code, stdout, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), GOOD);
    assert!(
        stderr.contains("people: 2 bad records written to the dead-letter file"),
        "{stderr}"
    );
    let dead = std::fs::read_to_string(dir.path().join("bad/people.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|j| j["location"].as_str().unwrap().to_string());
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"source": "people", "location": "people.csv:5", "reason": "field `age` should be an int, found \"x\"", "record": "dee,x"}),
            serde_json::json!({"source": "people", "location": "people.csv:8", "reason": "expected 2 CSV fields (name, age), found 1", "record": "gus"}),
        ]
    );
}

#[test]
fn dead_letter_needs_a_path() {
    let dir = setup("on_error = \"dead_letter\"");
    let (code, _, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(
            "error: t.toml:10:12: on_error = \"dead_letter\" needs a `dead_letter_path`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: add `dead_letter_path = \"dead_letters.jsonl\"`"),
        "{stderr}"
    );
    let dir = setup("on_error = \"ignore\"");
    let (code, _, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: t.toml:10:12: unknown on_error policy `ignore`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: use one of: fail, skip, dead_letter"),
        "{stderr}"
    );
}

#[test]
fn json_lines_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"user\":\"a\",\"n\":1}\n{\"user\":\"b\",\"n\":\n{\"user\":\"c\"}\n{\"user\":\"d\",\"n\":\"4\"}\n{\"user\":\"e\",\"n\":5}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        r#"
[job]
parallelism = 1

[[source]]
id = "events"
type = "file"
path = "events.jsonl"
schema = { user = "string", n = "int" }
on_error = "dead_letter"
dead_letter_path = "dead.jsonl"

[[sink]]
id = "out"
type = "stdout"
input = "events"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "{\"user\":\"a\",\"n\":1}\n{\"user\":\"e\",\"n\":5}\n"
    );
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("dead.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|j| {
            (
                j["location"].as_str().unwrap(),
                j["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "events.jsonl:2",
                "invalid JSON: EOF while parsing a value (column 16)"
            ),
            ("events.jsonl:3", "missing field `n` (int)"),
            (
                "events.jsonl:4",
                "field `n` should be an int, found string \"4\""
            ),
        ]
    );
    assert_eq!(dead[0]["record"], "{\"user\":\"b\",\"n\":");
}

#[test]
fn operator_failure_names_operator_subtask_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nums.csv"), "a,b\n1,2\n3,0\n5,6\n").unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        r#"
[job]
parallelism = 1

[[source]]
id = "nums"
type = "file"
path = "nums.csv"

[[operator]]
id = "ratio"
type = "map"
input = "nums"
set = { r = "a / b" }

[[sink]]
id = "out"
type = "null"
input = "ratio"
"#,
    )
    .unwrap();
    let (code, _, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert_eq!(
        error,
        "error: job `t` failed: operator ratio (subtask 0) failed: division by zero in `3 / 0`, in `a / b`"
    );
}
