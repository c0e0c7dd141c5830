//! Cutting an assigned graph into segments: maximal runs of the topological order on
//! one backend, each rebuilt as a graph of its own. A value crossing segments becomes
//! an explicit transfer: an extra output of the producing segment and an `Input` of the
//! same fact in each consuming one. Sources are copied into every segment that reads
//! them; a KV-cache value produced by a write in an earlier segment is read back from
//! its state (the write updated the bound buffer in place), never transferred.

use super::assign::Assignment;
use npurt_graph::{Graph, GraphError, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// Where a segment's source node gets its buffer at run time.
#[derive(Clone, Debug)]
pub(super) enum Feed {
    /// The caller's binding of this original source (input or state).
    Caller(NodeId),
    /// Transfer number `t`.
    Transfer(usize),
}

/// Where a segment's output goes.
#[derive(Clone, Debug)]
pub(super) enum Sink {
    /// The caller's binding of this original output name.
    Caller(String),
    Transfer(usize),
}

pub(super) struct SegmentPlan {
    pub backend: usize,
    pub graph: Graph,
    /// The original compute nodes it runs.
    pub nodes: Vec<NodeId>,
    pub feeds: Vec<(NodeId, Feed)>,
    pub sinks: Vec<(String, Sink)>,
    /// (segment node, original node) of each weight.
    pub weights: Vec<(NodeId, NodeId)>,
}

pub(super) struct TransferPlan {
    /// The original node whose value moves.
    pub value: NodeId,
    pub from: usize,
    /// Consuming segments, in order.
    pub to: Vec<usize>,
    /// Name of the producing segment's output and of the consumers' input.
    pub name: String,
}

pub(super) struct Plan {
    pub segments: Vec<SegmentPlan>,
    pub transfers: Vec<TransferPlan>,
}

/// Builds one segment graph, mapping original nodes to its own.
struct SegmentBuilder<'a> {
    orig: &'a Graph,
    a: &'a Assignment,
    seg_of: &'a [Option<usize>],
    transfer_of: &'a HashMap<NodeId, usize>,
    transfers: &'a [TransferPlan],
    index: usize,
    plan: SegmentPlan,
    map: HashMap<NodeId, NodeId>,
}

impl SegmentBuilder<'_> {
    /// The segment's node for original node `id`, adding a source for it if needed.
    fn value(&mut self, id: NodeId) -> Result<NodeId, GraphError> {
        if let Some(&m) = self.map.get(&id) {
            return Ok(m);
        }
        let n = self.orig.node(id);
        let new = if n.op.is_source() {
            let new = self.plan.graph.add(n.name.clone(), n.op.clone(), &[])?;
            match n.op {
                Op::Weight { .. } => self.plan.weights.push((new, id)),
                _ => self.plan.feeds.push((new, Feed::Caller(id))),
            }
            new
        } else if self.seg_of[id.0] == Some(self.index) {
            // Only possible if the graph is not in topological order (validated before).
            return Err(GraphError::DanglingInput {
                node: n.name.clone(),
                input: id,
            });
        } else if let Some(state) = self.a.state_of[id.0] {
            // A cache written by an earlier segment: its contents are the state's.
            self.value(state)?
        } else {
            let t = *self
                .transfer_of
                .get(&id)
                .ok_or_else(|| GraphError::DanglingInput {
                    node: n.name.clone(),
                    input: id,
                })?;
            let name = self.transfers[t].name.clone();
            let new = self.plan.graph.add(
                name.clone(),
                Op::Input {
                    name,
                    fact: n.fact.clone(),
                },
                &[],
            )?;
            self.plan.feeds.push((new, Feed::Transfer(t)));
            new
        };
        self.map.insert(id, new);
        Ok(new)
    }

    fn compute(&mut self, id: NodeId) -> Result<(), GraphError> {
        let n = self.orig.node(id);
        let inputs = n
            .inputs
            .iter()
            .map(|&i| self.value(i))
            .collect::<Result<Vec<_>, _>>()?;
        let new = self.plan.graph.add(n.name.clone(), n.op.clone(), &inputs)?;
        self.map.insert(id, new);
        self.plan.nodes.push(id);
        Ok(())
    }
}

/// A name no source or output of `g` uses.
fn fresh_name(g: &Graph, base: String) -> String {
    let taken: HashSet<&str> = g
        .sources("input")
        .iter()
        .map(|(_, n, _)| *n)
        .chain(g.outputs.iter().map(|(n, _)| n.as_str()))
        .collect();
    let mut name = base;
    while taken.contains(name.as_str()) {
        name.push('\'');
    }
    name
}

pub(super) fn split(graph: &Graph, a: &Assignment) -> Result<Plan, GraphError> {
    // Segment of each compute node: a new one whenever the backend changes.
    let mut seg_of: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    let mut seg_backend: Vec<usize> = Vec::new();
    for id in graph.ids() {
        if let Some(b) = a.backend[id.0] {
            if seg_backend.last() != Some(&b) {
                seg_backend.push(b);
            }
            seg_of[id.0] = Some(seg_backend.len() - 1);
        }
    }

    // Values crossing segments (cache aliases excepted: they are re-read from state).
    let mut transfers: Vec<TransferPlan> = Vec::new();
    let mut transfer_of: HashMap<NodeId, usize> = HashMap::new();
    for id in graph.ids() {
        let Some(consumer) = seg_of[id.0] else {
            continue;
        };
        for &input in &graph.node(id).inputs {
            let Some(producer) = seg_of[input.0] else {
                continue;
            };
            if producer == consumer || a.state_of[input.0].is_some() {
                continue;
            }
            let t = *transfer_of.entry(input).or_insert_with(|| {
                let name = fresh_name(
                    graph,
                    format!("transfer.{}.{}", input.0, graph.node(input).name),
                );
                transfers.push(TransferPlan {
                    value: input,
                    from: producer,
                    to: Vec::new(),
                    name,
                });
                transfers.len() - 1
            });
            if !transfers[t].to.contains(&consumer) {
                transfers[t].to.push(consumer);
            }
        }
    }

    let mut builders: Vec<SegmentBuilder> = Vec::with_capacity(seg_backend.len());
    for (index, &backend) in seg_backend.iter().enumerate() {
        let plan = SegmentPlan {
            backend,
            graph: Graph::new(),
            nodes: Vec::new(),
            feeds: Vec::new(),
            sinks: Vec::new(),
            weights: Vec::new(),
        };
        let mut sb = SegmentBuilder {
            orig: graph,
            a,
            seg_of: &seg_of,
            transfer_of: &transfer_of,
            transfers: &transfers,
            index,
            plan,
            map: HashMap::new(),
        };
        for id in graph.ids().filter(|id| seg_of[id.0] == Some(index)) {
            sb.compute(id)?;
        }
        for (t, tp) in transfers
            .iter()
            .enumerate()
            .filter(|(_, tp)| tp.from == index)
        {
            let v = sb.value(tp.value)?;
            sb.plan.graph.set_output(tp.name.clone(), v);
            sb.plan.sinks.push((tp.name.clone(), Sink::Transfer(t)));
        }
        builders.push(sb);
    }
    for (name, id) in &graph.outputs {
        // A computed output comes from its segment; an output that is a source itself
        // is read back from the first segment that already binds it.
        let index = seg_of[id.0]
            .or_else(|| builders.iter().position(|sb| sb.map.contains_key(id)))
            .unwrap_or(0);
        let Some(sb) = builders.get_mut(index) else {
            continue;
        };
        let v = sb.value(*id)?;
        sb.plan.graph.set_output(name.clone(), v);
        sb.plan
            .sinks
            .push((name.clone(), Sink::Caller(name.clone())));
    }

    let segments: Vec<SegmentPlan> = builders.into_iter().map(|sb| sb.plan).collect();
    for s in &segments {
        s.graph.validate()?;
    }
    Ok(Plan {
        segments,
        transfers,
    })
}
