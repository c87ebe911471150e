//! The job graph as the library builds it: typed nodes behind an erasure, edges with
//! their partitioning. Types are checked when the graph is planned, so the downcasts
//! at the chain boundaries cannot fail at run time.

use crate::async_io::stage::AsyncStage;
use crate::async_io::{AsyncFunction, AsyncOptions, ASYNC_IN_FLIGHT_STATE};
use crate::channel_state::ChannelState;
use crate::config::JobConfig;
use crate::config::StateBackendChoice;
use crate::control::JobControl;
use crate::error::{JobError, StageError};
use crate::metrics::{JobMetrics, JobReport, OperatorCounters};
use crate::network::AnyBatch;
use crate::operator::{
    Data, Key, KeyFn, KeyedOperator, Operator, Sink, Source, SubtaskInfo, SOURCE_SPLITS_STATE,
};
use crate::partition::{KeyHashFn, Partitioner};
use crate::plan::{plan, EdgeKind, NodeKind, Plan, PlanEdge, PlanNode};
use crate::restore::Restore;
use crate::sink::inherited_subtasks;
use crate::stage::{
    file_safe, guarded, BoxedInput, InputHead, KeyedStage, NetworkOutput, OperatorStage,
    RestoredSplits, SinkStage, SourceHead, SourceStage, StageCore, Tee, TypedHead, SINK_STATE,
};
use crate::time::generator::{WatermarkGenerator, WatermarkStrategy};
use std::any::Any;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use weir_state::handle::{OperatorSnapshot, SubtaskSnapshot};
use weir_state::key_group::hash_key;
use weir_state::{
    BackendKind, CheckpointStorage, KeyGroupRange, KeyedBackend, KeyedBackendConfig,
    OperatorStateStore, RocksDbOptions,
};

/// A node of the graph, as returned when it is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub(crate) usize);

/// How an edge spreads records over the receiving subtasks.
#[derive(Clone)]
pub struct Partitioning {
    pub(crate) kind: EdgeKind,
    /// For key partitioning: a `KeyHashFn<T>` and the name of `T`.
    key_hash: Option<(Arc<dyn Any + Send + Sync>, &'static str)>,
}

impl Partitioning {
    /// Forward when the parallelisms match (and chain), rebalance otherwise.
    pub fn default_for_edge() -> Self {
        Self::of(EdgeKind::Default)
    }
    pub fn forward() -> Self {
        Self::of(EdgeKind::Forward)
    }
    pub fn rebalance() -> Self {
        Self::of(EdgeKind::Rebalance)
    }
    pub fn broadcast() -> Self {
        Self::of(EdgeKind::Broadcast)
    }
    /// By key group of the key that `key_of` extracts.
    pub fn key<T: Data, K: Key>(key_of: KeyFn<T, K>) -> Self {
        let hash: KeyHashFn<T> = Arc::new(move |record| hash_key(&key_of(record)));
        Partitioning {
            kind: EdgeKind::Key,
            key_hash: Some((Arc::new(hash), std::any::type_name::<T>())),
        }
    }
    fn of(kind: EdgeKind) -> Self {
        Partitioning {
            kind,
            key_hash: None,
        }
    }
}

/// What a node built for one subtask: a source head, or an input of the node's type.
pub(crate) enum Built {
    Source(Box<dyn SourceHead>),
    /// A `BoxedInput<In>` behind `Any`.
    Input(Box<dyn Any>),
}

/// One output edge as a subtask's network output sees it.
pub(crate) struct OutputEdge {
    pub partitioning: Partitioning,
    pub receivers: u32,
    pub first_channel: usize,
}

/// Operations on one record type, erased.
pub(crate) trait Port: Send + Sync {
    /// A `BoxedInput<T>` (behind `Any`) sending to the given edges.
    fn network_output(
        &self,
        edges: Vec<OutputEdge>,
        sender: u32,
        batch_size: usize,
        max_parallelism: u32,
    ) -> Box<dyn Any>;
    /// The network-facing head in front of a `BoxedInput<T>` (behind `Any`).
    fn head(&self, first: Box<dyn Any>) -> Box<dyn InputHead>;
    /// A batch of this type as channel state bytes, and back.
    fn encode(&self, batch: &AnyBatch) -> Result<Vec<u8>, String>;
    fn decode(&self, bytes: &[u8]) -> Result<AnyBatch, String>;
}

struct TypedPort<T>(PhantomData<fn() -> T>);

impl<T: Data> Port for TypedPort<T> {
    fn network_output(
        &self,
        edges: Vec<OutputEdge>,
        sender: u32,
        batch_size: usize,
        max_parallelism: u32,
    ) -> Box<dyn Any> {
        let mut outputs: Vec<BoxedInput<T>> = edges
            .into_iter()
            .map(|edge| {
                let receivers = edge.receivers;
                let partitioner = match edge.partitioning.kind {
                    EdgeKind::Forward => Partitioner::Forward,
                    EdgeKind::Broadcast => Partitioner::Broadcast {
                        receivers: receivers as usize,
                    },
                    EdgeKind::Key => {
                        let (hash, _) = edge
                            .partitioning
                            .key_hash
                            .expect("key edges carry a key function");
                        let hash = hash
                            .downcast_ref::<KeyHashFn<T>>()
                            .expect("key type checked at planning")
                            .clone();
                        Partitioner::Key {
                            hash,
                            max_parallelism,
                            receivers,
                        }
                    }
                    EdgeKind::Rebalance | EdgeKind::Default => Partitioner::Rebalance {
                        next: sender as usize % receivers as usize,
                        receivers: receivers as usize,
                    },
                };
                Box::new(NetworkOutput::new(
                    partitioner,
                    edge.first_channel,
                    batch_size,
                )) as BoxedInput<T>
            })
            .collect();
        let output: BoxedInput<T> = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Box::new(Tee::new(outputs))
        };
        Box::new(output)
    }

    fn head(&self, first: Box<dyn Any>) -> Box<dyn InputHead> {
        Box::new(TypedHead::new(take_input::<T>(first)))
    }

    fn encode(&self, batch: &AnyBatch) -> Result<Vec<u8>, String> {
        let records = batch
            .downcast_ref::<Vec<T>>()
            .expect("edge types are checked when the graph is planned");
        postcard::to_allocvec(records).map_err(|e| format!("cannot encode in-flight records: {e}"))
    }

    fn decode(&self, bytes: &[u8]) -> Result<AnyBatch, String> {
        let records: Vec<T> = postcard::from_bytes(bytes)
            .map_err(|e| format!("cannot decode in-flight records: {e}"))?;
        Ok(Box::new(records))
    }
}

fn port<T: Data>() -> Arc<dyn Port> {
    Arc::new(TypedPort::<T>(PhantomData))
}

fn take_input<T: Data>(erased: Box<dyn Any>) -> BoxedInput<T> {
    *erased
        .downcast::<BoxedInput<T>>()
        .expect("chain types are checked at planning")
}

/// A node, erased: builds its stage for one subtask.
pub(crate) trait NodeSpec: Send + Sync {
    /// `next` is the `BoxedInput<Out>` the stage feeds (none for sinks).
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        next: Option<Box<dyn Any>>,
        env: &BuildEnv,
    ) -> Result<Built, StageError>;
}

type Factory<X> = Arc<dyn Fn(&SubtaskInfo) -> X + Send + Sync>;

fn make<X>(factory: &Factory<X>, info: &SubtaskInfo) -> Result<X, StageError> {
    guarded(info, || Ok(factory(info)))
}

struct SourceSpec<S: Source>(Factory<S>, Option<WatermarkStrategy<S::Out>>);
struct OperatorSpec<O: Operator>(Factory<O>);
struct KeyedSpec<O: KeyedOperator>(Factory<O>, KeyFn<O::In, O::Key>);
struct SinkSpec<S: Sink>(Factory<S>);
struct AsyncSpec<F: AsyncFunction>(Factory<F>, AsyncOptions);

fn typed<T: Data>() -> Option<(&'static str, Arc<dyn Port>)> {
    Some((std::any::type_name::<T>(), port::<T>()))
}

impl<S: Source> NodeSpec for SourceSpec<S> {
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        next: Option<Box<dyn Any>>,
        env: &BuildEnv,
    ) -> Result<Built, StageError> {
        let source = make(&self.0, &info)?;
        let restore = env.source_splits(&info)?;
        let next = take_input::<S::Out>(next.expect("a source feeds something"));
        let watermarks = self
            .1
            .clone()
            .map(|strategy| WatermarkGenerator::new(strategy, Instant::now()));
        Ok(Built::Source(Box::new(SourceStage {
            source,
            core: StageCore::new(info, counters, next),
            watermarks,
            storage: env.storage.clone(),
            restore,
            event_time_ended: false,
        })))
    }
}

impl<O: Operator> NodeSpec for OperatorSpec<O> {
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        next: Option<Box<dyn Any>>,
        _env: &BuildEnv,
    ) -> Result<Built, StageError> {
        let op = make(&self.0, &info)?;
        let next = take_input::<O::Out>(next.expect("an operator feeds something"));
        let stage: BoxedInput<O::In> = Box::new(OperatorStage {
            op,
            core: StageCore::new(info, counters, next),
        });
        Ok(Built::Input(Box::new(stage)))
    }
}

impl<O: KeyedOperator> NodeSpec for KeyedSpec<O> {
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        next: Option<Box<dyn Any>>,
        env: &BuildEnv,
    ) -> Result<Built, StageError> {
        let op = make(&self.0, &info)?;
        let backend = env.open_keyed_backend(&info)?;
        let next = take_input::<O::Out>(next.expect("an operator feeds something"));
        let stage: BoxedInput<O::In> = Box::new(KeyedStage {
            op,
            key_of: self.1.clone(),
            backend,
            storage: env.storage.clone(),
            core: StageCore::new(info, counters, next),
        });
        Ok(Built::Input(Box::new(stage)))
    }
}

impl<S: Sink> NodeSpec for SinkSpec<S> {
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        _next: Option<Box<dyn Any>>,
        env: &BuildEnv,
    ) -> Result<Built, StageError> {
        let sink = make(&self.0, &info)?;
        let restore = env.sink_states(&info)?;
        let stage: BoxedInput<S::In> = Box::new(SinkStage {
            sink,
            info,
            counters,
            storage: env.storage.clone(),
            restore: Some(restore),
            checkpointing: env.checkpointing,
        });
        Ok(Built::Input(Box::new(stage)))
    }
}

impl<F: AsyncFunction> NodeSpec for AsyncSpec<F> {
    fn build(
        &self,
        info: SubtaskInfo,
        counters: Arc<OperatorCounters>,
        next: Option<Box<dyn Any>>,
        env: &BuildEnv,
    ) -> Result<Built, StageError> {
        let func = make(&self.0, &info)?;
        let restore = env.async_in_flight::<F::In>(&info)?;
        let next = take_input::<F::Out>(next.expect("an operator feeds something"));
        let core = StageCore::new(info, counters, next);
        let stage: BoxedInput<F::In> = Box::new(AsyncStage::new(
            func,
            core,
            &self.1,
            env.storage.clone(),
            restore,
        ));
        Ok(Built::Input(Box::new(stage)))
    }
}

/// The name under which a subtask's in-flight records (unaligned checkpoints) are
/// kept, in the snapshot of its chain's first operator.
pub(crate) const CHANNELS: &str = "channels";

/// What building a subtask's chain needs beyond the node itself.
pub(crate) struct BuildEnv {
    pub backend: StateBackendChoice,
    /// This job run's local state directory.
    pub state_dir: PathBuf,
    /// Where this run's snapshots go.
    pub storage: Arc<dyn CheckpointStorage>,
    /// The checkpoint this run continues from.
    pub restore: Option<Restore>,
    /// Whether the job checkpoints (sinks commit at the end of input if not).
    pub checkpointing: bool,
}

impl BuildEnv {
    fn failure(info: &SubtaskInfo, cause: String) -> StageError {
        StageError::of(info, cause)
    }

    /// What the checkpoint being restored holds for this operator, if anything.
    fn restored(&self, info: &SubtaskInfo) -> Option<&OperatorSnapshot> {
        self.restore
            .as_ref()?
            .metadata
            .operators
            .get(info.operator.as_ref())
    }

    /// The keyed state backend of one subtask, for the key groups it owns, restored
    /// from the checkpoint's handles of every old subtask of the operator.
    fn open_keyed_backend<K: Key>(
        &self,
        info: &SubtaskInfo,
    ) -> Result<KeyedBackend<K>, StageError> {
        let range = KeyGroupRange::for_subtask(info.index, info.parallelism, info.max_parallelism);
        let name = format!("{}-{}", file_safe(&info.operator), info.index);
        let kind = match self.backend {
            StateBackendChoice::Memory => BackendKind::Memory,
            StateBackendChoice::RocksDb => {
                BackendKind::RocksDb(RocksDbOptions::new(self.state_dir.join(&name)))
            }
        };
        let handles = match self.restored(info) {
            Some(old) if old.max_parallelism != info.max_parallelism => {
                return Err(Self::failure(
                    info,
                    format!(
                        "the checkpoint has {} key groups (max_parallelism) but the job has {}: keep max_parallelism = {}",
                        old.max_parallelism, info.max_parallelism, old.max_parallelism
                    ),
                ))
            }
            Some(old) => old.keyed_handles(),
            None => Vec::new(),
        };
        let config = KeyedBackendConfig::new(name, range, info.max_parallelism);
        let restore_storage = self.restore.as_ref().map_or(&self.storage, |r| &r.storage);
        KeyedBackend::open(&kind, config, &handles, restore_storage.as_ref()).map_err(|e| {
            Self::failure(
                info,
                format!("cannot open its {:?} state backend: {e}", self.backend),
            )
        })
    }

    /// The in-flight data an unaligned checkpoint kept for the subtask whose chain
    /// starts with `head`.
    pub fn channel_state(&self, head: &SubtaskInfo) -> Result<Option<ChannelState>, StageError> {
        let Some(old) = self.restored(head) else {
            return Ok(None);
        };
        let Some(snapshot) = old.subtasks.get(head.index as usize) else {
            return Ok(None);
        };
        let Some((_, file)) = snapshot.extra.iter().find(|(name, _)| name == CHANNELS) else {
            return Ok(None);
        };
        if old.subtasks.len() != head.parallelism as usize {
            return Err(Self::failure(
                head,
                format!(
                    "the checkpoint holds in-flight records (unaligned) of this operator at parallelism {}: it restores only at that parallelism",
                    old.subtasks.len()
                ),
            ));
        }
        let storage = self.restore.as_ref().map_or(&self.storage, |r| &r.storage);
        let bytes = storage
            .read_file(file)
            .map_err(|e| Self::failure(head, format!("cannot read its in-flight records: {e}")))?;
        ChannelState::decode(&bytes)
            .map(Some)
            .map_err(|e| Self::failure(head, e))
    }

    /// This source subtask's share of the restored checkpoint's splits: the lists of
    /// every old subtask, concatenated and cut into contiguous parts (weir-state's
    /// split redistribution), so any parallelism covers them exactly once.
    fn source_splits(&self, info: &SubtaskInfo) -> Result<Option<RestoredSplits>, StageError> {
        let Some(restore) = &self.restore else {
            return Ok(None);
        };
        let Some(old) = self.restored(info) else {
            if info.index == 0 {
                tracing::warn!(
                    source = %info.operator,
                    checkpoint = restore.metadata.checkpoint_id,
                    "the checkpoint holds no splits of this source: it starts from the beginning of its input"
                );
            }
            return Ok(None);
        };
        if old.operator_handles().iter().all(Option::is_none) {
            return Err(Self::failure(
                info,
                "the checkpoint holds no splits for this source: it cannot resume (start with a fresh run)".into(),
            ));
        }
        let splits = self.operator_list(info, old, SOURCE_SPLITS_STATE, "its splits")?;
        Ok(Some(RestoredSplits {
            splits,
            checkpoint_parallelism: old.subtasks.len(),
        }))
    }

    /// This subtask's share of the split-redistributed operator-state list `name`
    /// of every old subtask of the operator (`what` names it in errors).
    fn operator_list(
        &self,
        info: &SubtaskInfo,
        old: &OperatorSnapshot,
        name: &str,
        what: &str,
    ) -> Result<Vec<Vec<u8>>, StageError> {
        let restore = self.restore.as_ref().expect("only a restore has old state");
        (|| {
            let mut store = OperatorStateStore::restore(
                &old.operator_handles(),
                info.index as usize,
                info.parallelism as usize,
                restore.storage.as_ref(),
            )?;
            store.list_state::<Vec<u8>>(name)?.get(&mut store)
        })()
        .map_err(|e| Self::failure(info, format!("cannot read {what} from the checkpoint: {e}")))
    }

    /// The in-flight inputs a restored async operator subtask issues again: its
    /// share of those of every old subtask, redistributed like a source's splits.
    fn async_in_flight<T: Data>(&self, info: &SubtaskInfo) -> Result<Vec<T>, StageError> {
        let Some(old) = self.restored(info) else {
            return Ok(Vec::new());
        };
        let what = "its in-flight records";
        self.operator_list(info, old, ASYNC_IN_FLIGHT_STATE, what)?
            .iter()
            .map(|bytes| postcard::from_bytes(bytes))
            .collect::<Result<_, _>>()
            .map_err(|e| Self::failure(info, format!("cannot decode {what}: {e}")))
    }

    /// The pre-commit states a restored sink subtask takes over: those of every old
    /// subtask `j` with `j % parallelism == index`, so at any parallelism each old
    /// subtask's pending output is committed by exactly one new subtask.
    fn sink_states(&self, info: &SubtaskInfo) -> Result<Vec<Vec<u8>>, StageError> {
        let Some(old) = self.restored(info) else {
            return Ok(Vec::new());
        };
        let mut states = Vec::new();
        for j in inherited_subtasks(old.subtasks.len() as u32, info.parallelism, info.index) {
            let snapshot = &old.subtasks[j as usize];
            let what = format!("the state of its old subtask {j}");
            states.extend(self.extra_file(info, snapshot, SINK_STATE, &what)?);
        }
        Ok(states)
    }

    /// The runtime file `name` of an old subtask's snapshot, read and verified;
    /// `None` when the snapshot has no such file.
    fn extra_file(
        &self,
        info: &SubtaskInfo,
        snapshot: &SubtaskSnapshot,
        name: &str,
        what: &str,
    ) -> Result<Option<Vec<u8>>, StageError> {
        let Some((_, file)) = snapshot.extra.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let storage = self.restore.as_ref().map_or(&self.storage, |r| &r.storage);
        storage.read_file(file).map(Some).map_err(|e| {
            Self::failure(info, format!("cannot read {what} from the checkpoint: {e}"))
        })
    }
}

/// A node's kind and record types, with the typed ports for its input and output.
#[derive(Clone)]
pub(crate) struct Signature {
    pub kind: NodeKind,
    pub input: Option<(&'static str, Arc<dyn Port>)>,
    pub output: Option<(&'static str, Arc<dyn Port>)>,
}

impl Signature {
    fn of<In: Data, Out: Data>(kind: NodeKind) -> Self {
        let input = (kind != NodeKind::Source).then(typed::<In>).flatten();
        let output = (kind != NodeKind::Sink).then(typed::<Out>).flatten();
        Signature {
            kind,
            input,
            output,
        }
    }
}

pub(crate) struct GraphNode {
    pub name: String,
    pub parallelism: Option<u32>,
    pub signature: Signature,
    pub spec: Arc<dyn NodeSpec>,
}

pub(crate) struct GraphEdge {
    pub from: usize,
    pub to: usize,
    pub partitioning: Partitioning,
}

/// One node as `weir validate` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDescription {
    pub name: String,
    pub kind: &'static str,
    pub parallelism: u32,
    /// (upstream node, partitioning)
    pub inputs: Vec<(String, String)>,
    /// The upstream node whose subtask this node runs in, when chained.
    pub chained_with: Option<String>,
}

/// A job under construction.
pub struct JobGraph {
    pub(crate) config: JobConfig,
    pub(crate) nodes: Vec<GraphNode>,
    pub(crate) edges: Vec<GraphEdge>,
    pub(crate) metrics: Arc<JobMetrics>,
}

impl JobGraph {
    pub fn new(config: JobConfig) -> Self {
        JobGraph {
            config,
            nodes: Vec::new(),
            edges: Vec::new(),
            metrics: Arc::default(),
        }
    }

    /// Live counters of the job (empty until it runs).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }

    fn add(&mut self, name: &str, signature: Signature, spec: Arc<dyn NodeSpec>) -> NodeId {
        self.nodes.push(GraphNode {
            name: name.to_string(),
            parallelism: None,
            signature,
            spec,
        });
        NodeId(self.nodes.len() - 1)
    }

    pub fn add_source<S: Source>(
        &mut self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) -> NodeId {
        self.add(
            name,
            Signature::of::<(), S::Out>(NodeKind::Source),
            Arc::new(SourceSpec::<S>(Arc::new(make), None)),
        )
    }

    /// A source whose records carry event times: it emits watermarks (and idleness)
    /// as `strategy` says.
    pub fn add_source_with_watermarks<S: Source>(
        &mut self,
        name: &str,
        strategy: WatermarkStrategy<S::Out>,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) -> NodeId {
        self.add(
            name,
            Signature::of::<(), S::Out>(NodeKind::Source),
            Arc::new(SourceSpec::<S>(Arc::new(make), Some(strategy))),
        )
    }

    pub fn add_operator<O: Operator>(
        &mut self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    ) -> NodeId {
        self.add(
            name,
            Signature::of::<O::In, O::Out>(NodeKind::Operator),
            Arc::new(OperatorSpec::<O>(Arc::new(make))),
        )
    }

    /// A keyed operator; connect its input with [`Partitioning::key`] on the same key.
    pub fn add_keyed_operator<O: KeyedOperator>(
        &mut self,
        name: &str,
        key_of: KeyFn<O::In, O::Key>,
        make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    ) -> NodeId {
        self.add(
            name,
            Signature::of::<O::In, O::Out>(NodeKind::Operator),
            Arc::new(KeyedSpec::<O>(Arc::new(make), key_of)),
        )
    }

    pub fn add_sink<S: Sink>(
        &mut self,
        name: &str,
        make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    ) -> NodeId {
        self.add(
            name,
            Signature::of::<S::In, ()>(NodeKind::Sink),
            Arc::new(SinkSpec::<S>(Arc::new(make))),
        )
    }

    /// An async I/O operator (see [`AsyncFunction`]): `make` builds one function
    /// per subtask, on the subtask's worker thread.
    ///
    /// # Panics
    /// If `options.capacity` is zero.
    pub fn add_async_operator<F: AsyncFunction>(
        &mut self,
        name: &str,
        options: AsyncOptions,
        make: impl Fn(&SubtaskInfo) -> F + Send + Sync + 'static,
    ) -> NodeId {
        assert!(
            options.capacity > 0,
            "the capacity of async operator '{name}' must be positive"
        );
        self.add(
            name,
            Signature::of::<F::In, F::Out>(NodeKind::Operator),
            Arc::new(AsyncSpec::<F>(Arc::new(make), options)),
        )
    }

    pub fn connect(&mut self, from: NodeId, to: NodeId, partitioning: Partitioning) {
        self.edges.push(GraphEdge {
            from: from.0,
            to: to.0,
            partitioning,
        });
    }

    pub fn set_parallelism(&mut self, node: NodeId, parallelism: u32) {
        self.nodes[node.0].parallelism = Some(parallelism);
    }

    pub(crate) fn plan(&self) -> Result<Plan, JobError> {
        let plan_nodes: Vec<PlanNode> = self
            .nodes
            .iter()
            .map(|n| PlanNode {
                name: n.name.clone(),
                kind: n.signature.kind,
                parallelism: n.parallelism,
                input_type: n.signature.input.as_ref().map(|(t, _)| *t),
                output_type: n.signature.output.as_ref().map(|(t, _)| *t),
            })
            .collect();
        for e in &self.edges {
            if let (Some((_, key_type)), Some(out)) =
                (&e.partitioning.key_hash, plan_nodes[e.from].output_type)
            {
                if *key_type != out {
                    return Err(JobError::InvalidGraph(format!(
                        "the key of edge '{}' -> '{}' is extracted from {key_type} but '{}' emits {out}",
                        self.nodes[e.from].name, self.nodes[e.to].name, self.nodes[e.from].name
                    )));
                }
            }
        }
        let plan_edges: Vec<PlanEdge> = self
            .edges
            .iter()
            .map(|e| PlanEdge {
                from: e.from,
                to: e.to,
                kind: e.partitioning.kind,
            })
            .collect();
        plan(
            &plan_nodes,
            &plan_edges,
            self.config.parallelism,
            self.config.max_parallelism,
        )
    }

    /// Validates the graph and describes how it will run.
    pub fn describe(&self) -> Result<Vec<NodeDescription>, JobError> {
        let plan = self.plan()?;
        Ok(self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let vertex = &plan.vertices[plan.vertex_of[i]];
                let position = vertex
                    .nodes
                    .iter()
                    .position(|&n| n == i)
                    .expect("node is in its vertex");
                let inputs = self
                    .edges
                    .iter()
                    .filter(|e| e.to == i)
                    .map(|e| {
                        let resolved = plan
                            .edges
                            .iter()
                            .find(|ve| {
                                self.edges[ve.graph_edge].from == e.from
                                    && ve.to_vertex == plan.vertex_of[i]
                            })
                            .map_or(EdgeKind::Forward, |ve| ve.kind);
                        let shown = if position > 0 {
                            "forward (chained)"
                        } else {
                            resolved.as_str()
                        };
                        (self.nodes[e.from].name.clone(), shown.to_string())
                    })
                    .collect();
                NodeDescription {
                    name: node.name.clone(),
                    kind: node.signature.kind.as_str(),
                    parallelism: plan.parallelism[i],
                    inputs,
                    chained_with: (position > 0)
                        .then(|| self.nodes[vertex.nodes[position - 1]].name.clone()),
                }
            })
            .collect())
    }

    /// Runs the job to completion on its own actor system; blocks until then.
    pub fn run(self) -> Result<JobReport, JobError> {
        crate::job::execute(self, JobControl::new())
    }

    /// Runs the job like [`JobGraph::run`]; `control` can stop it with a savepoint.
    pub fn run_with(self, control: JobControl) -> Result<JobReport, JobError> {
        crate::job::execute(self, control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::handle::CheckpointMetadata;
    use weir_state::storage::LocalCheckpointStorage;

    fn env_with_sink_states(dir: &std::path::Path, old: &[Option<&[u8]>]) -> BuildEnv {
        let storage = Arc::new(LocalCheckpointStorage::new(dir).unwrap());
        let subtasks = old
            .iter()
            .enumerate()
            .map(|(j, state)| SubtaskSnapshot {
                extra: state
                    .map(|bytes| {
                        let file = storage.write_file(&format!("chk-1/out-{j}.sink"), bytes);
                        vec![(SINK_STATE.to_string(), file.unwrap())]
                    })
                    .unwrap_or_default(),
                ..SubtaskSnapshot::default()
            })
            .collect();
        restoring(dir, storage, "out", subtasks)
    }

    /// A build environment restoring checkpoint 1 of `storage`, which holds the
    /// snapshots of `operator`'s old subtasks.
    fn restoring(
        dir: &std::path::Path,
        storage: Arc<LocalCheckpointStorage>,
        operator: &str,
        subtasks: Vec<SubtaskSnapshot>,
    ) -> BuildEnv {
        let mut metadata = CheckpointMetadata::new(1);
        metadata.operators.insert(
            operator.into(),
            OperatorSnapshot {
                max_parallelism: 128,
                subtasks,
            },
        );
        // This run writes elsewhere: the states are read from the restore's storage.
        let own = LocalCheckpointStorage::new(dir.join("this-run")).unwrap();
        BuildEnv {
            backend: StateBackendChoice::Memory,
            state_dir: dir.join("state"),
            storage: Arc::new(own),
            restore: Some(Restore { metadata, storage }),
            checkpointing: true,
        }
    }

    fn info(operator: &str, index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo {
            operator: operator.into(),
            index,
            parallelism,
            max_parallelism: 128,
            attempt: 1,
        }
    }

    #[test]
    fn sink_subtasks_take_over_the_states_of_old_subtasks_modulo_their_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_sink_states(dir.path(), &[Some(b"a"), None, Some(b"c"), Some(b"d")]);
        let states =
            |index, parallelism| env.sink_states(&info("out", index, parallelism)).unwrap();
        assert_eq!(states(0, 2), [b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(states(1, 2), [b"d".to_vec()], "old subtask 1 had no state");
        assert_eq!(states(0, 4), [b"a".to_vec()]);
        assert!(states(5, 6).is_empty(), "a new subtask with no old one");
        assert_eq!(states(0, 1).len(), 3);
        assert!(
            env.sink_states(&info("other", 0, 1)).unwrap().is_empty(),
            "an operator the checkpoint does not know starts fresh"
        );
    }

    #[test]
    fn in_flight_records_of_an_async_operator_are_dealt_out_at_any_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalCheckpointStorage::new(dir.path()).unwrap());
        let old: [&[u64]; 3] = [&[1, 2, 3], &[], &[4, 5]];
        let subtasks = old
            .iter()
            .enumerate()
            .map(|(j, records)| {
                let elements: Vec<Vec<u8>> = records
                    .iter()
                    .map(|r| postcard::to_allocvec(r).unwrap())
                    .collect();
                let storage: Arc<dyn CheckpointStorage> = storage.clone();
                let info = info("lookup", j as u32, 3);
                let barrier = crate::checkpoint::coordinator::Barrier::checkpoint(1);
                let pending = crate::stage::list_snapshot(
                    &info,
                    barrier,
                    ASYNC_IN_FLIGHT_STATE,
                    &elements,
                    &storage,
                );
                pending.unwrap().snapshot.run().unwrap()
            })
            .collect();
        let env = restoring(dir.path(), storage, "lookup", subtasks);
        let share = |index, parallelism| {
            env.async_in_flight::<u64>(&info("lookup", index, parallelism))
                .unwrap()
        };
        for parallelism in 1..=6 {
            let shares: Vec<Vec<u64>> = (0..parallelism).map(|i| share(i, parallelism)).collect();
            assert_eq!(
                shares.concat(),
                [1, 2, 3, 4, 5],
                "p = {parallelism}: {shares:?}"
            );
            let sizes = shares.iter().map(Vec::len);
            assert!(sizes.clone().max().unwrap() - sizes.min().unwrap() <= 1);
        }
        assert!(env
            .async_in_flight::<u64>(&info("new", 0, 1))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_damaged_sink_state_fails_the_subtask_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_sink_states(dir.path(), &[Some(b"state")]);
        std::fs::write(dir.path().join("chk-1/out-0.sink"), b"STATE").unwrap();
        let error = env.sink_states(&info("out", 0, 1)).unwrap_err();
        assert!(
            error.cause.contains("the state of its old subtask 0"),
            "{}",
            error.cause
        );
    }
}
