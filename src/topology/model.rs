//! The typed topology: `[job]` settings and the `[[source]]`, `[[operator]]` and
//! `[[sink]]` nodes, parsed from the spanned document with one precise error per
//! problem, then validated as a graph.

use super::closest;
use super::doc::{self, Kind, Reader, Val};
use super::error::{Origin, Problem, TopologyError};
use crate::builtins::{
    AggKind, DecodeSpec, ExactlyOnceFilesSpec, FieldType, FileSourceSpec, FlatMapSpec, Format,
    GeneratorSpec, InputFile, MapSpec, OnError, SinkFormat, SplitMode, StdinSpec,
};
use crate::expr::Expr;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weir_actors::config::{CheckpointConfig, CheckpointMode, RestartStrategy, StateBackendChoice};
use weir_actors::window::{Slicing, WindowKind};
use weir_actors::JobConfig;
use weir_state::key_group::MAX_MAX_PARALLELISM;

/// A parsed and validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topology file as named on the command line.
    pub path: String,
    pub job: JobConfig,
    /// Nodes in file order: sources, then operators, then sinks.
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Operator,
    Sink,
}

impl Role {
    pub fn table(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Operator => "operator",
            Role::Sink => "sink",
        }
    }

    pub fn types(self) -> &'static [&'static str] {
        match self {
            Role::Source => &["generator", "file", "stdin"],
            Role::Operator => &[
                "map", "filter", "flat_map", "key_by", "count", "sum", "min", "max", "avg",
                "window",
            ],
            Role::Sink => &["stdout", "file", "null"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub id_at: Origin,
    pub role: Role,
    pub type_name: String,
    pub inputs: Vec<(String, Origin)>,
    pub parallelism: Option<(u32, Origin)>,
    pub kind: NodeKind,
    /// Sources: where records carry their event time, and how watermarks follow it.
    pub event_time: Option<EventTimeSpec>,
    /// The fields this node reads, where the topology names them.
    pub reads: Vec<FieldRef>,
    /// The node's table.
    pub at: Origin,
}

/// A source's event time: `timestamp = "FIELD"` (integer ms since the epoch),
/// `out_of_orderness`, `idle_timeout` and `watermark_interval`.
#[derive(Debug, Clone)]
pub struct EventTimeSpec {
    pub field: Arc<str>,
    pub out_of_orderness: Duration,
    pub idle_timeout: Option<Duration>,
    /// At most one watermark per interval (0: after every polled batch).
    pub watermark_interval: Option<Duration>,
}

/// A window node: `kind` tumbling / sliding / session, an aggregate over a field,
/// allowed lateness and the sink that takes its late records.
#[derive(Debug, Clone)]
pub struct WindowNodeSpec {
    pub shape: WindowKind,
    /// The event-time field; `None` in processing time.
    pub timestamp: Option<Arc<str>>,
    /// `time = "processing"`.
    pub processing_time: bool,
    pub aggregate: AggKind,
    pub field: Option<Arc<str>>,
    pub output: Arc<str>,
    pub allowed_lateness: i64,
    /// The sink (reading this window) that gets the late records.
    pub late: Option<(String, Origin)>,
}

/// A field named by a setting (`select`, `where`, `key`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRef {
    pub name: String,
    pub at: Origin,
    /// The setting that names it, for messages.
    pub setting: String,
    /// Map's `rename` names fields of the map's own result, not of its input.
    pub of_result: bool,
}

impl FieldRef {
    fn new(name: &str, at: &Origin, setting: &str) -> FieldRef {
        FieldRef {
            name: name.to_string(),
            at: at.clone(),
            setting: setting.to_string(),
            of_result: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Generator(Arc<GeneratorSpec>),
    File(Arc<FileSourceSpec>),
    Stdin(Arc<StdinSpec>),
    Map(Arc<MapSpec>),
    Filter(Arc<Expr>),
    FlatMap(Arc<FlatMapSpec>),
    KeyBy(Vec<Arc<str>>),
    Aggregate {
        kind: AggKind,
        field: Option<Arc<str>>,
        output: Arc<str>,
    },
    Window(Arc<WindowNodeSpec>),
    Stdout(SinkFormat),
    FileSink(PathBuf, SinkFormat),
    /// `type = "file"` with `semantics = "exactly_once"`; where `semantics` was set.
    ExactlyOnceFiles(Arc<ExactlyOnceFilesSpec>, Origin),
    Null,
}

/// Reads, parses and validates a topology file, applying `--set` overrides.
pub fn load(path: &Path, sets: &[String]) -> Result<Topology, TopologyError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::NotFound {
            Some("check the path of the topology file".to_string())
        } else {
            None
        };
        TopologyError::whole_file(&display, format!("cannot read the topology: {e}"), fix)
    })?;
    let render = |p: Problem| TopologyError::render(&p, &display, &text, sets);
    let mut document = doc::parse(&text).map_err(render)?;
    apply_overrides(&mut document, sets).map_err(render)?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let stem = path.file_stem().map_or_else(
        || "weir-job".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let ctx = Ctx { text: &text, base };
    let (job, mut nodes) = parse_document(&document, &ctx, &stem).map_err(render)?;
    validate(&job, &mut nodes, &text).map_err(render)?;
    Ok(Topology {
        path: display,
        job,
        nodes,
    })
}

/// Parses topology text (no file, no overrides); relative paths resolve against
/// `base`. For tests and embedding.
pub fn parse_str(text: &str, base: &Path, name: &str) -> Result<Topology, TopologyError> {
    let render = |p: Problem| TopologyError::render(&p, name, text, &[]);
    let document = doc::parse(text).map_err(render)?;
    let ctx = Ctx {
        text,
        base: base.to_path_buf(),
    };
    let (job, mut nodes) = parse_document(&document, &ctx, "weir-job").map_err(render)?;
    validate(&job, &mut nodes, text).map_err(render)?;
    Ok(Topology {
        path: name.to_string(),
        job,
        nodes,
    })
}

struct Ctx<'a> {
    text: &'a str,
    base: PathBuf,
}

impl Ctx<'_> {
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The field uses of a parsed expression, pointing into its string.
    fn expr_reads(&self, e: &Expr, at: &Origin, key: &str, reads: &mut Vec<FieldRef>) {
        for (name, range) in e.field_uses() {
            let inner = at.inner(self.text, range.start, range.len());
            reads.push(FieldRef::new(&name, &inner, key));
        }
    }

    fn expr(
        &self,
        text: &str,
        at: &Origin,
        key: &str,
        allow_random: bool,
    ) -> Result<Expr, Problem> {
        Expr::parse(text, allow_random).map_err(|e| {
            let len = text[e.offset.min(text.len())..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            Problem::new(
                &at.inner(self.text, e.offset, len),
                format!("invalid expression in `{key}`: {}", e.message),
            )
            .fix(
                "fields are bare names or `quoted names`, strings 'single' or \"double\" quoted; \
                 operators: == != < <= > >= + - * / % and or not; see the topology reference",
            )
        })
    }
}

// ---------------------------------------------------------------------------------
// Overrides

fn apply_overrides(document: &mut Val, sets: &[String]) -> Result<(), Problem> {
    for (i, arg) in sets.iter().enumerate() {
        let at = Origin::Set(i);
        let Some((key, value)) = arg.split_once('=') else {
            return Err(Problem::new(&at, "expected KEY=VALUE")
                .fix("write e.g. `--set job.parallelism=4` or `--set NODE_ID.KEY=VALUE`"));
        };
        let path: Vec<&str> = key.trim().split('.').collect();
        if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
            return Err(
                Problem::new(&at, format!("`{key}` does not name a setting"))
                    .fix("write `job.KEY=VALUE` or `NODE_ID.KEY=VALUE`"),
            );
        }
        let value = doc::parse_override_value(value.trim(), i);
        if path[0] == "job" || path[0] == "checkpoint" {
            doc::set_path(document, &path, value)
                .map_err(|e| Problem::new(&at, format!("cannot set `{key}`: {e}")))?;
            continue;
        }
        let (target, ids) = find_node_mut(document, path[0]);
        match target {
            Some(node) => doc::set_path(node, &path[1..], value)
                .map_err(|e| Problem::new(&at, format!("cannot set `{key}`: {e}")))?,
            None => {
                let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
                let fix = match closest(path[0], &ids_ref) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "use `job`, `checkpoint` or a node id: {}",
                        if ids.is_empty() {
                            "(none)".to_string()
                        } else {
                            ids.join(", ")
                        }
                    ),
                };
                return Err(
                    Problem::new(&at, format!("no node has the id `{}`", path[0])).fix(fix),
                );
            }
        }
    }
    Ok(())
}

/// The node table with this id, and all ids (for suggestions).
fn find_node_mut<'a>(document: &'a mut Val, id: &str) -> (Option<&'a mut Val>, Vec<String>) {
    let mut ids = Vec::new();
    let Kind::Table(entries) = &mut document.kind else {
        return (None, ids);
    };
    let mut found = None;
    for (k, v) in entries.iter_mut() {
        if !matches!(k.name.as_str(), "source" | "operator" | "sink") {
            continue;
        }
        if let Kind::Array(items) = &mut v.kind {
            for item in items.iter_mut() {
                if let Some(Val {
                    kind: Kind::Str(s), ..
                }) = item.get("id")
                {
                    ids.push(s.clone());
                    if s == id && found.is_none() {
                        found = Some(item);
                    }
                }
            }
        }
    }
    (found, ids)
}

// ---------------------------------------------------------------------------------
// Parsing

const TOP_KEYS: &[&str] = &["job", "checkpoint", "restart", "source", "operator", "sink"];
const CHECKPOINT_KEYS: &[&str] = &[
    "dir",
    "interval_ms",
    "timeout_ms",
    "min_pause_ms",
    "max_concurrent",
    "tolerable_failures",
    "mode",
    "alignment_timeout_ms",
    "retain",
];
const JOB_KEYS: &[&str] = &[
    "name",
    "parallelism",
    "max_parallelism",
    "workers",
    "batch_size",
    "channel_capacity",
    "linger_ms",
    "state_backend",
    "state_dir",
];

fn parse_document(
    document: &Val,
    ctx: &Ctx,
    stem: &str,
) -> Result<(JobConfig, Vec<Node>), Problem> {
    let mut top = Reader::new("the topology", document)?;
    let mut job = match top.get("job") {
        Some(v) => parse_job(v, stem, ctx)?,
        None => JobConfig {
            name: stem.to_string(),
            ..JobConfig::default()
        },
    };
    if let Some(v) = top.get("checkpoint") {
        job.checkpoint = Some(parse_checkpoint(v, ctx)?);
    }
    if let Some(v) = top.get("restart") {
        job.restart = Some(parse_restart(v)?);
    }
    let mut nodes = Vec::new();
    for role in [Role::Source, Role::Operator, Role::Sink] {
        let key = role.table();
        let Some(v) = top.get(key) else { continue };
        let items = match &v.kind {
            Kind::Array(items) if items.iter().all(|i| matches!(i.kind, Kind::Table(_))) => items,
            _ => {
                return Err(Problem::new(
                    &v.at,
                    format!("`{key}` must be an array of tables, found {}", v.describe()),
                )
                .fix(format!("declare each {key} with its own [[{key}]] header")))
            }
        };
        for item in items {
            nodes.push(parse_node(item, role, ctx)?);
        }
    }
    top.finish(TOP_KEYS)?;
    if nodes.is_empty() {
        return Err(Problem::new(&Origin::Nowhere, "the topology has no nodes")
            .fix("add at least a [[source]] and a [[sink]] (see examples/wordcount.toml)"));
    }
    Ok((job, nodes))
}

fn parse_job(v: &Val, stem: &str, ctx: &Ctx) -> Result<JobConfig, Problem> {
    let mut r = Reader::new("[job]", v)?;
    let name = r
        .string("name", "\"wordcount\"")?
        .map_or_else(|| stem.to_string(), |(s, _)| s);
    let mut job = JobConfig {
        name,
        ..JobConfig::default()
    };
    let max = MAX_MAX_PARALLELISM;
    let parallelism = r.u32("parallelism", 1, max, "2")?;
    if let Some((m, _)) = r.u32("max_parallelism", 1, max, "128")? {
        job.max_parallelism = m;
    }
    match parallelism {
        Some((p, at)) => {
            if p > job.max_parallelism {
                return Err(too_parallel("job.parallelism", p, &at, job.max_parallelism));
            }
            job.parallelism = p;
        }
        None => job.parallelism = job.parallelism.min(job.max_parallelism),
    }
    if let Some((w, _)) = r.int("workers", 0, 1024, "2")? {
        job.workers = w as usize;
    }
    if let Some((b, _)) = r.int("batch_size", 1, 1 << 20, "1024")? {
        job.batch_size = b as usize;
    }
    if let Some((c, _)) = r.int("channel_capacity", 1, 1 << 16, "4")? {
        job.channel_capacity = c as usize;
    }
    if let Some((l, _)) = r.int("linger_ms", 0, 60_000, "1")? {
        job.linger = Duration::from_millis(l as u64);
    }
    if let Some((backend, at)) = r.string("state_backend", "\"rocksdb\"")? {
        job.state_backend = match backend.as_str() {
            "memory" => StateBackendChoice::Memory,
            "rocksdb" => StateBackendChoice::RocksDb,
            _ => {
                let fix = match closest(&backend, &["memory", "rocksdb"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "use `memory` (state on the heap) or `rocksdb` (state on local disk)"
                        .to_string(),
                };
                return Err(
                    Problem::new(&at, format!("unknown state_backend `{backend}`")).fix(fix),
                );
            }
        };
    }
    if let Some((dir, _)) = r.string("state_dir", "\"state\"")? {
        job.state_dir = Some(ctx.resolve(&dir));
    }
    r.finish(JOB_KEYS)?;
    Ok(job)
}

/// `[checkpoint]`: periodic checkpoints into `dir`.
fn parse_checkpoint(v: &Val, ctx: &Ctx) -> Result<CheckpointConfig, Problem> {
    let mut r = Reader::new("[checkpoint]", v)?;
    let (dir, _) = r.required_string("dir", "\"checkpoints\"")?;
    let mut config = CheckpointConfig::new(ctx.resolve(&dir));
    let millis = |ms: i64| Duration::from_millis(ms as u64);
    if let Some((ms, _)) = r.int("interval_ms", 1, 86_400_000, "1000")? {
        config.interval = millis(ms);
    }
    if let Some((ms, _)) = r.int("timeout_ms", 1, 86_400_000, "60000")? {
        config.timeout = millis(ms);
    }
    if let Some((ms, _)) = r.int("min_pause_ms", 0, 86_400_000, "0")? {
        config.min_pause = millis(ms);
    }
    if let Some((n, _)) = r.int("max_concurrent", 1, 64, "1")? {
        config.max_concurrent = n as usize;
    }
    if let Some((n, _)) = r.int("tolerable_failures", 0, 1_000_000, "0")? {
        config.tolerable_failures = n as u32;
    }
    if let Some((n, _)) = r.int("retain", 1, 1_000, "3")? {
        config.retain = n as usize;
    }
    let timeout = r.int("alignment_timeout_ms", 0, 86_400_000, "100")?;
    if let Some((mode, at)) = r.string("mode", "\"aligned\"")? {
        const MODES: &[&str] = &[
            "aligned",
            "unaligned",
            "aligned_with_timeout",
            "at_least_once",
        ];
        config.mode = match mode.as_str() {
            "aligned" => CheckpointMode::Aligned,
            "unaligned" => CheckpointMode::Unaligned,
            "at_least_once" => CheckpointMode::AtLeastOnce,
            "aligned_with_timeout" => match &timeout {
                Some((ms, _)) => CheckpointMode::AlignedWithTimeout {
                    timeout_ms: *ms as u64,
                },
                None => {
                    return Err(Problem::new(
                        &at,
                        "checkpoint mode `aligned_with_timeout` needs `alignment_timeout_ms`",
                    )
                    .fix("add `alignment_timeout_ms = 100` to [checkpoint]: alignments longer than that switch to unaligned"))
                }
            },
            _ => {
                let fix = match closest(&mode, MODES) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "use `aligned`, `unaligned` or `aligned_with_timeout` (exactly once), or `at_least_once`"
                        .to_string(),
                };
                return Err(
                    Problem::new(&at, format!("unknown checkpoint mode `{mode}`")).fix(fix),
                );
            }
        };
    }
    if let (Some((_, at)), false) = (
        &timeout,
        matches!(config.mode, CheckpointMode::AlignedWithTimeout { .. }),
    ) {
        return Err(Problem::new(
            at,
            "`alignment_timeout_ms` applies only to `mode = \"aligned_with_timeout\"`",
        )
        .fix("set `mode = \"aligned_with_timeout\"` in [checkpoint], or remove the timeout"));
    }
    r.finish(CHECKPOINT_KEYS)?;
    Ok(config)
}

/// `[restart]`: what the supervisor does when the job fails.
fn parse_restart(v: &Val) -> Result<RestartStrategy, Problem> {
    const STRATEGIES: &[&str] = &["none", "fixed_delay", "exponential_backoff", "failure_rate"];
    let mut r = Reader::new("[restart]", v)?;
    let (name, at) = r.required_string("strategy", "\"fixed_delay\"")?;
    let millis = |r: &mut Reader, key: &str, default: u64| -> Result<u64, Problem> {
        Ok(r.int(key, 0, 86_400_000, "1000")?
            .map_or(default, |(ms, _)| ms as u64))
    };
    let (strategy, keys): (RestartStrategy, &[&str]) = match name.as_str() {
        "none" => (RestartStrategy::None, &["strategy"]),
        "fixed_delay" => (
            RestartStrategy::FixedDelay {
                attempts: r.u32("attempts", 0, u32::MAX, "3")?.map_or(3, |(n, _)| n),
                delay_ms: millis(&mut r, "delay_ms", 1_000)?,
            },
            &["strategy", "attempts", "delay_ms"],
        ),
        "exponential_backoff" => {
            let RestartStrategy::ExponentialBackoff {
                initial_ms,
                max_ms,
                multiplier,
                jitter,
                reset_after_ms,
            } = RestartStrategy::default()
            else {
                unreachable!("the default strategy is exponential backoff")
            };
            let multiplier = match r.float("multiplier", "2.0")? {
                Some((m, at)) if m < 1.0 => {
                    return Err(Problem::new(
                        &at,
                        format!("`multiplier` in [restart] must be at least 1, found {m}"),
                    )
                    .fix("write it like `multiplier = 2.0`"))
                }
                Some((m, _)) => m,
                None => multiplier,
            };
            let jitter = match r.float("jitter", "0.1")? {
                Some((j, at)) if !(0.0..=1.0).contains(&j) => {
                    return Err(Problem::new(
                        &at,
                        format!("`jitter` in [restart] must be between 0 and 1, found {j}"),
                    )
                    .fix("write it like `jitter = 0.1` (± 10% of each delay)"))
                }
                Some((j, _)) => j,
                None => jitter,
            };
            (
                RestartStrategy::ExponentialBackoff {
                    initial_ms: millis(&mut r, "initial_ms", initial_ms)?,
                    max_ms: millis(&mut r, "max_ms", max_ms)?,
                    multiplier,
                    jitter,
                    reset_after_ms: millis(&mut r, "reset_after_ms", reset_after_ms)?,
                },
                &[
                    "strategy",
                    "initial_ms",
                    "max_ms",
                    "multiplier",
                    "jitter",
                    "reset_after_ms",
                ],
            )
        }
        "failure_rate" => (
            RestartStrategy::FailureRate {
                max_failures: r
                    .u32("max_failures", 0, u32::MAX, "3")?
                    .map_or(3, |(n, _)| n),
                interval_ms: millis(&mut r, "interval_ms", 60_000)?,
                delay_ms: millis(&mut r, "delay_ms", 1_000)?,
            },
            &["strategy", "max_failures", "interval_ms", "delay_ms"],
        ),
        _ => {
            let fix = match closest(&name, STRATEGIES) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use one of: {}", STRATEGIES.join(", ")),
            };
            return Err(Problem::new(&at, format!("unknown restart strategy `{name}`")).fix(fix));
        }
    };
    r.finish(keys)?;
    Ok(strategy)
}

fn too_parallel(what: &str, p: u32, at: &Origin, max: u32) -> Problem {
    Problem::new(
        at,
        format!("{what} = {p} is above job.max_parallelism = {max}"),
    )
    .fix(format!(
        "lower it to at most {max}, or raise max_parallelism in [job] (the number of key groups, up to {MAX_MAX_PARALLELISM})"
    ))
}

const COMMON_KEYS: &[&str] = &["id", "type", "input", "inputs", "parallelism"];

fn parse_node(item: &Val, role: Role, ctx: &Ctx) -> Result<Node, Problem> {
    let mut reads = Vec::new();
    let table = role.table();
    let mut r = Reader::new(format!("a [[{table}]]"), item)?;
    let (id, id_at) = r.required_string("id", "\"my_node\"")?;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Problem::new(&id_at, format!("invalid id \"{id}\""))
            .fix("use letters, digits, `_` and `-` only (ids appear in --set NODE_ID.KEY=VALUE)"));
    }
    r.what = format!("{table} `{id}`");
    let (type_name, type_at) = r.required_string("type", &format!("\"{}\"", role.types()[0]))?;
    if !role.types().contains(&type_name.as_str()) {
        let other = [Role::Source, Role::Operator, Role::Sink]
            .into_iter()
            .find(|o| *o != role && o.types().contains(&type_name.as_str()));
        let fix = match (other, closest(&type_name, role.types())) {
            (Some(o), _) => format!(
                "`{type_name}` is {} type: declare it under [[{}]]",
                if o == Role::Operator {
                    "an operator"
                } else if o == Role::Source {
                    "a source"
                } else {
                    "a sink"
                },
                o.table()
            ),
            (None, Some(s)) => format!("did you mean `{s}`?"),
            (None, None) => format!("the {table} types are: {}", role.types().join(", ")),
        };
        return Err(Problem::new(&type_at, format!("unknown {table} type `{type_name}`")).fix(fix));
    }

    // Inputs.
    let mut inputs = Vec::new();
    let input = r.string("input", "\"upstream_id\"")?;
    let many = r.strings("inputs", "[\"a\", \"b\"]")?;
    if role == Role::Source {
        if r.has("input") || r.has("inputs") {
            let key = if r.has("input") { "input" } else { "inputs" };
            return Err(Problem::new(
                &r.key_at(key),
                format!("source `{id}` cannot have an `{key}`"),
            )
            .fix("sources read no stream: remove it, or declare this node under [[operator]]"));
        }
    } else {
        match (input, many) {
            (Some(_), Some(_)) => {
                return Err(Problem::new(
                    &r.key_at("inputs"),
                    format!("{table} `{id}` has both `input` and `inputs`"),
                )
                .fix("keep one: `input = \"a\"` or `inputs = [\"a\", \"b\"]`"))
            }
            (Some(one), None) => inputs.push(one),
            (None, Some(list)) if !list.is_empty() => inputs = list,
            (None, Some(_)) => {
                return Err(Problem::new(
                    &r.key_at("inputs"),
                    format!("`inputs` of {table} `{id}` is empty"),
                )
                .fix("name at least one upstream node"))
            }
            (None, None) => {
                return Err(
                    Problem::new(&id_at, format!("{table} `{id}` has no input")).fix(format!(
                    "add `input = \"ID\"` naming the node it reads from (after `id = \"{id}\"`)"
                )),
                )
            }
        }
    }

    let parallelism = if type_name == "key_by" {
        if r.has("parallelism") {
            return Err(Problem::new(
                &r.key_at("parallelism"),
                "key_by has no parallelism of its own",
            )
            .fix(
                "key_by only partitions the stream: set `parallelism` on the node that reads it",
            ));
        }
        None
    } else {
        r.u32("parallelism", 1, MAX_MAX_PARALLELISM, "2")?
    };

    let (kind, keys): (NodeKind, &[&str]) = match (role, type_name.as_str()) {
        (Role::Source, "generator") => (
            parse_generator(&mut r, ctx)?,
            &["count", "rate", "seed", "fields", "splits"],
        ),
        (Role::Source, "file") => (parse_file_source(&mut r, ctx)?, FILE_KEYS),
        (Role::Source, "stdin") => {
            if let Some((p, at)) = &parallelism {
                if *p != 1 {
                    return Err(Problem::new(at, "a stdin source has parallelism 1")
                        .fix("remove `parallelism` (stdin is read by one subtask; later nodes can be parallel)"));
                }
            }
            let (decode, on_error) = parse_decode(&mut r, ctx, None)?;
            (
                NodeKind::Stdin(Arc::new(StdinSpec { decode, on_error })),
                STDIN_KEYS,
            )
        }
        (Role::Operator, "map") => (
            parse_map(&mut r, ctx, &mut reads)?,
            &["select", "drop", "set", "rename"],
        ),
        (Role::Operator, "filter") => {
            let (w, at) = r.required_string("where", "\"n > 3 and word != 'the'\"")?;
            let e = ctx.expr(&w, &at, "where", false)?;
            ctx.expr_reads(&e, &at, "where", &mut reads);
            (NodeKind::Filter(Arc::new(e)), &["where"])
        }
        (Role::Operator, "flat_map") => (
            parse_flat_map(&mut r, &mut reads)?,
            &["field", "output", "mode", "separator", "lowercase", "keep"],
        ),
        (Role::Operator, "key_by") => {
            let key = r
                .strings("key", "[\"word\"]")?
                .ok_or_else(|| r.missing("key", "[\"word\"]"))?;
            if key.is_empty() {
                return Err(
                    Problem::new(&r.key_at("key"), "`key` is empty").fix("name at least one field")
                );
            }
            reads.extend(key.iter().map(|(k, at)| FieldRef::new(k, at, "key")));
            (
                NodeKind::KeyBy(key.into_iter().map(|(k, _)| Arc::from(k)).collect()),
                &["key"],
            )
        }
        (Role::Operator, "window") => (parse_window(&mut r, &mut reads)?, WINDOW_KEYS),
        (Role::Operator, agg) => {
            let kind = match agg {
                "count" => AggKind::Count,
                "sum" => AggKind::Sum,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                _ => AggKind::Avg,
            };
            let field = if kind == AggKind::Count {
                None
            } else {
                let (f, at) = r.required_string("field", "\"value\"")?;
                reads.push(FieldRef::new(&f, &at, "field"));
                Some(Arc::from(f))
            };
            let output = r
                .string("output", &format!("\"{}\"", kind.name()))?
                .map_or_else(|| Arc::from(kind.name()), |(s, _)| Arc::from(s));
            let keys: &[&str] = if kind == AggKind::Count {
                &["output"]
            } else {
                &["field", "output"]
            };
            (
                NodeKind::Aggregate {
                    kind,
                    field,
                    output,
                },
                keys,
            )
        }
        (Role::Sink, "stdout") => (NodeKind::Stdout(sink_format(&mut r, None)?), &["format"]),
        (Role::Sink, "file") => parse_file_sink(&mut r, ctx)?,
        _ => (NodeKind::Null, &[]),
    };
    let event_time = if role == Role::Source {
        parse_event_time(&mut r)?
    } else {
        None
    };
    let source_keys: &[&str] = if role == Role::Source {
        EVENT_TIME_KEYS
    } else {
        &[]
    };
    let known: Vec<&str> = COMMON_KEYS
        .iter()
        .chain(keys)
        .chain(source_keys)
        .copied()
        .collect();
    r.finish(&known)?;
    Ok(Node {
        id,
        id_at,
        role,
        type_name,
        inputs,
        parallelism,
        kind,
        event_time,
        reads,
        at: item.at.clone(),
    })
}

const EVENT_TIME_KEYS: &[&str] = &[
    "timestamp",
    "out_of_orderness",
    "idle_timeout",
    "watermark_interval",
];
const WINDOW_KEYS: &[&str] = &[
    "kind",
    "size",
    "slide",
    "gap",
    "time",
    "timestamp",
    "aggregate",
    "field",
    "output",
    "allowed_lateness",
    "late",
];

/// A duration: an integer of milliseconds, or a string with a unit
/// (`"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`).
pub(crate) fn duration(
    r: &mut Reader,
    key: &str,
    example: &str,
) -> Result<Option<(Duration, Origin)>, Problem> {
    let Some(v) = r.get(key) else { return Ok(None) };
    let bad = |found: String| {
        Problem::new(
            &v.at,
            format!("`{key}` in {} must be a duration, found {found}", r.what),
        )
        .fix(format!(
            "write it like `{key} = {example}` (units: ms, s, m, h, d; a bare integer is ms)"
        ))
    };
    let ms = match &v.kind {
        Kind::Int(i) if *i >= 0 => *i as u64,
        Kind::Int(i) => return Err(bad(i.to_string())),
        Kind::Str(text) => {
            let t = text.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let unit_ms = match unit.trim() {
                "ms" => 1,
                "s" => 1_000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad(format!("\"{text}\""))),
            };
            match digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
            {
                Some(ms) => ms,
                None => return Err(bad(format!("\"{text}\""))),
            }
        }
        _ => return Err(bad(v.describe().to_string())),
    };
    Ok(Some((Duration::from_millis(ms), v.at.clone())))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_event_time(r: &mut Reader) -> Result<Option<EventTimeSpec>, Problem> {
    let field = r.string("timestamp", "\"ts\"")?;
    let bound = duration(r, "out_of_orderness", "\"5s\"")?;
    let idle = duration(r, "idle_timeout", "\"1m\"")?;
    let interval = duration(r, "watermark_interval", "\"200ms\"")?;
    let Some((field, _)) = field else {
        if let Some((_, at)) = bound.or(idle).or(interval) {
            return Err(Problem::new(&at, format!("{} sets watermarks but no event time", r.what))
                .fix("add `timestamp = \"FIELD\"` naming the field with each record's event time (ms since the epoch)"));
        }
        return Ok(None);
    };
    Ok(Some(EventTimeSpec {
        field: Arc::from(field),
        out_of_orderness: bound.map_or(Duration::ZERO, |(d, _)| d),
        idle_timeout: idle.map(|(d, _)| d),
        watermark_interval: interval.map(|(d, _)| d),
    }))
}

fn parse_window(r: &mut Reader, reads: &mut Vec<FieldRef>) -> Result<NodeKind, Problem> {
    const KINDS: &[&str] = &["tumbling", "sliding", "session"];
    let (kind, kind_at) = r.required_string("kind", "\"tumbling\"")?;
    let positive = |r: &mut Reader, key: &str, example: &str| -> Result<i64, Problem> {
        match duration(r, key, example)? {
            Some((d, at)) if d.is_zero() => Err(Problem::new(
                &at,
                format!("`{key}` in {} must be positive", r.what),
            )
            .fix(format!("write it like `{key} = {example}`"))),
            Some((d, _)) => Ok(millis(d)),
            None => Err(r.missing(key, example)),
        }
    };
    let refuse = |r: &mut Reader, key: &str, why: &str| -> Result<(), Problem> {
        if r.has(key) {
            return Err(
                Problem::new(&r.key_at(key), format!("{} has no `{key}`: {why}", r.what))
                    .fix(format!("remove `{key}`")),
            );
        }
        Ok(())
    };
    let shape = match kind.as_str() {
        "tumbling" => {
            refuse(r, "slide", "tumbling windows slide by their size")?;
            refuse(r, "gap", "only session windows have a gap")?;
            WindowKind::Sliding(
                Slicing::tumbling(positive(r, "size", "\"1m\"")?).expect("positive"),
            )
        }
        "sliding" => {
            refuse(r, "gap", "only session windows have a gap")?;
            let size = positive(r, "size", "\"1h\"")?;
            let slide = positive(r, "slide", "\"1m\"")?;
            let slicing = Slicing::sliding(size, slide).map_err(|e| {
                Problem::new(&r.key_at("slide"), e)
                    .fix("make `slide` at most `size` (equal sizes are tumbling windows)")
            })?;
            WindowKind::Sliding(slicing)
        }
        "session" => {
            refuse(
                r,
                "size",
                "a session lasts while records keep coming; set its `gap`",
            )?;
            refuse(r, "slide", "only sliding windows slide")?;
            WindowKind::Session {
                gap: positive(r, "gap", "\"30s\"")?,
            }
        }
        other => {
            let fix = match closest(other, KINDS) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("the window kinds are: {}", KINDS.join(", ")),
            };
            return Err(Problem::new(&kind_at, format!("unknown window kind `{other}`")).fix(fix));
        }
    };
    let processing_time = match r.string("time", "\"event\"")? {
        None => false,
        Some((t, _)) if t == "event" => false,
        Some((t, _)) if t == "processing" => true,
        Some((t, at)) => {
            return Err(Problem::new(&at, format!("unknown window time `{t}`"))
                .fix("write `time = \"event\"` (the default: records' event time) or `time = \"processing\"` (the wall clock)"))
        }
    };
    let timestamp = r.string("timestamp", "\"ts\"")?;
    if processing_time && timestamp.is_some() {
        return Err(Problem::new(
            &r.key_at("timestamp"),
            format!("{} works in processing time: it reads no timestamp", r.what),
        )
        .fix("remove `timestamp`, or `time = \"processing\"` to window by event time"));
    }
    if let Some((f, at)) = &timestamp {
        reads.push(FieldRef::new(f, at, "timestamp"));
    }
    const AGGREGATES: &[&str] = &["count", "sum", "min", "max", "avg"];
    let (agg, agg_at) = r.required_string("aggregate", "\"count\"")?;
    let aggregate = match agg.as_str() {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "avg" => AggKind::Avg,
        other => {
            let fix = match closest(other, AGGREGATES) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("the window aggregates are: {}", AGGREGATES.join(", ")),
            };
            return Err(
                Problem::new(&agg_at, format!("unknown window aggregate `{other}`")).fix(fix),
            );
        }
    };
    let field = if aggregate == AggKind::Count {
        refuse(r, "field", "count counts records")?;
        None
    } else {
        let (f, at) = r.required_string("field", "\"value\"")?;
        reads.push(FieldRef::new(&f, &at, "field"));
        Some(Arc::from(f))
    };
    let output = r
        .string("output", &format!("\"{}\"", aggregate.name()))?
        .map_or_else(|| Arc::from(aggregate.name()), |(s, _)| Arc::from(s));
    let allowed_lateness = match duration(r, "allowed_lateness", "\"30s\"")? {
        Some((_, at)) if processing_time => {
            return Err(
                Problem::new(&at, "processing-time windows have no late records")
                    .fix("remove `allowed_lateness`, or window by event time"),
            )
        }
        Some((d, _)) => millis(d),
        None => 0,
    };
    let late = r.string("late", "\"late_records\"")?;
    Ok(NodeKind::Window(Arc::new(WindowNodeSpec {
        shape,
        timestamp: timestamp.map(|(f, _)| Arc::from(f)),
        processing_time,
        aggregate,
        field,
        output,
        allowed_lateness,
        late,
    })))
}

const FILE_KEYS: &[&str] = &[
    "path",
    "splits",
    "format",
    "field",
    "header",
    "columns",
    "delimiter",
    "schema",
    "on_error",
    "dead_letter_path",
];
const STDIN_KEYS: &[&str] = &[
    "format",
    "field",
    "header",
    "columns",
    "delimiter",
    "schema",
    "on_error",
    "dead_letter_path",
];

fn parse_generator(r: &mut Reader, ctx: &Ctx) -> Result<NodeKind, Problem> {
    let count = r
        .int("count", 0, i64::MAX, "1000000")?
        .map(|(c, _)| c as u64);
    let rate = match r.float("rate", "10000")? {
        Some((x, at)) if !(x > 0.0 && x.is_finite()) => {
            return Err(Problem::new(
                &at,
                format!("`rate` must be a positive number of records per second, found {x}"),
            )
            .fix("write e.g. `rate = 10000`, or remove `rate` to generate as fast as possible"))
        }
        other => other.map(|(x, _)| x),
    };
    let seed = r
        .int("seed", 0, i64::MAX, "42")?
        .map_or(0, |(s, _)| s as u64);
    let splits = r.int("splits", 1, 1 << 20, "128")?.map(|(n, _)| n as u32);
    let fields = match r.string_table("fields", "{ key = \"i % 100\", value = \"1\" }")? {
        Some(entries) => {
            if entries.is_empty() {
                return Err(Problem::new(&r.key_at("fields"), "`fields` is empty")
                    .fix("add at least one field, e.g. `fields = { i = \"i\" }`"));
            }
            entries
                .into_iter()
                .map(|(k, text, at)| {
                    Ok((
                        Arc::from(k.name.as_str()),
                        ctx.expr(&text, &at, &format!("fields.{}", k.name), true)?,
                    ))
                })
                .collect::<Result<Vec<_>, Problem>>()?
        }
        None => vec![(Arc::from("i"), Expr::parse("i", true).expect("valid"))],
    };
    Ok(NodeKind::Generator(Arc::new(GeneratorSpec {
        count,
        rate,
        seed,
        fields,
        splits,
    })))
}

fn parse_file_source(r: &mut Reader, ctx: &Ctx) -> Result<NodeKind, Problem> {
    let (p, at) = r.required_string("path", "\"data/input.txt\"")?;
    let files = if p.contains(['*', '?', '[']) {
        glob_files(&p, &at, ctx)?
    } else {
        let path = ctx.resolve(&p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(Problem::new(&at, format!("`{p}` is not a file"))
                    .fix("point `path` at a file, or at several with a glob such as `data/*.csv`"))
            }
            Err(e) => return Err(Problem::new(
                &at,
                format!(
                    "cannot read input file `{p}` (resolved to {}): {e}",
                    path.display()
                ),
            )
            .fix(
                "check the path; relative paths are resolved against the topology file's directory",
            )),
        }
        vec![InputFile { path, display: p }]
    };
    let splits = r.int("splits", 1, 1 << 20, "128")?.map(|(n, _)| n as u32);
    let (decode, on_error) = parse_decode(r, ctx, Some(&files[0].path))?;
    Ok(NodeKind::File(Arc::new(FileSourceSpec {
        files,
        decode,
        on_error,
        splits,
    })))
}

/// The files a `path` glob matches, sorted; each named as the pattern is written
/// (relative to the topology's directory when the pattern is).
fn glob_files(pattern: &str, at: &Origin, ctx: &Ctx) -> Result<Vec<InputFile>, Problem> {
    let resolved = ctx.resolve(pattern);
    let matches = glob::glob(&resolved.to_string_lossy()).map_err(|e| {
        Problem::new(at, format!("`{pattern}` is not a valid glob: {e}"))
            .fix("use `*`, `?` and `[abc]` in the file name part, e.g. `data/*.csv`")
    })?;
    let mut files = Vec::new();
    for entry in matches {
        let path = entry.map_err(|e| {
            Problem::new(at, format!("cannot read a match of `{pattern}`: {e}"))
                .fix("check the permissions of the directories the glob reads")
        })?;
        if !path.is_file() {
            continue;
        }
        let display = if Path::new(pattern).is_absolute() {
            path.display().to_string()
        } else {
            path.strip_prefix(&ctx.base)
                .unwrap_or(&path)
                .display()
                .to_string()
        };
        files.push(InputFile { path, display });
    }
    if files.is_empty() {
        return Err(Problem::new(at, format!("`{pattern}` matches no file")).fix(
            "check the pattern; relative paths are resolved against the topology file's directory",
        ));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn parse_decode(
    r: &mut Reader,
    ctx: &Ctx,
    path: Option<&Path>,
) -> Result<(Arc<DecodeSpec>, OnError), Problem> {
    let format = match r.string("format", "\"csv\"")? {
        Some((f, at)) => Format::parse(&f).ok_or_else(|| {
            Problem::new(&at, format!("unknown format `{f}`"))
                .fix(format!("use one of: {}", Format::NAMES.join(", ")))
        })?,
        None => path.map_or(Format::Text, Format::from_path),
    };
    let mut spec = DecodeSpec {
        format,
        ..DecodeSpec::text()
    };
    let only = |r: &Reader, key: &str, wanted: Format, name: &str| -> Result<(), Problem> {
        if r.has(key) && format != wanted {
            return Err(Problem::new(
                &r.key_at(key),
                format!("`{key}` applies to {name} input only"),
            )
            .fix(format!("remove `{key}`, or set `format = \"{name}\"`")));
        }
        Ok(())
    };
    only(r, "field", Format::Text, "text")?;
    only(r, "header", Format::Csv, "csv")?;
    only(r, "columns", Format::Csv, "csv")?;
    only(r, "delimiter", Format::Csv, "csv")?;
    if let Some((f, _)) = r.string("field", "\"line\"")? {
        spec.field = Arc::from(f);
    }
    if let Some(h) = r.bool("header")? {
        spec.header = h;
    } else {
        spec.header = format == Format::Csv;
    }
    if let Some(cols) = r.strings("columns", "[\"name\", \"age\"]")? {
        spec.columns = Some(cols.into_iter().map(|(c, _)| Arc::from(c)).collect());
    }
    if let Some((d, at)) = r.string("delimiter", "\";\"")? {
        let mut chars = d.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c != '"' && c != '\n' => spec.delimiter = c,
            _ => {
                return Err(Problem::new(
                    &at,
                    format!("`delimiter` must be one character, found \"{d}\""),
                )
                .fix("write e.g. `delimiter = \";\"` or `delimiter = \"\\t\"`"))
            }
        }
    }
    if let Some(entries) = r.string_table("schema", "{ name = \"string\", age = \"int\" }")? {
        if format == Format::Text {
            return Err(Problem::new(
                &r.key_at("schema"),
                "`schema` applies to csv and json input",
            )
            .fix("remove `schema`, or set `format = \"csv\"` or `\"json\"`"));
        }
        let mut schema = Vec::new();
        for (k, t, at) in entries {
            let ty = FieldType::parse(&t).ok_or_else(|| {
                Problem::new(
                    &at,
                    format!("unknown type `{t}` for schema field `{}`", k.name),
                )
                .fix(format!("use one of: {}", FieldType::NAMES.join(", ")))
            })?;
            schema.push((Arc::from(k.name.as_str()), ty));
        }
        spec.schema = Some(schema);
    }
    let on_error = match r.string("on_error", "\"skip\"")? {
        None => OnError::Fail,
        Some((p, at)) => match p.as_str() {
            "fail" => OnError::Fail,
            "skip" => OnError::Skip,
            "dead_letter" => {
                let (dl, _) = r.string("dead_letter_path", "\"dead/letters.jsonl\"")?.ok_or_else(|| {
                    Problem::new(&at, "on_error = \"dead_letter\" needs a `dead_letter_path`")
                        .fix("add `dead_letter_path = \"dead_letters.jsonl\"` (bad records are written there with the reason)")
                })?;
                OnError::DeadLetter(ctx.resolve(&dl))
            }
            _ => {
                let fix = match closest(&p, OnError::NAMES) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("use one of: {}", OnError::NAMES.join(", ")),
                };
                return Err(Problem::new(&at, format!("unknown on_error policy `{p}`")).fix(fix));
            }
        },
    };
    if r.has("dead_letter_path") && !matches!(on_error, OnError::DeadLetter(_)) {
        return Err(Problem::new(
            &r.key_at("dead_letter_path"),
            "`dead_letter_path` is set but on_error is not \"dead_letter\"",
        )
        .fix("add `on_error = \"dead_letter\"`, or remove `dead_letter_path`"));
    }
    Ok((Arc::new(spec), on_error))
}

fn parse_map(r: &mut Reader, ctx: &Ctx, reads: &mut Vec<FieldRef>) -> Result<NodeKind, Problem> {
    let mut names = |v: Option<Vec<(String, Origin)>>, setting: &str| -> Vec<Arc<str>> {
        v.unwrap_or_default()
            .into_iter()
            .map(|(s, at)| {
                reads.push(FieldRef::new(&s, &at, setting));
                Arc::from(s)
            })
            .collect()
    };
    let select_list = r.strings("select", "[\"word\", \"count\"]")?;
    let select = select_list.map(|v| names(Some(v), "select"));
    let drop = names(r.strings("drop", "[\"tmp\"]")?, "drop");
    if select.is_some() && !drop.is_empty() {
        return Err(
            Problem::new(&r.key_at("drop"), "`select` and `drop` together")
                .fix("use `select` to keep the listed fields, or `drop` to remove them, not both"),
        );
    }
    let set = r
        .string_table("set", "{ total = \"price * quantity\" }")?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, text, at)| {
            let setting = format!("set.{}", k.name);
            let e = ctx.expr(&text, &at, &setting, false)?;
            ctx.expr_reads(&e, &at, &setting, reads);
            Ok((Arc::from(k.name.as_str()), e))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let rename = r
        .string_table("rename", "{ old_name = \"new_name\" }")?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, to, _)| {
            reads.push(FieldRef {
                of_result: true,
                ..FieldRef::new(&k.name, &k.at, "rename")
            });
            (Arc::from(k.name.as_str()), Arc::from(to))
        })
        .collect::<Vec<_>>();
    if select.is_none() && drop.is_empty() && set.is_empty() && rename.is_empty() {
        return Err(Problem::new(r.at, format!("{} changes nothing", r.what))
            .fix("add `select`, `drop`, `set` or `rename` (or remove the node)"));
    }
    Ok(NodeKind::Map(Arc::new(MapSpec {
        select,
        drop,
        set,
        rename,
    })))
}

fn parse_flat_map(r: &mut Reader, reads: &mut Vec<FieldRef>) -> Result<NodeKind, Problem> {
    let (field, field_at) = r.required_string("field", "\"line\"")?;
    reads.push(FieldRef::new(&field, &field_at, "field"));
    let output = r
        .string("output", "\"word\"")?
        .map_or_else(|| "word".to_string(), |(s, _)| s);
    let separator = r.string("separator", "\",\"")?;
    let mode = match r.string("mode", "\"words\"")? {
        None if separator.is_some() => "separator".to_string(),
        None => "whitespace".to_string(),
        Some((m, _)) => m,
    };
    let mode_at = r.key_at("mode");
    let mode = match (mode.as_str(), separator) {
        ("whitespace", None) => SplitMode::Whitespace,
        ("words", None) => SplitMode::Words,
        ("separator", Some((s, at))) => {
            if s.is_empty() {
                return Err(
                    Problem::new(&at, "`separator` is empty").fix("write e.g. `separator = \",\"`")
                );
            }
            SplitMode::Separator(s)
        }
        ("separator", None) => {
            return Err(
                Problem::new(&mode_at, "mode = \"separator\" needs a `separator`")
                    .fix("add e.g. `separator = \",\"`"),
            )
        }
        ("whitespace" | "words", Some((_, at))) => {
            return Err(Problem::new(
                &at,
                format!("`separator` does not apply to mode = \"{mode}\""),
            )
            .fix("remove `separator`, or set `mode = \"separator\"`"))
        }
        (other, _) => {
            return Err(
                Problem::new(&mode_at, format!("unknown split mode `{other}`"))
                    .fix("use one of: whitespace, words, separator"),
            )
        }
    };
    let lowercase = r.bool("lowercase")?.unwrap_or(false);
    let keep = r.bool("keep")?.unwrap_or(false);
    Ok(NodeKind::FlatMap(Arc::new(FlatMapSpec {
        field: Arc::from(field),
        output: Arc::from(output),
        mode,
        lowercase,
        keep,
    })))
}

const FILE_SINK_KEYS: &[&str] = &["path", "format", "semantics"];
const EXACTLY_ONCE_FILE_KEYS: &[&str] = &[
    "path",
    "format",
    "semantics",
    "roll_bytes",
    "roll_interval_ms",
];

/// `type = "file"`: one file per subtask (at-least-once), or with
/// `semantics = "exactly_once"` a directory of part files.
fn parse_file_sink(
    r: &mut Reader,
    ctx: &Ctx,
) -> Result<(NodeKind, &'static [&'static str]), Problem> {
    let semantics = r.string("semantics", "\"exactly_once\"")?;
    let exactly_once = match &semantics {
        None => false,
        Some((s, _)) if s == "at_least_once" => false,
        Some((s, _)) if s == "exactly_once" => true,
        Some((s, at)) => {
            let fix = match closest(s, &["at_least_once", "exactly_once"]) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "use `at_least_once` (one file per subtask, the default) or `exactly_once` (part files committed at checkpoints)".into(),
            };
            return Err(Problem::new(at, format!("unknown semantics `{s}`")).fix(fix));
        }
    };
    if !exactly_once {
        for key in ["roll_bytes", "roll_interval_ms"] {
            if r.has(key) {
                return Err(Problem::new(
                    &r.key_at(key),
                    format!("`{key}` applies only to exactly-once file sinks"),
                )
                .fix("add `semantics = \"exactly_once\"` (part files in the directory `path`), or remove it"));
            }
        }
        let (p, _) = r.required_string("path", "\"out/result.jsonl\"")?;
        let path = ctx.resolve(&p);
        let format = sink_format(r, Some(&path))?;
        return Ok((NodeKind::FileSink(path, format), FILE_SINK_KEYS));
    }
    let (p, _) = r.required_string("path", "\"out/counts\"")?;
    let dir = ctx.resolve(&p);
    let format = sink_format(r, None)?;
    let roll_bytes = r
        .int("roll_bytes", 1, i64::MAX, "134217728")?
        .map_or(ExactlyOnceFilesSpec::DEFAULT_ROLL_BYTES, |(b, _)| b as u64);
    let roll_interval = r
        .int("roll_interval_ms", 1, i64::MAX, "60000")?
        .map_or(ExactlyOnceFilesSpec::DEFAULT_ROLL_INTERVAL, |(ms, _)| {
            Duration::from_millis(ms as u64)
        });
    let spec = ExactlyOnceFilesSpec {
        dir,
        format,
        roll_bytes,
        roll_interval,
    };
    let at = semantics.map(|(_, at)| at).expect("exactly_once was given");
    Ok((
        NodeKind::ExactlyOnceFiles(Arc::new(spec), at),
        EXACTLY_ONCE_FILE_KEYS,
    ))
}

/// An exactly-once sink commits when a checkpoint completes: it needs checkpoints,
/// and aligned ones (at-least-once barriers let records of the next checkpoint into
/// this one, which a replay would then write again).
fn check_exactly_once_sinks(job: &JobConfig, nodes: &[Node]) -> Result<(), Problem> {
    for n in nodes {
        let NodeKind::ExactlyOnceFiles(_, at) = &n.kind else {
            continue;
        };
        match &job.checkpoint {
            None => {
                return Err(Problem::new(
                    at,
                    format!(
                        "sink `{}` is exactly-once but the job does not checkpoint: its part files are committed when a checkpoint completes",
                        n.id
                    ),
                )
                .fix("add a [checkpoint] table (e.g. `[checkpoint]` with `dir = \"checkpoints\"`), or use `semantics = \"at_least_once\"`"))
            }
            Some(c) if c.mode == CheckpointMode::AtLeastOnce => {
                return Err(Problem::new(
                    at,
                    format!(
                        "sink `{}` is exactly-once but [checkpoint] mode is `at_least_once`, which would commit records twice after a failure",
                        n.id
                    ),
                )
                .fix("set `mode = \"aligned\"` (or `\"unaligned\"`) in [checkpoint], or use `semantics = \"at_least_once\"`"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn sink_format(r: &mut Reader, path: Option<&Path>) -> Result<SinkFormat, Problem> {
    match r.string("format", "\"json\"")? {
        Some((f, at)) => SinkFormat::parse(&f).ok_or_else(|| {
            Problem::new(&at, format!("unknown sink format `{f}`"))
                .fix(format!("use one of: {}", SinkFormat::NAMES.join(", ")))
        }),
        None => Ok(
            match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
                Some("csv") => SinkFormat::Csv,
                _ => SinkFormat::Json,
            },
        ),
    }
}

// ---------------------------------------------------------------------------------
// Graph validation

/// The graph's structure first, then windows (which complete their timestamp field
/// from their sources), then the fields every node reads.
fn validate(job: &JobConfig, nodes: &mut [Node], text: &str) -> Result<(), Problem> {
    validate_graph(job, nodes, text)?;
    let defaults = check_windows(nodes)?;
    for (i, field) in defaults {
        let NodeKind::Window(spec) = &nodes[i].kind else {
            continue;
        };
        let mut spec = (**spec).clone();
        spec.timestamp = Some(Arc::from(field.as_str()));
        let at = nodes[i].id_at.clone();
        nodes[i]
            .reads
            .push(FieldRef::new(&field, &at, "timestamp (the source's)"));
        nodes[i].kind = NodeKind::Window(Arc::new(spec));
    }
    let by_id: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    check_fields(nodes, &by_id)
}

fn validate_graph(job: &JobConfig, nodes: &[Node], text: &str) -> Result<(), Problem> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(&first) = by_id.get(n.id.as_str()) {
            let first_at = match &nodes[first].id_at {
                Origin::File(r) => format!(
                    " (first used on line {})",
                    super::error::line_col_of(text, r.start).0
                ),
                _ => String::new(),
            };
            return Err(
                Problem::new(&n.id_at, format!("duplicate id `{}`{first_at}", n.id)).fix(format!(
                    "every node needs its own id: rename this {} (e.g. `{}_2`)",
                    n.role.table(),
                    n.id
                )),
            );
        }
        by_id.insert(&n.id, i);
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    // Inputs exist and are not sinks.
    for n in nodes {
        for (input, at) in &n.inputs {
            let Some(&j) = by_id.get(input.as_str()) else {
                let fix = match closest(input, &ids) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("name one of the nodes: {}", ids.join(", ")),
                };
                return Err(Problem::new(
                    at,
                    format!(
                        "{} `{}` reads from `{input}`, which is not a node",
                        n.role.table(),
                        n.id
                    ),
                )
                .fix(fix));
            };
            if nodes[j].role == Role::Sink {
                return Err(Problem::new(
                    at,
                    format!(
                        "`{input}` is a sink: it has no output for `{}` to read",
                        n.id
                    ),
                )
                .fix("read from the node that feeds the sink instead"));
            }
        }
    }
    // Cycles: depth-first search over inputs.
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on stack, 2 done
    fn visit(
        i: usize,
        nodes: &[Node],
        by_id: &HashMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Result<(), Problem> {
        state[i] = 1;
        stack.push(i);
        for (input, at) in &nodes[i].inputs {
            let j = by_id[input.as_str()];
            if state[j] == 1 {
                let start = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[start..]
                    .iter()
                    .map(|&s| nodes[s].id.as_str())
                    .collect();
                cycle.push(&nodes[j].id);
                cycle.reverse();
                return Err(Problem::new(
                    at,
                    format!("the graph has a cycle: {}", cycle.join(" -> ")),
                )
                .fix(format!(
                    "topologies are acyclic: make `{}` read from a node that does not depend on it",
                    nodes[i].id
                )));
            }
            if state[j] == 0 {
                visit(j, nodes, by_id, state, stack)?;
            }
        }
        stack.pop();
        state[i] = 2;
        Ok(())
    }
    for i in 0..nodes.len() {
        if state[i] == 0 {
            visit(i, nodes, &by_id, &mut state, &mut Vec::new())?;
        }
    }
    // Keyed aggregations read a key_by; every output is read.
    for n in nodes {
        let keyed_kind = match &n.kind {
            NodeKind::Aggregate { kind, .. } => Some(kind.name()),
            NodeKind::Window(_) => Some("window"),
            _ => None,
        };
        if let Some(kind) = keyed_kind {
            let keyed = n.inputs.len() == 1
                && matches!(
                    nodes[by_id[n.inputs[0].0.as_str()]].kind,
                    NodeKind::KeyBy(_)
                );
            if !keyed {
                let (input, at) = &n.inputs[0];
                return Err(Problem::new(at, format!("{kind} `{}` needs a keyed input, but `{input}` is not a key_by", n.id)).fix(format!(
                    "add [[operator]] id = \"by_key\", type = \"key_by\", key = [\"FIELD\"], input = \"{input}\" and set `input = \"by_key\"` here"
                )));
            }
        }
        if let Some((p, at)) = &n.parallelism {
            if *p > job.max_parallelism {
                return Err(too_parallel(
                    &format!("{}.parallelism", n.id),
                    *p,
                    at,
                    job.max_parallelism,
                ));
            }
        }
    }
    for n in nodes {
        if n.role != Role::Sink
            && !nodes
                .iter()
                .any(|m| m.inputs.iter().any(|(i, _)| *i == n.id))
        {
            return Err(Problem::new(&n.id_at, format!("the output of {} `{}` goes nowhere", n.role.table(), n.id)).fix(format!(
                "add a sink that reads it, e.g. [[sink]] id = \"{}_out\", type = \"null\", input = \"{}\" (or remove the node)",
                n.id, n.id
            )));
        }
    }
    check_paths(nodes)?;
    check_exactly_once_sinks(job, nodes)?;
    let stdins: Vec<&Node> = nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Stdin(_)))
        .collect();
    if stdins.len() > 1 {
        return Err(
            Problem::new(&stdins[1].id_at, "a topology can read stdin only once").fix(format!(
                "read stdin with one source (`{}`) and fan it out to several operators",
                stdins[0].id
            )),
        );
    }
    Ok(())
}

/// The sources a node reads from, directly or through other nodes.
fn sources_upstream<'n>(
    i: usize,
    nodes: &'n [Node],
    by_id: &HashMap<&str, usize>,
    out: &mut Vec<&'n Node>,
) {
    let n = &nodes[i];
    if n.role == Role::Source {
        if !out.iter().any(|s| s.id == n.id) {
            out.push(n);
        }
        return;
    }
    for (input, _) in &n.inputs {
        sources_upstream(by_id[input.as_str()], nodes, by_id, out);
    }
}

/// Event-time windows need event time at every source upstream; a window without
/// `timestamp` reads their field (returned, per window, to fill in). A `late` sink
/// reads only its window.
fn check_windows(nodes: &[Node]) -> Result<Vec<(usize, String)>, Problem> {
    let by_id: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut defaults = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let NodeKind::Window(spec) = &n.kind else {
            continue;
        };
        if let Some((late, at)) = &spec.late {
            let ok = by_id
                .get(late.as_str())
                .map(|&j| &nodes[j])
                .filter(|s| s.role == Role::Sink);
            let Some(sink) = ok else {
                let sinks: Vec<&str> = nodes
                    .iter()
                    .filter(|s| s.role == Role::Sink)
                    .map(|s| s.id.as_str())
                    .collect();
                return Err(Problem::new(at, format!("`late` of window `{}` names `{late}`, which is not a sink", n.id))
                    .fix(match closest(late, &sinks) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("add [[sink]] id = \"{late}\", input = \"{}\" (it gets the records too late for every window)", n.id),
                    }));
            };
            if sink.inputs.len() != 1 || sink.inputs[0].0 != n.id {
                let at = sink.inputs.first().map_or(&sink.id_at, |(_, at)| at);
                return Err(Problem::new(at, format!("sink `{late}` takes the late records of window `{}`, so it must read that window alone", n.id))
                    .fix(format!("set `input = \"{}\"` on sink `{late}`", n.id)));
            }
        }
        if spec.processing_time {
            continue;
        }
        let mut sources = Vec::new();
        sources_upstream(i, nodes, &by_id, &mut sources);
        if let Some(untimed) = sources.iter().find(|s| s.event_time.is_none()) {
            return Err(Problem::new(&n.id_at, format!("window `{}` works in event time, but source `{}` gives its records none", n.id, untimed.id))
                .fix(format!("add `timestamp = \"FIELD\"` (and e.g. `out_of_orderness = \"5s\"`) to source `{}`, or set `time = \"processing\"` on the window", untimed.id)));
        }
        if spec.timestamp.is_none() {
            let fields: Vec<&str> = sources
                .iter()
                .filter_map(|s| s.event_time.as_ref())
                .map(|e| &*e.field)
                .collect();
            if fields.iter().any(|f| *f != fields[0]) {
                return Err(Problem::new(
                    &n.id_at,
                    format!(
                        "the sources of window `{}` keep event time in different fields ({})",
                        n.id,
                        fields.join(", ")
                    ),
                )
                .fix("name the field this window reads: `timestamp = \"FIELD\"`"));
            }
            defaults.push((i, fields[0].to_string()));
        }
    }
    Ok(defaults)
}

/// The fields a node's records carry, when the topology tells.
#[derive(Debug, Clone, PartialEq)]
enum Fields {
    Known(Vec<String>),
    /// JSON input, stdin CSV with a header, an unreadable header: checked at run time.
    Unknown,
}

/// The column names of a CSV file's header line, if it can be read now.
fn csv_header(path: &Path, delimiter: char) -> Option<Vec<String>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(f).read_line(&mut line).ok()?;
    let line = line.trim_end_matches(['\n', '\r']);
    crate::record::parse_csv_line(line, delimiter)
        .ok()
        .map(|cells| cells.into_iter().map(|c| c.trim().to_string()).collect())
}

fn decoded_fields(decode: &DecodeSpec, path: Option<&Path>) -> Fields {
    match decode.format {
        Format::Text => Fields::Known(vec![decode.field.to_string()]),
        Format::Json => Fields::Unknown,
        Format::Csv => match (&decode.columns, decode.header, path) {
            (Some(cols), _, _) => Fields::Known(cols.iter().map(|c| c.to_string()).collect()),
            (None, true, Some(p)) => {
                csv_header(p, decode.delimiter).map_or(Fields::Unknown, Fields::Known)
            }
            _ => Fields::Unknown,
        },
    }
}

/// Where the topology says which fields flow, every field a node names must be there:
/// a misspelled field is reported at validation, not at the first record.
fn check_fields(nodes: &[Node], by_id: &HashMap<&str, usize>) -> Result<(), Problem> {
    let mut out: Vec<Option<Fields>> = vec![None; nodes.len()];
    fn fields_of(
        i: usize,
        nodes: &[Node],
        by_id: &HashMap<&str, usize>,
        out: &mut Vec<Option<Fields>>,
    ) -> Result<Fields, Problem> {
        if let Some(f) = &out[i] {
            return Ok(f.clone());
        }
        let n = &nodes[i];
        let mut inputs = Vec::new();
        for (input, _) in &n.inputs {
            let j = by_id[input.as_str()];
            inputs.push((j, fields_of(j, nodes, by_id, out)?));
        }
        // Check every read against every input whose fields are known.
        for r in n.reads.iter().filter(|r| !r.of_result) {
            for (j, f) in &inputs {
                if let Fields::Known(names) = f {
                    if !names.contains(&r.name) {
                        return Err(missing_field(n, r, &nodes[*j].id, names));
                    }
                }
            }
        }
        // The fields every input is sure to carry.
        let input = inputs
            .iter()
            .try_fold(None::<Vec<String>>, |acc, (_, f)| match f {
                Fields::Unknown => Err(()),
                Fields::Known(names) => Ok(Some(match acc {
                    None => names.clone(),
                    Some(a) => a.into_iter().filter(|x| names.contains(x)).collect(),
                })),
            });
        let input = match input {
            Ok(Some(names)) => Fields::Known(names),
            _ => Fields::Unknown,
        };
        let result = match (&n.kind, input) {
            (NodeKind::Generator(g), _) => {
                Fields::Known(g.fields.iter().map(|(f, _)| f.to_string()).collect())
            }
            (NodeKind::File(spec), _) => decoded_fields(&spec.decode, Some(&spec.files[0].path)),
            (NodeKind::Stdin(spec), _) => decoded_fields(&spec.decode, None),
            (NodeKind::Aggregate { output, .. }, _) => {
                // The key fields come from the key_by it reads.
                let key = match &nodes[by_id[n.inputs[0].0.as_str()]].kind {
                    NodeKind::KeyBy(k) => k.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                let mut f = key;
                if !f.iter().any(|x| **x == **output) {
                    f.push(output.to_string());
                }
                Fields::Known(f)
            }
            (NodeKind::Window(spec), _) => {
                let mut f = match &nodes[by_id[n.inputs[0].0.as_str()]].kind {
                    NodeKind::KeyBy(k) => k.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                for name in [
                    crate::builtins::windows::WINDOW_START,
                    crate::builtins::windows::WINDOW_END,
                    &spec.output,
                ] {
                    if !f.iter().any(|x| x == name) {
                        f.push(name.to_string());
                    }
                }
                Fields::Known(f)
            }
            (_, Fields::Unknown) => match &n.kind {
                NodeKind::FlatMap(spec) if !spec.keep => {
                    Fields::Known(vec![spec.output.to_string()])
                }
                _ => Fields::Unknown,
            },
            (NodeKind::Map(spec), Fields::Known(mut f)) => {
                if let Some(select) = &spec.select {
                    f = select.iter().map(|s| s.to_string()).collect();
                } else {
                    f.retain(|x| !spec.drop.iter().any(|d| **d == **x));
                }
                for (name, _) in &spec.set {
                    if !f.iter().any(|x| **x == **name) {
                        f.push(name.to_string());
                    }
                }
                for r in n.reads.iter().filter(|r| r.of_result) {
                    if !f.contains(&r.name) {
                        return Err(Problem::new(&r.at, format!("map `{}` renames field `{}`, which its result does not have (it has {})", n.id, r.name, list(&f)))
                            .fix(match closest(&r.name, &f.iter().map(String::as_str).collect::<Vec<_>>()) {
                                Some(c) => format!("did you mean `{c}`?"),
                                None => "rename a field of the result (after select, drop and set)".to_string(),
                            }));
                    }
                }
                for (from, to) in &spec.rename {
                    f.retain(|x| **x != **to || **from == **to);
                    if let Some(x) = f.iter_mut().find(|x| ***x == **from) {
                        *x = to.to_string();
                    }
                }
                Fields::Known(f)
            }
            (NodeKind::FlatMap(spec), Fields::Known(mut f)) => {
                if spec.keep {
                    if !f.iter().any(|x| **x == *spec.output) {
                        f.push(spec.output.to_string());
                    }
                    Fields::Known(f)
                } else {
                    Fields::Known(vec![spec.output.to_string()])
                }
            }
            (_, known) => known, // filter, key_by; sinks pass nothing on
        };
        out[i] = Some(result.clone());
        Ok(result)
    }
    for i in 0..nodes.len() {
        fields_of(i, nodes, by_id, &mut out)?;
    }
    Ok(())
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "no fields".to_string();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn missing_field(n: &Node, r: &FieldRef, upstream: &str, names: &[String]) -> Problem {
    let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    let fix = match closest(&r.name, &candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("name one of the fields of `{upstream}`: {}", list(names)),
    };
    Problem::new(
        &r.at,
        format!(
            "{} `{}` reads field `{}` (in `{}`), but the records from `{upstream}` have {}",
            n.role.table(),
            n.id,
            r.name,
            r.setting,
            list(names)
        ),
    )
    .fix(fix)
}

/// An absolute, normalized form of a path for comparisons (the file need not exist).
fn normalized(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (
        abs.parent().and_then(|d| d.canonicalize().ok()),
        abs.file_name(),
    ) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => abs,
    }
}

/// No two outputs (file sinks, dead-letter files) share a path, and no output
/// overwrites an input file.
fn check_paths(nodes: &[Node]) -> Result<(), Problem> {
    let mut inputs: Vec<(PathBuf, &Node)> = Vec::new();
    let mut outputs: Vec<(PathBuf, &Node, &str)> = Vec::new();
    for n in nodes {
        match &n.kind {
            NodeKind::File(spec) => {
                inputs.extend(spec.files.iter().map(|f| (normalized(&f.path), n)));
                if let OnError::DeadLetter(p) = &spec.on_error {
                    outputs.push((normalized(p), n, "its dead-letter file"));
                }
            }
            NodeKind::Stdin(spec) => {
                if let OnError::DeadLetter(p) = &spec.on_error {
                    outputs.push((normalized(p), n, "its dead-letter file"));
                }
            }
            NodeKind::FileSink(p, _) => outputs.push((normalized(p), n, "its output")),
            NodeKind::ExactlyOnceFiles(spec, _) => {
                outputs.push((normalized(&spec.dir), n, "its output directory"))
            }
            _ => {}
        }
    }
    for (i, (path, node, what)) in outputs.iter().enumerate() {
        if let Some((_, src)) = inputs.iter().find(|(p, _)| p == path) {
            return Err(Problem::new(
                &node.id_at,
                format!(
                    "{} `{}` would overwrite {}, which source `{}` reads",
                    node.role.table(),
                    node.id,
                    path.display(),
                    src.id
                ),
            )
            .fix(format!("give {what} another path")));
        }
        if let Some((_, other, _)) = outputs[..i].iter().find(|(p, _, _)| p == path) {
            return Err(Problem::new(
                &node.id_at,
                format!(
                    "{} `{}` writes {}, which `{}` writes too",
                    node.role.table(),
                    node.id,
                    path.display(),
                    other.id
                ),
            )
            .fix(format!("give {what} another path")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        parse_str(text, Path::new("."), "t.toml")
    }

    fn err(text: &str) -> TopologyError {
        parse(text).unwrap_err()
    }

    const OK: &str = r#"
[job]
name = "wc"
parallelism = 2

[[source]]
id = "gen"
type = "generator"
count = 10
fields = { word = "concat('w', i % 3)" }

[[operator]]
id = "by_word"
type = "key_by"
key = "word"
input = "gen"

[[operator]]
id = "count"
type = "count"
input = "by_word"

[[sink]]
id = "out"
type = "null"
input = "count"
"#;

    #[test]
    fn aligned_with_timeout_checkpoints_need_their_timeout_and_only_they_take_one() {
        let with = |extra: &str| format!("{OK}\n[checkpoint]\ndir = \"chk\"\n{extra}\n");
        let t = parse(&with(
            "mode = \"aligned_with_timeout\"\nalignment_timeout_ms = 250",
        ))
        .unwrap();
        assert_eq!(
            t.job.checkpoint.unwrap().mode,
            CheckpointMode::AlignedWithTimeout { timeout_ms: 250 }
        );
        let e = err(&with("mode = \"aligned_with_timeout\""));
        assert!(e.message.contains("needs `alignment_timeout_ms`"), "{e}");
        let e = err(&with("alignment_timeout_ms = 250"));
        assert!(
            e.message
                .contains("applies only to `mode = \"aligned_with_timeout\"`"),
            "{e}"
        );
        let e = err(&with("mode = \"aligned_with_timeuot\""));
        assert!(
            e.to_string()
                .contains("did you mean `aligned_with_timeout`?"),
            "{e}"
        );
    }

    #[test]
    fn exactly_once_file_sinks_parse_with_defaults_and_need_aligned_checkpoints() {
        let sink = "type = \"file\"\npath = \"parts\"\nsemantics = \"exactly_once\"";
        let checkpointed = format!(
            "{}\n[checkpoint]\ndir = \"chk\"\n",
            OK.replace("type = \"null\"", sink)
        );
        let t = parse(&checkpointed).unwrap();
        let NodeKind::ExactlyOnceFiles(spec, _) = &t.nodes[3].kind else {
            panic!("{:?}", t.nodes[3].kind)
        };
        assert_eq!(spec.format, SinkFormat::Json);
        assert_eq!(spec.roll_bytes, ExactlyOnceFilesSpec::DEFAULT_ROLL_BYTES);
        assert_eq!(
            spec.roll_interval,
            ExactlyOnceFilesSpec::DEFAULT_ROLL_INTERVAL
        );
        let tuned = checkpointed.replace(
            "semantics",
            "format = \"csv\"\nroll_bytes = 10\nroll_interval_ms = 5\nsemantics",
        );
        let t = parse(&tuned).unwrap();
        let NodeKind::ExactlyOnceFiles(spec, _) = &t.nodes[3].kind else {
            panic!("{:?}", t.nodes[3].kind)
        };
        assert_eq!(
            (spec.format, spec.roll_bytes, spec.roll_interval),
            (SinkFormat::Csv, 10, Duration::from_millis(5))
        );
        let e = err(&OK.replace("type = \"null\"", sink));
        assert!(e.message.contains("the job does not checkpoint"), "{e}");
        let e =
            err(&checkpointed.replace("dir = \"chk\"", "dir = \"chk\"\nmode = \"at_least_once\""));
        assert!(e.message.contains("mode is `at_least_once`"), "{e}");
    }

    #[test]
    fn parses_a_topology() {
        let t = parse(OK).unwrap();
        assert_eq!(t.job.name, "wc");
        assert_eq!(t.job.parallelism, 2);
        assert_eq!(
            t.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["gen", "by_word", "count", "out"]
        );
        assert!(matches!(&t.nodes[1].kind, NodeKind::KeyBy(k) if &*k[0] == "word"));
    }

    #[test]
    fn unknown_key_points_at_it_and_suggests() {
        let e = err(&OK.replace("parallelism = 2", "paralelism = 2"));
        assert_eq!(e.line_col, Some((4, 1)));
        assert!(e.to_string().contains("unknown key `paralelism` in [job]"));
        assert!(e.to_string().contains("fix: did you mean `parallelism`?"));
        let e = err(&OK.replace("key = \"word\"", "keys = \"word\""));
        assert_eq!(e.message, "unknown key `keys` in operator `by_word`");
        assert!(e.to_string().contains("fix: did you mean `key`?"), "{e}");
        let e = err(&OK.replace("key = \"word\"", ""));
        assert!(
            e.to_string().contains("operator `by_word` needs `key`"),
            "{e}"
        );
    }

    #[test]
    fn a_restart_table_chooses_the_strategy_with_defaults_for_what_it_omits() {
        let with = |table: &str| OK.replace("[[source]]", &format!("{table}\n\n[[source]]"));
        assert_eq!(parse(OK).unwrap().job.restart, None);
        let t = parse(&with("[restart]\nstrategy = \"fixed_delay\"\nattempts = 5")).unwrap();
        assert_eq!(
            t.job.restart,
            Some(RestartStrategy::FixedDelay {
                attempts: 5,
                delay_ms: 1_000
            })
        );
        let t = parse(&with("[restart]\nstrategy = \"none\"")).unwrap();
        assert_eq!(t.job.restart, Some(RestartStrategy::None));
        let t = parse(&with(
            "[restart]\nstrategy = \"exponential_backoff\"\ninitial_ms = 10\njitter = 0",
        ))
        .unwrap();
        assert!(matches!(
            t.job.restart,
            Some(RestartStrategy::ExponentialBackoff { initial_ms: 10, max_ms: 10_000, jitter, .. }) if jitter == 0.0
        ));
        let e = err(&with("[restart]\nstrategy = \"fixed_dely\""));
        assert!(
            e.to_string()
                .contains("unknown restart strategy `fixed_dely`"),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean `fixed_delay`?"), "{e}");
        let e = err(&with("[restart]\nstrategy = \"none\"\nattempts = 2"));
        assert!(
            e.to_string()
                .contains("unknown key `attempts` in [restart]"),
            "{e}"
        );
        let e = err(&with(
            "[restart]\nstrategy = \"exponential_backoff\"\njitter = 2.5",
        ));
        assert!(
            e.to_string()
                .contains("`jitter` in [restart] must be between 0 and 1"),
            "{e}"
        );
    }

    #[test]
    fn expression_errors_point_into_the_string() {
        let e = err(&OK.replace("concat('w', i % 3)", "concat('w', i %% 3)"));
        let (line, col) = e.line_col.unwrap();
        assert_eq!(line, 10);
        // fields = { word = "concat('w', i %% 3)" }: the second % is at column 35.
        assert_eq!(col, 35, "{e}");
        assert!(
            e.message
                .starts_with("invalid expression in `fields.word`: expected a value, found `%`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_and_ranges() {
        let e = err(&OK.replace("parallelism = 2", "parallelism = \"2\""));
        assert_eq!(
            e.message,
            "`parallelism` in [job] must be an integer, found a string"
        );
        let e = err(&OK.replace("parallelism = 2", "parallelism = 300"));
        assert_eq!(
            e.message,
            "job.parallelism = 300 is above job.max_parallelism = 128"
        );
        let e = err(&OK.replace("count = 10", "count = 10\nparallelism = 200"));
        assert_eq!(
            e.message,
            "gen.parallelism = 200 is above job.max_parallelism = 128"
        );
    }

    #[test]
    fn graph_errors() {
        let e = err(&OK.replace("input = \"by_word\"", "input = \"by_wrd\""));
        assert_eq!(
            e.message,
            "operator `count` reads from `by_wrd`, which is not a node"
        );
        assert!(e.to_string().contains("did you mean `by_word`?"));
        let e = err(&OK.replace("id = \"count\"", "id = \"by_word\""));
        assert_eq!(e.message, "duplicate id `by_word` (first used on line 13)");
        let e = err(&OK.replace("input = \"gen\"", "inputs = [\"gen\", \"count\"]"));
        assert_eq!(
            e.message,
            "the graph has a cycle: by_word -> count -> by_word"
        );
        let e = err(&OK.replace("input = \"count\"", "input = \"by_word\""));
        assert_eq!(e.message, "the output of operator `count` goes nowhere");
        let e = err(&OK.replace("input = \"by_word\"", "input = \"gen\""));
        assert!(
            e.message.starts_with("count `count` needs a keyed input"),
            "{e}"
        );
        let e = err(&OK.replace("type = \"null\"", "type = \"map\""));
        assert_eq!(e.message, "unknown sink type `map`");
        assert!(
            e.to_string()
                .contains("fix: `map` is an operator type: declare it under [[operator]]"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, OK).unwrap();
        let t = load(&path, &["job.parallelism=3".into(), "gen.count=5".into()]).unwrap();
        assert_eq!(t.job.parallelism, 3);
        assert!(matches!(&t.nodes[0].kind, NodeKind::Generator(g) if g.count == Some(5)));
        let e = load(&path, &["gne.count=5".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("error: --set gne.count=5: no node has the id `gne`"),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean `gen`?"));
        let e = load(&path, &["job.parallelism=0".into()]).unwrap_err();
        assert!(e.to_string().starts_with("error: --set job.parallelism=0: `parallelism` in [job] must be between 1 and 32768, found 0"), "{e}");
        let e = load(&path, &["noequals".into()]).unwrap_err();
        assert!(e.to_string().contains("expected KEY=VALUE"));
    }

    /// A topology with one source, one operator and a sink, from their bodies.
    fn one_op(source: &str, operator: &str) -> String {
        format!(
            "[[source]]\nid = \"src\"\n{source}\n\n[[operator]]\nid = \"op\"\ninput = \"src\"\n{operator}\n\n[[sink]]\nid = \"out\"\ntype = \"null\"\ninput = \"op\"\n"
        )
    }

    #[test]
    fn setting_errors_of_every_node_type() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.csv"), "a,b\n1,2\n").unwrap();
        let gen = "type = \"generator\"\ncount = 3\nfields = { a = \"i\", s = \"'x'\" }";
        let csv = "type = \"file\"\npath = \"in.csv\"";
        let cases: &[(&str, &str, &str, &str)] = &[
            (csv.trim_end(), "type = \"filter\"\nwhere = \"a > 1\"\nformat = \"csv\"", "unknown key `format` in operator `op`", "the keys of operator `op` are"),
            ("type = \"file\"\npath = \"in.csv\"\nformat = \"xml\"", "type = \"filter\"\nwhere = \"a > 1\"", "unknown format `xml`", "use one of: text, csv, json"),
            ("type = \"file\"\npath = \"in.csv\"\ndelimiter = \";;\"", "type = \"filter\"\nwhere = \"a > 1\"", "`delimiter` must be one character, found \";;\"", "write e.g."),
            ("type = \"file\"\npath = \"in.csv\"\nformat = \"text\"\nheader = true", "type = \"filter\"\nwhere = \"true\"", "`header` applies to csv input only", "remove `header`"),
            ("type = \"file\"\npath = \"in.csv\"\nschema = { a = \"integer64\" }", "type = \"filter\"\nwhere = \"a > 1\"", "unknown type `integer64` for schema field `a`", "use one of: string, int, float, bool"),
            ("type = \"file\"\npath = \"in.csv\"\non_error = \"skp\"", "type = \"filter\"\nwhere = \"a > 1\"", "unknown on_error policy `skp`", "did you mean `skip`?"),
            ("type = \"file\"\npath = \"in.csv\"\ndead_letter_path = \"d.jsonl\"", "type = \"filter\"\nwhere = \"a > 1\"", "`dead_letter_path` is set but on_error is not \"dead_letter\"", "add `on_error = \"dead_letter\"`"),
            ("type = \"file\"\npath = \".\"", "type = \"filter\"\nwhere = \"true\"", "`.` is not a file", "point `path` at a file"),
            ("type = \"generator\"\nrate = 0", "type = \"filter\"\nwhere = \"true\"", "`rate` must be a positive number of records per second, found 0", "write e.g. `rate = 10000`"),
            ("type = \"generator\"\nfields = {}", "type = \"filter\"\nwhere = \"true\"", "`fields` is empty", "add at least one field"),
            ("type = \"generator\"\nfields = { a = 1 }", "type = \"filter\"\nwhere = \"true\"", "`fields.a` in source `src` must be a string, found an integer", "write it like"),
            ("type = \"stdin\"\nparallelism = 2", "type = \"filter\"\nwhere = \"true\"", "a stdin source has parallelism 1", "remove `parallelism`"),
            ("type = \"generator\"\ninput = \"x\"", "type = \"filter\"\nwhere = \"true\"", "source `src` cannot have an `input`", "sources read no stream"),
            (gen, "type = \"map\"", "operator `op` changes nothing", "add `select`, `drop`, `set` or `rename`"),
            (gen, "type = \"map\"\nselect = [\"a\"]\ndrop = [\"s\"]", "`select` and `drop` together", "use `select` to keep"),
            (gen, "type = \"map\"\nselect = [\"bbb\"]", "operator `op` reads field `bbb` (in `select`), but the records from `src` have `a`, `s`", "name one of the fields of `src`: `a`, `s`"),
            (gen, "type = \"map\"\nset = { t = \"random_int(1, 2)\" }", "invalid expression in `set.t`: `random_int` is only available in generator fields", "fields are bare names"),
            (gen, "type = \"flat_map\"\nfield = \"s\"\nmode = \"separator\"", "mode = \"separator\" needs a `separator`", "add e.g. `separator = \",\"`"),
            (gen, "type = \"flat_map\"\nfield = \"s\"\nmode = \"words\"\nseparator = \",\"", "`separator` does not apply to mode = \"words\"", "remove `separator`"),
            (gen, "type = \"flat_map\"\nfield = \"s\"\nmode = \"chars\"", "unknown split mode `chars`", "use one of: whitespace, words, separator"),
            (gen, "type = \"key_by\"\nkey = []", "`key` is empty", "name at least one field"),
            (gen, "type = \"key_by\"\nkey = \"a\"\nparallelism = 2", "key_by has no parallelism of its own", "key_by only partitions the stream"),
            (gen, "type = \"filter\"\nwhere = \"a > 1\"\ninput = \"src\"\ninputs = [\"src\"]", "", ""),
        ];
        for (source, operator, message, fix) in cases {
            let text = one_op(source, operator);
            let result = parse_str(&text, dir.path(), "t.toml");
            if message.is_empty() {
                // A duplicate TOML key is a syntax error.
                let e = result.unwrap_err();
                assert!(e.message.starts_with("TOML syntax error"), "{e}");
                continue;
            }
            let e = result
                .err()
                .unwrap_or_else(|| panic!("no error for:\n{text}"));
            assert_eq!(e.message, *message, "for:\n{text}\n{e}");
            let fix_line = e.to_string().lines().last().unwrap().trim().to_string();
            assert!(fix_line.starts_with(&format!("fix: {fix}")), "{fix_line}");
            assert!(e.line_col.is_some(), "{e}");
        }
    }

    #[test]
    fn field_inference_follows_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.csv"), "name,qty\nx,1\n").unwrap();
        std::fs::write(dir.path().join("in.json"), "{\"z\":1}\n").unwrap();
        let ok = |source: &str, operator: &str| {
            parse_str(&one_op(source, operator), dir.path(), "t.toml")
        };
        // CSV header names the fields.
        assert!(ok(
            "type = \"file\"\npath = \"in.csv\"",
            "type = \"filter\"\nwhere = \"qty > 0\""
        )
        .is_ok());
        let e = ok(
            "type = \"file\"\npath = \"in.csv\"",
            "type = \"filter\"\nwhere = \"qtty > 0\"",
        )
        .unwrap_err();
        assert_eq!(e.message, "operator `op` reads field `qtty` (in `where`), but the records from `src` have `name`, `qty`");
        // `columns` override the header.
        let e = ok(
            "type = \"file\"\npath = \"in.csv\"\ncolumns = [\"n\", \"q\"]",
            "type = \"filter\"\nwhere = \"qty > 0\"",
        )
        .unwrap_err();
        assert!(e.message.ends_with("have `n`, `q`"), "{e}");
        // JSON fields are unknown until run time: no check.
        assert!(ok(
            "type = \"file\"\npath = \"in.json\"",
            "type = \"filter\"\nwhere = \"anything > 0\""
        )
        .is_ok());
        // Text has one field, named by `field`.
        let e = ok(
            "type = \"file\"\npath = \"in.json\"\nformat = \"text\"\nfield = \"l\"",
            "type = \"flat_map\"\nfield = \"line\"",
        )
        .unwrap_err();
        assert!(e.message.ends_with("have `l`"), "{e}");
        // flat_map without keep emits only its output, even after unknown input.
        let text = "[[source]]\nid = \"src\"\ntype = \"file\"\npath = \"in.json\"\n\n[[operator]]\nid = \"split\"\ntype = \"flat_map\"\ninput = \"src\"\nfield = \"z\"\noutput = \"tok\"\n\n[[operator]]\nid = \"f\"\ntype = \"filter\"\ninput = \"split\"\nwhere = \"z == 1\"\n\n[[sink]]\nid = \"out\"\ntype = \"null\"\ninput = \"f\"\n";
        let e = parse_str(text, dir.path(), "t.toml").unwrap_err();
        assert_eq!(
            e.message,
            "operator `f` reads field `z` (in `where`), but the records from `split` have `tok`"
        );
        // Aggregates emit the key fields and their output.
        let text = OK.to_string()
            + "\n[[operator]]\nid = \"f\"\ntype = \"filter\"\ninput = \"count\"\nwhere = \"word != '' and count > 0 and sum > 0\"\n"
            + "\n[[sink]]\nid = \"check\"\ntype = \"null\"\ninput = \"f\"\n";
        let e = parse_str(&text, Path::new("."), "t.toml").unwrap_err();
        assert_eq!(e.message, "operator `f` reads field `sum` (in `where`), but the records from `count` have `word`, `count`");
    }
}
