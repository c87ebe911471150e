//! The fault schedule of a scenario run and its injector: which fault strikes which
//! subtask of which node, and when; which faults have fired, kept in a ledger file
//! so the count survives a killed process (the runner relaunches it with the same
//! plan, and what fired before stays fired).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One fault: where it strikes and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The topology node (source, operator or sink id).
    pub node: String,
    /// Which parallel instance of it.
    pub subtask: u32,
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// What a fault does. Record and checkpoint counts are per subtask and per attempt:
/// a restarted subtask counts from zero again, so the same schedule fires at the
/// same points in every run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// A panic in user code once the subtask has taken (sinks, operators) or
    /// emitted (sources) this many records.
    Panic { after_records: u64 },
    /// SIGKILL of the whole process at that point; the runner starts the job
    /// again, which resumes from its latest checkpoint (at another parallelism
    /// when `relaunch_parallelism` says so).
    Kill {
        after_records: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relaunch_parallelism: Option<u32>,
    },
    /// Like `Kill`, and before the relaunch the runner damages the newest
    /// completed checkpoint, so the job must fall back to the one before.
    CorruptCheckpoint { after_records: u64 },
    /// Each of `records` records from that point on takes `delay_us` longer
    /// (backpressure builds up behind the subtask).
    Slow {
        after_records: u64,
        records: u64,
        delay_us: u64,
    },
    /// The subtask's snapshot for the `checkpoint`-th checkpoint it takes fails
    /// (sources: their position; sinks: their pre-commit).
    SnapshotError { checkpoint: u64 },
    /// A sink fails after pre-committing, right before committing its
    /// `checkpoint`-th completed checkpoint.
    CommitError { checkpoint: u64 },
    /// The subtask fails while restoring its state (the next restore after
    /// another failure: sources and sinks).
    RestoreError,
    /// The exactly-once file sink's disk write fails (no space left on device)
    /// once it has written this many bytes, through the sink's file-system shim.
    SinkWriteError { after_bytes: u64 },
    /// A deliberately broken exactly-once file sink, for proving the checker:
    /// always on (it counts as fired when it first misbehaves).
    BrokenSink { defect: SinkDefect },
}

/// How a broken sink breaks its two-phase commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkDefect {
    /// Every commit publishes the part twice (a second visible copy).
    CommitTwice,
    /// The first commit loses one pending part (reports success, publishes nothing).
    DropPending,
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Panic { .. } => "panic",
            FaultKind::Kill { .. } => "kill",
            FaultKind::CorruptCheckpoint { .. } => "corrupt_checkpoint",
            FaultKind::Slow { .. } => "slow",
            FaultKind::SnapshotError { .. } => "snapshot_error",
            FaultKind::CommitError { .. } => "commit_error",
            FaultKind::RestoreError => "restore_error",
            FaultKind::SinkWriteError { .. } => "sink_write_error",
            FaultKind::BrokenSink { .. } => "broken_sink",
        }
    }

    /// Kills the process: the runner must relaunch it.
    pub fn kills(&self) -> bool {
        matches!(
            self,
            FaultKind::Kill { .. } | FaultKind::CorruptCheckpoint { .. }
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("{} subtask {}", self.node, self.subtask);
        match &self.kind {
            FaultKind::Panic { after_records } => {
                write!(f, "panic in {at} after {after_records} records")
            }
            FaultKind::Kill {
                after_records,
                relaunch_parallelism,
            } => {
                write!(f, "kill the process at {at} after {after_records} records")?;
                match relaunch_parallelism {
                    Some(p) => write!(f, ", relaunch at parallelism {p}"),
                    None => Ok(()),
                }
            }
            FaultKind::CorruptCheckpoint { after_records } => write!(
                f,
                "kill the process at {at} after {after_records} records, then corrupt the newest checkpoint"
            ),
            FaultKind::Slow {
                after_records,
                records,
                delay_us,
            } => write!(
                f,
                "slow {at}: {delay_us} µs per record for {records} records after {after_records}"
            ),
            FaultKind::SnapshotError { checkpoint } => {
                write!(f, "snapshot error at {at} in its checkpoint #{checkpoint}")
            }
            FaultKind::CommitError { checkpoint } => write!(
                f,
                "failure at {at} between pre-commit and commit of its checkpoint #{checkpoint}"
            ),
            FaultKind::RestoreError => write!(f, "restore error at {at}"),
            FaultKind::SinkWriteError { after_bytes } => {
                write!(f, "disk write error at {at} after {after_bytes} bytes")
            }
            FaultKind::BrokenSink { defect } => write!(f, "broken sink {at}: {defect:?}"),
        }
    }
}

/// What a child `weir run` gets: the faults and the ledger of those that fired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultPlan {
    pub faults: Vec<Fault>,
    /// One line per fired fault (its index), appended and fsynced before the fault
    /// acts: a kill leaves the line behind.
    pub ledger: PathBuf,
}

impl FaultPlan {
    pub fn read(path: &Path) -> anyhow::Result<FaultPlan> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the fault plan {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the fault plan {} is malformed: {e}", path.display()))
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
    }
}

/// The indices of the faults a ledger lists as fired.
pub fn read_ledger(path: &Path) -> io::Result<Vec<usize>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The live side of a plan in one process: which faults are still armed.
#[derive(Debug)]
pub struct Injector {
    faults: Vec<Fault>,
    armed: Vec<AtomicBool>,
    ledger: Mutex<File>,
}

impl Injector {
    pub fn new(plan: FaultPlan) -> anyhow::Result<Arc<Injector>> {
        let fired = read_ledger(&plan.ledger)?;
        let armed = (0..plan.faults.len())
            .map(|i| AtomicBool::new(!fired.contains(&i)))
            .collect();
        let ledger = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&plan.ledger)
            .map_err(|e| {
                anyhow::anyhow!("cannot open the ledger {}: {e}", plan.ledger.display())
            })?;
        Ok(Arc::new(Injector {
            faults: plan.faults,
            armed,
            ledger: Mutex::new(ledger),
        }))
    }

    /// The faults that strike subtask `subtask` of `node`, by index.
    pub fn targets(&self, node: &str, subtask: u32) -> Vec<usize> {
        (0..self.faults.len())
            .filter(|&i| self.faults[i].node == node && self.faults[i].subtask == subtask)
            .collect()
    }

    /// Whether any fault strikes `node`.
    pub fn strikes(&self, node: &str) -> bool {
        self.faults.iter().any(|f| f.node == node)
    }

    pub fn fault(&self, index: usize) -> &Fault {
        &self.faults[index]
    }

    pub fn is_armed(&self, index: usize) -> bool {
        self.armed[index].load(Ordering::SeqCst)
    }

    /// Disarms fault `index` and writes it to the ledger; false when it had fired
    /// already (a fault fires once).
    pub fn fire(&self, index: usize) -> bool {
        if !self.armed[index].swap(false, Ordering::SeqCst) {
            return false;
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        // The line must be on disk before a kill: the runner counts from it.
        let recorded = writeln!(ledger, "{index}").and_then(|()| ledger.sync_data());
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record a fired fault in the ledger");
        }
        tracing::warn!("injecting fault #{index}: {}", self.faults[index]);
        true
    }
}

/// Ends the process as `kill -9` would: no destructor, no flush, no checkpoint.
pub fn kill_process() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory
    // effects; SIGKILL cannot be caught, so the call does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// A per-record pause of a `slow` fault.
pub fn slow_down(delay_us: u64) {
    std::thread::sleep(Duration::from_micros(delay_us));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path) -> FaultPlan {
        FaultPlan {
            faults: vec![
                Fault {
                    node: "count".into(),
                    subtask: 1,
                    kind: FaultKind::Panic { after_records: 10 },
                },
                Fault {
                    node: "out".into(),
                    subtask: 0,
                    kind: FaultKind::CommitError { checkpoint: 2 },
                },
            ],
            ledger: dir.join("ledger"),
        }
    }

    #[test]
    fn a_fault_fires_once_and_stays_fired_in_the_next_process() {
        let dir = tempfile::tempdir().unwrap();
        let injector = Injector::new(plan(dir.path())).unwrap();
        assert_eq!(injector.targets("count", 1), [0]);
        assert!(injector.targets("count", 0).is_empty());
        assert!(injector.fire(0));
        assert!(!injector.fire(0));
        let next = Injector::new(plan(dir.path())).unwrap();
        assert!(!next.is_armed(0));
        assert!(next.is_armed(1));
        assert_eq!(read_ledger(&dir.path().join("ledger")).unwrap(), [0]);
    }

    #[test]
    fn plans_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        p.write(&dir.path().join("plan.json")).unwrap();
        let back = FaultPlan::read(&dir.path().join("plan.json")).unwrap();
        assert_eq!(back.faults, p.faults);
        assert!(serde_json::to_string(&p.faults[0])
            .unwrap()
            .contains(r#""kind":"panic""#));
    }
}
