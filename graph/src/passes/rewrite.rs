//! A graph copier that lets a pass replace nodes: it walks the old graph in order and
//! either copies each node (inputs remapped) or lets the pass emit replacement nodes.
//! Replaced nodes' old producers become dead; the rewrite removes them before returning.

use crate::{Graph, GraphError, Node, NodeId};

pub(crate) struct Rewrite<'a> {
    pub old: &'a Graph,
    pub new: Graph,
    /// Old node id -> its value in the new graph.
    pub map: Vec<Option<NodeId>>,
}

impl<'a> Rewrite<'a> {
    pub fn new(old: &'a Graph) -> Self {
        Rewrite {
            old,
            new: Graph::new(),
            map: vec![None; old.nodes.len()],
        }
    }

    /// The new-graph value of old node `id` (which must precede the current node).
    pub fn get(&self, id: NodeId) -> NodeId {
        self.map[id.0].expect("rewrite visits nodes in topological order")
    }

    pub fn copy(&mut self, id: NodeId) -> Result<NodeId, GraphError> {
        let n: &Node = self.old.node(id);
        let ins: Vec<NodeId> = n.inputs.iter().map(|&i| self.get(i)).collect();
        let nid = self.new.add(n.name.clone(), n.op.clone(), &ins)?;
        Ok(nid)
    }

    /// Runs `f` on every node; `f` returns `Some(new)` when it replaced the node.
    pub fn run(
        old: &'a Graph,
        mut f: impl FnMut(&mut Rewrite<'a>, NodeId) -> Result<Option<NodeId>, GraphError>,
    ) -> Result<Option<Graph>, GraphError> {
        let mut rw = Rewrite::new(old);
        let mut changed = false;
        for id in old.ids() {
            if rw.map[id.0].is_some() {
                // Already emitted (e.g. a later member of a fused group).
                changed = true;
                continue;
            }
            let nid = match f(&mut rw, id)? {
                Some(n) => {
                    changed = true;
                    n
                }
                None => rw.copy(id)?,
            };
            rw.map[id.0] = Some(nid);
        }
        if !changed {
            return Ok(None);
        }
        let mut new = rw.new;
        for (name, id) in &old.outputs {
            new.set_output(name.clone(), rw.map[id.0].expect("every node was mapped"));
        }
        // Replaced nodes are dead now; drop them so the next pass never matches them.
        super::Pass::run(&super::DeadCodeElimination, &mut new)?;
        Ok(Some(new))
    }
}

/// Runs a rewrite and installs the result; returns whether anything changed.
pub(crate) fn apply(
    g: &mut Graph,
    f: impl FnMut(&mut Rewrite<'_>, NodeId) -> Result<Option<NodeId>, GraphError>,
) -> Result<bool, GraphError> {
    match Rewrite::run(g, f)? {
        Some(new) => {
            *g = new;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// How many nodes read each node's value.
pub(crate) fn use_counts(g: &Graph) -> Vec<usize> {
    let mut c = vec![0; g.nodes.len()];
    for n in &g.nodes {
        for i in &n.inputs {
            c[i.0] += 1;
        }
    }
    for (_, id) in &g.outputs {
        c[id.0] += 1;
    }
    c
}
