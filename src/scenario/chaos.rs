//! `weir scenario chaos`: random faults at random points of one job, a few per run,
//! each run checked for exactly-once output against one failure-free reference; a
//! failing run is written out as a scenario file, so it stays as a regression.

use super::faults::{Fault, FaultKind, SinkDefect};
use super::runner::{self, Overrides};
use super::spec::{Expectation, Expected, FaultSpec, RunSettings, Scenario, TopologyText};
use super::suite;
use crate::topology::{self, NodeKind, Role};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The fault kinds that fit a node (broken sinks are for proving the checker, not
/// for chaos; corrupt checkpoints give up exactly-once by design).
fn kinds_for(role: Role, file_sink: bool) -> Vec<&'static str> {
    let mut kinds = vec!["panic", "panic", "kill", "slow"];
    if role != Role::Operator {
        kinds.extend(["snapshot_error", "restore_error"]);
    }
    if role == Role::Sink {
        kinds.push("commit_error");
    }
    if file_sink {
        kinds.push("sink_write_error");
    }
    kinds
}

pub fn run(job: &Path, seed: u64, faults: u32, per_run: u32, out: &Path) -> ExitCode {
    let t = match topology::load(job, &[]) {
        Ok(t) => t,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    if t.job.checkpoint.is_none() {
        eprintln!(
            "error: {}: chaos needs checkpoints: without a [checkpoint] table every fault fails the job",
            job.display()
        );
        return ExitCode::from(2);
    }
    let targets: Vec<(String, Vec<&'static str>)> = t
        .nodes
        .iter()
        .filter(|n| !matches!(n.kind, NodeKind::KeyBy(_)))
        .map(|n| {
            let files = matches!(
                n.kind,
                NodeKind::ExactlyOnceFiles(..) | NodeKind::FileSink(..)
            );
            (n.id.clone(), kinds_for(n.role, files))
        })
        .collect();
    let job = job.canonicalize().unwrap_or_else(|_| job.to_path_buf());
    let mut scenario = Scenario {
        name: format!(
            "chaos-{}",
            job.file_stem()
                .map_or("job".into(), |s| s.to_string_lossy())
        ),
        file: job.clone(),
        description: None,
        seed,
        topology: TopologyText::File(job.clone()),
        input: None,
        run: RunSettings::default(),
        faults: Vec::new(),
        expect: Expectation {
            output: Expected::ExactlyOnce,
            // A random point may lie past the end of the input.
            all_faults_fire: false,
            min_restarts: 0,
            log: None,
        },
        timeout: Duration::from_secs(300),
    };
    let overrides = Overrides::default();
    let started = Instant::now();
    eprintln!(
        "chaos: the failure-free reference run of {} …",
        job.display()
    );
    let reference = match runner::reference(&scenario, seed, &overrides) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let (mut fired, mut restarts, mut runs) = (0u64, 0u64, 0u64);
    // Faults past the end of the input do not fire: stop after enough tries anyway.
    while fired < u64::from(faults) && runs < u64::from(faults) * 4 {
        runs += 1;
        let round_seed = rng.random_range(0..u64::MAX);
        let wanted = (u64::from(faults) - fired).min(u64::from(per_run));
        scenario.faults = (0..wanted)
            .map(|_| {
                let (node, kinds) = &targets[rng.random_range(0..targets.len())];
                let kind = kinds[rng.random_range(0..kinds.len())];
                FaultSpec::new(kind, node, crate::topology::Origin::Nowhere)
            })
            .collect();
        let outcome = runner::run_against(&scenario, round_seed, &overrides, Some(&reference));
        fired += outcome.fired.len() as u64;
        restarts += u64::from(outcome.restarts);
        eprintln!(
            "chaos run {runs}: {}/{} faults fired, {} restarts, {} ({:.1} s); {fired}/{faults} faults in all",
            outcome.fired.len(),
            outcome.faults.len(),
            outcome.restarts,
            if outcome.result.is_ok() { "exactly once" } else { "FAILED" },
            outcome.elapsed.as_secs_f64()
        );
        if let Err(e) = &outcome.result {
            eprintln!("{}", suite::failure_report(&scenario, &outcome, e));
            match write_regression(out, &job, seed, runs, round_seed, &outcome.faults) {
                Ok(path) => eprintln!(
                    "wrote the failing run as {} (run it with `weir scenario run {}`)",
                    path.display(),
                    path.display()
                ),
                Err(e) => eprintln!("error: cannot write the failing run as a scenario: {e}"),
            }
            return ExitCode::from(1);
        }
    }
    println!(
        "chaos over {}: {fired} faults fired in {runs} runs, {restarts} restarts, output exactly once every time; {:.1} s",
        job.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// A failing chaos run as a scenario file with its exact fault schedule.
fn write_regression(
    out: &Path,
    job: &Path,
    seed: u64,
    run: u64,
    round_seed: u64,
    faults: &[Fault],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("chaos-{seed}-run{run}.toml"));
    let mut text = format!(
        "# Written by `weir scenario chaos --seed {seed}`: run {run} lost or repeated output.\n\
         topology = {}\n\n[scenario]\nseed = {round_seed}\n\n",
        toml_string(&job.display().to_string())
    );
    for f in faults {
        text.push_str(&fault_table(f));
    }
    text.push_str("[expect]\noutput = \"exactly_once\"\nall_faults_fire = false\n");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One `[[fault]]` table with every count written out.
pub fn fault_table(f: &Fault) -> String {
    let mut t = format!(
        "[[fault]]\nkind = \"{}\"\nnode = {}\nsubtask = {}\n",
        f.kind.name(),
        toml_string(&f.node),
        f.subtask
    );
    match &f.kind {
        FaultKind::Panic { after_records } | FaultKind::CorruptCheckpoint { after_records } => {
            t.push_str(&format!("after_records = {after_records}\n"))
        }
        FaultKind::Kill {
            after_records,
            relaunch_parallelism,
        } => {
            t.push_str(&format!("after_records = {after_records}\n"));
            if let Some(p) = relaunch_parallelism {
                t.push_str(&format!("relaunch_parallelism = {p}\n"));
            }
        }
        FaultKind::Slow {
            after_records,
            records,
            delay_us,
        } => t.push_str(&format!(
            "after_records = {after_records}\nrecords = {records}\ndelay_us = {delay_us}\n"
        )),
        FaultKind::SnapshotError { checkpoint } | FaultKind::CommitError { checkpoint } => {
            t.push_str(&format!("checkpoint = {checkpoint}\n"))
        }
        FaultKind::RestoreError => {}
        FaultKind::SinkWriteError { after_bytes } => {
            t.push_str(&format!("after_bytes = {after_bytes}\n"))
        }
        FaultKind::BrokenSink { defect } => t.push_str(&format!(
            "defect = \"{}\"\n",
            match defect {
                SinkDefect::CommitTwice => "commit_twice",
                SinkDefect::DropPending => "drop_pending",
            }
        )),
    }
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_regression_reads_back_as_the_same_schedule() {
        let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/jobs/running_count.toml");
        let at = |node: &str, subtask, kind| Fault {
            node: node.into(),
            subtask,
            kind,
        };
        let faults = vec![
            at("count", 1, FaultKind::Panic { after_records: 17 }),
            at(
                "count",
                0,
                FaultKind::Kill {
                    after_records: 5,
                    relaunch_parallelism: Some(3),
                },
            ),
            at(
                "count",
                0,
                FaultKind::CorruptCheckpoint { after_records: 9 },
            ),
            at(
                "count",
                1,
                FaultKind::Slow {
                    after_records: 1,
                    records: 2,
                    delay_us: 3,
                },
            ),
            at("events", 1, FaultKind::SnapshotError { checkpoint: 2 }),
            at("out", 0, FaultKind::CommitError { checkpoint: 4 }),
            at("events", 0, FaultKind::RestoreError),
            at("out", 1, FaultKind::SinkWriteError { after_bytes: 99 }),
            at(
                "out",
                0,
                FaultKind::BrokenSink {
                    defect: SinkDefect::DropPending,
                },
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = write_regression(dir.path(), &job, 7, 3, 99, &faults).unwrap();
        let scenario = super::super::spec::load(&path).unwrap();
        assert_eq!(scenario.seed, 99);
        assert!(!scenario.expect.all_faults_fire);
        let t = topology::load(&job, &[]).unwrap();
        let placed = runner::place_faults(&scenario.faults, scenario.seed, &t, None).unwrap();
        assert_eq!(placed, faults);
    }
}
