//! Window nodes of TOML topologies: count / sum / min / max / avg of a field per key
//! and window, on the runtime's window operator. A result is the record
//! `{key fields..., window_start, window_end, OUTPUT}`; the window node's late
//! records (when a `late` sink reads it) pass through unchanged.

use super::operators::{fold, Acc, AggKind};
use crate::record::{Record, RecordKey, Value};
use anyhow::{anyhow, bail};
use std::sync::Arc;
use weir_actors::window::{Window, WindowFunction, WindowOutput};
use weir_actors::{Context, EventTime, Operator};
use weir_state::{KeyedBackend, ValueState, ValueStateDescriptor};

/// What a window node computes.
#[derive(Debug, Clone)]
pub struct WindowAggSpec {
    pub kind: AggKind,
    /// The key fields (copied into every result).
    pub key: Vec<Arc<str>>,
    /// The aggregated field (not for count).
    pub field: Option<Arc<str>>,
    /// The name of the result field.
    pub output: Arc<str>,
}

/// The names of the window bounds in results.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// The event time of a record: an integer field (ms since the epoch).
pub fn timestamp_of(record: &Record, field: &str) -> anyhow::Result<EventTime> {
    match record.get(field) {
        Some(Value::Int(t)) => Ok(*t),
        Some(other) => bail!(
            "event time field `{field}` must hold an integer (ms since the epoch), found {} {other}",
            other.type_name()
        ),
        None => bail!(
            "event time field `{field}` is missing from the record (it has {})",
            record.describe_fields()
        ),
    }
}

/// A window's pane is the same accumulator as the keyed aggregations'.
pub struct RecordWindowAgg {
    spec: Arc<WindowAggSpec>,
    panes: Option<ValueState<Acc, i64>>,
}

impl RecordWindowAgg {
    pub fn new(spec: Arc<WindowAggSpec>) -> Self {
        RecordWindowAgg { spec, panes: None }
    }

    fn handle(&mut self, ns: i64) -> &ValueState<Acc, i64> {
        let panes = self.panes.as_mut().expect("registered in open");
        panes.set_namespace(ns);
        panes
    }

    fn field(&self) -> &str {
        self.spec.field.as_deref().unwrap_or("")
    }
}

impl WindowFunction<RecordKey, Record> for RecordWindowAgg {
    type Pane = Acc;
    type Out = Record;

    fn register(&mut self, state: &mut KeyedBackend<RecordKey>) -> anyhow::Result<()> {
        self.panes = Some(ValueStateDescriptor::new("window-panes").register(state)?);
        Ok(())
    }

    fn add(
        &mut self,
        state: &mut KeyedBackend<RecordKey>,
        ns: i64,
        record: Record,
    ) -> anyhow::Result<bool> {
        let spec = self.spec.clone();
        let value = match &spec.field {
            Some(f) => record.get(f).ok_or_else(|| {
                anyhow!(
                    "window {} reads field `{f}`, which is missing from the record (it has {})",
                    spec.kind.name(),
                    record.describe_fields()
                )
            })?,
            None => &Value::Null,
        };
        let existing = self.handle(ns).value(state)?;
        let created = existing.is_none();
        let mut acc = existing.unwrap_or(match spec.kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            _ => Acc::Value(Value::Null),
        });
        fold(spec.kind, &mut acc, value, self.field())?;
        self.handle(ns).update(state, acc)?;
        Ok(created)
    }

    fn get(&mut self, state: &mut KeyedBackend<RecordKey>, ns: i64) -> anyhow::Result<Option<Acc>> {
        Ok(self.handle(ns).value(state)?)
    }

    fn put(
        &mut self,
        state: &mut KeyedBackend<RecordKey>,
        ns: i64,
        pane: Acc,
    ) -> anyhow::Result<()> {
        Ok(self.handle(ns).update(state, pane)?)
    }

    fn clear(&mut self, state: &mut KeyedBackend<RecordKey>, ns: i64) -> anyhow::Result<()> {
        Ok(self.handle(ns).clear(state)?)
    }

    fn merge(&self, into: &mut Acc, other: Acc) -> anyhow::Result<()> {
        match (into, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Avg { sum, n }, Acc::Avg { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            // Folding the other pane's sum, min or max in as one value merges them.
            (acc @ Acc::Value(_), Acc::Value(v)) => fold(self.spec.kind, acc, &v, self.field())?,
            _ => bail!("internal: window panes of different kinds"),
        }
        Ok(())
    }

    fn emit(
        &mut self,
        key: &RecordKey,
        window: Window,
        pane: Acc,
        out: &mut dyn FnMut(Record),
    ) -> anyhow::Result<()> {
        let spec = &*self.spec;
        let result = match pane {
            Acc::Count(n) => Value::Int(n),
            Acc::Value(v) => v,
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => Value::Float(sum / n as f64),
        };
        let mut record = Record::with_capacity(spec.key.len() + 3);
        for (name, v) in spec.key.iter().zip(key.values()) {
            record.push_unchecked(name.clone(), v.clone());
        }
        record.set(Arc::from(WINDOW_START), Value::Int(window.start));
        record.set(Arc::from(WINDOW_END), Value::Int(window.end));
        record.set(spec.output.clone(), result);
        out(record);
        Ok(())
    }
}

/// Takes one side of a window node's output: its results, or its late records.
pub struct WindowSide {
    pub late: bool,
}

impl Operator for WindowSide {
    type In = WindowOutput<Record, Record>;
    type Out = Record;

    fn process(
        &mut self,
        output: WindowOutput<Record, Record>,
        ctx: &mut Context<'_, Record>,
    ) -> anyhow::Result<()> {
        match (output, self.late) {
            (WindowOutput::Result(r), false) | (WindowOutput::Late(r), true) => ctx.emit(r),
            _ => {}
        }
        Ok(())
    }
}
