//! State descriptors (name + types + options) and the typed handles they register.
//!
//! Like Flink's `getState(descriptor)`: `ValueStateDescriptor::<u64>::new("count")
//! .register(&mut backend)?` returns a `ValueState<u64>`, a small handle the operator
//! keeps; each access passes the backend, which supplies the current key. A handle
//! carries its namespace (`()` unless the state is per window): set it with
//! `set_namespace` before accessing.

use crate::backend::{KeyedStateBackend, StateId};
use crate::error::Result;
use crate::handle::{StateKind, StateMeta};
use crate::ttl::TtlConfig;
use crate::value::{StateKey, StateValue};
use std::marker::PhantomData;
use std::sync::Arc;

fn meta(name: &str, kind: StateKind, ttl: Option<TtlConfig>) -> StateMeta {
    StateMeta {
        name: name.to_string(),
        kind,
        ttl,
    }
}

macro_rules! namespace_accessors {
    () => {
        pub fn set_namespace(&mut self, namespace: N) {
            self.namespace = namespace;
        }
        pub fn namespace(&self) -> &N {
            &self.namespace
        }
    };
}

// ---- value ----

pub struct ValueStateDescriptor<T, N = ()> {
    name: String,
    ttl: Option<TtlConfig>,
    _types: PhantomData<fn() -> (T, N)>,
}

impl<T: StateValue, N: StateKey + Default> ValueStateDescriptor<T, N> {
    pub fn new(name: impl Into<String>) -> Self {
        ValueStateDescriptor {
            name: name.into(),
            ttl: None,
            _types: PhantomData,
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<ValueState<T, N>> {
        let id = backend.register_cell::<N, T>(meta(&self.name, StateKind::Value, self.ttl))?;
        Ok(ValueState {
            id,
            namespace: N::default(),
            _types: PhantomData,
        })
    }
}

pub struct ValueState<T, N = ()> {
    id: StateId,
    namespace: N,
    _types: PhantomData<fn() -> T>,
}

impl<T: StateValue, N: StateKey> ValueState<T, N> {
    namespace_accessors!();
    pub fn value<B: KeyedStateBackend>(&self, b: &mut B) -> Result<Option<T>> {
        b.cell_get::<N, T>(self.id, &self.namespace)
    }
    pub fn update<B: KeyedStateBackend>(&self, b: &mut B, value: T) -> Result<()> {
        b.cell_put::<N, T>(self.id, &self.namespace, value)
    }
    pub fn clear<B: KeyedStateBackend>(&self, b: &mut B) -> Result<()> {
        b.cell_clear::<N, T>(self.id, &self.namespace)
    }
}

// ---- list ----

pub struct ListStateDescriptor<T, N = ()> {
    name: String,
    ttl: Option<TtlConfig>,
    _types: PhantomData<fn() -> (T, N)>,
}

impl<T: StateValue, N: StateKey + Default> ListStateDescriptor<T, N> {
    pub fn new(name: impl Into<String>) -> Self {
        ListStateDescriptor {
            name: name.into(),
            ttl: None,
            _types: PhantomData,
        }
    }
    /// TTL applies per element.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<ListState<T, N>> {
        let id = backend.register_list::<N, T>(meta(&self.name, StateKind::List, self.ttl))?;
        Ok(ListState {
            id,
            namespace: N::default(),
            _types: PhantomData,
        })
    }
}

pub struct ListState<T, N = ()> {
    id: StateId,
    namespace: N,
    _types: PhantomData<fn() -> T>,
}

impl<T: StateValue, N: StateKey> ListState<T, N> {
    namespace_accessors!();
    pub fn get<B: KeyedStateBackend>(&self, b: &mut B) -> Result<Vec<T>> {
        b.list_get::<N, T>(self.id, &self.namespace)
    }
    pub fn add<B: KeyedStateBackend>(&self, b: &mut B, value: T) -> Result<()> {
        b.list_add::<N, T>(self.id, &self.namespace, value)
    }
    pub fn update<B: KeyedStateBackend>(&self, b: &mut B, values: Vec<T>) -> Result<()> {
        b.list_put::<N, T>(self.id, &self.namespace, values)
    }
    pub fn clear<B: KeyedStateBackend>(&self, b: &mut B) -> Result<()> {
        b.list_put::<N, T>(self.id, &self.namespace, Vec::new())
    }
}

// ---- map ----

type MapTypes<UK, UV, N> = fn() -> (UK, UV, N);

pub struct MapStateDescriptor<UK, UV, N = ()> {
    name: String,
    ttl: Option<TtlConfig>,
    _types: PhantomData<MapTypes<UK, UV, N>>,
}

impl<UK: StateKey, UV: StateValue, N: StateKey + Default> MapStateDescriptor<UK, UV, N> {
    pub fn new(name: impl Into<String>) -> Self {
        MapStateDescriptor {
            name: name.into(),
            ttl: None,
            _types: PhantomData,
        }
    }
    /// TTL applies per map entry.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<MapState<UK, UV, N>> {
        let id = backend.register_map::<N, UK, UV>(meta(&self.name, StateKind::Map, self.ttl))?;
        Ok(MapState {
            id,
            namespace: N::default(),
            _types: PhantomData,
        })
    }
}

pub struct MapState<UK, UV, N = ()> {
    id: StateId,
    namespace: N,
    _types: PhantomData<fn() -> (UK, UV)>,
}

impl<UK: StateKey, UV: StateValue, N: StateKey> MapState<UK, UV, N> {
    namespace_accessors!();
    pub fn get<B: KeyedStateBackend>(&self, b: &mut B, key: &UK) -> Result<Option<UV>> {
        b.map_get::<N, UK, UV>(self.id, &self.namespace, key)
    }
    pub fn contains<B: KeyedStateBackend>(&self, b: &mut B, key: &UK) -> Result<bool> {
        Ok(self.get(b, key)?.is_some())
    }
    pub fn put<B: KeyedStateBackend>(&self, b: &mut B, key: UK, value: UV) -> Result<()> {
        b.map_put::<N, UK, UV>(self.id, &self.namespace, key, value)
    }
    pub fn remove<B: KeyedStateBackend>(&self, b: &mut B, key: &UK) -> Result<()> {
        b.map_remove::<N, UK, UV>(self.id, &self.namespace, key)
    }
    pub fn entries<B: KeyedStateBackend>(&self, b: &mut B) -> Result<Vec<(UK, UV)>> {
        b.map_entries::<N, UK, UV>(self.id, &self.namespace)
    }
    pub fn is_empty<B: KeyedStateBackend>(&self, b: &mut B) -> Result<bool> {
        Ok(self.entries(b)?.is_empty())
    }
    pub fn clear<B: KeyedStateBackend>(&self, b: &mut B) -> Result<()> {
        b.map_clear::<N, UK, UV>(self.id, &self.namespace)
    }
}

// ---- reducing ----

pub type ReduceFn<T> = Arc<dyn Fn(&T, T) -> T + Send + Sync>;

pub struct ReducingStateDescriptor<T, N = ()> {
    name: String,
    ttl: Option<TtlConfig>,
    reduce: ReduceFn<T>,
    _types: PhantomData<fn() -> N>,
}

impl<T: StateValue, N: StateKey + Default> ReducingStateDescriptor<T, N> {
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&T, T) -> T + Send + Sync + 'static,
    ) -> Self {
        ReducingStateDescriptor {
            name: name.into(),
            ttl: None,
            reduce: Arc::new(reduce),
            _types: PhantomData,
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<ReducingState<T, N>> {
        let id = backend.register_cell::<N, T>(meta(&self.name, StateKind::Reducing, self.ttl))?;
        Ok(ReducingState {
            id,
            namespace: N::default(),
            reduce: self.reduce.clone(),
        })
    }
}

pub struct ReducingState<T, N = ()> {
    id: StateId,
    namespace: N,
    reduce: ReduceFn<T>,
}

impl<T: StateValue, N: StateKey> ReducingState<T, N> {
    namespace_accessors!();
    pub fn get<B: KeyedStateBackend>(&self, b: &mut B) -> Result<Option<T>> {
        b.cell_get::<N, T>(self.id, &self.namespace)
    }
    pub fn add<B: KeyedStateBackend>(&self, b: &mut B, value: T) -> Result<()> {
        let next = match b.cell_get::<N, T>(self.id, &self.namespace)? {
            Some(acc) => (self.reduce)(&acc, value),
            None => value,
        };
        b.cell_put::<N, T>(self.id, &self.namespace, next)
    }
    pub fn clear<B: KeyedStateBackend>(&self, b: &mut B) -> Result<()> {
        b.cell_clear::<N, T>(self.id, &self.namespace)
    }
}

// ---- aggregating ----

/// Folds inputs into an accumulator and derives the result (Flink's AggregateFunction).
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync {
    fn create_accumulator(&self) -> ACC;
    fn add(&self, value: IN, accumulator: ACC) -> ACC;
    fn get_result(&self, accumulator: &ACC) -> OUT;
}

pub struct AggregatingStateDescriptor<IN, ACC, OUT, N = ()> {
    name: String,
    ttl: Option<TtlConfig>,
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    _types: PhantomData<fn() -> N>,
}

impl<IN, ACC: StateValue, OUT, N: StateKey + Default> AggregatingStateDescriptor<IN, ACC, OUT, N> {
    pub fn new(
        name: impl Into<String>,
        function: impl AggregateFunction<IN, ACC, OUT> + 'static,
    ) -> Self {
        AggregatingStateDescriptor {
            name: name.into(),
            ttl: None,
            function: Arc::new(function),
            _types: PhantomData,
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn register<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
    ) -> Result<AggregatingState<IN, ACC, OUT, N>> {
        let id =
            backend.register_cell::<N, ACC>(meta(&self.name, StateKind::Aggregating, self.ttl))?;
        Ok(AggregatingState {
            id,
            namespace: N::default(),
            function: self.function.clone(),
        })
    }
}

pub struct AggregatingState<IN, ACC, OUT, N = ()> {
    id: StateId,
    namespace: N,
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
}

impl<IN, ACC: StateValue, OUT, N: StateKey> AggregatingState<IN, ACC, OUT, N> {
    namespace_accessors!();
    pub fn get<B: KeyedStateBackend>(&self, b: &mut B) -> Result<Option<OUT>> {
        Ok(b.cell_get::<N, ACC>(self.id, &self.namespace)?
            .map(|acc| self.function.get_result(&acc)))
    }
    pub fn add<B: KeyedStateBackend>(&self, b: &mut B, value: IN) -> Result<()> {
        let acc = match b.cell_get::<N, ACC>(self.id, &self.namespace)? {
            Some(acc) => acc,
            None => self.function.create_accumulator(),
        };
        let acc = self.function.add(value, acc);
        b.cell_put::<N, ACC>(self.id, &self.namespace, acc)
    }
    pub fn clear<B: KeyedStateBackend>(&self, b: &mut B) -> Result<()> {
        b.cell_clear::<N, ACC>(self.id, &self.namespace)
    }
}
