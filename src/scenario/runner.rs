//! Runs one scenario: a failure-free reference run (when the expectation or a
//! fault's placement needs one), then the faulty run, each as `weir run` child
//! processes in a directory of their own; a killed process is launched again (the
//! job resumes from its latest checkpoint), after damaging the newest checkpoint
//! when the fault says so. Then the output is checked.

use super::check::{self, Outputs};
use super::child::RunReport;
use super::faults::{read_ledger, Fault, FaultKind, FaultPlan, SinkDefect};
use super::spec::{Expected, FaultSpec, InputData, Scenario, TopologyText};
use crate::topology::{self, NodeKind, Role, Topology};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toml::{Table, Value};

/// The alignment timeout of `mode = "aligned_with_timeout"` runs whose topology sets
/// none.
const SCENARIO_ALIGNMENT_TIMEOUT_MS: i64 = 5;

/// The mode and backend of one run (`None`: the topology's), and the run-wide
/// choices of `weir scenario run`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mode: Option<String>,
    pub backend: Option<String>,
    /// Keep every run's directory (otherwise only failed ones are kept).
    pub keep: bool,
    /// Where run directories go (default: the system's temporary directory).
    pub work_dir: Option<PathBuf>,
}

/// A fresh run directory for `scenario` under the work directory.
fn run_dir(scenario: &Scenario, overrides: &Overrides) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    let prefix = format!("weir-scenario-{}-", scenario.name);
    builder.prefix(&prefix);
    match &overrides.work_dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            builder.tempdir_in(dir)
        }
        None => builder.tempdir(),
    }
}

/// What one scenario run came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    pub mode: String,
    pub backend: String,
    pub seed: u64,
    /// The faults as placed for this seed.
    pub faults: Vec<Fault>,
    /// Indices of the faults that fired.
    pub fired: Vec<usize>,
    /// In-process restarts plus relaunches after kills.
    pub restarts: u32,
    pub checkpoints: u64,
    pub result: Result<(), String>,
    pub elapsed: Duration,
    /// The run's directory (logs, outputs, checkpoints), when kept.
    pub dir: Option<PathBuf>,
}

/// The failure-free run's output and counts.
pub struct Reference {
    outputs: Outputs,
    report: RunReport,
}

/// One job run (one or more launches) in its own directory.
struct JobRun {
    dir: PathBuf,
    topology: PathBuf,
    parsed: Topology,
    sets: Vec<String>,
}

/// The end of the launches of one run.
struct Launched {
    /// `Ok` with the last launch's report, or the job's error text.
    result: Result<RunReport, String>,
    stderr: String,
    stdout: Vec<String>,
    restarts: u32,
    checkpoints: u64,
}

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64, overrides: &Overrides) -> Outcome {
    run_against(scenario, seed, overrides, None)
}

/// Runs the failure-free reference of `scenario` once, for [`run_against`].
pub fn reference(
    scenario: &Scenario,
    seed: u64,
    overrides: &Overrides,
) -> Result<Reference, String> {
    let dir = run_dir(scenario, overrides)
        .map_err(|e| format!("cannot create a directory for the run: {e}"))?;
    let (text, base) = topology_text(scenario)?;
    reference_in(scenario, seed, overrides, &text, &base, dir.path())
}

/// [`run`], comparing with `reference` (the same topology and input) instead of
/// running one.
pub fn run_against(
    scenario: &Scenario,
    seed: u64,
    overrides: &Overrides,
    reference: Option<&Reference>,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        scenario: scenario.name.clone(),
        mode: overrides.mode.clone().unwrap_or_else(|| "-".into()),
        backend: overrides.backend.clone().unwrap_or_else(|| "-".into()),
        seed,
        faults: Vec::new(),
        fired: Vec::new(),
        restarts: 0,
        checkpoints: 0,
        result: Ok(()),
        elapsed: Duration::ZERO,
        dir: None,
    };
    let dir = match run_dir(scenario, overrides) {
        Ok(d) => d,
        Err(e) => {
            outcome.result = Err(format!("cannot create a directory for the run: {e}"));
            return outcome;
        }
    };
    outcome.result = run_in(
        scenario,
        seed,
        overrides,
        dir.path(),
        reference,
        &mut outcome,
    );
    outcome.elapsed = started.elapsed();
    if outcome.result.is_err() || overrides.keep {
        outcome.dir = Some(dir.keep());
    }
    outcome
}

/// The topology's text and the directory its relative paths resolve against.
fn topology_text(scenario: &Scenario) -> Result<(String, PathBuf), String> {
    let (text, base) = match &scenario.topology {
        TopologyText::File(path) => (
            fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the topology {} named by {}: {e}",
                    path.display(),
                    scenario.file.display()
                )
            })?,
            path.parent().unwrap_or(Path::new("")).to_path_buf(),
        ),
        TopologyText::Inline(text) => (
            text.clone(),
            scenario
                .file
                .parent()
                .unwrap_or(Path::new(""))
                .to_path_buf(),
        ),
    };
    // The topology as written must be valid before it is edited for the run.
    let name = match &scenario.topology {
        TopologyText::File(p) => p.display().to_string(),
        TopologyText::Inline(_) => format!("{} (inline topology)", scenario.file.display()),
    };
    topology::parse_str(&text, &base, &name).map_err(|e| e.to_string())?;
    Ok((text, base))
}

fn reference_in(
    scenario: &Scenario,
    seed: u64,
    overrides: &Overrides,
    text: &str,
    base: &Path,
    dir: &Path,
) -> Result<Reference, String> {
    let run = prepare(
        scenario,
        seed,
        overrides,
        text,
        base,
        &dir.join("reference"),
    )?;
    let launched = launch_all(&run, &[], None, scenario.timeout)?;
    let report = launched.result.map_err(|e| {
        format!("the failure-free reference run failed, so there is nothing to compare with: {e}")
    })?;
    let outputs = collect_outputs(&run.parsed, &launched.stdout)
        .map_err(|e| format!("cannot read the reference run's output: {e}"))?;
    Ok(Reference { outputs, report })
}

fn run_in(
    scenario: &Scenario,
    seed: u64,
    overrides: &Overrides,
    dir: &Path,
    given: Option<&Reference>,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let (text, base) = topology_text(scenario)?;
    let made;
    let reference = match given {
        Some(r) => Some(r),
        None if needs_reference(scenario) => {
            made = reference_in(scenario, seed, overrides, &text, &base, dir)?;
            Some(&made)
        }
        None => None,
    };

    let run = prepare(scenario, seed, overrides, &text, &base, &dir.join("faulty"))?;
    let faults = place_faults(
        &scenario.faults,
        seed,
        &run.parsed,
        reference.map(|r| &r.report),
    )?;
    outcome.faults = faults.clone();
    let plan = FaultPlan {
        faults,
        ledger: run.dir.join("faults.ledger"),
    };
    let plan_path = run.dir.join("faults.json");
    plan.write(&plan_path)
        .map_err(|e| format!("cannot write the fault plan: {e}"))?;
    let launched = launch_all(&run, &plan.faults, Some(&plan_path), scenario.timeout)?;
    outcome.fired = read_ledger(&plan.ledger).unwrap_or_default();
    outcome.restarts = launched.restarts;
    outcome.checkpoints = launched.checkpoints;

    if scenario.expect.all_faults_fire {
        let unfired: Vec<String> = (0..plan.faults.len())
            .filter(|i| !outcome.fired.contains(i))
            .map(|i| format!("#{} ({})", i + 1, plan.faults[i]))
            .collect();
        if !unfired.is_empty() && !matches!(scenario.expect.output, Expected::FailsWith(_)) {
            return Err(format!(
                "faults that never fired (past the end of the input? then the run proves nothing): {}",
                unfired.join("; ")
            ));
        }
    }
    if outcome.restarts < scenario.expect.min_restarts {
        return Err(format!(
            "{} restarts, the scenario expects at least {}",
            outcome.restarts, scenario.expect.min_restarts
        ));
    }

    if let Some(text) = &scenario.expect.log {
        if !launched.stderr.contains(text.as_str()) {
            return Err(format!(
                "the log does not say `{text}` (logs: {})",
                run.dir.display()
            ));
        }
    }
    match (&scenario.expect.output, launched.result) {
        (Expected::FailsWith(text), Ok(_)) => Err(format!(
            "the job succeeded, but the scenario expects it to fail with `{text}`"
        )),
        (Expected::FailsWith(text), Err(error)) => {
            if launched.stderr.contains(text.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "the job failed, but its error does not say `{text}`: {error}"
                ))
            }
        }
        (_, Err(error)) => Err(format!("the job failed: {error}")),
        (expected, Ok(_)) => {
            let actual = collect_outputs(&run.parsed, &launched.stdout)
                .map_err(|e| format!("cannot read the output: {e}"))?;
            // At-least-once checkpoints promise no more than that.
            let at_least_once_mode = run
                .parsed
                .job
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.mode == weir_actors::CheckpointMode::AtLeastOnce);
            match expected {
                Expected::ExactlyOnce if at_least_once_mode => {
                    check::at_least_once(&reference.expect("made above").outputs, &actual)
                }
                Expected::ExactlyOnce => {
                    check::exactly_once(&reference.expect("made above").outputs, &actual)
                }
                Expected::AtLeastOnce => {
                    check::at_least_once(&reference.expect("made above").outputs, &actual)
                }
                Expected::File { path, sink } => {
                    let expected = read_lines(path, false)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let sink = match sink {
                        Some(s) => s.clone(),
                        None if actual.len() == 1 => actual.keys().next().expect("one").clone(),
                        None => {
                            return Err(format!(
                                "the topology has {} sinks with output: name the one to compare with `sink` in [expect]",
                                actual.len()
                            ))
                        }
                    };
                    let written = actual.get(&sink).cloned().unwrap_or_default();
                    check::equals_lines(&sink, &expected, &written)
                }
                Expected::FailsWith(_) => unreachable!("matched above"),
            }
        }
    }
}

/// Whether the run needs a failure-free reference run.
pub fn needs_reference(scenario: &Scenario) -> bool {
    matches!(
        scenario.expect.output,
        Expected::ExactlyOnce | Expected::AtLeastOnce
    ) || scenario.faults.iter().any(needs_counts)
}

/// Runs with equal keys have equal failure-free output: the same topology, input
/// and settings (the mode and backend change how, not what).
pub fn reference_key(scenario: &Scenario, seed: u64) -> String {
    let seed = match scenario.input.as_ref().map(|i| &i.data) {
        Some(InputData::Generator { .. }) => Some(seed),
        _ => None,
    };
    format!(
        "{:?} {:?} {:?} {:?} {seed:?}",
        scenario.topology, scenario.input, scenario.run.parallelism, scenario.run.set
    )
}

fn needs_counts(f: &FaultSpec) -> bool {
    matches!(
        f.kind.as_str(),
        "panic" | "kill" | "corrupt_checkpoint" | "slow"
    ) && f.after_records.is_none()
}

/// Writes the topology of one run into `dir`: the scenario's input in place of its
/// source, outputs and checkpoints inside `dir`, the run settings applied.
fn prepare(
    scenario: &Scenario,
    seed: u64,
    overrides: &Overrides,
    text: &str,
    base: &Path,
    dir: &Path,
) -> Result<JobRun, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut doc: Table = toml::from_str(text).map_err(|e| format!("the topology: {e}"))?;
    let absolute = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let path_value = |p: &Path| Value::String(p.to_string_lossy().into_owned());

    if let Some(input) = &scenario.input {
        let sources = doc
            .get_mut("source")
            .and_then(Value::as_array_mut)
            .ok_or("the topology has no [[source]]")?;
        let ids: Vec<String> = sources
            .iter()
            .filter_map(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let source = sources
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|s| s.get("id").and_then(Value::as_str) == Some(input.source.as_str()))
            .ok_or_else(|| {
                format!(
                    "[input] replaces source `{}`, but the topology's sources are: {}",
                    input.source,
                    ids.join(", ")
                )
            })?;
        const KEPT: &[&str] = &[
            "id",
            "parallelism",
            "timestamp",
            "out_of_orderness",
            "idle_timeout",
            "watermark_interval",
        ];
        source.retain(|k, _| KEPT.contains(&k));
        match &input.data {
            InputData::Records(records) => {
                let file = dir.join("input.jsonl");
                fs::write(&file, records.join("\n") + "\n")
                    .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                source.insert("type".into(), "file".into());
                source.insert("path".into(), path_value(&file));
                source.insert("format".into(), "json".into());
            }
            InputData::File(file) => {
                source.insert("type".into(), "file".into());
                source.insert("path".into(), path_value(file));
            }
            InputData::Generator { count, fields } => {
                source.insert("type".into(), "generator".into());
                source.insert("count".into(), Value::Integer(*count as i64));
                source.insert("seed".into(), Value::Integer(seed as i64));
                let fields: Table = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                source.insert("fields".into(), Value::Table(fields));
            }
        }
    }
    for source in doc
        .get_mut("source")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_table_mut)
    {
        for key in ["path", "dead_letter_path"] {
            if let Some(p) = source.get(key).and_then(Value::as_str) {
                let p = absolute(p);
                source.insert(key.into(), path_value(&p));
            }
        }
    }
    for sink in doc
        .get_mut("sink")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_table_mut)
    {
        let id = sink
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("sink")
            .to_string();
        let Some(path) = sink.get("path").and_then(Value::as_str) else {
            continue;
        };
        let exactly_once = sink.get("semantics").and_then(Value::as_str) == Some("exactly_once");
        if exactly_once && overrides.mode.as_deref() == Some("at_least_once") {
            // The mode cannot give more than at-least-once output (and the topology
            // refuses an exactly-once sink in it): the sink writes at least once.
            sink.retain(|k, _| !["semantics", "roll_bytes", "roll_interval_ms"].contains(&k));
            let format = sink.get("format").and_then(Value::as_str).unwrap_or("json");
            let file = if format == "csv" {
                "out.csv"
            } else {
                "out.jsonl"
            };
            sink.insert(
                "path".into(),
                path_value(&dir.join("out").join(&id).join(file)),
            );
            continue;
        }
        let out = dir.join("out").join(&id);
        let out = if exactly_once {
            out
        } else {
            out.join(Path::new(path).file_name().unwrap_or("out".as_ref()))
        };
        sink.insert("path".into(), path_value(&out));
    }

    let run = &scenario.run;
    let job = doc
        .entry("job")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or("`job` in the topology is not a table")?;
    if let Some(p) = run.parallelism {
        job.insert("parallelism".into(), Value::Integer(p.into()));
    }
    if let Some(b) = &overrides.backend {
        job.insert("state_backend".into(), b.as_str().into());
    }
    let mode = overrides.mode.as_ref();
    if doc.contains_key("checkpoint") || run.checkpoint_interval.is_some() || mode.is_some() {
        let checkpoint = doc
            .entry("checkpoint")
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .ok_or("`checkpoint` in the topology is not a table")?;
        checkpoint.insert("dir".into(), path_value(&dir.join("checkpoints")));
        if let Some(interval) = run.checkpoint_interval {
            checkpoint.insert(
                "interval_ms".into(),
                Value::Integer(interval.as_millis().max(1) as i64),
            );
        }
        if let Some(mode) = mode {
            checkpoint.insert("mode".into(), mode.as_str().into());
            if mode == "aligned_with_timeout" {
                // Short, so that faulty runs take checkpoints that switch part way.
                checkpoint
                    .entry("alignment_timeout_ms")
                    .or_insert(Value::Integer(SCENARIO_ALIGNMENT_TIMEOUT_MS));
            } else {
                checkpoint.remove("alignment_timeout_ms");
            }
        }
    }
    let topology = dir.join("topology.toml");
    let text = toml::to_string(&doc).map_err(|e| format!("cannot write the topology: {e}"))?;
    fs::write(&topology, text).map_err(|e| format!("cannot write {}: {e}", topology.display()))?;
    let parsed = topology::load(&topology, &run.set)
        .map_err(|e| format!("the topology with the scenario's settings is not valid:\n{e}"))?;
    Ok(JobRun {
        dir: dir.to_path_buf(),
        topology,
        parsed,
        sets: run.set.clone(),
    })
}

/// The parallelism node `node` runs at.
fn parallelism_of(t: &Topology, node: &str) -> Option<u32> {
    let n = t.nodes.iter().find(|n| n.id == node)?;
    Some(n.parallelism.as_ref().map_or(t.job.parallelism, |p| p.0))
}

/// Concrete faults for `seed`: counts the scenario leaves open are drawn from it
/// (record counts within what the reference run's subtask saw).
pub fn place_faults(
    specs: &[FaultSpec],
    seed: u64,
    t: &Topology,
    reference: Option<&RunReport>,
) -> Result<Vec<Fault>, String> {
    let mut rng = XorShiftRng::seed_from_u64(seed);
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let at = format!("fault #{} ({} at `{}`)", i + 1, spec.kind, spec.node);
            let node = t
                .nodes
                .iter()
                .find(|n| n.id == spec.node && !matches!(n.kind, NodeKind::KeyBy(_)))
                .ok_or_else(|| {
                    let ids: Vec<&str> = t
                        .nodes
                        .iter()
                        .filter(|n| !matches!(n.kind, NodeKind::KeyBy(_)))
                        .map(|n| n.id.as_str())
                        .collect();
                    format!(
                        "{at}: the topology has no such node (its nodes: {})",
                        ids.join(", ")
                    )
                })?;
            let exactly_once_files = matches!(node.kind, NodeKind::ExactlyOnceFiles(..));
            let files = exactly_once_files || matches!(node.kind, NodeKind::FileSink(..));
            let fits = match spec.kind.as_str() {
                "snapshot_error" | "restore_error" => node.role != Role::Operator,
                "commit_error" => node.role == Role::Sink,
                "sink_write_error" => files,
                "broken_sink" => exactly_once_files,
                _ => true,
            };
            if !fits {
                let needs = match spec.kind.as_str() {
                    "commit_error" => "a sink",
                    "sink_write_error" => "a file sink",
                    "broken_sink" => {
                        "an exactly-once file sink (`semantics = \"exactly_once\"`)"
                    }
                    _ => "a source or a sink (operators keep no state of their own to snapshot or restore)",
                };
                return Err(format!("{at}: this fault strikes {needs}"));
            }
            let parallelism = parallelism_of(t, &spec.node).unwrap_or(1);
            let subtask = match spec.subtask {
                Some(s) if s >= parallelism => {
                    return Err(format!(
                        "{at}: subtask {s} does not exist (the node runs {parallelism} subtasks, 0 to {})",
                        parallelism - 1
                    ))
                }
                Some(s) => s,
                None => rng.random_range(0..parallelism),
            };
            let mut records = || -> Result<u64, String> {
                if let Some(n) = spec.after_records {
                    return Ok(n);
                }
                let seen = reference
                    .and_then(|r| r.records_per_subtask(&spec.node))
                    .ok_or_else(|| {
                        format!("{at}: `after_records` is open, but the reference run counted no records at this node")
                    })?;
                // Within the first 80%, so the fault fires before the input ends.
                Ok(rng.random_range(1..(seen * 4 / 5).max(2)))
            };
            let kind = match spec.kind.as_str() {
                "panic" => FaultKind::Panic {
                    after_records: records()?,
                },
                "kill" => FaultKind::Kill {
                    after_records: records()?,
                    relaunch_parallelism: spec.relaunch_parallelism,
                },
                "corrupt_checkpoint" => FaultKind::CorruptCheckpoint {
                    after_records: records()?,
                },
                "slow" => FaultKind::Slow {
                    after_records: records()?,
                    records: spec.records.unwrap_or(2_000),
                    delay_us: spec.delay_us.unwrap_or(100),
                },
                "snapshot_error" => FaultKind::SnapshotError {
                    checkpoint: spec.checkpoint.unwrap_or_else(|| rng.random_range(1..=3)),
                },
                "commit_error" => FaultKind::CommitError {
                    checkpoint: spec.checkpoint.unwrap_or_else(|| rng.random_range(1..=3)),
                },
                "restore_error" => FaultKind::RestoreError,
                "sink_write_error" => FaultKind::SinkWriteError {
                    after_bytes: spec
                        .after_bytes
                        .unwrap_or_else(|| rng.random_range(1_000..50_000)),
                },
                "broken_sink" => FaultKind::BrokenSink {
                    defect: match spec.defect.as_deref() {
                        Some("drop_pending") => SinkDefect::DropPending,
                        _ => SinkDefect::CommitTwice,
                    },
                },
                other => return Err(format!("{at}: unknown fault kind `{other}`")),
            };
            Ok(Fault {
                node: spec.node.clone(),
                subtask,
                kind,
            })
        })
        .collect()
}

/// Launches the job until a launch ends other than by a scheduled kill.
fn launch_all(
    run: &JobRun,
    faults: &[Fault],
    plan: Option<&Path>,
    timeout: Duration,
) -> Result<Launched, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the weir binary: {e}"))?;
    let ledger = run.dir.join("faults.ledger");
    let mut sets = run.sets.clone();
    let mut handled: Vec<usize> = Vec::new();
    let mut launched = Launched {
        result: Err(String::new()),
        stderr: String::new(),
        stdout: Vec::new(),
        restarts: 0,
        checkpoints: 0,
    };
    for launch in 1.. {
        let report = run.dir.join(format!("launch-{launch}.report.json"));
        let stderr_path = run.dir.join(format!("launch-{launch}.stderr"));
        let stdout_path = run.dir.join(format!("launch-{launch}.stdout"));
        let file = |p: &Path| {
            fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        let mut command = Command::new(&exe);
        command
            .arg("--log-level")
            .arg("info")
            .arg("run")
            .arg(&run.topology)
            .arg("--no-progress")
            .arg("--report")
            .arg(&report)
            .current_dir(&run.dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file(&stdout_path)?)
            .stderr(file(&stderr_path)?);
        for set in &sets {
            command.arg("--set").arg(set);
        }
        if let Some(plan) = plan {
            command.arg("--fault-plan").arg(plan);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "launch {launch} did not finish within {} (its log: {})",
                        humantime::format_duration(timeout),
                        stderr_path.display()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("cannot wait for launch {launch}: {e}")),
            }
        };
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        launched.checkpoints += stderr.matches("checkpoint complete").count() as u64;
        launched.restarts += stderr
            .matches("restarting the job from its latest checkpoint")
            .count() as u32;
        launched
            .stdout
            .extend(read_lines(&stdout_path, false).unwrap_or_default());
        launched.stderr.push_str(&stderr);

        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGKILL) {
            let fired = read_ledger(&ledger).unwrap_or_default();
            let kills: Vec<usize> = fired
                .into_iter()
                .filter(|i| faults.get(*i).is_some_and(|f| f.kind.kills()) && !handled.contains(i))
                .collect();
            if kills.is_empty() {
                return Err(format!(
                    "launch {launch} was killed, but not by a scheduled fault (its log: {})",
                    stderr_path.display()
                ));
            }
            for &i in &kills {
                match &faults[i].kind {
                    FaultKind::CorruptCheckpoint { .. } => {
                        corrupt_newest_checkpoint(&run.dir.join("checkpoints"))?
                    }
                    FaultKind::Kill {
                        relaunch_parallelism: Some(p),
                        ..
                    } => sets.push(format!("job.parallelism={p}")),
                    _ => {}
                }
            }
            handled.extend(kills);
            launched.restarts += 1;
            continue;
        }
        launched.result = if status.success() {
            RunReport::read(&report)
                .ok_or_else(|| format!("launch {launch} succeeded but wrote no report"))
        } else {
            let error = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("error"))
                .unwrap_or("no error message (see the log)")
                .to_string();
            Err(format!(
                "{error} (exit {status}; log: {})",
                stderr_path.display()
            ))
        };
        return Ok(launched);
    }
    unreachable!("the loop returns")
}

/// Damages the newest completed checkpoint: one byte of its largest file flipped.
fn corrupt_newest_checkpoint(dir: &Path) -> Result<(), String> {
    let newest = fs::read_dir(dir)
        .map_err(|e| format!("corrupt_checkpoint: cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id: u64 = name.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").exists().then(|| (id, e.path()))
        })
        .max_by_key(|(id, _)| *id)
        .ok_or("corrupt_checkpoint: the process was killed before any checkpoint completed; place the fault later")?;
    let mut files = Vec::new();
    let mut stack = vec![newest.1.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| e.to_string())?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                files.push((m.len(), p));
            }
        }
    }
    let (len, victim) = files
        .into_iter()
        .max()
        .ok_or("corrupt_checkpoint: the newest checkpoint has no files")?;
    let mut bytes = fs::read(&victim).map_err(|e| e.to_string())?;
    let middle = (len / 2) as usize;
    if let Some(b) = bytes.get_mut(middle) {
        *b ^= 0xff;
    }
    fs::write(&victim, bytes).map_err(|e| e.to_string())?;
    tracing::info!(file = %victim.display(), "damaged the newest checkpoint");
    Ok(())
}

/// Lines of a file; with `skip_header`, without its first line.
fn read_lines(path: &Path, skip_header: bool) -> std::io::Result<Vec<String>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .skip(usize::from(skip_header))
        .map(str::to_string)
        .collect())
}

/// Every visible file of `dir` (a sink's own directory), line by line.
fn lines_in_dir(dir: &Path, csv: bool) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lines),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with('.') || !e.path().is_file() {
            continue;
        }
        // Every CSV file starts with its header; how many files there are depends
        // on rolling and restarts, so headers are not output.
        lines.extend(read_lines(&e.path(), csv)?);
    }
    Ok(lines)
}

/// What the sinks of a run wrote (stdout sinks: the launches' standard output).
fn collect_outputs(t: &Topology, stdout: &[String]) -> std::io::Result<Outputs> {
    use crate::builtins::SinkFormat;
    let mut outputs = Outputs::new();
    for n in &t.nodes {
        match &n.kind {
            NodeKind::FileSink(path, format) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                outputs.insert(n.id.clone(), lines_in_dir(dir, *format == SinkFormat::Csv)?);
            }
            NodeKind::ExactlyOnceFiles(spec, _) => {
                outputs.insert(
                    n.id.clone(),
                    lines_in_dir(&spec.dir, spec.format == SinkFormat::Csv)?,
                );
            }
            NodeKind::Stdout(_) => {
                outputs.insert("stdout".into(), stdout.to_vec());
            }
            _ => {}
        }
    }
    Ok(outputs)
}
