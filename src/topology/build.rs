//! Building the runtime's job graph from a validated topology.
//!
//! Every node becomes one graph node named by its id, except `key_by`, which is not
//! an operator but the partitioning of the edges leaving it: whoever reads a key_by
//! reads its inputs through key-partitioned edges. Nodes with several inputs get one
//! edge per input (a union); a node read by several nodes fans out.

use super::model::{EventTimeSpec, NodeKind, Topology};
use crate::builtins::windows::{timestamp_of, RecordWindowAgg, WindowAggSpec, WindowSide};
use crate::builtins::{
    exactly_once_file_sink, AggSpec, AggregateOperator, BadRecordStats, DeadLetterFile, FileSink,
    FileSource, FilterOperator, FlatMapOperator, GeneratorSource, MapOperator, NullSink, OnError,
    StdinSource, StdoutSink,
};
use crate::record::{Record, RecordKey, Value};
use crate::scenario::faults::Injector;
use crate::scenario::inject::{Faulty, FaultyFs, Strikes};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use weir_actors::operator::KeyFn;
use weir_actors::window::{WindowOperator, WindowTime};
use weir_actors::{
    JobGraph, KeyedOperator, NodeId, Operator, Partitioning, Sink, Source, SubtaskInfo,
    WatermarkStrategy, MIN_WATERMARK,
};

/// A job graph built from a topology, with what the CLI reports besides counts.
pub struct BuiltJob {
    pub graph: JobGraph,
    /// Bad-record counters per source id.
    pub bad_records: Vec<(String, Arc<BadRecordStats>)>,
    /// The key fields of key-partitioned inputs: (reader id, upstream id) -> fields.
    pub keys: HashMap<(String, String), Vec<Arc<str>>>,
}

/// The key extractor over `fields`; a missing field keys as null (keyed
/// aggregations check and fail with a message naming the field).
pub fn key_fn(fields: &[Arc<str>]) -> KeyFn<Record, RecordKey> {
    if let [one] = fields {
        let one = one.clone();
        Arc::new(move |r: &Record| RecordKey::One(r.get(&one).cloned().unwrap_or(Value::Null)))
    } else {
        let fields = fields.to_vec();
        Arc::new(move |r: &Record| {
            RecordKey::Many(
                fields
                    .iter()
                    .map(|f| r.get(f).cloned().unwrap_or(Value::Null))
                    .collect(),
            )
        })
    }
}

/// What a scenario run injects: the nodes it strikes are wrapped in [`Faulty`].
type Faults<'a> = Option<&'a Arc<Injector>>;

/// The injector when it strikes `name`, and the name to tag its subtasks with.
fn striking(faults: Faults<'_>, name: &str) -> Option<(Arc<Injector>, String)> {
    faults
        .filter(|f| f.strikes(name))
        .map(|f| (f.clone(), name.to_string()))
}

/// A source node; with event time, its watermarks follow the timestamp field.
fn add_source<S: Source<Out = Record>>(
    graph: &mut JobGraph,
    faults: Faults<'_>,
    name: &str,
    event_time: Option<&EventTimeSpec>,
    make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
) -> NodeId {
    match striking(faults, name) {
        Some((inj, node)) => add_plain_source(graph, name, event_time, move |info| {
            Faulty::new(make(info), Strikes::new(&inj, &node, info))
        }),
        None => add_plain_source(graph, name, event_time, make),
    }
}

fn add_plain_source<S: Source<Out = Record>>(
    graph: &mut JobGraph,
    name: &str,
    event_time: Option<&EventTimeSpec>,
    make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
) -> NodeId {
    let Some(spec) = event_time else {
        return graph.add_source(name, make);
    };
    let field = spec.field.clone();
    // A record without a usable time does not move the watermark; the window that
    // reads it fails with a message naming the field.
    let mut strategy =
        WatermarkStrategy::bounded_out_of_orderness(spec.out_of_orderness, move |r: &Record| {
            timestamp_of(r, &field).unwrap_or(MIN_WATERMARK)
        });
    if let Some(idle) = spec.idle_timeout {
        strategy = strategy.with_idleness(idle);
    }
    if let Some(interval) = spec.watermark_interval {
        strategy = strategy.with_interval(interval);
    }
    graph.add_source_with_watermarks(name, strategy, make)
}

fn add_operator<O: Operator>(
    graph: &mut JobGraph,
    faults: Faults<'_>,
    name: &str,
    make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
) -> NodeId {
    match striking(faults, name) {
        Some((inj, node)) => graph.add_operator(name, move |info| {
            Faulty::new(make(info), Strikes::new(&inj, &node, info))
        }),
        None => graph.add_operator(name, make),
    }
}

fn add_keyed<O: KeyedOperator>(
    graph: &mut JobGraph,
    faults: Faults<'_>,
    name: &str,
    key: KeyFn<O::In, O::Key>,
    make: impl Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
) -> NodeId {
    match striking(faults, name) {
        Some((inj, node)) => graph.add_keyed_operator(name, key, move |info| {
            Faulty::new(make(info), Strikes::new(&inj, &node, info))
        }),
        None => graph.add_keyed_operator(name, key, make),
    }
}

fn add_sink<S: Sink>(
    graph: &mut JobGraph,
    faults: Faults<'_>,
    name: &str,
    make: impl Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
) -> NodeId {
    match striking(faults, name) {
        Some((inj, node)) => graph.add_sink(name, move |info| {
            Faulty::new(make(info), Strikes::new(&inj, &node, info))
        }),
        None => graph.add_sink(name, make),
    }
}

/// A node index and the key fields when the edge from it is key-partitioned.
type Upstream = (usize, Option<Vec<Arc<str>>>);

/// One upstream of a node as the graph sees it: a real node, and the key fields if the
/// edge is key-partitioned.
fn resolve(
    t: &Topology,
    by_id: &HashMap<&str, usize>,
    id: &str,
    key: Option<&[Arc<str>]>,
    out: &mut Vec<(usize, Option<Vec<Arc<str>>>)>,
) {
    let i = by_id[id];
    match &t.nodes[i].kind {
        NodeKind::KeyBy(fields) => {
            // The outermost key_by decides the key.
            let key = key.unwrap_or(fields);
            for (input, _) in &t.nodes[i].inputs {
                resolve(t, by_id, input, Some(key), out);
            }
        }
        _ => out.push((i, key.map(<[Arc<str>]>::to_vec))),
    }
}

/// Builds the job graph (no file is opened until the job runs).
pub fn build(t: &Topology) -> BuiltJob {
    build_with_faults(t, None)
}

/// Builds the job graph with the faults of a scenario run wrapped around the nodes
/// they strike.
pub fn build_with_faults(t: &Topology, faults: Faults<'_>) -> BuiltJob {
    let mut graph = JobGraph::new(t.job.clone());
    let by_id: HashMap<&str, usize> = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut ids: HashMap<usize, NodeId> = HashMap::new();
    let mut bad_records = Vec::new();
    let mut keys = HashMap::new();
    // Window nodes with a `late` sink: the node that passes their late records.
    let mut late_sides: HashMap<usize, NodeId> = HashMap::new();
    // Nodes whose inputs connect to another graph node than their output (windows).
    let mut entries: HashMap<usize, NodeId> = HashMap::new();

    // Each node's resolved inputs.
    let inputs: Vec<Vec<Upstream>> = t
        .nodes
        .iter()
        .map(|n| {
            let mut out = Vec::new();
            for (input, _) in &n.inputs {
                resolve(t, &by_id, input, None, &mut out);
            }
            out
        })
        .collect();

    for (i, n) in t.nodes.iter().enumerate() {
        let name = n.id.as_str();
        let node = match &n.kind {
            NodeKind::KeyBy(_) => continue,
            NodeKind::Generator(spec) => {
                let spec = spec.clone();
                add_source(
                    &mut graph,
                    faults,
                    name,
                    n.event_time.as_ref(),
                    move |info| GeneratorSource::new(spec.clone(), info),
                )
            }
            NodeKind::File(spec) => {
                let stats = Arc::new(BadRecordStats::default());
                bad_records.push((n.id.clone(), stats.clone()));
                let dead = match &spec.on_error {
                    OnError::DeadLetter(p) => Some(DeadLetterFile::new(p.clone())),
                    _ => None,
                };
                let spec = spec.clone();
                add_source(
                    &mut graph,
                    faults,
                    name,
                    n.event_time.as_ref(),
                    move |info| FileSource::new(spec.clone(), info, dead.clone(), stats.clone()),
                )
            }
            NodeKind::Stdin(spec) => {
                let stats = Arc::new(BadRecordStats::default());
                bad_records.push((n.id.clone(), stats.clone()));
                let dead = match &spec.on_error {
                    OnError::DeadLetter(p) => Some(DeadLetterFile::new(p.clone())),
                    _ => None,
                };
                let spec = spec.clone();
                let node = add_source(
                    &mut graph,
                    faults,
                    name,
                    n.event_time.as_ref(),
                    move |info| StdinSource::new(spec.clone(), info, dead.clone(), stats.clone()),
                );
                graph.set_parallelism(node, 1);
                node
            }
            NodeKind::Map(spec) => {
                let spec = spec.clone();
                add_operator(&mut graph, faults, name, move |_| {
                    MapOperator::new(spec.clone())
                })
            }
            NodeKind::Filter(e) => {
                let e = e.clone();
                add_operator(&mut graph, faults, name, move |_| {
                    FilterOperator::new(e.clone())
                })
            }
            NodeKind::FlatMap(spec) => {
                let spec = spec.clone();
                add_operator(&mut graph, faults, name, move |_| {
                    FlatMapOperator::new(spec.clone())
                })
            }
            NodeKind::Aggregate {
                kind,
                field,
                output,
            } => {
                let key = inputs[i]
                    .first()
                    .and_then(|(_, k)| k.clone())
                    .expect("validation: aggregations read a key_by");
                let spec = Arc::new(AggSpec {
                    kind: *kind,
                    key: key.clone(),
                    field: field.clone(),
                    output: output.clone(),
                });
                add_keyed(&mut graph, faults, name, key_fn(&key), move |_| {
                    AggregateOperator::new(spec.clone())
                })
            }
            NodeKind::Window(spec) => {
                let key = inputs[i]
                    .first()
                    .and_then(|(_, k)| k.clone())
                    .expect("validation: windows read a key_by");
                let aggregate = Arc::new(WindowAggSpec {
                    kind: spec.aggregate,
                    key: key.clone(),
                    field: spec.field.clone(),
                    output: spec.output.clone(),
                });
                let time = match &spec.timestamp {
                    Some(field) if !spec.processing_time => {
                        let field = field.clone();
                        WindowTime::Event(Arc::new(move |r: &Record| timestamp_of(r, &field)))
                    }
                    _ => WindowTime::Processing,
                };
                let (shape, lateness) = (spec.shape, spec.allowed_lateness);
                let window = add_keyed(&mut graph, faults, name, key_fn(&key), move |_| {
                    WindowOperator::new(
                        shape,
                        time.clone(),
                        lateness,
                        RecordWindowAgg::new(aggregate.clone()),
                    )
                });
                // The window's results and late records part right after it (chained).
                let results =
                    graph.add_operator(&format!("{name}.results"), |_| WindowSide { late: false });
                graph.connect(window, results, Partitioning::default_for_edge());
                let mut sides = vec![window];
                if spec.late.is_some() {
                    let late =
                        graph.add_operator(&format!("{name}.late"), |_| WindowSide { late: true });
                    graph.connect(window, late, Partitioning::default_for_edge());
                    late_sides.insert(i, late);
                    sides.push(late);
                }
                if let Some((p, _)) = &n.parallelism {
                    sides.iter().for_each(|&s| graph.set_parallelism(s, *p));
                }
                entries.insert(i, window);
                results
            }
            NodeKind::Stdout(format) => {
                let flag = Arc::new(AtomicBool::new(false));
                let format = *format;
                add_sink(&mut graph, faults, name, move |_| {
                    StdoutSink::new(format, flag.clone())
                })
            }
            NodeKind::FileSink(path, format) => {
                let (path, format) = (path.clone(), *format);
                let fs_faults = striking(faults, name);
                add_sink(&mut graph, faults, name, move |info| {
                    let sink = FileSink::new(path.clone(), format);
                    match fs_faults
                        .as_ref()
                        .and_then(|(inj, node)| FaultyFs::new(inj, node, info.index))
                    {
                        Some(fs) => sink.with_fs(fs),
                        None => sink,
                    }
                })
            }
            NodeKind::ExactlyOnceFiles(spec, _) => {
                let files = exactly_once_file_sink(spec);
                let fs_faults = striking(faults, name);
                add_sink(&mut graph, faults, name, move |info| {
                    let fs = fs_faults
                        .as_ref()
                        .and_then(|(inj, node)| FaultyFs::new(inj, node, info.index));
                    match fs {
                        Some(fs) => files.clone().part_fs(fs),
                        None => files.clone(),
                    }
                })
            }
            NodeKind::Null => add_sink(&mut graph, faults, name, |_| NullSink),
        };
        if let Some((p, _)) = &n.parallelism {
            graph.set_parallelism(node, *p);
        }
        ids.insert(i, node);
    }

    for (i, n) in t.nodes.iter().enumerate() {
        let Some(&to) = entries.get(&i).or(ids.get(&i)) else {
            continue;
        };
        for (from, key) in &inputs[i] {
            let partitioning = match key {
                Some(fields) => {
                    keys.insert((n.id.clone(), t.nodes[*from].id.clone()), fields.clone());
                    Partitioning::key(key_fn(fields))
                }
                None => Partitioning::default_for_edge(),
            };
            let late_sink = match &t.nodes[*from].kind {
                NodeKind::Window(spec) => spec.late.as_ref().is_some_and(|(s, _)| *s == n.id),
                _ => false,
            };
            let from = if late_sink {
                late_sides[from]
            } else {
                ids[from]
            };
            graph.connect(from, to, partitioning);
        }
    }
    BuiltJob {
        graph,
        bad_records,
        keys,
    }
}
