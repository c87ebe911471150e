//! Word count through TOML topologies, run by the `weir` binary: at parallelism 1, 2
//! and 4 the output is identical and exactly what an independent count predicts.
//!
//! The keyed count emits the updated count for every word it sees, so the complete
//! output for a word that occurs n times is {(word, 1), ..., (word, n)}, whatever the
//! parallelism and interleaving: the sorted output lines are comparable exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (word, count) pairs parsed from JSON lines, sorted.
fn pairs(jsonl: &str) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = jsonl
        .lines()
        .map(|l| {
            let j: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                j["word"].as_str().expect("word").to_string(),
                j["count"].as_i64().expect("count"),
            )
        })
        .collect();
    v.sort();
    v
}

/// The complete expected output for these totals.
fn expected(totals: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = totals
        .iter()
        .flat_map(|(w, n)| (1..=*n).map(move |c| (w.clone(), c)))
        .collect();
    v.sort();
    v
}

/// A deterministic text of `lines` lines over a small vocabulary, and its word totals
/// as the generator counted them while writing.
fn generated_text(lines: usize) -> (String, BTreeMap<String, i64>) {
    const VOCAB: &[&str] = &[
        "river", "weir", "stone", "water", "mill", "wheel", "fish", "count", "flow", "bank",
        "reed", "heron", "otter", "moss", "eddy", "pool", "ford", "sluice",
    ];
    const SEPARATORS: &[&str] = &[" ", ", ", "; ", "  ", " - ", "! "];
    let mut totals = BTreeMap::new();
    let mut text = String::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..lines {
        let words = (next() % 12) as usize; // some lines are empty
        for k in 0..words {
            let w = VOCAB[(next() % VOCAB.len() as u64) as usize];
            // Mixed case in the text; the topology lowercases.
            let shown = if next() % 4 == 0 {
                w.to_uppercase()
            } else {
                w.to_string()
            };
            *totals.entry(w.to_string()).or_insert(0) += 1;
            text.push_str(&shown);
            if k + 1 < words {
                text.push_str(SEPARATORS[(next() % SEPARATORS.len() as u64) as usize]);
            }
        }
        text.push_str(".\n");
    }
    (text, totals)
}

fn wordcount_toml(input: &str, sink: &str) -> String {
    format!(
        r#"
[job]
name = "wc-test"
parallelism = 1
batch_size = 64

[[source]]
id = "lines"
type = "file"
path = "{input}"
format = "text"

[[operator]]
id = "words"
type = "flat_map"
input = "lines"
field = "line"
mode = "words"
lowercase = true

[[operator]]
id = "by_word"
type = "key_by"
input = "words"
key = "word"

[[operator]]
id = "counts"
type = "count"
input = "by_word"

{sink}
"#
    )
}

#[test]
fn wordcount_is_exact_and_identical_at_parallelism_1_2_4() {
    let dir = tempfile::tempdir().unwrap();
    let (text, totals) = generated_text(3000);
    std::fs::write(dir.path().join("input.txt"), &text).unwrap();
    let topo = dir.path().join("wc.toml");
    let sink = "[[sink]]\nid = \"out\"\ntype = \"stdout\"\ninput = \"counts\"\n";
    std::fs::write(&topo, wordcount_toml("input.txt", sink)).unwrap();
    let want = expected(&totals);
    assert!(
        want.len() > 10_000,
        "the test text is big enough to spread: {}",
        want.len()
    );

    let mut outputs = Vec::new();
    for p in [1, 2, 4] {
        let set = format!("job.parallelism={p}");
        let (code, stdout, stderr) = weir(&["run", topo.to_str().unwrap(), "--set", &set]);
        assert_eq!(code, 0, "parallelism {p}: {stderr}");
        let got = pairs(&stdout);
        assert_eq!(got.len(), want.len(), "parallelism {p}");
        assert_eq!(got, want, "parallelism {p}");
        // The summary names every operator with its parallelism and counts.
        let words_total: i64 = totals.values().sum();
        let row: Vec<&str> = stderr
            .lines()
            .find(|l| l.trim_start().starts_with("counts "))
            .unwrap_or_else(|| panic!("no summary row for `counts`:\n{stderr}"))
            .split_whitespace()
            .collect();
        let expected_row = [
            p.to_string(),
            words_total.to_string(),
            words_total.to_string(),
        ];
        assert_eq!(
            row[1..4],
            expected_row,
            "summary at parallelism {p}:\n{stderr}"
        );
        outputs.push(got);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[1], outputs[2]);
}

#[test]
fn wordcount_example_gives_the_expected_counts() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wordcount.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/words.txt"),
    )
    .unwrap();
    // An independent tokenizer: letters and digits, apostrophes inside words kept.
    let mut totals = BTreeMap::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_alphanumeric() || c == '\'' {
            word.push(c);
        } else if !word.is_empty() {
            let w = word.trim_matches('\'').to_lowercase();
            if !w.is_empty() {
                *totals.entry(w).or_insert(0i64) += 1;
            }
            word.clear();
        }
    }
    assert_eq!(totals["the"], 17);
    assert_eq!(totals["don't"], 1);
    let want = expected(&totals);
    for p in ["1", "2", "4"] {
        let (code, stdout, stderr) = weir(&[
            "run",
            example.to_str().unwrap(),
            "--set",
            &format!("job.parallelism={p}"),
        ]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(pairs(&stdout), want, "parallelism {p}");
    }
}

#[test]
fn file_sink_writes_one_part_per_subtask_with_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let (text, totals) = generated_text(500);
    std::fs::write(dir.path().join("input.txt"), &text).unwrap();
    let topo = dir.path().join("wc.toml");
    let sink = "[[sink]]\nid = \"out\"\ntype = \"file\"\ninput = \"counts\"\npath = \"out/counts.jsonl\"\n";
    std::fs::write(&topo, wordcount_toml("input.txt", sink)).unwrap();
    let (code, _, stderr) = weir(&["run", topo.to_str().unwrap(), "--set", "job.parallelism=3"]);
    assert_eq!(code, 0, "{stderr}");
    let mut all = String::new();
    for i in 0..3 {
        let part = dir.path().join(format!("out/counts-{i}.jsonl"));
        all.push_str(
            &std::fs::read_to_string(&part).unwrap_or_else(|e| panic!("{}: {e}", part.display())),
        );
    }
    assert!(!dir.path().join("out/counts.jsonl").exists());
    assert_eq!(pairs(&all), expected(&totals));
}

#[test]
fn csv_in_csv_out_with_map_filter_and_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("city,product,qty,price\n");
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..400u32 {
        let city = ["oslo", "lima", "kyiv", "pune"][(i % 4) as usize];
        let qty = i % 7;
        let price = f64::from(i % 5) + 0.5;
        csv.push_str(&format!("{city},p{},{qty},{price}\n", i % 3));
        if qty >= 2 {
            *want.entry(city.to_string()).or_default() += f64::from(qty) * price;
        }
    }
    std::fs::write(dir.path().join("sales.csv"), csv).unwrap();
    let topo = dir.path().join("sales.toml");
    std::fs::write(
        &topo,
        r#"
[job]
parallelism = 3

[[source]]
id = "sales"
type = "file"
path = "sales.csv"
schema = { qty = "int", price = "float" }

[[operator]]
id = "big"
type = "filter"
input = "sales"
where = "qty >= 2"

[[operator]]
id = "revenue"
type = "map"
input = "big"
set = { revenue = "qty * price" }
select = ["city"]

[[operator]]
id = "by_city"
type = "key_by"
input = "revenue"
key = ["city"]

[[operator]]
id = "total"
type = "sum"
input = "by_city"
field = "revenue"

[[sink]]
id = "out"
type = "file"
input = "total"
path = "totals.csv"
parallelism = 1
"#,
    )
    .unwrap();
    let (code, _, stderr) = weir(&["run", topo.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("totals.csv")).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("city,sum"));
    // The last running sum per city is its total.
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut n = 0;
    for l in lines {
        let (city, sum) = l.split_once(',').unwrap();
        last.insert(city.to_string(), sum.parse().unwrap());
        n += 1;
    }
    assert_eq!(n, (0..400u32).filter(|i| i % 7 >= 2).count());
    assert_eq!(
        last.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (city, total) in &want {
        assert!(
            (last[city] - total).abs() < 1e-6,
            "{city}: {} vs {total}",
            last[city]
        );
    }
}

#[test]
fn stdin_source_reads_piped_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("stdin.toml");
    std::fs::write(
        &topo,
        r#"
[job]
parallelism = 2

[[source]]
id = "in"
type = "stdin"
format = "json"

[[operator]]
id = "by_k"
type = "key_by"
input = "in"
key = ["k"]

[[operator]]
id = "n"
type = "count"
input = "by_k"

[[sink]]
id = "out"
type = "stdout"
input = "n"
"#,
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", topo.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..3000 {
            writeln!(stdin, "{{\"k\":{}}}", i % 3).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut max = BTreeMap::new();
    for l in stdout.lines() {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        let e = max.entry(j["k"].as_i64().unwrap()).or_insert(0);
        *e = (*e).max(j["count"].as_i64().unwrap());
    }
    assert_eq!(stdout.lines().count(), 3000);
    assert_eq!(max, BTreeMap::from([(0, 1000), (1, 1000), (2, 1000)]));
}
