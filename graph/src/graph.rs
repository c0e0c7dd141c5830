//! The graph: nodes in topological order, each producing one value, plus named outputs.
//! Building a node runs shape inference at once, so an ill-formed graph is rejected at
//! the node that makes it ill-formed, with that node's name in the error.

use crate::{GraphError, Op, TensorFact};
use std::collections::HashSet;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub fact: TensorFact,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Named results read back after a run.
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node after inferring its output fact. Inputs must already exist, which
    /// keeps `nodes` in topological order by construction.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[NodeId],
    ) -> Result<NodeId, GraphError> {
        let name = name.into();
        let fact = self.infer(&name, &op, inputs)?;
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            fact,
        });
        Ok(NodeId(self.nodes.len() - 1))
    }

    fn infer(&self, name: &str, op: &Op, inputs: &[NodeId]) -> Result<TensorFact, GraphError> {
        let mut facts = Vec::with_capacity(inputs.len());
        for &i in inputs {
            let n = self
                .nodes
                .get(i.0)
                .ok_or_else(|| GraphError::DanglingInput {
                    node: name.to_string(),
                    input: i,
                })?;
            facts.push(&n.fact);
        }
        op.output_fact(&facts)
            .map_err(|reason| GraphError::IllFormed {
                node: name.to_string(),
                op: op.kind(),
                reason,
            })
    }

    pub fn set_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.outputs.push((name.into(), id));
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn fact(&self, id: NodeId) -> &TensorFact {
        &self.nodes[id.0].fact
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// Source nodes of one kind (`"input"`, `"weight"`, `"state"`) with their names.
    pub fn sources(&self, kind: &str) -> Vec<(NodeId, &str, &TensorFact)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op.kind() == kind)
            .map(|(i, n)| match &n.op {
                Op::Input { name, fact }
                | Op::Weight { name, fact, .. }
                | Op::State { name, fact } => (NodeId(i), name.as_str(), fact),
                _ => unreachable!("kind() matched a source"),
            })
            .collect()
    }

    pub fn find_source(&self, kind: &str, name: &str) -> Option<NodeId> {
        self.sources(kind)
            .into_iter()
            .find(|(_, n, _)| *n == name)
            .map(|(id, _, _)| id)
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Nodes whose effect must survive even if no output reads them (KV-cache writes).
    pub fn has_side_effect(&self, id: NodeId) -> bool {
        matches!(self.nodes[id.0].op, Op::KvWrite)
    }

    /// Number of nodes per op kind, sorted by kind (for `inspect` and pass logs).
    pub fn op_histogram(&self) -> Vec<(&'static str, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for n in &self.nodes {
            *m.entry(n.op.kind()).or_insert(0) += 1;
        }
        m.into_iter().collect()
    }

    /// Full consistency check: topological order, facts agree with inference, unique
    /// source names per kind, outputs point at nodes. Run after every pass.
    pub fn validate(&self) -> Result<(), GraphError> {
        let mut names = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(bad) = n.inputs.iter().find(|x| x.0 >= i) {
                return Err(GraphError::DanglingInput {
                    node: n.name.clone(),
                    input: *bad,
                });
            }
            let fact = self.infer(&n.name, &n.op, &n.inputs)?;
            if fact != n.fact {
                return Err(GraphError::IllFormed {
                    node: n.name.clone(),
                    op: n.op.kind(),
                    reason: format!("recorded fact {} disagrees with inferred {}", n.fact, fact),
                });
            }
            if n.op.is_source() && !names.insert((n.op.kind(), n.name.clone())) {
                return Err(GraphError::DuplicateSource {
                    name: n.name.clone(),
                });
            }
        }
        for (name, id) in &self.outputs {
            if id.0 >= self.nodes.len() {
                return Err(GraphError::DanglingInput {
                    node: format!("output {name}"),
                    input: *id,
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Graph {
    /// One line per node: `#id name = kind(inputs) -> fact`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let ins: Vec<String> = n.inputs.iter().map(|x| x.to_string()).collect();
            writeln!(
                f,
                "#{i} {} = {}({}) -> {}",
                n.name,
                n.op.kind(),
                ins.join(", "),
                n.fact
            )?;
        }
        for (name, id) in &self.outputs {
            writeln!(f, "output {name} = {id}")?;
        }
        Ok(())
    }
}
