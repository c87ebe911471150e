//! Every topology in examples/ validates and runs, from a copy in a temporary
//! directory (so outputs do not land in the repository); unions and fan-out work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies examples/*.toml and examples/data into a fresh directory.
fn examples_copy() -> (tempfile::TempDir, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    for e in std::fs::read_dir(src.join("data")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("data").join(e.file_name())).unwrap();
    }
    let mut tomls = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let to = dir.path().join(p.file_name().unwrap());
            std::fs::copy(&p, &to).unwrap();
            tomls.push(to);
        }
    }
    tomls.sort();
    (dir, tomls)
}

/// The (operator, records in, records out) rows of a run summary.
fn summary(stderr: &str) -> BTreeMap<String, (u64, u64)> {
    stderr
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("operator "))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() == 5)
        .map(|c| {
            (
                c[0].to_string(),
                (c[2].parse().unwrap(), c[3].parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn all_examples_validate() {
    let (dir, tomls) = examples_copy();
    assert!(tomls.len() >= 4, "{tomls:?}");
    for t in &tomls {
        let (code, stdout, stderr) = run_in(dir.path(), &["validate", t.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", t.display());
        assert!(stdout.contains(": valid\n"), "{stdout}");
    }
}

#[test]
fn running_sum_example_runs_scaled_down() {
    let (dir, _) = examples_copy();
    let (code, _, stderr) = run_in(
        dir.path(),
        &[
            "run",
            "running_sum.toml",
            "--set",
            "numbers.count=200000",
            "--set",
            "job.parallelism=3",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let s = summary(&stderr);
    assert_eq!(s["numbers"], (0, 200_000), "{stderr}");
    assert_eq!(s["sum"], (200_000, 200_000), "{stderr}");
    assert_eq!(s["discard"], (200_000, 0), "{stderr}");
}

#[test]
fn orders_example_dead_letters_two_rows() {
    let (dir, _) = examples_copy();
    let (code, stdout, stderr) = run_in(dir.path(), &["run", "orders.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let dead = std::fs::read_to_string(dir.path().join("out/dead_orders.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(
        dead.contains("\"record\":\"5,bob,widget,x,2.50\""),
        "{dead}"
    );
    assert!(dead.contains("\"record\":\"8,dee,widget\""), "{dead}");
    // Final totals per customer: the last running sum of each.
    let totals = std::fs::read_to_string(dir.path().join("out/customer_totals.csv")).unwrap();
    let mut last = BTreeMap::new();
    for l in totals.lines().skip(1) {
        let (c, t) = l.split_once(',').unwrap();
        last.insert(c.to_string(), t.parse::<f64>().unwrap());
    }
    // Kept: revenue >= 20 and product != gizmo, or items >= 2:
    // 1 ada widget 3*2.5=7.5 (items 3), 3 ada gadget 20, 4 cy widget 25, 7 cy gizmo 199.98
    // (items 2), 10 dee gadget 50. Not kept: 2 bob gadget 10 (1 item), 6 ada gizmo, 9 bob gizmo.
    let want = BTreeMap::from([
        ("ada".to_string(), 27.5),
        ("cy".to_string(), 224.98),
        ("dee".to_string(), 50.0),
    ]);
    assert_eq!(last.len(), want.len(), "{totals}");
    for (c, t) in &want {
        assert!((last[c] - t).abs() < 1e-9, "{c}: {} vs {t}", last[c]);
    }
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
}

#[test]
fn generator_example_is_seeded_and_reproducible() {
    let (dir, _) = examples_copy();
    let args = [
        "run",
        "generator_filter.toml",
        "--set",
        "readings.rate=1000000",
        "--set",
        "print.format=\"json\"",
    ];
    let (code, first, stderr) = run_in(dir.path(), &args);
    assert_eq!(code, 0, "{stderr}");
    let (_, second, _) = run_in(dir.path(), &args);
    let final_avgs = |out: &str| {
        // Per sensor the average after its last reading (order inside a sensor is kept).
        let mut m = BTreeMap::new();
        let mut n = 0;
        for l in out.lines() {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            m.insert(
                j["sensor"].as_str().unwrap().to_string(),
                j["avg"].as_f64().unwrap(),
            );
            n += 1;
        }
        (n, m)
    };
    let (n1, a1) = final_avgs(&first);
    let (n2, a2) = final_avgs(&second);
    assert_eq!(n1, n2);
    assert!(
        n1 > 1500 && n1 < 2000,
        "the filter drops some of 2000: {n1}"
    );
    assert_eq!(
        a1.keys().collect::<Vec<_>>(),
        ["s1", "s2", "s3", "s4", "s5"]
    );
    // The same readings arrive in another interleaving: equal up to float rounding.
    assert_eq!(a1.keys().collect::<Vec<_>>(), a2.keys().collect::<Vec<_>>());
    for (k, v) in &a1 {
        assert!((v - a2[k]).abs() < 1e-9, "{k}: {v} vs {}", a2[k]);
    }
    let (_, other_seed, _) = run_in(
        dir.path(),
        &[&args[..], &["--set", "readings.seed=7"]].concat(),
    );
    let a3 = final_avgs(&other_seed).1;
    assert!(
        a1.iter()
            .any(|(k, v)| a3.get(k).is_none_or(|w| (v - w).abs() > 1e-6)),
        "{a1:?} vs {a3:?}"
    );
}

#[test]
fn union_and_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        r#"
[job]
parallelism = 2

[[source]]
id = "evens"
type = "generator"
count = 1000
fields = { n = "i * 2" }

[[source]]
id = "odds"
type = "generator"
count = 500
fields = { n = "i * 2 + 1" }
parallelism = 1

[[operator]]
id = "parity"
type = "map"
inputs = ["evens", "odds"]
set = { even = "n % 2 == 0" }

[[operator]]
id = "by_parity"
type = "key_by"
input = "parity"
key = "even"

[[operator]]
id = "total"
type = "sum"
input = "by_parity"
field = "n"

[[operator]]
id = "how_many"
type = "count"
input = "by_parity"

[[sink]]
id = "totals"
type = "file"
input = "total"
path = "totals.jsonl"
parallelism = 1

[[sink]]
id = "counts"
type = "file"
input = "how_many"
path = "counts.jsonl"
parallelism = 1

[[sink]]
id = "everything"
type = "null"
inputs = ["parity", "evens"]
"#,
    )
    .unwrap();
    let (code, _, stderr) = run_in(dir.path(), &["run", "t.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let last = |file: &str, field: &str| {
        let mut m = BTreeMap::new();
        for l in std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .lines()
        {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            m.insert(j["even"].as_bool().unwrap(), j[field].as_i64().unwrap());
        }
        m
    };
    let even_sum: i64 = (0..1000).map(|i| i * 2).sum();
    let odd_sum: i64 = (0..500).map(|i| i * 2 + 1).sum();
    assert_eq!(
        last("totals.jsonl", "sum"),
        BTreeMap::from([(true, even_sum), (false, odd_sum)])
    );
    assert_eq!(
        last("counts.jsonl", "count"),
        BTreeMap::from([(true, 1000), (false, 500)])
    );
    let s = summary(&stderr);
    assert_eq!(s["parity"], (1500, 1500), "{stderr}");
    assert_eq!(s["everything"], (2500, 0), "{stderr}");
}
