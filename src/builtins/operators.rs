//! Built-in operators on the dynamic record: map (project, drop, computed fields,
//! rename), filter (a predicate), flat_map (split a text field) and the keyed
//! aggregations count / sum / min / max / avg, which emit the updated result for
//! every record.
//!
//! The aggregations keep their per-key values in an operator-local `FxHashMap`; the
//! checkpoint issue moves them into keyed state of the state backend.

use crate::expr::Expr;
use crate::record::{Record, RecordKey, Value};
use anyhow::{anyhow, bail};
use std::cmp::Ordering;
use std::sync::Arc;
use weir_actors::{Context, KeyedContext, KeyedOperator, Operator, SubtaskInfo};
use weir_state::{KeyedBackend, ValueState, ValueStateDescriptor};

// ---------------------------------------------------------------------------------
// Map

/// `select` keeps (and orders) fields, `drop` removes fields, `set` adds or replaces
/// computed fields (evaluated against the input record), `rename` renames last.
#[derive(Debug, Clone, Default)]
pub struct MapSpec {
    pub select: Option<Vec<Arc<str>>>,
    pub drop: Vec<Arc<str>>,
    pub set: Vec<(Arc<str>, Expr)>,
    pub rename: Vec<(Arc<str>, Arc<str>)>,
}

pub struct MapOperator {
    spec: Arc<MapSpec>,
    computed: Vec<Value>,
}

impl MapOperator {
    pub fn new(spec: Arc<MapSpec>) -> MapOperator {
        MapOperator {
            computed: Vec::with_capacity(spec.set.len()),
            spec,
        }
    }
}

impl Operator for MapOperator {
    type In = Record;
    type Out = Record;

    fn process(&mut self, mut record: Record, ctx: &mut Context<'_, Record>) -> anyhow::Result<()> {
        let spec = &*self.spec;
        self.computed.clear();
        for (_, e) in &spec.set {
            self.computed
                .push(e.eval(&mut record).map_err(anyhow::Error::msg)?);
        }
        let mut out = match &spec.select {
            Some(select) => {
                let mut out = Record::with_capacity(select.len() + spec.set.len());
                for name in select {
                    match record.get(name) {
                        Some(v) => out.push_unchecked(name.clone(), v.clone()),
                        None if spec.set.iter().any(|(n, _)| n == name) => {}
                        None => bail!(
                            "field `{name}` listed in `select` is missing from the record (it has {})",
                            record.describe_fields()
                        ),
                    }
                }
                out
            }
            None => {
                for name in &spec.drop {
                    record.remove(name);
                }
                record
            }
        };
        for ((name, _), v) in spec.set.iter().zip(self.computed.drain(..)) {
            out.set(name.clone(), v);
        }
        for (from, to) in &spec.rename {
            if !out.rename(from, to.clone()) {
                bail!(
                    "field `{from}` named in `rename` is missing from the record (it has {})",
                    out.describe_fields()
                );
            }
        }
        ctx.emit(out);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Filter

pub struct FilterOperator {
    predicate: Arc<Expr>,
}

impl FilterOperator {
    pub fn new(predicate: Arc<Expr>) -> FilterOperator {
        FilterOperator { predicate }
    }
}

impl Operator for FilterOperator {
    type In = Record;
    type Out = Record;

    fn process(&mut self, mut record: Record, ctx: &mut Context<'_, Record>) -> anyhow::Result<()> {
        if self
            .predicate
            .eval_bool(&mut record)
            .map_err(anyhow::Error::msg)?
        {
            ctx.emit(record);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Flat map

/// How flat_map splits its text field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitMode {
    /// On runs of whitespace.
    Whitespace,
    /// Into words: maximal runs of letters, digits and apostrophes inside a word.
    Words,
    /// On a literal separator (empty pieces are dropped).
    Separator(String),
}

#[derive(Debug, Clone)]
pub struct FlatMapSpec {
    pub field: Arc<str>,
    pub output: Arc<str>,
    pub mode: SplitMode,
    pub lowercase: bool,
    /// Keep the input's other fields in every output record.
    pub keep: bool,
}

pub struct FlatMapOperator {
    spec: Arc<FlatMapSpec>,
}

impl FlatMapOperator {
    pub fn new(spec: Arc<FlatMapSpec>) -> FlatMapOperator {
        FlatMapOperator { spec }
    }
}

/// Splits `text` into words: letters and digits, with apostrophes kept inside words
/// ("don't"), everything else a separator.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
}

impl Operator for FlatMapOperator {
    type In = Record;
    type Out = Record;

    fn process(&mut self, record: Record, ctx: &mut Context<'_, Record>) -> anyhow::Result<()> {
        let spec = &*self.spec;
        let text = match record.get(&spec.field) {
            Some(Value::Str(s)) => s.clone(),
            Some(Value::Null) => return Ok(()),
            Some(other) => bail!(
                "flat_map splits the string field `{}`, but it holds {} {other}",
                spec.field,
                other.type_name()
            ),
            None => bail!(
                "flat_map splits field `{}`, which is missing from the record (it has {})",
                spec.field,
                record.describe_fields()
            ),
        };
        let mut emit = |token: &str| {
            let value = if spec.lowercase {
                Value::str(&token.to_lowercase())
            } else {
                Value::str(token)
            };
            let out = if spec.keep {
                let mut r = record.clone();
                r.set(spec.output.clone(), value);
                r
            } else {
                let mut r = Record::with_capacity(1);
                r.push_unchecked(spec.output.clone(), value);
                r
            };
            ctx.emit(out);
        };
        match &spec.mode {
            SplitMode::Whitespace => text.split_whitespace().for_each(&mut emit),
            SplitMode::Words => words(&text).for_each(&mut emit),
            SplitMode::Separator(sep) => text
                .split(sep.as_str())
                .filter(|t| !t.is_empty())
                .for_each(&mut emit),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Keyed aggregations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl AggKind {
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AggSpec {
    pub kind: AggKind,
    /// The key fields (copied into every output record).
    pub key: Vec<Arc<str>>,
    /// The aggregated field (not for count).
    pub field: Option<Arc<str>>,
    /// The name of the result field.
    pub output: Arc<str>,
}

/// The state of one aggregation (a keyed running aggregate, or a window pane).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Acc {
    Count(i64),
    /// The running sum, min or max (`Null` until a non-null value arrives).
    Value(Value),
    Avg {
        sum: f64,
        n: u64,
    },
}

/// Emits `{key fields..., output: result}` for every record, with the result
/// updated by that record. Null values leave the result unchanged.
pub struct AggregateOperator {
    spec: Arc<AggSpec>,
    /// The running result per key, in the job's keyed state backend.
    state: Option<ValueState<Acc>>,
}

impl AggregateOperator {
    pub fn new(spec: Arc<AggSpec>) -> AggregateOperator {
        // Own copies of the names (see `GeneratorSource::new`).
        let spec = Arc::new(AggSpec {
            key: spec.key.iter().map(|k| Arc::from(&**k)).collect(),
            output: Arc::from(&*spec.output),
            ..(*spec).clone()
        });
        AggregateOperator { spec, state: None }
    }
}

/// Adds one value to an accumulator; errors name `field`.
pub fn fold(kind: AggKind, acc: &mut Acc, v: &Value, field: &str) -> anyhow::Result<()> {
    match (kind, acc) {
        (AggKind::Count, Acc::Count(n)) => *n += 1,
        (_, _) if v.is_null() => {}
        (AggKind::Sum, Acc::Value(cur)) => {
            *cur = match (&*cur, v) {
                (Value::Null, Value::Int(_) | Value::Float(_)) => v.clone(),
                (Value::Int(a), Value::Int(b)) => {
                    Value::Int(a.checked_add(*b).ok_or_else(|| {
                        anyhow!("integer overflow in the sum of `{field}` ({a} + {b})")
                    })?)
                }
                (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                    Value::Float(cur.as_f64().unwrap_or(0.0) + v.as_f64().unwrap_or(0.0))
                }
                _ => bail!(
                    "sum needs numbers, but field `{field}` holds {} {v}",
                    v.type_name()
                ),
            };
        }
        (AggKind::Min | AggKind::Max, Acc::Value(cur)) => {
            if cur.is_null() {
                *cur = v.clone();
            } else {
                let ord = cur.compare(v).ok_or_else(|| {
                    anyhow!(
                        "{} cannot compare {} {cur} with {} {v} in field `{field}`",
                        kind.name(),
                        cur.type_name(),
                        v.type_name()
                    )
                })?;
                let replace = match kind {
                    AggKind::Min => ord == Ordering::Greater,
                    _ => ord == Ordering::Less,
                };
                if replace {
                    *cur = v.clone();
                }
            }
        }
        (AggKind::Avg, Acc::Avg { sum, n }) => {
            let x = v.as_f64().ok_or_else(|| {
                anyhow!(
                    "avg needs numbers, but field `{field}` holds {} {v}",
                    v.type_name()
                )
            })?;
            *sum += x;
            *n += 1;
        }
        (kind, _) => bail!("internal: accumulator does not match {}", kind.name()),
    }
    Ok(())
}

impl KeyedOperator for AggregateOperator {
    type Key = RecordKey;
    type In = Record;
    type Out = Record;

    fn open(
        &mut self,
        _info: &SubtaskInfo,
        state: &mut KeyedBackend<RecordKey>,
    ) -> anyhow::Result<()> {
        self.state = Some(ValueStateDescriptor::new(self.spec.kind.name()).register(state)?);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_, RecordKey, Record>,
    ) -> anyhow::Result<()> {
        let spec = &*self.spec;
        for f in &spec.key {
            if record.get(f).is_none() {
                bail!(
                    "key field `{f}` is missing from the record (it has {})",
                    record.describe_fields()
                );
            }
        }
        let value = match &spec.field {
            Some(f) => record.get(f).ok_or_else(|| {
                anyhow!(
                    "{} reads field `{f}`, which is missing from the record (it has {})",
                    spec.kind.name(),
                    record.describe_fields()
                )
            })?,
            None => &Value::Null,
        };
        let field = spec.field.as_deref().unwrap_or("");
        let state = self.state.as_ref().expect("opened");
        let mut acc = state.value(ctx.state())?.unwrap_or(match spec.kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            _ => Acc::Value(Value::Null),
        });
        fold(spec.kind, &mut acc, value, field)?;
        let result = match &acc {
            Acc::Count(n) => Value::Int(*n),
            Acc::Value(v) => v.clone(),
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => Value::Float(*sum / *n as f64),
        };
        state.update(ctx.state(), acc)?;
        let mut out = Record::with_capacity(spec.key.len() + 1);
        for (name, v) in spec.key.iter().zip(ctx.key().values()) {
            out.push_unchecked(name.clone(), v.clone());
        }
        if spec.key.contains(&spec.output) {
            out.set(spec.output.clone(), result);
        } else {
            out.push_unchecked(spec.output.clone(), result);
        }
        ctx.emit(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::KeyedStateBackend;

    fn info() -> SubtaskInfo {
        SubtaskInfo {
            operator: Arc::from("op"),
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
            attempt: 0,
        }
    }

    fn run<O: Operator<In = Record, Out = Record>>(
        op: &mut O,
        input: Vec<Record>,
    ) -> anyhow::Result<Vec<String>> {
        let i = info();
        let mut out = Vec::new();
        for r in input {
            op.process(r, &mut Context::new(&mut out, &i))?;
        }
        Ok(out.iter().map(Record::to_json).collect())
    }

    fn rec(json: &str) -> Record {
        Record::from_json(json).unwrap()
    }

    fn names(ns: &[&str]) -> Vec<Arc<str>> {
        ns.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn map_selects_computes_and_renames() {
        let spec = MapSpec {
            select: Some(names(&["b", "a"])),
            drop: vec![],
            set: vec![(Arc::from("c"), Expr::parse("a * 2 + b", false).unwrap())],
            rename: vec![(Arc::from("a"), Arc::from("alpha"))],
        };
        let mut op = MapOperator::new(Arc::new(spec));
        assert_eq!(
            run(&mut op, vec![rec(r#"{"a":1,"b":2,"z":0}"#)]).unwrap(),
            [r#"{"b":2,"alpha":1,"c":4}"#]
        );
        let e = run(&mut op, vec![rec(r#"{"a":1}"#)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("the record has no field `b`"), "{e}");

        let spec = MapSpec {
            drop: names(&["z"]),
            rename: vec![(Arc::from("q"), Arc::from("r"))],
            ..MapSpec::default()
        };
        let mut op = MapOperator::new(Arc::new(spec));
        let e = run(&mut op, vec![rec(r#"{"a":1,"z":2}"#)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "field `q` named in `rename` is missing from the record (it has `a`)"
        );
    }

    #[test]
    fn filter_keeps_matching_records() {
        let mut op =
            FilterOperator::new(Arc::new(Expr::parse("n > 1 and s != 'x'", false).unwrap()));
        let out = run(
            &mut op,
            vec![
                rec(r#"{"n":1,"s":"a"}"#),
                rec(r#"{"n":2,"s":"x"}"#),
                rec(r#"{"n":3,"s":"b"}"#),
            ],
        )
        .unwrap();
        assert_eq!(out, [r#"{"n":3,"s":"b"}"#]);
        let e = run(&mut op, vec![rec(r#"{"n":"2","s":"b"}"#)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot apply `>`"), "{e}");
    }

    #[test]
    fn flat_map_splits() {
        let spec = |mode, lowercase, keep| {
            Arc::new(FlatMapSpec {
                field: Arc::from("line"),
                output: Arc::from("word"),
                mode,
                lowercase,
                keep,
            })
        };
        let line = || vec![rec(r#"{"id":1,"line":"Don't  stop, 'Believin'  now!"}"#)];
        let mut op = FlatMapOperator::new(spec(SplitMode::Words, true, false));
        assert_eq!(
            run(&mut op, line()).unwrap(),
            [
                r#"{"word":"don't"}"#,
                r#"{"word":"stop"}"#,
                r#"{"word":"believin"}"#,
                r#"{"word":"now"}"#
            ]
        );
        let mut op = FlatMapOperator::new(spec(SplitMode::Whitespace, false, true));
        let out = run(&mut op, line()).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[1],
            r#"{"id":1,"line":"Don't  stop, 'Believin'  now!","word":"stop,"}"#
        );
        let mut op = FlatMapOperator::new(spec(SplitMode::Separator(",".into()), false, false));
        assert_eq!(
            run(&mut op, vec![rec(r#"{"line":"a,,b"}"#)]).unwrap(),
            [r#"{"word":"a"}"#, r#"{"word":"b"}"#]
        );
        let e = run(&mut op, vec![rec(r#"{"line":3}"#)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "flat_map splits the string field `line`, but it holds int 3"
        );
    }

    fn memory_backend() -> KeyedBackend<RecordKey> {
        let config =
            weir_state::KeyedBackendConfig::new("agg", weir_state::KeyGroupRange::all(128), 128);
        let storage =
            weir_state::LocalCheckpointStorage::new(std::env::temp_dir().join("weir-agg-test"))
                .unwrap();
        KeyedBackend::open(&weir_state::BackendKind::Memory, config, &[], &storage).unwrap()
    }

    fn agg(kind: AggKind, field: Option<&str>, input: &[&str]) -> anyhow::Result<Vec<String>> {
        let spec = Arc::new(AggSpec {
            kind,
            key: names(&["k"]),
            field: field.map(Arc::from),
            output: Arc::from(kind.name()),
        });
        let mut op = AggregateOperator::new(spec.clone());
        let i = info();
        let mut out = Vec::new();
        let mut state = memory_backend();
        op.open(&i, &mut state)?;
        for j in input {
            let r = rec(j);
            let key = RecordKey::extract(&r, &spec.key).unwrap_or(RecordKey::One(Value::Null));
            state.set_current_key(key)?;
            op.process(
                r,
                &mut KeyedContext::new(Context::new(&mut out, &i), &mut state, true),
            )?;
        }
        Ok(out.iter().map(Record::to_json).collect())
    }

    #[test]
    fn aggregations_emit_per_record() {
        let input = [
            r#"{"k":"a","v":1}"#,
            r#"{"k":"b","v":5}"#,
            r#"{"k":"a","v":3}"#,
            r#"{"k":"a","v":null}"#,
            r#"{"k":"a","v":2}"#,
        ];
        assert_eq!(
            agg(AggKind::Count, None, &input).unwrap(),
            [
                r#"{"k":"a","count":1}"#,
                r#"{"k":"b","count":1}"#,
                r#"{"k":"a","count":2}"#,
                r#"{"k":"a","count":3}"#,
                r#"{"k":"a","count":4}"#
            ]
        );
        assert_eq!(
            agg(AggKind::Sum, Some("v"), &input).unwrap(),
            [
                r#"{"k":"a","sum":1}"#,
                r#"{"k":"b","sum":5}"#,
                r#"{"k":"a","sum":4}"#,
                r#"{"k":"a","sum":4}"#,
                r#"{"k":"a","sum":6}"#
            ]
        );
        assert_eq!(
            agg(AggKind::Min, Some("v"), &input)
                .unwrap()
                .last()
                .unwrap(),
            r#"{"k":"a","min":1}"#
        );
        assert_eq!(
            agg(AggKind::Max, Some("v"), &input).unwrap()[2],
            r#"{"k":"a","max":3}"#
        );
        assert_eq!(
            agg(AggKind::Avg, Some("v"), &input)
                .unwrap()
                .last()
                .unwrap(),
            r#"{"k":"a","avg":2.0}"#
        );
        assert_eq!(
            agg(
                AggKind::Sum,
                Some("v"),
                &[r#"{"k":"a","v":1}"#, r#"{"k":"a","v":0.5}"#]
            )
            .unwrap()[1],
            r#"{"k":"a","sum":1.5}"#
        );
    }

    #[test]
    fn aggregation_errors() {
        let e = agg(AggKind::Sum, Some("v"), &[r#"{"k":"a","v":"x"}"#])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "sum needs numbers, but field `v` holds string \"x\"");
        let e = agg(AggKind::Sum, Some("v"), &[r#"{"k":"a"}"#])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "sum reads field `v`, which is missing from the record (it has `k`)"
        );
        let e = agg(AggKind::Count, None, &[r#"{"j":"a"}"#])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "key field `k` is missing from the record (it has `j`)");
        let e = agg(
            AggKind::Max,
            Some("v"),
            &[r#"{"k":"a","v":1}"#, r#"{"k":"a","v":"s"}"#],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "max cannot compare int 1 with string \"s\" in field `v`");
        let e = agg(
            AggKind::Sum,
            Some("v"),
            &[r#"{"k":"a","v":9223372036854775807}"#, r#"{"k":"a","v":1}"#],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("integer overflow"), "{e}");
    }
}
