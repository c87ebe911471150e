//! The `weir` command line: `weir run FILE`, `weir validate FILE`,
//! `weir checkpoints list DIR`, `weir checkpoints inspect PATH`.
//!
//! Exit codes: 0 success, 1 the job failed while running, 2 a bad topology or bad
//! usage. Every error is one message on stderr, without a backtrace. Logs go to
//! stderr through tracing-subscriber (`--log-level`, else `RUST_LOG`, else `info`);
//! when stderr is a terminal a progress line shows records in/out per second.

use crate::topology::{self, BuiltJob, Topology};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_actors::{JobError, JobMetrics, JobReport, OperatorReport};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: a stream-processing runtime; runs TOML topologies",
    after_help = "Examples:\n  weir run examples/wordcount.toml\n  weir run examples/running_sum.toml --set job.parallelism=4 --set numbers.count=1000000\n  weir validate examples/wordcount.toml"
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive such as
    /// `weir=debug`); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and run a topology; prints a per-operator summary on stderr.
    Run {
        /// The topology file.
        file: PathBuf,
        /// Override a setting: `job.KEY=VALUE` or `NODE_ID.KEY=VALUE` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Never show the progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// With a [checkpoint] table: start from the beginning instead of resuming
        /// from the latest checkpoint.
        #[arg(long, conflicts_with = "restore")]
        fresh: bool,
        /// Start from this checkpoint (a `chk-<id>` directory, from any job's
        /// checkpoint dir) instead of the latest one: at any parallelism up to
        /// max_parallelism, with either state backend.
        #[arg(long, value_name = "PATH")]
        restore: Option<PathBuf>,
        /// Restore even if the checkpoint holds state of operators the topology no
        /// longer has (that state is dropped).
        #[arg(long)]
        allow_non_restored_state: bool,
        /// Scenario runs: inject the faults of this plan (JSON).
        #[arg(long, hide = true, value_name = "PLAN")]
        fault_plan: Option<PathBuf>,
        /// Scenario runs: write the job's counts here (JSON) when it ends.
        #[arg(long, hide = true, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Scenario replay runs: inject faults into a topology's run and check its
    /// output against a failure-free run.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Show the checkpoints of a checkpoint directory.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Check a topology and print the resolved graph: parallelism, partitioning,
    /// chaining.
    Validate {
        /// The topology file.
        file: PathBuf,
        /// Override a setting: `job.KEY=VALUE` or `NODE_ID.KEY=VALUE` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files (a directory: every `*.toml` in it); prints a table and
    /// exits 1 if any fails.
    Run {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Place the faults with this seed instead of each scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Run each scenario N times, with seeds seed, seed+1, ….
        #[arg(long, default_value_t = 1, value_name = "N")]
        repeat: u32,
        /// Run every scenario in this checkpoint mode (aligned, unaligned,
        /// at_least_once).
        #[arg(long)]
        mode: Option<String>,
        /// Run every scenario on this state backend (memory, rocksdb).
        #[arg(long)]
        backend: Option<String>,
        /// Keep every run's directory (failed runs' are always kept).
        #[arg(long)]
        keep: bool,
        /// Put run directories here instead of the system's temporary directory.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
    /// Inject random faults into a job, round after round, checking exactly-once
    /// output after each; a failing round is written out as a scenario file.
    Chaos {
        /// The topology (it needs a [checkpoint] table and file sinks).
        job: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// How many faults to fire in all.
        #[arg(long, default_value_t = 100, value_name = "N")]
        faults: u32,
        /// Faults per run of the job.
        #[arg(long, default_value_t = 5, value_name = "K")]
        per_run: u32,
        /// Where a failing round's scenario is written.
        #[arg(long, default_value = "scenarios/regressions", value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// One line per checkpoint: id, completion time, size, and whether a restore
    /// can use it (every file is verified; a damaged one says which file and why).
    List {
        /// A checkpoint directory (the `dir` of a [checkpoint] table).
        dir: PathBuf,
        /// Print JSON (an array of objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything one checkpoint holds, per operator and subtask: key groups, keyed
    /// state handles, operator state, source splits, extra files, channel state.
    Inspect {
        /// A checkpoint: `DIR/chk-<id>` (or its `_metadata`).
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the CLI on the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(msg) = init_logging(cli.log_level.as_deref()) {
        eprintln!("error: {msg}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run {
            file,
            set,
            no_progress,
            fresh,
            restore,
            allow_non_restored_state,
            fault_plan,
            report,
        } => run(
            &file,
            &set,
            !no_progress && std::io::stderr().is_terminal(),
            Start {
                fresh,
                restore,
                allow_non_restored_state,
                fault_plan,
                report,
            },
        ),
        Command::Scenario(command) => crate::scenario::suite::command(command),
        Command::Validate { file, set } => validate(&file, &set),
        Command::Checkpoints(command) => checkpoints(command),
    }
}

fn init_logging(level: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => {
            const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
            let directive = l.contains('=') || l.contains(',');
            if !directive && !LEVELS.contains(&l.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "--log-level {l}: not a log level (use off, error, warn, info, debug, trace, or a directive like weir=debug)"
                ));
            }
            EnvFilter::try_new(l).map_err(|e| {
                format!("--log-level {l}: {e} (use error, warn, info, debug or trace)")
            })?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    Ok(())
}

fn load(file: &std::path::Path, set: &[String]) -> Result<Topology, ExitCode> {
    topology::load(file, set).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn validate(file: &std::path::Path, set: &[String]) -> ExitCode {
    let t = match load(file, set) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let built = topology::build(&t);
    let described = match built.graph.describe() {
        Ok(d) => d,
        Err(e) => return job_error(&t, &e),
    };
    let mut out = String::new();
    out.push_str(&format!("{}: valid\n", t.path));
    let j = &t.job;
    out.push_str(&format!(
        "job `{}`: parallelism {}, max_parallelism {}, workers {}, batch_size {}, channel_capacity {}, linger {} ms\n",
        j.name,
        j.parallelism,
        j.max_parallelism,
        if j.workers == 0 {
            format!("{} (one per core)", j.resolved_workers())
        } else {
            j.workers.to_string()
        },
        j.batch_size,
        j.channel_capacity,
        j.linger.as_millis()
    ));
    out.push_str(&format!("state: {:?} backend", j.state_backend));
    match &j.checkpoint {
        Some(c) => out.push_str(&format!(
            "; checkpoints every {} ms ({:?}) into {}, {} retained\n\n",
            c.interval.as_millis(),
            c.mode,
            c.dir.display(),
            c.retain
        )),
        None => out.push_str("; no checkpoints\n\n"),
    }
    let type_of = |id: &str| {
        t.nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(String::new(), |n| {
                format!("{} {}", n.type_name, n.role.table())
            })
    };
    let rows: Vec<[String; 5]> = described
        .iter()
        .map(|d| {
            let inputs = if d.inputs.is_empty() {
                "-".to_string()
            } else {
                d.inputs
                    .iter()
                    .map(
                        |(from, how)| match built.keys.get(&(d.name.clone(), from.clone())) {
                            Some(k) => format!(
                                "{from}: {how} by {}",
                                k.iter().map(|f| &**f).collect::<Vec<_>>().join(", ")
                            ),
                            None => format!("{from}: {how}"),
                        },
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                d.name.clone(),
                type_of(&d.name),
                d.parallelism.to_string(),
                inputs,
                d.chained_with.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "node",
            "type",
            "parallelism",
            "inputs: partitioning",
            "chained after",
        ],
        &rows,
    ));
    let key_bys: Vec<String> = t
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            topology::NodeKind::KeyBy(k) => Some(format!(
                "  {} = key_by {} (partitions the edges to its readers)",
                n.id,
                k.iter().map(|f| &**f).collect::<Vec<_>>().join(", ")
            )),
            topology::NodeKind::ExactlyOnceFiles(spec, _) => Some(format!(
                "  {} = exactly-once part files in {} ({:?}, rolled at {} bytes or {} ms; committed when a checkpoint completes)",
                n.id,
                spec.dir.display(),
                spec.format,
                spec.roll_bytes,
                spec.roll_interval.as_millis()
            )),
            _ => None,
        })
        .collect();
    if !key_bys.is_empty() {
        out.push('\n');
        out.push_str(&key_bys.join("\n"));
        out.push('\n');
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// `weir checkpoints list|inspect`: exit 0, or 2 when the path holds nothing to show.
fn checkpoints(command: CheckpointsCommand) -> ExitCode {
    use crate::checkpoint_report as report;
    let (text, json) = match command {
        CheckpointsCommand::List { dir, json } => match report::list(&dir) {
            Ok(l) => (
                report::render_list(&dir, &l),
                json.then(|| serde_json::to_string_pretty(&l)),
            ),
            Err(e) => return usage_error(&e),
        },
        CheckpointsCommand::Inspect { path, json } => match report::inspect(&path) {
            Ok(d) => (
                report::render_details(&d),
                json.then(|| serde_json::to_string_pretty(&d)),
            ),
            Err(e) => return usage_error(&e),
        },
    };
    match json {
        Some(Ok(json)) => println!("{json}"),
        Some(Err(e)) => return usage_error(&format!("cannot encode JSON: {e}")),
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// A left-aligned text table.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn job_error(t: &Topology, e: &JobError) -> ExitCode {
    match e {
        JobError::InvalidGraph(msg) => {
            eprintln!("error: {}: {msg}", t.path);
            ExitCode::from(2)
        }
        JobError::Restore(msg) => {
            eprintln!("error: job `{}`: cannot restore: {msg}", t.job.name);
            ExitCode::from(2)
        }
        other => {
            eprintln!("error: job `{}` failed: {other}", t.job.name);
            ExitCode::from(1)
        }
    }
}

/// Where `weir run` starts from.
struct Start {
    /// Ignore the checkpoints in the checkpoint dir.
    fresh: bool,
    /// Start from this checkpoint.
    restore: Option<PathBuf>,
    allow_non_restored_state: bool,
    /// Faults to inject (a scenario run).
    fault_plan: Option<PathBuf>,
    /// Where to write the run's counts.
    report: Option<PathBuf>,
}

fn run(file: &std::path::Path, set: &[String], progress: bool, start: Start) -> ExitCode {
    let mut t = match load(file, set) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Some(checkpoint) = t.job.checkpoint.as_mut() {
        checkpoint.resume = !start.fresh;
    }
    t.job.restore_from = start.restore;
    t.job.allow_non_restored_state = start.allow_non_restored_state;
    let injector = match start
        .fault_plan
        .as_deref()
        .map(crate::scenario::faults::FaultPlan::read)
    {
        None => None,
        Some(plan) => match plan.and_then(crate::scenario::faults::Injector::new) {
            Ok(injector) => Some(injector),
            Err(e) => return usage_error(&format!("{e:#}")),
        },
    };
    let BuiltJob {
        graph, bad_records, ..
    } = topology::build::build_with_faults(&t, injector.as_ref());
    if let Err(e) = graph.describe() {
        return job_error(&t, &e);
    }
    tracing::info!(
        "running job `{}` from {} (parallelism {})",
        t.job.name,
        t.path,
        t.job.parallelism
    );
    let metrics = graph.metrics();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let progress_thread = progress.then(|| {
        let metrics = metrics.clone();
        std::thread::spawn(move || progress_loop(&metrics, &stop_rx))
    });
    let control = weir_actors::JobControl::new();
    if t.job.checkpoint.is_some() {
        stop_with_savepoint_on_signal(control.clone());
    }
    let result = graph.run_with(control);
    drop(stop_tx);
    if let Some(h) = progress_thread {
        let _ = h.join();
    }
    match result {
        Ok(report) => {
            eprint!("{}", summary(&t, &report, &bad_records));
            if let Some(path) = &start.report {
                if let Err(e) = crate::scenario::child::RunReport::of(&report).write(path) {
                    eprintln!("error: cannot write the report {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            if let Some(savepoint) = &report.savepoint {
                eprintln!(
                    "stopped with savepoint {} (run the job again to resume from it)",
                    savepoint.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => job_error(&t, &e),
    }
}

/// The first SIGINT or SIGTERM stops the job with a savepoint; a second one exits at
/// once (the job then resumes from its latest checkpoint).
fn stop_with_savepoint_on_signal(control: weir_actors::JobControl) {
    let signals = std::sync::atomic::AtomicU32::new(0);
    let installed = ctrlc::set_handler(move || {
        if signals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            eprintln!("stopping with a savepoint (signal again to exit at once)");
            control.stop_with_savepoint();
        } else {
            std::process::exit(130);
        }
    });
    if let Err(e) = installed {
        tracing::warn!(error = %e, "cannot handle SIGINT/SIGTERM: a signal kills the job without a savepoint");
    }
}

fn summary(
    t: &Topology,
    report: &JobReport,
    bad: &[(String, Arc<crate::builtins::BadRecordStats>)],
) -> String {
    let secs = report.elapsed.as_secs_f64();
    let mut out = format!("job `{}` finished in {:.3} s\n", t.job.name, secs);
    let rows: Vec<[String; 5]> = report
        .operators
        .iter()
        .map(|o| {
            let busiest = o.records_in.max(o.records_out) as f64;
            [
                o.name.clone(),
                o.parallelism.to_string(),
                o.records_in.to_string(),
                o.records_out.to_string(),
                if secs > 0.0 {
                    format!("{}/s", human(busiest / secs))
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    for l in table(
        &[
            "operator",
            "parallelism",
            "records in",
            "records out",
            "rate",
        ],
        &rows,
    )
    .lines()
    {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    for (id, stats) in bad {
        let skipped = stats.skipped.load(Ordering::Relaxed);
        let dead = stats.dead_lettered.load(Ordering::Relaxed);
        if skipped > 0 {
            out.push_str(&format!("  {id}: {skipped} bad records skipped\n"));
        }
        if dead > 0 {
            out.push_str(&format!(
                "  {id}: {dead} bad records written to the dead-letter file\n"
            ));
        }
    }
    out
}

/// 1234567 -> "1.23M".
fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn progress_loop(metrics: &JobMetrics, stop: &mpsc::Receiver<()>) {
    let mut last: Vec<OperatorReport> = Vec::new();
    let mut last_at = Instant::now();
    let mut stderr = std::io::stderr();
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|w| *w > 20)
        .unwrap_or(120);
    loop {
        match stop.recv_timeout(Duration::from_secs(1)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => {
                let _ = write!(stderr, "\r\x1b[K");
                let _ = stderr.flush();
                return;
            }
        }
        let now = metrics.snapshot();
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let parts: Vec<String> = now
            .iter()
            .map(|o| {
                let prev = last.iter().find(|p| p.name == o.name);
                let rin = (o.records_in - prev.map_or(0, |p| p.records_in)) as f64 / dt;
                let rout = (o.records_out - prev.map_or(0, |p| p.records_out)) as f64 / dt;
                // Sources have no input and sinks no output: show what moves.
                let mut part = o.name.clone();
                if o.records_in > 0 {
                    part.push_str(&format!(" in {}/s", human(rin)));
                }
                if o.records_out > 0 {
                    part.push_str(&format!(" out {}/s", human(rout)));
                }
                part
            })
            .collect();
        last = now;
        // One terminal line: a wrapped line could not be redrawn in place.
        let line: String = parts
            .join(" | ")
            .chars()
            .take(width.saturating_sub(1))
            .collect();
        let _ = write!(stderr, "\r\x1b[K{line}");
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_with_overrides_and_global_log_level() {
        let cli = Cli::try_parse_from([
            "weir",
            "run",
            "job.toml",
            "--set",
            "job.parallelism=4",
            "--set",
            "src.path=x.csv",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        match cli.command {
            Command::Run {
                file,
                set,
                no_progress,
                fresh,
                restore,
                allow_non_restored_state,
                fault_plan,
                report,
            } => {
                assert!(!fresh && restore.is_none() && !allow_non_restored_state);
                assert!(fault_plan.is_none() && report.is_none());
                assert_eq!(file, PathBuf::from("job.toml"));
                assert_eq!(set, ["job.parallelism=4", "src.path=x.csv"]);
                assert!(!no_progress);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_validate_and_rejects_bad_usage() {
        let cli =
            Cli::try_parse_from(["weir", "--log-level", "warn", "validate", "a.toml"]).unwrap();
        assert!(
            matches!(cli.command, Command::Validate { ref file, ref set } if file == &PathBuf::from("a.toml") && set.is_empty())
        );
        assert!(Cli::try_parse_from(["weir"]).is_err());
        assert!(Cli::try_parse_from(["weir", "run"]).is_err());
        assert!(Cli::try_parse_from(["weir", "frobnicate", "a.toml"]).is_err());
        assert!(Cli::try_parse_from(["weir", "run", "a.toml", "--set"]).is_err());
    }

    #[test]
    fn human_rates_and_tables() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_200_000.0), "4.20M");
        assert_eq!(human(3e9), "3.00G");
        let t = table(&["a", "bb"], &[["xyz".to_string(), "1".to_string()]]);
        assert_eq!(t, "a    bb\nxyz  1\n");
    }

    #[test]
    fn log_levels_are_checked() {
        assert!(init_logging(Some("loud"))
            .unwrap_err()
            .contains("not a log level"));
        assert!(init_logging(Some("weir=debug,warn")).is_ok());
    }
}
