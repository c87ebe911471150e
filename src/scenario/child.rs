//! What one launch of a scenario's job (`weir run --report FILE`) tells the runner.

use serde::{Deserialize, Serialize};
use std::path::Path;
use weir_actors::JobReport;

/// The end of one launch that finished (a killed launch writes none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub restarts: u32,
    pub checkpoints: u64,
    pub recoveries_ms: Vec<f64>,
    pub operators: Vec<OperatorCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorCount {
    pub name: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
}

impl RunReport {
    pub fn of(report: &JobReport) -> RunReport {
        RunReport {
            restarts: report.restarts,
            checkpoints: report.checkpoints,
            recoveries_ms: report
                .recoveries
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect(),
            operators: report
                .operators
                .iter()
                .map(|o| OperatorCount {
                    name: o.name.clone(),
                    parallelism: o.parallelism,
                    records_in: o.records_in,
                    records_out: o.records_out,
                })
                .collect(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
    }

    pub fn read(path: &Path) -> Option<RunReport> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Records per subtask of `node`: what it took, or for a source what it emitted.
    pub fn records_per_subtask(&self, node: &str) -> Option<u64> {
        let o = self.operators.iter().find(|o| o.name == node)?;
        Some(o.records_in.max(o.records_out) / u64::from(o.parallelism.max(1)))
    }

    pub fn parallelism(&self, node: &str) -> Option<u32> {
        self.operators
            .iter()
            .find(|o| o.name == node)
            .map(|o| o.parallelism)
    }
}
