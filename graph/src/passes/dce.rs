//! Dead-code elimination: drop nodes that no output and no side effect depends on.

use super::{rebuild, Pass};
use crate::{Graph, GraphError, NodeId};

pub struct DeadCodeElimination;

impl Pass for DeadCodeElimination {
    fn name(&self) -> &'static str {
        "dead-code-elimination"
    }

    fn run(&self, graph: &mut Graph) -> Result<bool, GraphError> {
        let n = graph.nodes.len();
        let mut live = vec![false; n];
        let mut stack: Vec<NodeId> = graph.outputs.iter().map(|(_, id)| *id).collect();
        stack.extend(graph.ids().filter(|&id| graph.has_side_effect(id)));
        while let Some(id) = stack.pop() {
            if !std::mem::replace(&mut live[id.0], true) {
                stack.extend(graph.nodes[id.0].inputs.iter().copied());
            }
        }
        if live.iter().all(|&l| l) {
            return Ok(false);
        }
        let redirect: Vec<NodeId> = graph.ids().collect();
        rebuild(graph, &live, &redirect);
        Ok(true)
    }
}
