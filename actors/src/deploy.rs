//! Deployment: building every subtask's chain and starting its actor.
//!
//! Every actor is started, then wired (its output and input channels get their
//! peers' addresses), then started; actix delivers one sender's messages in order, so
//! a subtask always has its wiring before its start. A restart deploys the same
//! graph again as a new *attempt*, from the state a [`BuildEnv`] restores.

use crate::channel_state::ChannelIo;
use crate::error::StageError;
use crate::graph::{BuildEnv, Built, JobGraph, OutputEdge};
use crate::master::JobMaster;
use crate::metrics::OperatorCounters;
use crate::network::{InputSource, OutputTarget};
use crate::operator::SubtaskInfo;
use crate::plan::{EdgeKind, NodeKind, Plan};
use crate::subtask::{Head, Start, SubtaskActor, Wire};
use actix::{Actor, Addr, ArbiterHandle};
use std::sync::Arc;

/// The job as planned, shared read-only by every attempt.
pub(crate) struct Deployment {
    pub graph: JobGraph,
    pub plan: Plan,
    pub counters: Vec<Arc<OperatorCounters>>,
}

/// The subtasks of one attempt, numbered vertex by vertex, index by index.
pub(crate) struct DeployedAttempt {
    pub subtasks: Vec<Addr<SubtaskActor>>,
    /// Numbers of the subtasks whose chain starts with a source.
    pub sources: Vec<usize>,
}

impl Deployment {
    fn build_chain(
        &self,
        vertex: usize,
        index: u32,
        attempt: u32,
        env: &BuildEnv,
    ) -> Result<Head, StageError> {
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
                .build(info, self.counters[n].clone(), next.take(), env)?
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

    /// The codecs and restored in-flight records of a subtask.
    fn channel_io(
        &self,
        vertex: usize,
        index: u32,
        env: &BuildEnv,
    ) -> Result<ChannelIo, StageError> {
        let nodes = &self.plan.vertices[vertex].nodes;
        let head = &self.graph.nodes[nodes[0]];
        let tail = &self.graph.nodes[*nodes.last().expect("a vertex has nodes")];
        let info = SubtaskInfo {
            operator: head.name.as_str().into(),
            index,
            parallelism: self.plan.vertices[vertex].parallelism,
            max_parallelism: self.graph.config.max_parallelism,
            attempt: 0,
        };
        Ok(ChannelIo {
            input: head.signature.input.as_ref().map(|(_, port)| port.clone()),
            output: tail.signature.output.as_ref().map(|(_, port)| port.clone()),
            restored: env.channel_state(&info)?,
            storage: env.storage.clone(),
            operator: head.name.clone(),
        })
    }

    fn chain_name(&self, vertex: usize) -> String {
        let names: Vec<&str> = self.plan.vertices[vertex]
            .nodes
            .iter()
            .map(|&n| self.graph.nodes[n].name.as_str())
            .collect();
        names.join(" -> ")
    }

    /// Starts, wires and starts every subtask of attempt `attempt`; each builds its
    /// chain on its own worker from `env`.
    pub fn deploy(
        self: &Arc<Self>,
        env: Arc<BuildEnv>,
        arbiters: &[ArbiterHandle],
        master: &Addr<JobMaster>,
        attempt: u32,
    ) -> DeployedAttempt {
        let plan = &self.plan;
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
                        let (deployment, master, env) = (self.clone(), master.clone(), env.clone());
                        let arbiter = &arbiters[index as usize % arbiters.len()];
                        SubtaskActor::start_in_arbiter(arbiter, move |_| {
                            let built =
                                deployment
                                    .channel_io(vertex, index, &env)
                                    .and_then(|channels| {
                                        let head =
                                            deployment.build_chain(vertex, index, attempt, &env)?;
                                        Ok((head, channels))
                                    });
                            SubtaskActor::new(
                                deployment.chain_name(vertex),
                                index,
                                number,
                                attempt,
                                built,
                                &deployment.graph.config,
                                master,
                            )
                        })
                    })
                    .collect()
            })
            .collect();
        self.wire(&subtasks);
        let mut sources = Vec::new();
        for (vertex, addrs) in subtasks.iter().enumerate() {
            let head = plan.vertices[vertex].nodes[0];
            if self.graph.nodes[head].signature.kind == NodeKind::Source {
                sources.extend(first_number[vertex]..first_number[vertex] + addrs.len());
            }
        }
        let subtasks: Vec<Addr<SubtaskActor>> = subtasks.into_iter().flatten().collect();
        for subtask in &subtasks {
            subtask.do_send(Start);
        }
        DeployedAttempt { subtasks, sources }
    }

    /// Gives every subtask the addresses of its peers on both sides of each channel.
    fn wire(&self, subtasks: &[Vec<Addr<SubtaskActor>>]) {
        let plan = &self.plan;
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
    }
}
