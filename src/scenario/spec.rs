//! The scenario file: what to run (a topology, its input, the settings it
//! overrides), which faults to inject, and what the output must be. Parsed with the
//! topology's reader, so a malformed scenario gets the same errors: the file, line
//! and column, the problem, and the fix.

use crate::topology::doc::{self, Kind, Reader, Val};
use crate::topology::model::duration;
use crate::topology::{closest, Origin, Problem, TopologyError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file's stem unless `[scenario] name` says otherwise.
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    /// Places the faults whose counts the file leaves open, and seeds a generator
    /// input.
    pub seed: u64,
    pub topology: TopologyText,
    pub input: Option<Input>,
    pub run: RunSettings,
    pub faults: Vec<FaultSpec>,
    pub expect: Expectation,
    /// Each launch of the job is killed after this long (the scenario fails).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum TopologyText {
    /// A topology file (relative paths in it resolve next to it).
    File(PathBuf),
    /// The topology itself, as a string in the scenario.
    Inline(String),
}

/// The records a source of the topology is replaced by.
#[derive(Debug, Clone)]
pub struct Input {
    /// The source node whose records these are.
    pub source: String,
    pub data: InputData,
}

#[derive(Debug, Clone)]
pub enum InputData {
    /// JSON objects, one per record.
    Records(Vec<String>),
    /// A JSON-lines or CSV file (by extension).
    File(PathBuf),
    /// A generator seeded with the scenario's seed: `count` records, `fields` as in
    /// a generator source.
    Generator {
        count: u64,
        fields: Vec<(String, String)>,
    },
}

/// What the scenario changes in the topology's settings.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// `aligned`, `unaligned` or `at_least_once`; several: the scenario runs in
    /// each (empty: the topology's).
    pub modes: Vec<String>,
    /// `memory` or `rocksdb`; several: the scenario runs on each.
    pub backends: Vec<String>,
    pub parallelism: Option<u32>,
    pub checkpoint_interval: Option<Duration>,
    /// More overrides, as `weir run --set` takes them.
    pub set: Vec<String>,
}

/// A fault as written: counts left out are drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub kind: String,
    pub node: String,
    pub subtask: Option<u32>,
    pub after_records: Option<u64>,
    pub checkpoint: Option<u64>,
    pub records: Option<u64>,
    pub delay_us: Option<u64>,
    pub after_bytes: Option<u64>,
    pub defect: Option<String>,
    /// `kill`: the job comes back at this parallelism (a rescale after a failure).
    pub relaunch_parallelism: Option<u32>,
    pub at: Origin,
}

impl FaultSpec {
    /// A fault of `kind` at `node` with every count left to the seed.
    pub fn new(kind: &str, node: &str, at: Origin) -> FaultSpec {
        FaultSpec {
            kind: kind.to_string(),
            node: node.to_string(),
            subtask: None,
            after_records: None,
            checkpoint: None,
            records: None,
            delay_us: None,
            after_bytes: None,
            defect: None,
            relaunch_parallelism: None,
            at,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Every sink's output equals that of a failure-free run (as sorted lines).
    ExactlyOnce,
    /// Every line of the failure-free run is there, at least as often.
    AtLeastOnce,
    /// The output (of `sink`, or of the only sink) equals this file's lines, sorted.
    File { path: PathBuf, sink: Option<String> },
    /// The job fails and its error says this.
    FailsWith(String),
}

#[derive(Debug, Clone)]
pub struct Expectation {
    pub output: Expected,
    /// Every scheduled fault must fire (default): one that never does proves
    /// nothing, so the scenario fails.
    pub all_faults_fire: bool,
    pub min_restarts: u32,
    /// Text the faulty run's log must contain (e.g. the warning of a fallback).
    pub log: Option<String>,
}

pub const FAULT_KINDS: &[&str] = &[
    "panic",
    "kill",
    "corrupt_checkpoint",
    "slow",
    "snapshot_error",
    "commit_error",
    "restore_error",
    "sink_write_error",
    "broken_sink",
];

pub const MODES: &[&str] = &[
    "aligned",
    "unaligned",
    "aligned_with_timeout",
    "at_least_once",
];
pub const BACKENDS: &[&str] = &["memory", "rocksdb"];

/// Reads and parses a scenario file.
pub fn load(path: &Path) -> Result<Scenario, TopologyError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        TopologyError::whole_file(
            &display,
            format!("cannot read the scenario: {e}"),
            Some("check the path of the scenario file".into()),
        )
    })?;
    parse(&text, path).map_err(|p| TopologyError::render(&p, &display, &text, &[]))
}

fn parse(text: &str, path: &Path) -> Result<Scenario, Problem> {
    let document = doc::parse(text)?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut top = Reader::new("the scenario file", &document)?;

    let stem = path
        .file_stem()
        .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
    let (mut name, mut description, mut seed, mut timeout) =
        (stem, None, 0, Duration::from_secs(300));
    if let Some(table) = top.get("scenario") {
        let mut r = Reader::new("[scenario]", table)?;
        if r.has("topology") {
            return Err(Problem::new(
                &r.key_at("topology"),
                "`topology` belongs at the top of the file, not in [scenario]",
            )
            .fix("move the `topology = ...` line above `[scenario]`: in TOML, keys after a [table] header belong to that table"));
        }
        if let Some((n, _)) = r.string("name", "\"panic-in-count\"")? {
            name = n;
        }
        description = r.string("description", "\"what it proves\"")?.map(|d| d.0);
        if let Some((s, _)) = r.int("seed", 0, i64::MAX, "7")? {
            seed = s as u64;
        }
        if let Some((t, _)) = duration(&mut r, "timeout", "\"5m\"")? {
            timeout = t;
        }
        r.finish(&["name", "description", "seed", "timeout"])?;
    }

    let topology = match top.get("topology") {
        None => return Err(top.missing("topology", "\"../examples/job.toml\"")),
        Some(Val {
            kind: Kind::Str(p), ..
        }) => TopologyText::File(resolve(p)),
        Some(table @ Val {
            kind: Kind::Table(_),
            ..
        }) => {
            let mut r = Reader::new("[topology]", table)?;
            let inline = r.required_string("inline", "\"\"\"[job] ...\"\"\"")?.0;
            r.finish(&["inline"])?;
            TopologyText::Inline(inline)
        }
        Some(v) => {
            return Err(Problem::new(
                &v.at,
                format!("`topology` must be a path or a table, found {}", v.describe()),
            )
            .fix("write `topology = \"job.toml\"`, or a `[topology]` table with `inline = \"\"\"...\"\"\"`"))
        }
    };

    let input = match top.get("input") {
        None => None,
        Some(table) => Some(parse_input(table, &resolve)?),
    };
    let run = match top.get("run") {
        None => RunSettings::default(),
        Some(table) => parse_run(table)?,
    };
    let faults = match top.get("fault") {
        None => Vec::new(),
        Some(Val {
            kind: Kind::Array(items),
            ..
        }) => items
            .iter()
            .enumerate()
            .map(|(i, f)| parse_fault(i, f))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(Problem::new(&v.at, "`fault` must be an array of tables")
                .fix("write each fault as a `[[fault]]` table"))
        }
    };
    let expect = match top.get("expect") {
        None => return Err(top.missing("expect", "{ output = \"exactly_once\" }")),
        Some(table) => parse_expect(table, &resolve)?,
    };
    top.finish(&["scenario", "topology", "input", "run", "fault", "expect"])?;
    Ok(Scenario {
        name,
        file: path.to_path_buf(),
        description,
        seed,
        topology,
        input,
        run,
        faults,
        expect,
        timeout,
    })
}

fn one_of(value: &str, at: &Origin, key: &str, allowed: &[&str]) -> Result<(), Problem> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let fix = match closest(value, allowed) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("use one of: {}", allowed.join(", ")),
    };
    Err(Problem::new(at, format!("unknown {key} `{value}`")).fix(fix))
}

fn parse_input(table: &Val, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Input, Problem> {
    let mut r = Reader::new("[input]", table)?;
    let (source, _) = r.required_string("source", "\"events\"")?;
    let records = r.strings("records", "['{\"k\": 1}', '{\"k\": 2}']")?;
    let file = r.string("file", "\"input.jsonl\"")?;
    let generator = r.get("generator");
    let data = match (records, file, generator) {
        (Some(records), None, None) => {
            for (record, at) in &records {
                if !matches!(
                    serde_json::from_str(record),
                    Ok(serde_json::Value::Object(_))
                ) {
                    return Err(Problem::new(at, "each input record must be a JSON object")
                        .fix("write records like '{\"user\": 1, \"amount\": 5}'"));
                }
            }
            InputData::Records(records.into_iter().map(|r| r.0).collect())
        }
        (None, Some((file, _)), None) => InputData::File(resolve(&file)),
        (None, None, Some(generator)) => {
            let mut g = Reader::new("[input.generator]", generator)?;
            let count = match g.int("count", 1, i64::MAX, "10000")? {
                Some((c, _)) => c as u64,
                None => return Err(g.missing("count", "10000")),
            };
            let fields = g
                .string_table("fields", "{ key = \"i % 97\" }")?
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v, _)| (k.name, v))
                .collect();
            g.finish(&["count", "fields"])?;
            InputData::Generator { count, fields }
        }
        _ => {
            return Err(Problem::new(
                r.at,
                "[input] needs exactly one of `records`, `file` and `generator`",
            )
            .fix("e.g. `generator = { count = 10000, fields = { key = \"i % 97\" } }`"))
        }
    };
    r.finish(&["source", "records", "file", "generator"])?;
    Ok(Input { source, data })
}

fn parse_run(table: &Val) -> Result<RunSettings, Problem> {
    let mut r = Reader::new("[run]", table)?;
    let mut run = RunSettings::default();
    for (mode, at) in r
        .strings("mode", "[\"aligned\", \"unaligned\"]")?
        .unwrap_or_default()
    {
        one_of(&mode, &at, "mode", MODES)?;
        run.modes.push(mode);
    }
    for (backend, at) in r
        .strings("backend", "[\"memory\", \"rocksdb\"]")?
        .unwrap_or_default()
    {
        one_of(&backend, &at, "backend", BACKENDS)?;
        run.backends.push(backend);
    }
    run.parallelism = r.u32("parallelism", 1, 32_768, "2")?.map(|p| p.0);
    run.checkpoint_interval = duration(&mut r, "checkpoint_interval", "\"200ms\"")?.map(|d| d.0);
    run.set = r
        .strings("set", "[\"job.batch_size=64\"]")?
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.0)
        .collect();
    r.finish(&[
        "mode",
        "backend",
        "parallelism",
        "checkpoint_interval",
        "set",
    ])?;
    Ok(run)
}

fn parse_fault(index: usize, table: &Val) -> Result<FaultSpec, Problem> {
    let mut r = Reader::new(format!("fault #{}", index + 1), table)?;
    let (kind, kind_at) = r.required_string("kind", "\"panic\"")?;
    one_of(&kind, &kind_at, "fault kind", FAULT_KINDS)?;
    let (node, _) = r.required_string("node", "\"count\"")?;
    let count = |r: &mut Reader, key: &str, example: &str| {
        Ok::<_, Problem>(r.int(key, 0, i64::MAX, example)?.map(|(n, _)| n as u64))
    };
    let mut spec = FaultSpec::new(&kind, &node, table.at.clone());
    spec.subtask = r.u32("subtask", 0, 32_767, "0")?.map(|s| s.0);
    let keys: &[&str] = match kind.as_str() {
        "panic" | "corrupt_checkpoint" => {
            spec.after_records = count(&mut r, "after_records", "5000")?;
            &["after_records"]
        }
        "kill" => {
            spec.after_records = count(&mut r, "after_records", "5000")?;
            spec.relaunch_parallelism = r.u32("relaunch_parallelism", 1, 32_768, "3")?.map(|p| p.0);
            &["after_records", "relaunch_parallelism"]
        }
        "slow" => {
            spec.after_records = count(&mut r, "after_records", "5000")?;
            spec.records = count(&mut r, "records", "2000")?;
            spec.delay_us = count(&mut r, "delay_us", "200")?;
            &["after_records", "records", "delay_us"]
        }
        "snapshot_error" | "commit_error" => {
            spec.checkpoint = r.int("checkpoint", 1, i64::MAX, "2")?.map(|c| c.0 as u64);
            &["checkpoint"]
        }
        "sink_write_error" => {
            spec.after_bytes = count(&mut r, "after_bytes", "10000")?;
            &["after_bytes"]
        }
        "broken_sink" => {
            let (defect, at) = r.required_string("defect", "\"commit_twice\"")?;
            one_of(&defect, &at, "defect", &["commit_twice", "drop_pending"])?;
            spec.defect = Some(defect);
            &["defect"]
        }
        _ => &[],
    };
    let mut known = vec!["kind", "node", "subtask"];
    known.extend_from_slice(keys);
    r.finish(&known)?;
    Ok(spec)
}

fn parse_expect(table: &Val, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Expectation, Problem> {
    let mut r = Reader::new("[expect]", table)?;
    let output = r.string("output", "\"exactly_once\"")?;
    let fails_with = r.string("fails_with", "\"injected panic\"")?;
    let output = match (output, fails_with) {
        (Some(_), Some((_, at))) => {
            return Err(Problem::new(
                &at,
                "[expect] takes either `output` or `fails_with`, not both",
            )
            .fix("a job that fails writes no output to check: keep one"))
        }
        (None, Some((text, _))) => Expected::FailsWith(text),
        (None, None) => return Err(r.missing("output", "\"exactly_once\"")),
        (Some((output, at)), None) => match output.as_str() {
            "exactly_once" => Expected::ExactlyOnce,
            "at_least_once" => Expected::AtLeastOnce,
            "file" => Expected::File {
                path: resolve(&r.required_string("file", "\"expected.jsonl\"")?.0),
                sink: r.string("sink", "\"out\"")?.map(|s| s.0),
            },
            other => {
                one_of(
                    other,
                    &at,
                    "output",
                    &["exactly_once", "at_least_once", "file"],
                )?;
                unreachable!("one_of accepts only the three")
            }
        },
    };
    let all_faults_fire = r.bool("all_faults_fire")?.unwrap_or(true);
    let min_restarts = r.u32("min_restarts", 0, u32::MAX, "1")?.map_or(0, |m| m.0);
    let log = r
        .string("log", "\"skipping a damaged checkpoint\"")?
        .map(|l| l.0);
    r.finish(&[
        "output",
        "fails_with",
        "file",
        "sink",
        "all_faults_fire",
        "min_restarts",
        "log",
    ])?;
    Ok(Expectation {
        output,
        all_faults_fire,
        min_restarts,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Scenario, String> {
        parse(text, Path::new("/s/case.toml"))
            .map_err(|p| TopologyError::render(&p, "case.toml", text, &[]).to_string())
    }

    #[test]
    fn a_full_scenario_parses() {
        let s = parse_text(
            r#"
topology = "../jobs/count.toml"

[scenario]
seed = 7
timeout = "2m"

[input]
source = "events"
generator = { count = 500, fields = { k = "i % 7" } }

[run]
mode = "unaligned"
backend = ["memory", "rocksdb"]
parallelism = 3
checkpoint_interval = "100ms"

[[fault]]
kind = "panic"
node = "count"
subtask = 1
after_records = 40

[[fault]]
kind = "commit_error"
node = "out"

[expect]
output = "exactly_once"
min_restarts = 2
"#,
        )
        .unwrap();
        assert_eq!(s.name, "case");
        assert_eq!(s.seed, 7);
        assert_eq!(s.timeout, Duration::from_secs(120));
        assert!(
            matches!(&s.topology, TopologyText::File(p) if p == Path::new("/s/../jobs/count.toml"))
        );
        assert!(matches!(
            &s.input.as_ref().unwrap().data,
            InputData::Generator { count: 500, fields } if fields.len() == 1
        ));
        assert_eq!(s.run.modes, ["unaligned"]);
        assert_eq!(s.run.backends, ["memory", "rocksdb"]);
        assert_eq!(s.run.parallelism, Some(3));
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].after_records, Some(40));
        assert_eq!(s.faults[1].checkpoint, None);
        assert_eq!(s.expect.output, Expected::ExactlyOnce);
        assert_eq!(s.expect.min_restarts, 2);
        assert!(s.expect.all_faults_fire);
    }

    #[test]
    fn errors_name_the_line_and_suggest_the_fix() {
        let e = parse_text(
            "topology = \"t.toml\"\n[[fault]]\nkind = \"panik\"\nnode = \"x\"\n[expect]\noutput = \"exactly_once\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("case.toml:3:8: unknown fault kind `panik`"),
            "{e}"
        );
        assert!(e.contains("did you mean `panic`?"), "{e}");

        let e = parse_text(
            "topology = \"t.toml\"\n[[fault]]\nkind = \"panic\"\nnode = \"x\"\nafter_record = 5\n[expect]\noutput = \"exactly_once\"\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown key `after_record` in fault #1"), "{e}");
        assert!(e.contains("did you mean `after_records`?"), "{e}");

        let e = parse_text("topology = \"t.toml\"\n").unwrap_err();
        assert!(e.contains("the scenario file needs `expect`"), "{e}");

        let e = parse_text(
            "topology = \"t.toml\"\n[run]\nmode = \"unalinged\"\n[expect]\noutput = \"exactly_once\"\n",
        )
        .unwrap_err();
        assert!(e.contains("did you mean `unaligned`?"), "{e}");

        let e = parse_text(
            "topology = \"t.toml\"\n[expect]\noutput = \"exactly_once\"\nfails_with = \"x\"\n",
        )
        .unwrap_err();
        assert!(e.contains("either `output` or `fails_with`"), "{e}");
    }
}
