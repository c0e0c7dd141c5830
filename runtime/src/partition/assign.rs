//! Which backend runs each compute node: the first (most preferred) one that supports
//! the node and every source it reads, then the KV-cache rule: all users of a state
//! (its writes and the attention reading them) move together to one backend.

use npurt_backends::{Backend, BackendError, Support};
use npurt_graph::{Graph, NodeId, Op};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) struct Assignment {
    /// Backend index of each compute node; `None` for sources.
    pub backend: Vec<Option<usize>>,
    /// The state a value aliases: the state itself, or a `kv_write` chain over it.
    pub state_of: Vec<Option<NodeId>>,
}

/// Support answers, asked once per (backend, node).
struct SupportTable<'a> {
    graph: &'a Graph,
    backends: &'a [Arc<dyn Backend>],
    answers: HashMap<(usize, NodeId), Support>,
}

impl SupportTable<'_> {
    fn node(&mut self, b: usize, id: NodeId) -> &Support {
        let (graph, backends) = (self.graph, self.backends);
        self.answers
            .entry((b, id))
            .or_insert_with(|| backends[b].supports(graph, id))
    }

    /// Can backend `b` run compute node `id` together with the sources it binds (its
    /// weights, inputs and states, including the state behind an aliased cache)?
    fn runs(&mut self, b: usize, id: NodeId, state_of: &[Option<NodeId>]) -> Result<(), String> {
        if let Support::Unsupported(why) = self.node(b, id) {
            return Err(why.clone());
        }
        let graph = self.graph;
        for &input in &graph.node(id).inputs {
            let bound = if graph.node(input).op.is_source() {
                Some(input)
            } else {
                state_of[input.0]
            };
            if let Some(src) = bound {
                if let Support::Unsupported(why) = self.node(b, src) {
                    return Err(format!("source `{}`: {why}", graph.node(src).name));
                }
            }
        }
        Ok(())
    }
}

fn find_root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

pub(super) fn assign(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
) -> Result<Assignment, BackendError> {
    let mut state_of: Vec<Option<NodeId>> = vec![None; graph.nodes.len()];
    for id in graph.ids() {
        let n = graph.node(id);
        state_of[id.0] = match n.op {
            Op::State { .. } => Some(id),
            Op::KvWrite => state_of[n.inputs[0].0],
            _ => None,
        };
    }
    let mut table = SupportTable {
        graph,
        backends,
        answers: HashMap::new(),
    };
    let mut backend = vec![None; graph.nodes.len()];
    for id in graph.ids().filter(|id| !graph.node(*id).op.is_source()) {
        let mut refusals = Vec::new();
        for (b, be) in backends.iter().enumerate() {
            match table.runs(b, id, &state_of) {
                Ok(()) => {
                    backend[id.0] = Some(b);
                    break;
                }
                Err(why) => refusals.push(format!("{}: {why}", be.name())),
            }
        }
        if backend[id.0].is_none() {
            let n = graph.node(id);
            return Err(BackendError::Unsupported {
                backend: names(backends),
                node: n.name.clone(),
                reason: format!(
                    "no backend runs this {} ({})",
                    n.op.kind(),
                    refusals.join("; ")
                ),
            });
        }
    }
    keep_states_together(graph, backends, &mut table, &state_of, &mut backend)?;
    Ok(Assignment { backend, state_of })
}

fn names(backends: &[Arc<dyn Backend>]) -> String {
    backends
        .iter()
        .map(|b| b.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A state lives in one backend's memory, so every node that reads or writes it must
/// run there. States used by one node (k and v caches of one attention) form one
/// group; a split group moves to the most preferred backend that runs all of it.
fn keep_states_together(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
    table: &mut SupportTable,
    state_of: &[Option<NodeId>],
    backend: &mut [Option<usize>],
) -> Result<(), BackendError> {
    let states_read = |id: NodeId| -> Vec<usize> {
        let mut v: Vec<usize> = graph
            .node(id)
            .inputs
            .iter()
            .filter_map(|i| state_of[i.0])
            .map(|s| s.0)
            .collect();
        v.dedup();
        v
    };
    let mut parent: Vec<usize> = (0..graph.nodes.len()).collect();
    let users: Vec<NodeId> = graph
        .ids()
        .filter(|id| backend[id.0].is_some() && !states_read(*id).is_empty())
        .collect();
    for &u in &users {
        let s = states_read(u);
        for w in &s[1..] {
            let (a, b) = (find_root(&mut parent, s[0]), find_root(&mut parent, *w));
            parent[a] = b;
        }
    }
    let mut groups: HashMap<usize, Vec<NodeId>> = HashMap::new();
    for &u in &users {
        let root = find_root(&mut parent, states_read(u)[0]);
        groups.entry(root).or_default().push(u);
    }
    let mut roots: Vec<usize> = groups.keys().copied().collect();
    roots.sort_unstable();
    for root in roots {
        let members = &groups[&root];
        let first = backend[members[0].0];
        if members.iter().all(|m| backend[m.0] == first) {
            continue;
        }
        let target = (0..backends.len())
            .find(|&b| members.iter().all(|&m| table.runs(b, m, state_of).is_ok()));
        let state = &graph.node(NodeId(root)).name;
        let Some(target) = target else {
            return Err(BackendError::Unsupported {
                backend: names(backends),
                node: state.clone(),
                reason: "no single backend runs every node that reads or writes this state".into(),
            });
        };
        log::debug!(
            "state `{state}`: its {} users move to `{}` so the cache stays on one backend",
            members.len(),
            backends[target].name()
        );
        for m in members {
            backend[m.0] = Some(target);
        }
    }
    Ok(())
}
