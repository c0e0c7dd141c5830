//! Removes reshapes to the shape the value already has (builders emit them freely to
//! keep model code shape-explicit; they cost a copy on backends that materialise them).

use super::{rebuild, Pass};
use crate::{Graph, GraphError, NodeId, Op};

pub struct RemoveIdentityReshapes;

impl Pass for RemoveIdentityReshapes {
    fn name(&self) -> &'static str {
        "remove-identity-reshapes"
    }

    fn run(&self, graph: &mut Graph) -> Result<bool, GraphError> {
        let mut keep = vec![true; graph.nodes.len()];
        let mut redirect: Vec<NodeId> = graph.ids().collect();
        for (i, n) in graph.nodes.iter().enumerate() {
            if let Op::Reshape { shape } = &n.op {
                if graph.fact(n.inputs[0]).shape == *shape {
                    keep[i] = false;
                    redirect[i] = n.inputs[0];
                }
            }
        }
        if keep.iter().all(|&k| k) {
            return Ok(false);
        }
        rebuild(graph, &keep, &redirect);
        Ok(true)
    }
}
