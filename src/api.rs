//! The typed API for embedding weir in a Rust program, in the spirit of Flink's
//! DataStream API:
//!
//! ```no_run
//! use weir::{JobConfig, StreamJob};
//! # use weir::{Context, Source, SourcePoll, Sink};
//! # struct Numbers(u64);
//! # impl Source for Numbers { type Out = u64;
//! #   fn poll(&mut self, ctx: &mut Context<'_, u64>, _max: usize) -> anyhow::Result<SourcePoll> {
//! #     if self.0 == 0 { return Ok(SourcePoll::Finished) } self.0 -= 1; ctx.emit(self.0); Ok(SourcePoll::Ready) } }
//! # struct Print; impl Sink for Print { type In = (u64, u64);
//! #   fn write(&mut self, r: (u64, u64)) -> anyhow::Result<()> { println!("{r:?}"); Ok(()) } }
//! let job = StreamJob::new(JobConfig::default());
//! job.source("numbers", |_| Numbers(1000))
//!     .map("pair", |n| (n % 10, n))
//!     .key_by(|(k, _)| *k)
//!     .reduce("sum", |(k, a), (_, b)| (*k, a + b))
//!     .sink("print", |_| Print);
//! let report = job.run().unwrap();
//! ```
//!
//! Every node gets a unique name; the factories run once per parallel subtask, on the
//! subtask's worker thread.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use weir_actors::window::{
    AggregateFunction, Aggregating, Avg, Collecting, Count, Extreme, Slicing, Sum, Window,
    WindowFunction, WindowKind, WindowOperator, WindowOutput, WindowTime, Windowed,
};
use weir_actors::{AsyncFunction, AsyncOptions, AsyncResult, EventTime, JobControl, KeyedContext};
use weir_actors::{
    Context, Data, JobConfig, JobError, JobGraph, JobMetrics, JobReport, Key, KeyedOperator,
    NodeDescription, NodeId, Operator, Partitioning, Sink, Source, SubtaskInfo, WatermarkStrategy,
};
use weir_state::{KeyedBackend, ValueState, ValueStateDescriptor};

/// A job being built; `run` executes it.
pub struct StreamJob {
    graph: Rc<RefCell<JobGraph>>,
}

impl StreamJob {
    pub fn new(config: JobConfig) -> Self {
        StreamJob {
            graph: Rc::new(RefCell::new(JobGraph::new(config))),
        }
    }

    pub fn source<S: Source>(
        &self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) -> DataStream<S::Out> {
        let node = self.graph.borrow_mut().add_source(name, make);
        DataStream::new(self.graph.clone(), node, Partitioning::default_for_edge())
    }

    /// A source whose records carry event times; it emits watermarks as `strategy`
    /// says, and operators downstream see them in `on_watermark`.
    pub fn source_with_watermarks<S: Source>(
        &self,
        name: &str,
        strategy: WatermarkStrategy<S::Out>,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) -> DataStream<S::Out> {
        let node = self
            .graph
            .borrow_mut()
            .add_source_with_watermarks(name, strategy, make);
        DataStream::new(self.graph.clone(), node, Partitioning::default_for_edge())
    }

    /// Live per-operator counters (filled once the job starts).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.graph.borrow().metrics()
    }

    /// Validates the graph and shows how it will run (parallelism, partitioning, chains).
    pub fn describe(&self) -> Result<Vec<NodeDescription>, JobError> {
        self.graph.borrow().describe()
    }

    /// Runs the job; returns when all bounded input is processed, or on the first failure.
    pub fn run(self) -> Result<JobReport, JobError> {
        self.run_with(JobControl::new())
    }

    /// Runs the job like [`StreamJob::run`]; keep a clone of `control` to stop the
    /// job with a savepoint from another thread.
    pub fn run_with(self, control: JobControl) -> Result<JobReport, JobError> {
        let graph = Rc::try_unwrap(self.graph)
            .map_err(|_| {
                JobError::InvalidGraph(
                    "a DataStream of this job is still alive; drop it before run()".into(),
                )
            })?
            .into_inner();
        graph.run_with(control)
    }
}

/// A stream of `T` records: the output of one node, plus how the next edge partitions.
pub struct DataStream<T> {
    graph: Rc<RefCell<JobGraph>>,
    node: NodeId,
    partitioning: Partitioning,
    _records: PhantomData<fn() -> T>,
}

/// Consuming a stream twice fans it out: every consumer gets every record.
impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            graph: self.graph.clone(),
            node: self.node,
            partitioning: self.partitioning.clone(),
            _records: PhantomData,
        }
    }
}

impl<T: Data> DataStream<T> {
    fn new(graph: Rc<RefCell<JobGraph>>, node: NodeId, partitioning: Partitioning) -> Self {
        DataStream {
            graph,
            node,
            partitioning,
            _records: PhantomData,
        }
    }

    fn then(self, add: impl FnOnce(&mut JobGraph) -> NodeId) -> NodeId {
        let mut graph = self.graph.borrow_mut();
        let next = add(&mut graph);
        graph.connect(self.node, next, self.partitioning);
        next
    }

    fn followed_by<U: Data>(self, add: impl FnOnce(&mut JobGraph) -> NodeId) -> DataStream<U> {
        let graph = self.graph.clone();
        let node = self.then(add);
        DataStream::new(graph, node, Partitioning::default_for_edge())
    }

    /// Any operator; `make` builds one instance per subtask.
    pub fn process<O: Operator<In = T>>(
        self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    ) -> DataStream<O::Out> {
        self.followed_by(|g| g.add_operator(name, make))
    }

    pub fn map<U: Data>(
        self,
        name: &str,
        f: impl Fn(T) -> U + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.process(name, move |_| Map(f.clone(), PhantomData))
    }

    pub fn filter(
        self,
        name: &str,
        f: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> DataStream<T> {
        let f = Arc::new(f);
        self.process(name, move |_| Filter(f.clone(), PhantomData))
    }

    pub fn flat_map<U: Data, I: IntoIterator<Item = U> + 'static>(
        self,
        name: &str,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.process(name, move |_| FlatMap(f.clone(), PhantomData))
    }

    /// Calls an asynchronous service per record without waiting for each answer in
    /// turn (Flink's async I/O): `make` builds, once per subtask, a function from a
    /// record to a future of its result. [`AsyncOptions`] set the order of the
    /// results (`Ordered` keeps the input order; `Unordered` emits them as they
    /// complete, but never across a watermark), the capacity (requests under way per
    /// subtask; when full the operator takes no more input), a timeout and retries.
    /// The futures run on the subtask's worker thread (tokio, single-threaded): use
    /// async clients and timers, never block.
    ///
    /// Exactly once: a checkpoint keeps the records whose results have not gone
    /// downstream, and a restored job calls the function for them again; an error
    /// (after the retries) or a timeout fails the job, naming the operator.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use weir::{AsyncMode, AsyncOptions, JobConfig, RetryStrategy, StreamJob};
    /// # use weir::{Context, Sink, Source, SourcePoll};
    /// # struct Users; impl Source for Users { type Out = u64;
    /// #   fn poll(&mut self, _: &mut Context<'_, u64>, _: usize) -> anyhow::Result<SourcePoll> { Ok(SourcePoll::Finished) } }
    /// # struct Print; impl Sink for Print { type In = (u64, String);
    /// #   fn write(&mut self, r: (u64, String)) -> anyhow::Result<()> { println!("{r:?}"); Ok(()) } }
    /// async fn lookup_name(user: u64) -> anyhow::Result<String> {
    ///     tokio::time::sleep(Duration::from_millis(1)).await; // a remote call
    ///     Ok(format!("user-{user}"))
    /// }
    ///
    /// let job = StreamJob::new(JobConfig::default());
    /// let options = AsyncOptions {
    ///     mode: AsyncMode::Unordered,
    ///     capacity: 500,
    ///     retry: RetryStrategy::fixed(3, Duration::from_millis(100)),
    ///     ..AsyncOptions::default()
    /// };
    /// job.source("users", |_| Users)
    ///     .async_map("names", options, |_info| {
    ///         |user: u64| async move { Ok((user, lookup_name(user).await?)) }
    ///     })
    ///     .sink("print", |_| Print);
    /// job.run().unwrap();
    /// ```
    pub fn async_map<U, G, Fut>(
        self,
        name: &str,
        options: AsyncOptions,
        make: impl Fn(&SubtaskInfo) -> G + Send + Sync + 'static,
    ) -> DataStream<U>
    where
        U: Data,
        G: FnMut(T) -> Fut + 'static,
        Fut: Future<Output = anyhow::Result<U>> + 'static,
    {
        self.async_process(name, options, move |info| AsyncMap(make(info), PhantomData))
    }

    /// An async operator with your [`AsyncFunction`]: any number of outputs per
    /// record, a result predicate for retries, a timeout handler (see
    /// [`DataStream::async_map`]).
    pub fn async_process<F: AsyncFunction<In = T>>(
        self,
        name: &str,
        options: AsyncOptions,
        make: impl Fn(&SubtaskInfo) -> F + Send + Sync + 'static,
    ) -> DataStream<F::Out> {
        self.followed_by(|g| g.add_async_operator(name, options, make))
    }

    /// Partitions by key: every record of a key reaches the same subtask, the owner of
    /// the key's key group.
    pub fn key_by<K: Key>(
        self,
        key_of: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<T, K> {
        KeyedStream {
            stream: self,
            key_of: Arc::new(key_of),
        }
    }

    /// Merges this stream with others of the same type into the next operator.
    pub fn union(self, others: Vec<DataStream<T>>) -> UnionStream<T> {
        let mut inputs = vec![self];
        inputs.extend(others);
        UnionStream { inputs }
    }

    /// The next edge sends records round robin.
    pub fn rebalance(mut self) -> DataStream<T> {
        self.partitioning = Partitioning::rebalance();
        self
    }

    /// The next edge sends every record to every subtask.
    pub fn broadcast(mut self) -> DataStream<T> {
        self.partitioning = Partitioning::broadcast();
        self
    }

    /// Sets the parallelism of the node that produces this stream.
    pub fn parallelism(self, parallelism: u32) -> DataStream<T> {
        self.graph
            .borrow_mut()
            .set_parallelism(self.node, parallelism);
        self
    }

    pub fn sink<S: Sink<In = T>>(
        self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) {
        self.then(|g| g.add_sink(name, make));
    }

    /// A sink with its own parallelism.
    pub fn sink_with_parallelism<S: Sink<In = T>>(
        self,
        name: &str,
        parallelism: u32,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) {
        self.then(|g| {
            let sink = g.add_sink(name, make);
            g.set_parallelism(sink, parallelism);
            sink
        });
    }
}

/// Several streams of one type feeding the same next operator.
pub struct UnionStream<T> {
    inputs: Vec<DataStream<T>>,
}

impl<T: Data> UnionStream<T> {
    fn connect_all(
        self,
        add: impl FnOnce(&mut JobGraph) -> NodeId,
    ) -> (Rc<RefCell<JobGraph>>, NodeId) {
        let graph = self.inputs[0].graph.clone();
        let node = add(&mut graph.borrow_mut());
        for input in self.inputs {
            graph
                .borrow_mut()
                .connect(input.node, node, input.partitioning);
        }
        (graph, node)
    }

    pub fn process<O: Operator<In = T>>(
        self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    ) -> DataStream<O::Out> {
        let (graph, node) = self.connect_all(|g| g.add_operator(name, make));
        DataStream::new(graph, node, Partitioning::default_for_edge())
    }

    pub fn sink<S: Sink<In = T>>(
        self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) {
        self.connect_all(|g| g.add_sink(name, make));
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<T, K> {
    stream: DataStream<T>,
    key_of: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<T: Data, K: Key> KeyedStream<T, K> {
    /// A keyed operator: each record arrives with its key.
    pub fn process<O: KeyedOperator<Key = K, In = T>>(
        mut self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    ) -> DataStream<O::Out> {
        self.stream.partitioning = Partitioning::key(self.key_of.clone());
        let key_of = self.key_of;
        self.stream
            .followed_by(move |g| g.add_keyed_operator(name, key_of, make))
    }

    /// Groups each key's records into windows (see [`Windows`]); then aggregate,
    /// count, sum, … or process each window.
    pub fn window(self, windows: Windows<T>) -> WindowedStream<T, K> {
        WindowedStream {
            keyed: self,
            windows,
            allowed_lateness: 0,
            late: None,
        }
    }

    /// Folds each key's records with `f` and emits the updated value per record.
    pub fn reduce(self, name: &str, f: impl Fn(&T, T) -> T + Send + Sync + 'static) -> DataStream<T>
    where
        T: Sync,
    {
        let f = Arc::new(f);
        self.process(name, move |_| Reduce {
            f: f.clone(),
            current: None,
            _key: PhantomData,
        })
    }
}

/// `fn(In) -> Out` closures shared by all subtasks of map, filter and flat_map.
struct Map<F, In, Out>(Arc<F>, PhantomData<fn(In) -> Out>);
struct Filter<F, T>(Arc<F>, PhantomData<fn(T)>);
struct FlatMap<F, In, I>(Arc<F>, PhantomData<fn(In) -> I>);

impl<F: Fn(In) -> Out + Send + Sync + 'static, In: Data, Out: Data> Operator for Map<F, In, Out> {
    type In = In;
    type Out = Out;

    fn process(&mut self, record: In, ctx: &mut Context<'_, Out>) -> anyhow::Result<()> {
        ctx.emit((self.0)(record));
        Ok(())
    }
}

impl<F: Fn(&T) -> bool + Send + Sync + 'static, T: Data> Operator for Filter<F, T> {
    type In = T;
    type Out = T;

    fn process(&mut self, record: T, ctx: &mut Context<'_, T>) -> anyhow::Result<()> {
        if (self.0)(&record) {
            ctx.emit(record);
        }
        Ok(())
    }
}

impl<F, In, I> Operator for FlatMap<F, In, I>
where
    F: Fn(In) -> I + Send + Sync + 'static,
    In: Data,
    I: IntoIterator + 'static,
    I::Item: Data,
{
    type In = In;
    type Out = I::Item;

    fn process(&mut self, record: In, ctx: &mut Context<'_, I::Item>) -> anyhow::Result<()> {
        (self.0)(record).into_iter().for_each(|out| ctx.emit(out));
        Ok(())
    }
}

/// A closure returning a future of one output, as an [`AsyncFunction`].
struct AsyncMap<G, In, Out>(G, PhantomData<fn(In) -> Out>);

impl<G, Fut, In, Out> AsyncFunction for AsyncMap<G, In, Out>
where
    G: FnMut(In) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<Out>> + 'static,
    In: Data,
    Out: Data,
{
    type In = In;
    type Out = Out;

    fn invoke(&mut self, input: In) -> AsyncResult<Out> {
        let request = (self.0)(input);
        Box::pin(async move { Ok(vec![request.await?]) })
    }
}

/// Folds each key's records in keyed state (so it lives in the job's state backend).
struct Reduce<T, K, F> {
    f: Arc<F>,
    current: Option<ValueState<T>>,
    _key: PhantomData<fn() -> K>,
}

impl<T, K, F> KeyedOperator for Reduce<T, K, F>
where
    T: Data + Sync,
    K: Key,
    F: Fn(&T, T) -> T + Send + Sync + 'static,
{
    type Key = K;
    type In = T;
    type Out = T;

    fn open(&mut self, _info: &SubtaskInfo, state: &mut KeyedBackend<K>) -> anyhow::Result<()> {
        self.current = Some(ValueStateDescriptor::new("reduce").register(state)?);
        Ok(())
    }

    fn process(&mut self, record: T, ctx: &mut KeyedContext<'_, K, T>) -> anyhow::Result<()> {
        let current = self.current.as_ref().expect("opened");
        let updated = match current.value(ctx.state())? {
            Some(acc) => (self.f)(&acc, record),
            None => record,
        };
        current.update(ctx.state(), updated.clone())?;
        ctx.emit(updated);
        Ok(())
    }
}

/// Which windows, and by which clock: `Windows::tumbling(size).event_time(|r| r.ts)`.
///
/// Windows follow Flink's: they start at multiples of their slide (tumbling: size)
/// from the epoch; sessions close after `gap` without records of their key.
pub struct Windows<T> {
    kind: WindowKind,
    time: WindowTime<T>,
}

/// A window shape still waiting for its clock ([`WindowShape::event_time`] or
/// [`WindowShape::processing_time`]).
pub struct WindowShape(WindowKind);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Windows<()> {
    /// Back-to-back windows of `size`.
    ///
    /// # Panics
    /// If `size` is zero.
    pub fn tumbling(size: Duration) -> WindowShape {
        WindowShape(WindowKind::Sliding(
            Slicing::tumbling(millis(size)).unwrap_or_else(|e| panic!("{e}")),
        ))
    }

    /// Windows of `size` starting every `slide`; a record belongs to `size / slide` of
    /// them but updates one shared slice.
    ///
    /// # Panics
    /// If either is zero or `slide` exceeds `size`.
    pub fn sliding(size: Duration, slide: Duration) -> WindowShape {
        WindowShape(WindowKind::Sliding(
            Slicing::sliding(millis(size), millis(slide)).unwrap_or_else(|e| panic!("{e}")),
        ))
    }

    /// Per key, a session of records less than `gap` apart.
    ///
    /// # Panics
    /// If `gap` is zero.
    pub fn session(gap: Duration) -> WindowShape {
        assert!(!gap.is_zero(), "a session gap must be positive");
        WindowShape(WindowKind::Session { gap: millis(gap) })
    }
}

impl WindowShape {
    /// Windows in event time, read from each record by `timestamp` (ms); they fire
    /// when the watermark passes their end.
    pub fn event_time<T>(
        self,
        timestamp: impl Fn(&T) -> EventTime + Send + Sync + 'static,
    ) -> Windows<T> {
        Windows {
            kind: self.0,
            time: WindowTime::Event(Arc::new(move |record: &T| Ok(timestamp(record)))),
        }
    }

    /// Windows by the wall clock when records arrive; they fire on processing-time timers.
    pub fn processing_time<T>(self) -> Windows<T> {
        Windows {
            kind: self.0,
            time: WindowTime::Processing,
        }
    }
}

type LateConsumer<T> = Box<dyn FnOnce(DataStream<T>)>;

/// A keyed stream cut into windows; a terminal method (aggregate, count, sum, min,
/// max, avg, process) says what each window emits.
pub struct WindowedStream<T, K> {
    keyed: KeyedStream<T, K>,
    windows: Windows<T>,
    allowed_lateness: i64,
    late: Option<LateConsumer<T>>,
}

impl<T: Data + Sync, K: Key> WindowedStream<T, K> {
    /// Keep windows for `lateness` after they fired: a record arriving in that time
    /// updates its windows and they emit their result again (event time only).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Records too late for every window they belong to go to the stream `consume`
    /// receives (Flink's late-data side output); without it they are dropped.
    pub fn late_records(mut self, consume: impl FnOnce(DataStream<T>) + 'static) -> Self {
        self.late = Some(Box::new(consume));
        self
    }

    fn build<F, Out>(
        self,
        name: &str,
        function: impl Fn() -> F + Send + Sync + 'static,
    ) -> DataStream<Out>
    where
        F: WindowFunction<K, T, Out = Out>,
        Out: Data,
    {
        let WindowedStream {
            keyed,
            windows: Windows { kind, time },
            allowed_lateness,
            late,
        } = self;
        let outputs = keyed.process(name, move |_| {
            WindowOperator::new(kind, time.clone(), allowed_lateness, function())
        });
        if let Some(consume) = late {
            consume(
                outputs
                    .clone()
                    .flat_map(&format!("{name}.late"), |o| match o {
                        WindowOutput::Late(record) => Some(record),
                        WindowOutput::Result(_) => None,
                    }),
            );
        }
        outputs.flat_map(&format!("{name}.results"), |o| match o {
            WindowOutput::Result(result) => Some(result),
            WindowOutput::Late(_) => None,
        })
    }

    /// Folds each window's records with an [`AggregateFunction`] (only the
    /// accumulator is kept per slice or session).
    pub fn aggregate<A: AggregateFunction<T>>(
        self,
        name: &str,
        function: A,
    ) -> DataStream<Windowed<K, A::Out>> {
        let function = Arc::new(function);
        self.build(name, move || Aggregating::new(function.clone()))
    }

    pub fn count(self, name: &str) -> DataStream<Windowed<K, u64>> {
        self.aggregate(name, Count)
    }

    pub fn sum<V>(
        self,
        name: &str,
        value: impl Fn(&T) -> V + Send + Sync + 'static,
    ) -> DataStream<Windowed<K, V>>
    where
        V: std::ops::Add<Output = V> + Default + Data + Sync,
    {
        self.aggregate(name, Sum::of(value))
    }

    pub fn min<V: PartialOrd + Data + Sync>(
        self,
        name: &str,
        value: impl Fn(&T) -> V + Send + Sync + 'static,
    ) -> DataStream<Windowed<K, V>> {
        self.aggregate(name, Extreme::min(value))
    }

    pub fn max<V: PartialOrd + Data + Sync>(
        self,
        name: &str,
        value: impl Fn(&T) -> V + Send + Sync + 'static,
    ) -> DataStream<Windowed<K, V>> {
        self.aggregate(name, Extreme::max(value))
    }

    pub fn avg(
        self,
        name: &str,
        value: impl Fn(&T) -> f64 + Send + Sync + 'static,
    ) -> DataStream<Windowed<K, f64>> {
        self.aggregate(name, Avg::of(value))
    }

    /// Hands each window's records (all of them, kept per slice or session) to `f`,
    /// which emits any number of outputs (Flink's `ProcessWindowFunction`).
    pub fn process<Out: Data, I: IntoIterator<Item = Out> + 'static>(
        self,
        name: &str,
        f: impl Fn(&K, &Window, Vec<T>) -> I + Send + Sync + 'static,
    ) -> DataStream<Out> {
        let f = Arc::new(f);
        self.build(name, move || Collecting::new(f.clone()))
    }
}
