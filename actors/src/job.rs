//! Running a job: one actix system on a thread of its own, one arbiter per worker,
//! a subtask actor per (chain, parallel index) placed on worker `index % workers`, and
//! a job master that collects the subtasks' reports.
//!
//! Deployment: every actor is started, then wired (its output and input channels get
//! their peers' addresses), then started; actix delivers one sender's messages in
//! order, so a subtask always has its wiring before its start.

use crate::checkpoint::barrier::CheckpointMode;
use crate::config::JobConfig;
use crate::error::{JobError, StageError};
use crate::graph::{BuildEnv, Built, JobGraph, OutputEdge};
use crate::master::{CheckpointDriver, Deployed, JobMaster};
use crate::metrics::{JobReport, OperatorCounters};
use crate::network::{InputSource, OutputTarget};
use crate::operator::SubtaskInfo;
use crate::plan::{EdgeKind, NodeKind, Plan};
use crate::subtask::{Head, Start, SubtaskActor, Wire};
use actix::{Actor, Addr, Arbiter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use weir_state::{CheckpointStorage, LocalCheckpointStorage};

/// Everything subtasks need to build their chains, shared read-only.
struct Deployment {
    graph: JobGraph,
    plan: Plan,
    counters: Vec<Arc<OperatorCounters>>,
    env: BuildEnv,
}

impl Deployment {
    fn build_chain(&self, vertex: usize, index: u32, attempt: u32) -> Result<Head, StageError> {
        let config = &self.graph.config;
        let nodes = &self.plan.vertices[vertex].nodes;
        let parallelism = self.plan.vertices[vertex].parallelism;
        let tail = &self.graph.nodes[*nodes.last().expect("a vertex has nodes")];
        let mut next = tail.signature.output.as_ref().map(|(_, port)| {
            let mut first_channel = 0;
            let edges = self
                .plan
                .outputs_of(vertex)
                .map(|e| {
                    let receivers = self.plan.vertices[e.to_vertex].parallelism;
                    let mut partitioning = self.graph.edges[e.graph_edge].partitioning.clone();
                    partitioning.kind = e.kind;
                    let edge = OutputEdge {
                        partitioning,
                        receivers: if e.kind == EdgeKind::Forward {
                            1
                        } else {
                            receivers
                        },
                        first_channel,
                    };
                    first_channel += e.fan_out(receivers);
                    edge
                })
                .collect();
            port.network_output(edges, index, config.batch_size, config.max_parallelism)
        });
        for &n in nodes.iter().rev() {
            let node = &self.graph.nodes[n];
            let info = SubtaskInfo {
                operator: node.name.as_str().into(),
                index,
                parallelism,
                max_parallelism: config.max_parallelism,
                attempt,
            };
            match node
                .spec
                .build(info, self.counters[n].clone(), next.take(), &self.env)?
            {
                Built::Source(source) => return Ok(Head::Source(source)),
                Built::Input(input) => next = Some(input),
            }
        }
        let (_, port) = self.graph.nodes[nodes[0]]
            .signature
            .input
            .as_ref()
            .expect("a non-source head has an input");
        Ok(Head::Input(port.head(next.expect("the chain has a head"))))
    }

    fn chain_name(&self, vertex: usize) -> String {
        let names: Vec<&str> = self.plan.vertices[vertex]
            .nodes
            .iter()
            .map(|&n| self.graph.nodes[n].name.as_str())
            .collect();
        names.join(" -> ")
    }
}

/// Runs a job graph to completion. Blocks; safe to call from any thread, including
/// one that already runs an async runtime (the job gets a thread of its own).
pub(crate) fn execute(graph: JobGraph) -> Result<JobReport, JobError> {
    let plan = graph.plan()?;
    let counters: Vec<Arc<OperatorCounters>> = graph.nodes.iter().map(|_| Arc::default()).collect();
    graph.metrics.install(
        graph
            .nodes
            .iter()
            .zip(&counters)
            .enumerate()
            .map(|(i, (node, c))| (node.name.clone(), plan.parallelism[i], c.clone()))
            .collect(),
    );
    let workers = graph.config.resolved_workers();
    tracing::info!(job = %graph.config.name, subtasks = plan.vertices.iter().map(|v| v.parallelism).sum::<u32>(), workers, "starting job");
    let metrics = graph.metrics.clone();
    let state = StateDir::for_job(&graph.config)?;
    // Snapshots go to the checkpoint storage; without checkpoints, backends still
    // need a storage (to restore from, later), so they get one in the state dir.
    let storage_root = graph
        .config
        .checkpoint
        .as_ref()
        .map_or_else(|| state.path.join("checkpoints"), |c| c.dir.clone());
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalCheckpointStorage::new(&storage_root).map_err(|e| {
            JobError::Runtime(format!(
                "cannot prepare the checkpoint storage {}: {e}",
                storage_root.display()
            ))
        })?);
    let checkpoints = match &graph.config.checkpoint {
        None => None,
        Some(config) => {
            if !matches!(
                config.mode,
                CheckpointMode::Aligned | CheckpointMode::AtLeastOnce
            ) {
                return Err(JobError::InvalidGraph(format!(
                    "checkpoint mode {:?} is not supported yet: use aligned or at-least-once",
                    config.mode
                )));
            }
            let subtasks = plan.vertices.iter().map(|v| v.parallelism as usize).sum();
            let operators = graph
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        n.name.clone(),
                        (plan.parallelism[i], graph.config.max_parallelism),
                    )
                })
                .collect();
            Some(CheckpointDriver::new(
                config,
                storage.clone(),
                subtasks,
                operators,
            )?)
        }
    };
    let operators: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    let restore = crate::restore::select(&graph.config, &storage, &operators)?;
    let env = BuildEnv {
        backend: graph.config.state_backend,
        state_dir: state.path.clone(),
        storage,
        restore,
    };
    let deployment = Arc::new(Deployment {
        graph,
        plan,
        counters,
        env,
    });
    let started = Instant::now();
    let outcome = std::thread::Builder::new()
        .name("weir-job".into())
        .spawn(move || run_on_system(deployment, workers, checkpoints))
        .map_err(|e| JobError::Runtime(format!("cannot start the job thread: {e}")))?
        .join()
        .map_err(|_| JobError::Runtime("the job thread panicked".into()))?;
    outcome?;
    Ok(JobReport {
        operators: metrics.snapshot(),
        elapsed: started.elapsed(),
    })
}

/// The job's local state directory; a temporary one is removed when the job ends.
struct StateDir {
    path: PathBuf,
    temporary: bool,
}

impl StateDir {
    fn for_job(config: &JobConfig) -> Result<Self, JobError> {
        let (path, temporary) = match &config.state_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let unique = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let name: String = config
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                (
                    std::env::temp_dir()
                        .join(format!("weir-{name}-{}-{unique}", std::process::id())),
                    true,
                )
            }
        };
        std::fs::create_dir_all(&path).map_err(|e| {
            JobError::Runtime(format!(
                "cannot create the state directory {}: {e}",
                path.display()
            ))
        })?;
        Ok(StateDir { path, temporary })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the temporary state directory");
            }
        }
    }
}

fn run_on_system(
    deployment: Arc<Deployment>,
    workers: usize,
    checkpoints: Option<CheckpointDriver>,
) -> Result<(), JobError> {
    let system = actix::System::new();
    let (result, arbiters) = system.block_on(async move {
        let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
        let (outcome, finished) = oneshot::channel();
        let master = JobMaster::new(outcome, checkpoints).start();
        let subtasks = deploy(&deployment, &arbiters, &master, 0);
        let mut sources = Vec::new();
        let mut number = 0;
        for (vertex, addrs) in subtasks.iter().enumerate() {
            let head = deployment.plan.vertices[vertex].nodes[0];
            if deployment.graph.nodes[head].signature.kind == NodeKind::Source {
                sources.extend(number..number + addrs.len());
            }
            number += addrs.len();
        }
        master.do_send(Deployed {
            subtasks: subtasks.iter().flatten().cloned().collect(),
            sources,
        });
        for subtask in subtasks.iter().flatten() {
            subtask.do_send(Start);
        }
        let result = finished
            .await
            .unwrap_or_else(|_| Err(JobError::Runtime("the job master stopped".into())));
        (result, arbiters)
    });
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    result
}

/// Starts and wires every subtask; returns their addresses per vertex.
fn deploy(
    deployment: &Arc<Deployment>,
    arbiters: &[Arbiter],
    master: &Addr<JobMaster>,
    attempt: u32,
) -> Vec<Vec<Addr<SubtaskActor>>> {
    let plan = &deployment.plan;
    let config = &deployment.graph.config;
    // Subtasks are numbered vertex by vertex, index by index.
    let first_number: Vec<usize> = plan
        .vertices
        .iter()
        .scan(0, |next, v| {
            let first = *next;
            *next += v.parallelism as usize;
            Some(first)
        })
        .collect();
    let subtasks: Vec<Vec<Addr<SubtaskActor>>> = (0..plan.vertices.len())
        .map(|vertex| {
            (0..plan.vertices[vertex].parallelism)
                .map(|index| {
                    let number = first_number[vertex] + index as usize;
                    let (deployment, master, config) =
                        (deployment.clone(), master.clone(), config.clone());
                    let arbiter = arbiters[index as usize % arbiters.len()].handle();
                    SubtaskActor::start_in_arbiter(&arbiter, move |_| {
                        let head = deployment.build_chain(vertex, index, attempt);
                        SubtaskActor::new(
                            deployment.chain_name(vertex),
                            index,
                            number,
                            head,
                            &config,
                            master,
                        )
                    })
                })
                .collect()
        })
        .collect();
    for (vertex, addrs) in subtasks.iter().enumerate() {
        for (index, addr) in addrs.iter().enumerate() {
            let index = index as u32;
            let mut outputs = Vec::new();
            for edge in plan.outputs_of(vertex) {
                let receivers: Vec<u32> = if edge.kind == EdgeKind::Forward {
                    vec![index]
                } else {
                    (0..plan.vertices[edge.to_vertex].parallelism).collect()
                };
                for receiver in receivers {
                    let (input_channel, output_channel) = plan.channel(edge, index, receiver);
                    debug_assert_eq!(output_channel, outputs.len());
                    outputs.push(OutputTarget {
                        receiver: subtasks[edge.to_vertex][receiver as usize]
                            .clone()
                            .recipient(),
                        input_channel,
                    });
                }
            }
            let mut inputs = Vec::new();
            for edge in plan.inputs_of(vertex) {
                let senders: Vec<u32> = if edge.kind == EdgeKind::Forward {
                    vec![index]
                } else {
                    (0..plan.vertices[edge.from_vertex].parallelism).collect()
                };
                for sender in senders {
                    let (input_channel, output_channel) = plan.channel(edge, sender, index);
                    debug_assert_eq!(input_channel, inputs.len());
                    inputs.push(InputSource {
                        sender: subtasks[edge.from_vertex][sender as usize]
                            .clone()
                            .recipient(),
                        output_channel,
                    });
                }
            }
            addr.do_send(Wire { outputs, inputs });
        }
    }
    subtasks
}
