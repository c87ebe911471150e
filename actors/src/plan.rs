//! Validation and physical planning of a job graph, free of types and I/O.
//!
//! Chaining rule (as Flink's): node `b` joins the chain of its upstream `a` when `b`
//! has exactly one input, that input comes from `a` over a forward edge, both have the
//! same parallelism, and `a` has no other consumer. A chain runs as one subtask actor
//! per parallel instance, with records passed by plain function calls.
//!
//! Channels: an edge from a chain with parallelism `p` to one with parallelism `q` has
//! `p*q` channels (`p` if forward, sender `i` to receiver `i`). Sender `i` numbers its
//! output channels by (edge, receiver), receiver `j` its input channels by (edge, sender).

use crate::error::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Source,
    Operator,
    Sink,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Source => "source",
            NodeKind::Operator => "operator",
            NodeKind::Sink => "sink",
        }
    }
}

/// How an edge spreads records over the receiving subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Forward when parallelisms match, rebalance otherwise.
    Default,
    Forward,
    Rebalance,
    Broadcast,
    Key,
}

impl EdgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Default => "default",
            EdgeKind::Forward => "forward",
            EdgeKind::Rebalance => "rebalance",
            EdgeKind::Broadcast => "broadcast",
            EdgeKind::Key => "key groups",
        }
    }
}

/// What the planner needs to know about a node.
#[derive(Debug, Clone)]
pub struct PlanNode {
    pub name: String,
    pub kind: NodeKind,
    /// `None`: the job's default parallelism.
    pub parallelism: Option<u32>,
    /// The data types for the type check (`None` where the node has no such side).
    pub input_type: Option<&'static str>,
    pub output_type: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEdge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
}

/// One chain of nodes, run as `parallelism` subtask actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    /// Node indices, head first.
    pub nodes: Vec<usize>,
    pub parallelism: u32,
}

/// A resolved edge between two vertices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VertexEdge {
    pub graph_edge: usize,
    pub from_vertex: usize,
    pub to_vertex: usize,
    /// Resolved: never `Default`.
    pub kind: EdgeKind,
}

impl VertexEdge {
    /// Receivers each sender has on this edge.
    pub fn fan_out(&self, receiver_parallelism: u32) -> usize {
        if self.kind == EdgeKind::Forward {
            1
        } else {
            receiver_parallelism as usize
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub parallelism: Vec<u32>,
    pub vertices: Vec<Vertex>,
    pub edges: Vec<VertexEdge>,
    /// For every node, the vertex that runs it.
    pub vertex_of: Vec<usize>,
}

impl Plan {
    pub fn inputs_of(&self, vertex: usize) -> impl Iterator<Item = &VertexEdge> {
        self.edges.iter().filter(move |e| e.to_vertex == vertex)
    }

    pub fn outputs_of(&self, vertex: usize) -> impl Iterator<Item = &VertexEdge> {
        self.edges.iter().filter(move |e| e.from_vertex == vertex)
    }

    /// Input channel index at receiver `j` of `edge` for sender `i`, and the channel's
    /// index among sender `i`'s outputs.
    pub fn channel(&self, edge: &VertexEdge, sender: u32, receiver: u32) -> (usize, usize) {
        let sender_p = self.vertices[edge.from_vertex].parallelism;
        let receiver_p = self.vertices[edge.to_vertex].parallelism;
        let mut input_base = 0;
        for e in self.inputs_of(edge.to_vertex) {
            if e == edge {
                break;
            }
            input_base += if e.kind == EdgeKind::Forward {
                1
            } else {
                self.vertices[e.from_vertex].parallelism as usize
            };
        }
        let mut output_base = 0;
        for e in self.outputs_of(edge.from_vertex) {
            if e == edge {
                break;
            }
            output_base += e.fan_out(self.vertices[e.to_vertex].parallelism);
        }
        if edge.kind == EdgeKind::Forward {
            debug_assert_eq!(sender, receiver);
            (input_base, output_base)
        } else {
            debug_assert!(sender < sender_p && receiver < receiver_p);
            (
                input_base + sender as usize,
                output_base + receiver as usize,
            )
        }
    }
}

fn invalid(msg: String) -> JobError {
    JobError::InvalidGraph(msg)
}

/// Checks the graph and groups it into chains.
pub fn plan(
    nodes: &[PlanNode],
    edges: &[PlanEdge],
    default_parallelism: u32,
    max_parallelism: u32,
) -> Result<Plan, JobError> {
    if nodes.is_empty() {
        return Err(invalid(
            "the job has no operators: add a source and a sink".into(),
        ));
    }
    if max_parallelism == 0 || max_parallelism > weir_state::key_group::MAX_MAX_PARALLELISM {
        return Err(invalid(format!(
            "max_parallelism {max_parallelism} is out of range: use 1..={}",
            weir_state::key_group::MAX_MAX_PARALLELISM
        )));
    }
    let mut parallelism = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|n| n.name == node.name) {
            return Err(invalid(format!(
                "two operators are named '{}': names must be unique",
                node.name
            )));
        }
        let p = node.parallelism.unwrap_or(default_parallelism);
        if p == 0 || p > max_parallelism {
            return Err(invalid(format!(
                "operator '{}' has parallelism {p}: use 1..={max_parallelism} (max_parallelism)",
                node.name
            )));
        }
        parallelism.push(p);
    }
    for e in edges {
        let (from, to) = (&nodes[e.from], &nodes[e.to]);
        if from.kind == NodeKind::Sink {
            return Err(invalid(format!(
                "sink '{}' has no output to connect to '{}'",
                from.name, to.name
            )));
        }
        if to.kind == NodeKind::Source {
            return Err(invalid(format!(
                "source '{}' cannot take input from '{}'",
                to.name, from.name
            )));
        }
        if from.output_type != to.input_type {
            return Err(invalid(format!(
                "'{}' emits {} but '{}' takes {}",
                from.name,
                from.output_type.unwrap_or("nothing"),
                to.name,
                to.input_type.unwrap_or("nothing")
            )));
        }
        if e.kind == EdgeKind::Forward && parallelism[e.from] != parallelism[e.to] {
            return Err(invalid(format!(
                "forward edge '{}' -> '{}' joins parallelism {} to {}: give both the same parallelism or use rebalance",
                from.name, to.name, parallelism[e.from], parallelism[e.to]
            )));
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let has_input = edges.iter().any(|e| e.to == i);
        let has_output = edges.iter().any(|e| e.from == i);
        if node.kind != NodeKind::Source && !has_input {
            return Err(invalid(format!(
                "'{}' has no input: connect it to a source or operator",
                node.name
            )));
        }
        if node.kind != NodeKind::Sink && !has_output {
            return Err(invalid(format!(
                "the output of '{}' goes nowhere: connect it to a sink",
                node.name
            )));
        }
    }
    check_acyclic(nodes, edges)?;

    let resolved = |e: &PlanEdge| match e.kind {
        EdgeKind::Default if parallelism[e.from] == parallelism[e.to] => EdgeKind::Forward,
        EdgeKind::Default => EdgeKind::Rebalance,
        k => k,
    };
    let chained_into_upstream = |n: usize| -> Option<usize> {
        let mut inputs = edges.iter().filter(|e| e.to == n);
        let only = inputs.next()?;
        let single_input = inputs.next().is_none();
        let single_consumer = edges.iter().filter(|e| e.from == only.from).count() == 1;
        (single_input
            && single_consumer
            && resolved(only) == EdgeKind::Forward
            && parallelism[only.from] == parallelism[n])
            .then_some(only.from)
    };

    let mut vertex_of = vec![usize::MAX; nodes.len()];
    let mut vertices = Vec::new();
    for (head, &head_parallelism) in parallelism.iter().enumerate() {
        if chained_into_upstream(head).is_some() {
            continue;
        }
        let mut chain = vec![head];
        let mut tail = head;
        while let Some(next) = (0..nodes.len()).find(|&n| chained_into_upstream(n) == Some(tail)) {
            chain.push(next);
            tail = next;
        }
        for &n in &chain {
            vertex_of[n] = vertices.len();
        }
        vertices.push(Vertex {
            nodes: chain,
            parallelism: head_parallelism,
        });
    }
    let vertex_edges = edges
        .iter()
        .enumerate()
        .filter(|(_, e)| vertex_of[e.from] != vertex_of[e.to])
        .map(|(i, e)| VertexEdge {
            graph_edge: i,
            from_vertex: vertex_of[e.from],
            to_vertex: vertex_of[e.to],
            kind: resolved(e),
        })
        .collect();
    Ok(Plan {
        parallelism,
        vertices,
        edges: vertex_edges,
        vertex_of,
    })
}

fn check_acyclic(nodes: &[PlanNode], edges: &[PlanEdge]) -> Result<(), JobError> {
    // Kahn's algorithm: whatever is never freed of inputs sits on a cycle.
    let mut in_degree = vec![0usize; nodes.len()];
    for e in edges {
        in_degree[e.to] += 1;
    }
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&n| in_degree[n] == 0).collect();
    let mut visited = 0;
    while let Some(n) = ready.pop() {
        visited += 1;
        for e in edges.iter().filter(|e| e.from == n) {
            in_degree[e.to] -= 1;
            if in_degree[e.to] == 0 {
                ready.push(e.to);
            }
        }
    }
    if visited == nodes.len() {
        return Ok(());
    }
    let on_cycle: Vec<&str> = (0..nodes.len())
        .filter(|&n| in_degree[n] > 0)
        .map(|n| nodes[n].name.as_str())
        .collect();
    Err(invalid(format!(
        "the graph has a cycle through {}: remove one of their inputs",
        on_cycle.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kind: NodeKind, p: Option<u32>) -> PlanNode {
        let (input_type, output_type) = match kind {
            NodeKind::Source => (None, Some("T")),
            NodeKind::Operator => (Some("T"), Some("T")),
            NodeKind::Sink => (Some("T"), None),
        };
        PlanNode {
            name: name.into(),
            kind,
            parallelism: p,
            input_type,
            output_type,
        }
    }

    fn edge(from: usize, to: usize, kind: EdgeKind) -> PlanEdge {
        PlanEdge { from, to, kind }
    }

    fn error_of(result: Result<Plan, JobError>) -> String {
        result.expect_err("plan should fail").to_string()
    }

    #[test]
    fn forward_edges_of_equal_parallelism_chain_and_key_edges_break_chains() {
        let nodes = [
            node("src", NodeKind::Source, None),
            node("split", NodeKind::Operator, None),
            node("count", NodeKind::Operator, None),
            node("sink", NodeKind::Sink, None),
        ];
        let edges = [
            edge(0, 1, EdgeKind::Default),
            edge(1, 2, EdgeKind::Key),
            edge(2, 3, EdgeKind::Forward),
        ];
        let plan = plan(&nodes, &edges, 2, 128).unwrap();
        assert_eq!(plan.vertices.len(), 2);
        assert_eq!(plan.vertices[0].nodes, vec![0, 1]);
        assert_eq!(plan.vertices[1].nodes, vec![2, 3]);
        assert_eq!(plan.edges.len(), 1);
        assert_eq!(plan.channel(&plan.edges[0], 1, 0), (1, 0));
        assert_eq!(plan.channel(&plan.edges[0], 0, 1), (0, 1));
    }

    #[test]
    fn different_parallelism_defaults_to_rebalance_and_fan_out_ends_a_chain() {
        let nodes = [
            node("src", NodeKind::Source, Some(1)),
            node("a", NodeKind::Sink, Some(3)),
            node("b", NodeKind::Sink, Some(1)),
        ];
        let edges = [edge(0, 1, EdgeKind::Default), edge(0, 2, EdgeKind::Default)];
        let plan = plan(&nodes, &edges, 1, 128).unwrap();
        assert_eq!(plan.vertices.len(), 3);
        assert_eq!(plan.edges[0].kind, EdgeKind::Rebalance);
        assert_eq!(plan.edges[1].kind, EdgeKind::Forward);
        // Sender 0's outputs: three channels to 'a', then one to 'b'.
        assert_eq!(plan.channel(&plan.edges[1], 0, 0), (0, 3));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let src = || node("src", NodeKind::Source, None);
        let sink = || node("sink", NodeKind::Sink, None);
        assert!(
            error_of(plan(&[src(), src()], &[], 1, 128)).contains("two operators are named 'src'")
        );
        assert!(error_of(plan(
            &[src(), sink()],
            &[edge(0, 1, EdgeKind::Default)],
            200,
            128
        ))
        .contains("parallelism 200"));
        assert!(error_of(plan(&[src(), sink()], &[], 1, 128)).contains("goes nowhere"));
        let forward = [
            node("src", NodeKind::Source, Some(1)),
            node("sink", NodeKind::Sink, Some(2)),
        ];
        assert!(
            error_of(plan(&forward, &[edge(0, 1, EdgeKind::Forward)], 1, 128))
                .contains("forward edge")
        );
        let cycle = [
            src(),
            node("a", NodeKind::Operator, None),
            node("b", NodeKind::Operator, None),
            sink(),
        ];
        let edges = [
            edge(0, 1, EdgeKind::Default),
            edge(1, 2, EdgeKind::Default),
            edge(2, 1, EdgeKind::Default),
            edge(2, 3, EdgeKind::Default),
        ];
        assert!(error_of(plan(&cycle, &edges, 1, 128)).contains("cycle through a, b"));
        let mut typed = [src(), sink()];
        typed[1].input_type = Some("U");
        assert!(
            error_of(plan(&typed, &[edge(0, 1, EdgeKind::Default)], 1, 128))
                .contains("emits T but 'sink' takes U")
        );
    }
}
