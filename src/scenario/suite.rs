//! `weir scenario run` and `weir scenario chaos`: many runs, one table.

use super::runner::{self, Outcome, Overrides};
use super::spec::{self, Scenario, BACKENDS, MODES};
use crate::cli::ScenarioCommand;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn command(command: ScenarioCommand) -> ExitCode {
    match command {
        ScenarioCommand::Run {
            paths,
            seed,
            repeat,
            mode,
            backend,
            keep,
            work_dir,
        } => {
            for (value, allowed, flag) in
                [(&mode, MODES, "--mode"), (&backend, BACKENDS, "--backend")]
            {
                if let Some(v) = value.as_deref().filter(|v| !allowed.contains(v)) {
                    eprintln!("error: {flag} {v}: use one of {}", allowed.join(", "));
                    return ExitCode::from(2);
                }
            }
            let overrides = Overrides {
                mode,
                backend,
                keep,
                work_dir,
            };
            run_paths(&paths, seed, repeat.max(1), &overrides)
        }
        ScenarioCommand::Chaos {
            job,
            seed,
            faults,
            per_run,
            out,
        } => super::chaos::run(&job, seed, faults, per_run.max(1), &out),
    }
}

/// The scenario files `paths` name: files as given, directories' `*.toml` sorted.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("cannot list {}: {e}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(format!("{} holds no scenario (*.toml) files", p.display()));
            }
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(files)
}

fn run_paths(paths: &[PathBuf], seed: Option<u64>, repeat: u32, overrides: &Overrides) -> ExitCode {
    let files = match expand(paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut scenarios = Vec::new();
    for f in &files {
        match spec::load(f) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let mut outcomes = Vec::new();
    let runs: Vec<(&Scenario, Overrides)> = scenarios
        .iter()
        .flat_map(|s| combinations(s, overrides).into_iter().map(move |o| (s, o)))
        .collect();
    let total = runs.len() * repeat as usize;
    // One failure-free run serves every run of the same job and input.
    let mut references = std::collections::HashMap::new();
    for (s, run_overrides) in &runs {
        for r in 0..repeat {
            let seed = seed.unwrap_or(s.seed).wrapping_add(u64::from(r));
            eprintln!(
                "[{}/{total}] {} {}/{} (seed {seed}) …",
                outcomes.len() + 1,
                s.name,
                run_overrides.mode.as_deref().unwrap_or("-"),
                run_overrides.backend.as_deref().unwrap_or("-"),
            );
            let key = runner::reference_key(s, seed);
            if runner::needs_reference(s) && !references.contains_key(&key) {
                match runner::reference(s, seed, &Overrides::default()) {
                    Ok(r) => {
                        references.insert(key.clone(), r);
                    }
                    // The run makes its own and reports why it fails.
                    Err(e) => tracing::debug!(error = %e, "no shared reference run"),
                }
            }
            let outcome = runner::run_against(s, seed, run_overrides, references.get(&key));
            if let Err(e) = &outcome.result {
                eprintln!("{}", failure_report(s, &outcome, e));
            }
            outcomes.push(outcome);
        }
    }
    print!("{}", table(&outcomes));
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let fired: usize = outcomes.iter().map(|o| o.fired.len()).sum();
    let restarts: u32 = outcomes.iter().map(|o| o.restarts).sum();
    println!(
        "{} scenario runs, {} passed, {failed} failed; {fired} faults fired, {restarts} restarts; {:.1} s",
        outcomes.len(),
        outcomes.len() - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every mode × backend a scenario runs in (`--mode`/`--backend` replace its own).
fn combinations(s: &Scenario, overrides: &Overrides) -> Vec<Overrides> {
    let pick = |given: &Option<String>, own: &[String]| -> Vec<Option<String>> {
        match given {
            Some(g) => vec![Some(g.clone())],
            None if own.is_empty() => vec![None],
            None => own.iter().cloned().map(Some).collect(),
        }
    };
    let mut out = Vec::new();
    for mode in pick(&overrides.mode, &s.run.modes) {
        for backend in pick(&overrides.backend, &s.run.backends) {
            out.push(Overrides {
                mode: mode.clone(),
                backend,
                keep: overrides.keep,
                work_dir: overrides.work_dir.clone(),
            });
        }
    }
    out
}

/// What a failing run prints: why, its seed, its exact schedule, where its files are.
pub fn failure_report(s: &Scenario, o: &Outcome, error: &str) -> String {
    let mut out = format!("FAILED {} (seed {}): {error}\n", s.name, o.seed);
    out.push_str(&format!("  scenario: {}\n", s.file.display()));
    out.push_str("  fault schedule:\n");
    if o.faults.is_empty() {
        out.push_str("    (none)\n");
    }
    for (i, f) in o.faults.iter().enumerate() {
        let fired = if o.fired.contains(&i) {
            "fired"
        } else {
            "not fired"
        };
        out.push_str(&format!("    #{} {f} [{fired}]\n", i + 1));
    }
    let mut reproduce = format!("weir scenario run {} --seed {}", s.file.display(), o.seed);
    if o.mode != "-" {
        reproduce.push_str(&format!(" --mode {}", o.mode));
    }
    if o.backend != "-" {
        reproduce.push_str(&format!(" --backend {}", o.backend));
    }
    out.push_str(&format!("  reproduce: {reproduce}\n"));
    if let Some(dir) = &o.dir {
        out.push_str(&format!("  logs and output: {}\n", dir.display()));
    }
    out
}

pub fn table(outcomes: &[Outcome]) -> String {
    let rows: Vec<[String; 8]> = outcomes
        .iter()
        .map(|o| {
            [
                o.scenario.clone(),
                o.mode.clone(),
                o.backend.clone(),
                format!("{}/{}", o.fired.len(), o.faults.len()),
                o.restarts.to_string(),
                o.checkpoints.to_string(),
                match &o.result {
                    Ok(()) => "pass".into(),
                    Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
                },
                format!("{:.1} s", o.elapsed.as_secs_f64()),
            ]
        })
        .collect();
    crate::cli::table(
        &[
            "scenario",
            "mode",
            "backend",
            "faults fired",
            "restarts",
            "checkpoints",
            "result",
            "time",
        ],
        &rows,
    )
}
