//! What a window keeps and emits: incremental aggregation ([`AggregateFunction`],
//! with count, sum, min, max and avg built in) or the full contents for a process
//! function. Both keep one *pane* per slice or session in keyed state, namespaced by
//! the slice's end or the session's id, so windows are checkpointed and rescaled with
//! the rest of the keyed state.

use crate::operator::{Data, Key};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::ops::Add;
use std::sync::Arc;
use weir_state::value::StateValue;
use weir_state::{KeyedBackend, ListState, ListStateDescriptor, ValueState, ValueStateDescriptor};

/// A window: event times `start..end` (end exclusive).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The latest event time inside the window: it fires when the watermark gets here.
    pub fn max_timestamp(&self) -> i64 {
        self.end - 1
    }
}

/// The result of one window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Windowed<K, V> {
    pub key: K,
    pub window: Window,
    pub value: V,
}

/// Incremental aggregation, as Flink's `AggregateFunction`: records fold into an
/// accumulator, accumulators of slices or merged sessions merge, and the result is
/// taken when the window fires. Only the accumulator is stored.
pub trait AggregateFunction<In>: Send + Sync + 'static {
    type Acc: StateValue;
    type Out: Data;
    fn create_accumulator(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, record: &In);
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    fn result(&self, acc: Self::Acc) -> Self::Out;
}

/// The number of records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<In> AggregateFunction<In> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &In) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: u64) -> u64 {
        acc
    }
}

/// The sum of a value taken from each record.
pub struct Sum<F, V>(F, PhantomData<fn() -> V>);

impl<F, V> Sum<F, V> {
    pub fn of(value: F) -> Self {
        Sum(value, PhantomData)
    }
}

impl<In, V, F> AggregateFunction<In> for Sum<F, V>
where
    F: Fn(&In) -> V + Send + Sync + 'static,
    V: Add<Output = V> + Default + Data + Sync,
{
    type Acc = V;
    type Out = V;
    fn create_accumulator(&self) -> V {
        V::default()
    }
    fn add(&self, acc: &mut V, record: &In) {
        *acc = std::mem::take(acc) + (self.0)(record);
    }
    fn merge(&self, acc: &mut V, other: V) {
        *acc = std::mem::take(acc) + other;
    }
    fn result(&self, acc: V) -> V {
        acc
    }
}

/// The smallest (`Extreme::min`) or largest (`Extreme::max`) value taken from each
/// record; incomparable values (NaN) never replace the current one.
pub struct Extreme<F, V> {
    value: F,
    keep_larger: bool,
    _value: PhantomData<fn() -> V>,
}

impl<F, V> Extreme<F, V> {
    pub fn min(value: F) -> Self {
        Extreme {
            value,
            keep_larger: false,
            _value: PhantomData,
        }
    }

    pub fn max(value: F) -> Self {
        Extreme {
            value,
            keep_larger: true,
            _value: PhantomData,
        }
    }

    fn better(&self, candidate: &V, current: &V) -> bool
    where
        V: PartialOrd,
    {
        if self.keep_larger {
            candidate > current
        } else {
            candidate < current
        }
    }
}

impl<In, V, F> AggregateFunction<In> for Extreme<F, V>
where
    F: Fn(&In) -> V + Send + Sync + 'static,
    V: PartialOrd + Data + Sync,
{
    type Acc = Option<V>;
    type Out = V;
    fn create_accumulator(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, record: &In) {
        self.merge(acc, Some((self.value)(record)));
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) {
        match (acc.as_ref(), other) {
            (_, None) => {}
            (Some(current), Some(candidate)) if !self.better(&candidate, current) => {}
            (_, candidate) => *acc = candidate,
        }
    }
    fn result(&self, acc: Option<V>) -> V {
        acc.expect("a window fires only after a record reached it")
    }
}

/// The arithmetic mean of a value taken from each record.
pub struct Avg<F>(F);

impl<F> Avg<F> {
    pub fn of(value: F) -> Self {
        Avg(value)
    }
}

impl<In, F> AggregateFunction<In> for Avg<F>
where
    F: Fn(&In) -> f64 + Send + Sync + 'static,
{
    /// (sum, count)
    type Acc = (f64, u64);
    type Out = f64;
    fn create_accumulator(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), record: &In) {
        acc.0 += (self.0)(record);
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, u64), other: (f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, (sum, count): (f64, u64)) -> f64 {
        sum / count as f64
    }
}

/// How a window operator stores its panes and turns a window's merged pane into
/// output. `ns` is a slice's end or a session's id.
pub trait WindowFunction<K: Key, In>: Send + 'static {
    type Pane: StateValue;
    type Out: Data;
    fn register(&mut self, state: &mut KeyedBackend<K>) -> anyhow::Result<()>;
    /// Adds a record to a pane; true if the pane did not exist before (or may not have).
    fn add(&mut self, state: &mut KeyedBackend<K>, ns: i64, record: In) -> anyhow::Result<bool>;
    fn get(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<Option<Self::Pane>>;
    fn put(&mut self, state: &mut KeyedBackend<K>, ns: i64, pane: Self::Pane)
        -> anyhow::Result<()>;
    fn clear(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<()>;
    fn merge(&self, into: &mut Self::Pane, other: Self::Pane) -> anyhow::Result<()>;
    fn emit(
        &mut self,
        key: &K,
        window: Window,
        pane: Self::Pane,
        out: &mut dyn FnMut(Self::Out),
    ) -> anyhow::Result<()>;
}

/// Panes are accumulators of an [`AggregateFunction`]; a window emits a [`Windowed`].
pub struct Aggregating<In, A: AggregateFunction<In>> {
    function: Arc<A>,
    panes: Option<ValueState<A::Acc, i64>>,
}

impl<In, A: AggregateFunction<In>> Aggregating<In, A> {
    pub fn new(function: Arc<A>) -> Self {
        Aggregating {
            function,
            panes: None,
        }
    }

    fn handle(&mut self, ns: i64) -> &ValueState<A::Acc, i64> {
        let panes = self.panes.as_mut().expect("registered in open");
        panes.set_namespace(ns);
        panes
    }
}

/// The pane state of a window operator (one per operator, so one name does).
const PANES: &str = "window-panes";

impl<K: Key, In: 'static, A: AggregateFunction<In>> WindowFunction<K, In> for Aggregating<In, A> {
    type Pane = A::Acc;
    type Out = Windowed<K, A::Out>;

    fn register(&mut self, state: &mut KeyedBackend<K>) -> anyhow::Result<()> {
        self.panes = Some(ValueStateDescriptor::new(PANES).register(state)?);
        Ok(())
    }

    fn add(&mut self, state: &mut KeyedBackend<K>, ns: i64, record: In) -> anyhow::Result<bool> {
        let existing = self.get(state, ns)?;
        let created = existing.is_none();
        let mut acc = existing.unwrap_or_else(|| self.function.create_accumulator());
        self.function.add(&mut acc, &record);
        self.put(state, ns, acc)?;
        Ok(created)
    }

    fn get(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<Option<A::Acc>> {
        Ok(self.handle(ns).value(state)?)
    }

    fn put(&mut self, state: &mut KeyedBackend<K>, ns: i64, pane: A::Acc) -> anyhow::Result<()> {
        Ok(self.handle(ns).update(state, pane)?)
    }

    fn clear(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<()> {
        Ok(self.handle(ns).clear(state)?)
    }

    fn merge(&self, into: &mut A::Acc, other: A::Acc) -> anyhow::Result<()> {
        self.function.merge(into, other);
        Ok(())
    }

    fn emit(
        &mut self,
        key: &K,
        window: Window,
        pane: A::Acc,
        out: &mut dyn FnMut(Self::Out),
    ) -> anyhow::Result<()> {
        out(Windowed {
            key: key.clone(),
            window,
            value: self.function.result(pane),
        });
        Ok(())
    }
}

/// Panes keep every record; a window hands them all to a function that emits any
/// number of outputs (Flink's `ProcessWindowFunction`).
pub struct Collecting<In, F> {
    function: Arc<F>,
    panes: Option<ListState<In, i64>>,
}

impl<In: StateValue, F> Collecting<In, F> {
    pub fn new(function: Arc<F>) -> Self {
        Collecting {
            function,
            panes: None,
        }
    }

    fn handle(&mut self, ns: i64) -> &ListState<In, i64> {
        let panes = self.panes.as_mut().expect("registered in open");
        panes.set_namespace(ns);
        panes
    }
}

impl<K, In, Out, I, F> WindowFunction<K, In> for Collecting<In, F>
where
    K: Key,
    In: StateValue,
    Out: Data,
    I: IntoIterator<Item = Out>,
    F: Fn(&K, &Window, Vec<In>) -> I + Send + Sync + 'static,
{
    type Pane = Vec<In>;
    type Out = Out;

    fn register(&mut self, state: &mut KeyedBackend<K>) -> anyhow::Result<()> {
        self.panes = Some(ListStateDescriptor::new(PANES).register(state)?);
        Ok(())
    }

    fn add(&mut self, state: &mut KeyedBackend<K>, ns: i64, record: In) -> anyhow::Result<bool> {
        // Appending does not read the list (a RocksDB merge), so newness is unknown.
        self.handle(ns).add(state, record)?;
        Ok(true)
    }

    fn get(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<Option<Vec<In>>> {
        let records = self.handle(ns).get(state)?;
        Ok((!records.is_empty()).then_some(records))
    }

    fn put(&mut self, state: &mut KeyedBackend<K>, ns: i64, pane: Vec<In>) -> anyhow::Result<()> {
        Ok(self.handle(ns).update(state, pane)?)
    }

    fn clear(&mut self, state: &mut KeyedBackend<K>, ns: i64) -> anyhow::Result<()> {
        Ok(self.handle(ns).clear(state)?)
    }

    fn merge(&self, into: &mut Vec<In>, other: Vec<In>) -> anyhow::Result<()> {
        into.extend(other);
        Ok(())
    }

    fn emit(
        &mut self,
        key: &K,
        window: Window,
        pane: Vec<In>,
        out: &mut dyn FnMut(Out),
    ) -> anyhow::Result<()> {
        (self.function)(key, &window, pane)
            .into_iter()
            .for_each(out);
        Ok(())
    }
}
