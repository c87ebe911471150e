//! The same word count through a TOML topology (loaded and run in-process) and through
//! the typed `StreamJob` API using the built-in operators on `Record`: identical
//! output, equal to an independent count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use weir::builtins::{
    AggKind, AggSpec, AggregateOperator, DecodeSpec, FileSource, FileSourceSpec, FlatMapOperator,
    FlatMapSpec, InputFile, OnError, SplitMode,
};
use weir::record::{Record, RecordKey, Value};
use weir::{JobConfig, Sink, StreamJob};

struct Collect(Arc<Mutex<Vec<Record>>>);

impl Sink for Collect {
    type In = Record;
    fn write(&mut self, record: Record) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

fn pairs(records: &[Record]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = records
        .iter()
        .map(|r| match (r.get("word"), r.get("count")) {
            (Some(Value::Str(w)), Some(Value::Int(c))) => (w.to_string(), *c),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    v.sort();
    v
}

const TEXT: &str = "the quick brown fox\njumps over the lazy dog\nThe dog sleeps; the fox runs.\n\nfox, fox, FOX!\n";

#[test]
fn toml_and_typed_api_agree() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, TEXT.repeat(50)).unwrap();

    // Independent expectation.
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for w in TEXT
        .repeat(50)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *totals.entry(w.to_lowercase()).or_default() += 1;
    }
    let mut want: Vec<(String, i64)> = totals
        .iter()
        .flat_map(|(w, n)| (1..=*n).map(move |c| (w.clone(), c)))
        .collect();
    want.sort();

    // Through TOML, in-process.
    let toml = r#"
[job]
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

[[sink]]
id = "out"
type = "file"
input = "counts"
path = "counts.jsonl"
parallelism = 1
"#;
    let topo_path = dir.path().join("wc.toml");
    std::fs::write(&topo_path, toml).unwrap();
    let topology = weir::topology::load(&topo_path, &[]).unwrap();
    let report = weir::topology::build(&topology).graph.run().unwrap();
    assert_eq!(
        report.operator("counts").unwrap().records_out,
        want.len() as u64
    );
    let from_toml: Vec<Record> = std::fs::read_to_string(dir.path().join("counts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| Record::from_json(l).unwrap())
        .collect();

    // Through the typed API with the same built-ins.
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        ..JobConfig::default()
    });
    let source = Arc::new(FileSourceSpec {
        files: vec![InputFile {
            path: input.clone(),
            display: "in.txt".into(),
        }],
        decode: Arc::new(DecodeSpec::text()),
        on_error: OnError::Fail,
        splits: None,
    });
    let split = Arc::new(FlatMapSpec {
        field: Arc::from("line"),
        output: Arc::from("word"),
        mode: SplitMode::Words,
        lowercase: true,
        keep: false,
    });
    let count = Arc::new(AggSpec {
        kind: AggKind::Count,
        key: vec![Arc::from("word")],
        field: None,
        output: Arc::from("count"),
    });
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink_records = collected.clone();
    let word: Arc<[Arc<str>]> = Arc::from(vec![Arc::from("word")]);
    job.source("lines", move |info| {
        FileSource::new(source.clone(), info, None, Arc::default())
    })
    .process("words", move |_| FlatMapOperator::new(split.clone()))
    .key_by(move |r: &Record| RecordKey::extract(r, &word).unwrap_or(RecordKey::One(Value::Null)))
    .process("counts", move |_| AggregateOperator::new(count.clone()))
    .sink_with_parallelism("out", 1, move |_| Collect(sink_records.clone()));
    let report = job.run().unwrap();
    assert_eq!(
        report.operator("counts").unwrap().records_out,
        want.len() as u64
    );
    let from_api = collected.lock().unwrap().clone();

    assert_eq!(pairs(&from_toml), want);
    assert_eq!(pairs(&from_api), want);
}
