//! One test per class of bad topology (and bad usage): the `weir` binary prints ONE
//! message naming the file, line and column, the problem and the fix, exits with 2,
//! and neither panics nor prints a backtrace. `validate` and `run` agree.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

const BASE: &str = r#"[job]
name = "t"
parallelism = 2

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
type = "null"
input = "counts"
"#;

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

/// Writes `toml` as t.toml next to an input file, runs `validate` and `run`, checks
/// exit code 2, a clean single message, and returns it.
fn bad(toml: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "a b c\n").unwrap();
    std::fs::write(dir.path().join("t.toml"), toml).unwrap();
    let mut first = None;
    for cmd in ["validate", "run"] {
        let mut args = vec![cmd, "t.toml"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_in(dir.path(), &args);
        assert_eq!(code, 2, "{cmd}: exit code; stderr:\n{stderr}");
        assert_eq!(stdout, "", "{cmd}: nothing on stdout");
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{cmd}: {stderr}");
        assert!(!stderr.contains("INFO"), "{cmd}: no job started: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{cmd}: one message:\n{stderr}"
        );
        match &first {
            None => first = Some(stderr),
            Some(f) => assert_eq!(f, &stderr, "validate and run report the same"),
        }
    }
    first.unwrap()
}

/// Asserts the message's first line and its fix line.
fn assert_message(stderr: &str, first_line: &str, fix: &str) {
    assert_eq!(
        stderr.lines().next(),
        Some(first_line),
        "full message:\n{stderr}"
    );
    let fix_line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("fix: "))
        .unwrap_or_else(|| panic!("no fix in:\n{stderr}"));
    assert_eq!(
        fix_line.trim_start(),
        format!("fix: {fix}"),
        "full message:\n{stderr}"
    );
}

#[test]
fn toml_syntax_error() {
    let e = bad(&BASE.replace("parallelism = 2", "parallelism = "), &[]);
    assert!(
        e.starts_with("error: t.toml:3:15: TOML syntax error: "),
        "{e}"
    );
    assert!(e.contains("3 | parallelism = \n"), "quotes the line:\n{e}");
    assert!(e.contains("fix: correct the TOML syntax"), "{e}");
}

#[test]
fn unknown_key_suggests_the_closest() {
    let e = bad(&BASE.replace("field = \"line\"", "feild = \"line\""), &[]);
    assert_message(
        &e,
        "error: t.toml:14:1: unknown key `feild` in operator `words`",
        "did you mean `field`?",
    );
    let e = bad(&BASE.replace("parallelism = 2", "paralelism = 2"), &[]);
    assert_message(
        &e,
        "error: t.toml:3:1: unknown key `paralelism` in [job]",
        "did you mean `parallelism`?",
    );
    assert!(
        e.contains("3 | paralelism = 2\n  | ^^^^^^^^^^\n"),
        "caret under the key:\n{e}"
    );
    let e = bad(
        &BASE.replace("type = \"null\"", "type = \"null\"\nformat = \"csv\""),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:30:1: unknown key `format` in sink `out`",
        "the keys of sink `out` are: id, type, input, inputs, parallelism",
    );
}

#[test]
fn missing_required_key() {
    let e = bad(&BASE.replace("field = \"line\"\n", ""), &[]);
    assert_message(
        &e,
        "error: t.toml:10:1: operator `words` needs `field`",
        "add `field = \"line\"`",
    );
}

#[test]
fn wrong_type() {
    let e = bad(
        &BASE.replace("parallelism = 2", "parallelism = \"two\""),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:3:15: `parallelism` in [job] must be an integer, found a string",
        "write it like `parallelism = 2`",
    );
    let e = bad(&BASE.replace("key = \"word\"", "key = [1]"), &[]);
    assert_message(
        &e,
        "error: t.toml:20:8: `key` in operator `by_word` must be a list of strings, found an integer",
        "write it like `key = [\"word\"]`",
    );
}

#[test]
fn unknown_input() {
    let e = bad(&BASE.replace("input = \"words\"", "input = \"wrods\""), &[]);
    assert_message(
        &e,
        "error: t.toml:19:9: operator `by_word` reads from `wrods`, which is not a node",
        "did you mean `words`?",
    );
}

#[test]
fn dangling_output() {
    let toml = BASE.replace("input = \"counts\"", "input = \"by_word\"");
    let e = bad(&toml, &[]);
    assert_message(
        &e,
        "error: t.toml:23:6: the output of operator `counts` goes nowhere",
        "add a sink that reads it, e.g. [[sink]] id = \"counts_out\", type = \"null\", input = \"counts\" (or remove the node)",
    );
    let e = bad(&BASE.replace("input = \"lines\"", ""), &[]);
    assert_message(
        &e,
        "error: t.toml:11:6: operator `words` has no input",
        "add `input = \"ID\"` naming the node it reads from (after `id = \"words\"`)",
    );
}

#[test]
fn cycle() {
    let e = bad(
        &BASE.replace("input = \"lines\"", "inputs = [\"lines\", \"counts\"]"),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:19:9: the graph has a cycle: words -> by_word -> counts -> words",
        "topologies are acyclic: make `by_word` read from a node that does not depend on it",
    );
}

#[test]
fn duplicate_id() {
    let e = bad(
        &BASE
            .replace("id = \"counts\"", "id = \"words\"")
            .replace("input = \"counts\"", "input = \"words\""),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:23:6: duplicate id `words` (first used on line 11)",
        "every node needs its own id: rename this operator (e.g. `words_2`)",
    );
}

#[test]
fn missing_input_file() {
    let e = bad(&BASE.replace("in.txt", "missing.txt"), &[]);
    assert!(
        e.starts_with("error: t.toml:8:8: cannot read input file `missing.txt` (resolved to "),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(e.contains("fix: check the path; relative paths are resolved against the topology file's directory"), "{e}");
}

#[test]
fn parallelism_above_max_parallelism() {
    let e = bad(
        &BASE.replace("type = \"count\"", "type = \"count\"\nparallelism = 200"),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:25:15: counts.parallelism = 200 is above job.max_parallelism = 128",
        "lower it to at most 128, or raise max_parallelism in [job] (the number of key groups, up to 32768)",
    );
    let e = bad(BASE, &["--set", "job.max_parallelism=1"]);
    assert_message(
        &e,
        "error: t.toml:3:15: job.parallelism = 2 is above job.max_parallelism = 1",
        "lower it to at most 1, or raise max_parallelism in [job] (the number of key groups, up to 32768)",
    );
}

#[test]
fn invalid_expression_points_into_the_string() {
    let toml = BASE.replace(
        "[[operator]]\nid = \"by_word\"",
        "[[operator]]\nid = \"short\"\ntype = \"filter\"\ninput = \"words\"\nwhere = 'len(word) >> 3'\n\n[[operator]]\nid = \"by_word\"",
    )
    .replace("input = \"words\"\nkey", "input = \"short\"\nkey");
    let e = bad(&toml, &[]);
    assert!(
        e.starts_with(
            "error: t.toml:20:21: invalid expression in `where`: expected a value, found `>`"
        ),
        "{e}"
    );
    assert!(
        e.contains("20 | where = 'len(word) >> 3'\n   |                     ^\n"),
        "{e}"
    );
}

#[test]
fn unknown_type_and_wrong_section() {
    let e = bad(
        &BASE.replace("type = \"flat_map\"", "type = \"flatmap\""),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:12:8: unknown operator type `flatmap`",
        "did you mean `flat_map`?",
    );
    let e = bad(&BASE.replace("type = \"null\"", "type = \"count\""), &[]);
    assert_message(
        &e,
        "error: t.toml:29:8: unknown sink type `count`",
        "`count` is an operator type: declare it under [[operator]]",
    );
}

#[test]
fn aggregation_without_key_by() {
    let e = bad(
        &BASE
            .replace("input = \"by_word\"", "input = \"words\"")
            .replace("input = \"words\"\nkey", "input = \"lines\"\nkey"),
        &[],
    );
    assert!(
        e.starts_with(
            "error: t.toml:25:9: count `counts` needs a keyed input, but `words` is not a key_by"
        ),
        "{e}"
    );
}

#[test]
fn bad_overrides() {
    let e = bad(BASE, &["--set", "job.parallelism=0"]);
    assert_message(
        &e,
        "error: --set job.parallelism=0: `parallelism` in [job] must be between 1 and 32768, found 0 (topology t.toml)",
        "write it like `parallelism = 2`",
    );
    let e = bad(BASE, &["--set", "count.parallelism=2"]);
    assert_message(
        &e,
        "error: --set count.parallelism=2: no node has the id `count` (topology t.toml)",
        "did you mean `counts`?",
    );
    let e = bad(BASE, &["--set", "parallelism"]);
    assert!(
        e.starts_with("error: --set parallelism: expected KEY=VALUE"),
        "{e}"
    );
    let e = bad(BASE, &["--set", "words.separatr=,"]);
    assert_message(
        &e,
        "error: --set words.separatr=,: unknown key `separatr` in operator `words` (topology t.toml)",
        "did you mean `separator`?",
    );
}

#[test]
fn missing_topology_file_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_in(dir.path(), &["run", "nope.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: nope.toml: cannot read the topology: No such file or directory"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: check the path of the topology file"));

    let (code, _, stderr) = run_in(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("Usage: weir"), "{stderr}");
    let (code, _, stderr) = run_in(dir.path(), &["run"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("<FILE>"), "{stderr}");
    let (code, _, stderr) = run_in(dir.path(), &["--log-level", "loud", "validate", "x.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("error: --log-level loud:"), "{stderr}");
    let (code, stdout, _) = run_in(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("validate"));
}

#[test]
fn validate_prints_the_resolved_graph() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "a b c\n").unwrap();
    std::fs::write(dir.path().join("t.toml"), BASE).unwrap();
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &["validate", "t.toml", "--set", "out.parallelism=1"],
    );
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("node "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["lines", "file source", "2", "-", "-"],
            vec![
                "words",
                "flat_map operator",
                "2",
                "lines: forward (chained)",
                "lines"
            ],
            vec![
                "counts",
                "count operator",
                "2",
                "words: key groups by word",
                "-"
            ],
            vec!["out", "null sink", "1", "counts: rebalance", "-"],
        ],
        "{stdout}"
    );
    assert!(
        stdout.starts_with("t.toml: valid\njob `t`: parallelism 2, max_parallelism 128"),
        "{stdout}"
    );
}

#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let e = bad(
        &BASE.replace(
            "type = \"null\"\ninput = \"counts\"",
            "type = \"file\"\ninput = \"counts\"\npath = \"./in.txt\"",
        ),
        &[],
    );
    assert!(
        e.starts_with("error: t.toml:28:6: sink `out` would overwrite /"),
        "{e}"
    );
    assert!(e.contains("in.txt, which source `lines` reads"), "{e}");
    assert!(e.contains("fix: give its output another path"), "{e}");
    let two_sinks = BASE.replace(
        "type = \"null\"\ninput = \"counts\"",
        "type = \"file\"\ninput = \"counts\"\npath = \"out.jsonl\"",
    )
        + "\n[[sink]]\nid = \"again\"\ntype = \"file\"\ninput = \"counts\"\npath = \"out.jsonl\"\n";
    let e = bad(&two_sinks, &[]);
    assert!(
        e.starts_with("error: t.toml:34:6: sink `again` writes /"),
        "{e}"
    );
    assert!(e.contains("out.jsonl, which `out` writes too"), "{e}");
}

#[test]
fn misspelled_fields_are_caught_before_running() {
    let e = bad(&BASE.replace("field = \"line\"", "field = \"lin\""), &[]);
    assert_message(
        &e,
        "error: t.toml:14:9: operator `words` reads field `lin` (in `field`), but the records from `lines` have `line`",
        "did you mean `line`?",
    );
    let e = bad(&BASE.replace("key = \"word\"", "key = [\"wrd\"]"), &[]);
    assert_message(
        &e,
        "error: t.toml:20:8: operator `by_word` reads field `wrd` (in `key`), but the records from `words` have `word`",
        "did you mean `word`?",
    );
    // Inside an expression the caret points at the field.
    let toml = BASE
        .replace(
            "[[operator]]\nid = \"by_word\"",
            "[[operator]]\nid = \"short\"\ntype = \"filter\"\ninput = \"words\"\nwhere = 'len(word) > 3 and wrod != \"the\"'\n\n[[operator]]\nid = \"by_word\"",
        )
        .replace("input = \"words\"\nkey", "input = \"short\"\nkey");
    let e = bad(&toml, &[]);
    assert_message(
        &e,
        "error: t.toml:20:28: operator `short` reads field `wrod` (in `where`), but the records from `words` have `word`",
        "did you mean `word`?",
    );
    assert!(e.contains("20 | where = 'len(word) > 3 and wrod != \"the\"'\n   |                            ^^^^\n"), "{e}");
    // Map renames name fields of its result.
    let toml = BASE
        .replace(
            "[[operator]]\nid = \"by_word\"",
            "[[operator]]\nid = \"renamed\"\ntype = \"map\"\ninput = \"words\"\nset = { n = \"len(word)\" }\nrename = { wrd = \"w\" }\n\n[[operator]]\nid = \"by_word\"",
        )
        .replace("input = \"words\"\nkey", "input = \"renamed\"\nkey");
    let e = bad(&toml, &[]);
    assert_message(
        &e,
        "error: t.toml:21:12: map `renamed` renames field `wrd`, which its result does not have (it has `word`, `n`)",
        "did you mean `word`?",
    );
    // After the rename, the key must use the new name.
    let fixed = toml.replace("rename = { wrd = \"w\" }", "rename = { word = \"w\" }");
    let e = bad(&fixed, &[]);
    assert!(
        e.starts_with("error: t.toml:27:7: operator `by_word` reads field `word` (in `key`), but the records from `renamed` have `w`, `n`"),
        "{e}"
    );
}

#[test]
fn exactly_once_sink_without_checkpoints() {
    let sink = "type = \"file\"\npath = \"out\"\nsemantics = \"exactly_once\"";
    let e = bad(&BASE.replace("type = \"null\"", sink), &[]);
    assert_message(
        &e,
        "error: t.toml:31:13: sink `out` is exactly-once but the job does not checkpoint: its part files are committed when a checkpoint completes",
        "add a [checkpoint] table (e.g. `[checkpoint]` with `dir = \"checkpoints\"`), or use `semantics = \"at_least_once\"`",
    );
    let checkpointed = format!(
        "{}\n[checkpoint]\ndir = \"chk\"\nmode = \"at_least_once\"\n",
        BASE.replace("type = \"null\"", sink)
    );
    let e = bad(&checkpointed, &[]);
    assert!(
        e.starts_with("error: t.toml:31:13: sink `out` is exactly-once but [checkpoint] mode is `at_least_once`"),
        "{e}"
    );
    let e = bad(
        &BASE.replace(
            "type = \"null\"",
            "type = \"file\"\npath = \"out.jsonl\"\nroll_bytes = 1000",
        ),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:31:1: `roll_bytes` applies only to exactly-once file sinks",
        "add `semantics = \"exactly_once\"` (part files in the directory `path`), or remove it",
    );
    let e = bad(
        &BASE.replace(
            "type = \"null\"",
            "type = \"file\"\npath = \"o\"\nsemantics = \"exactly-once\"",
        ),
        &[],
    );
    assert_message(
        &e,
        "error: t.toml:31:13: unknown semantics `exactly-once`",
        "did you mean `exactly_once`?",
    );
}
