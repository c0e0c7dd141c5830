//! Pass manager: named pipelines of rewrite passes, run to a fixpoint, with the whole
//! graph validated after every pass so a broken rewrite is caught at the pass that
//! broke it (tract's discipline).

mod dce;
mod fuse;
mod identity;
mod quantize;
mod rewrite;

pub use dce::DeadCodeElimination;
pub use fuse::{
    FuseActivation, FuseBias, FuseNormQuant, FuseResidual, FuseSharedInput, FuseSwiGlu,
};
pub use identity::RemoveIdentityReshapes;
pub use quantize::{Quantize, StoredDType};

use crate::{Graph, GraphError, PrecisionPolicy};

pub trait Pass: Send + Sync {
    fn name(&self) -> &'static str;
    /// Rewrites the graph in place; returns whether anything changed.
    fn run(&self, graph: &mut Graph) -> Result<bool, GraphError>;
}

/// What one pass did, for `npurt inspect` and logs.
#[derive(Clone, Debug)]
pub struct PassReport {
    pub pass: &'static str,
    pub iteration: usize,
    pub changed: bool,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

pub struct Pipeline {
    pub name: &'static str,
    pub passes: Vec<Box<dyn Pass>>,
    /// Guard against passes that undo each other forever.
    pub max_iterations: usize,
}

impl Pipeline {
    pub fn new(name: &'static str) -> Self {
        Pipeline {
            name,
            passes: Vec::new(),
            max_iterations: 16,
        }
    }

    pub fn with(mut self, pass: impl Pass + 'static) -> Self {
        self.passes.push(Box::new(pass));
        self
    }

    /// The default optimisation pipeline every model graph goes through.
    pub fn default_optimize() -> Self {
        Pipeline::new("optimize")
            .with(RemoveIdentityReshapes)
            .with(DeadCodeElimination)
    }

    /// Lowering for the NPU execution model: apply the precision policy, then fuse
    /// into few fat kernels, then clean up. `stored` tells the quantize pass what the
    /// checkpoint holds so matching formats import losslessly.
    pub fn compile(policy: PrecisionPolicy, stored: StoredDType) -> Self {
        Pipeline::new("compile")
            .with(Quantize { policy, stored })
            .with(FuseBias)
            .with(FuseSwiGlu)
            .with(FuseSharedInput)
            .with(FuseResidual)
            .with(FuseActivation)
            .with(FuseNormQuant)
            .with(RemoveIdentityReshapes)
            .with(DeadCodeElimination)
    }

    /// Runs every pass in order, repeating the sequence until no pass changes the graph.
    pub fn run(&self, graph: &mut Graph) -> Result<Vec<PassReport>, GraphError> {
        graph.validate()?;
        let mut reports = Vec::new();
        for iteration in 0..self.max_iterations {
            let mut any = false;
            for pass in &self.passes {
                let before = graph.nodes.len();
                let changed = pass.run(graph)?;
                graph.validate().map_err(|e| GraphError::PassBroke {
                    pass: pass.name(),
                    source: Box::new(e),
                })?;
                log::debug!(
                    "pipeline {} pass {} iter {}: {} -> {} nodes",
                    self.name,
                    pass.name(),
                    iteration,
                    before,
                    graph.nodes.len()
                );
                reports.push(PassReport {
                    pass: pass.name(),
                    iteration,
                    changed,
                    nodes_before: before,
                    nodes_after: graph.nodes.len(),
                });
                any |= changed;
            }
            if !any {
                return Ok(reports);
            }
        }
        Err(GraphError::NoFixpoint {
            pipeline: self.name,
            iterations: self.max_iterations,
        })
    }
}

/// Rebuilds `graph` keeping only nodes for which `keep` is true, with inputs remapped
/// through `redirect` (a removed node's uses go to the node it redirects to).
/// Shared by passes that delete or bypass nodes.
pub(crate) fn rebuild(graph: &mut Graph, keep: &[bool], redirect: &[crate::NodeId]) {
    let mut new_id = vec![usize::MAX; graph.nodes.len()];
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    let resolve = |mut id: crate::NodeId| {
        while redirect[id.0] != id {
            id = redirect[id.0];
        }
        id
    };
    for (i, n) in graph.nodes.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let mut n = n.clone();
        n.inputs = n
            .inputs
            .iter()
            .map(|&x| crate::NodeId(new_id[resolve(x).0]))
            .collect();
        new_id[i] = nodes.len();
        nodes.push(n);
    }
    for (_, id) in graph.outputs.iter_mut() {
        *id = crate::NodeId(new_id[resolve(*id).0]);
    }
    graph.nodes = nodes;
}
