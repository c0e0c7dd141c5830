//! Where every value lives during a run, decided once at compile time.
//!
//! Sources live in their bound or prepared buffers; KV writes and reshapes alias their
//! input (a reshape is free, a KV write updates the cache in place). Every other value
//! gets a scratch slot, reused greedily once the value is dead: slots are handed out in
//! node order, a freed slot goes to the next value that fits it best (ratchet's
//! approach), so a session's scratch is a handful of buffers allocated once.

use npurt_graph::{Graph, NodeId, Op};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Storage {
    /// An input or state bound per run (index into the bound sources).
    Bound(usize),
    /// A weight prepared at compile time.
    Weight(NodeId),
    /// A scratch slot.
    Slot(usize),
}

pub(crate) struct MemoryPlan {
    /// Storage of every node's value (aliases resolved).
    pub storage: Vec<Storage>,
    /// Bytes of each scratch slot.
    pub slot_bytes: Vec<u64>,
    /// Per node, the slots of its temporaries.
    pub temp_slots: Vec<Vec<usize>>,
    /// Nodes bound per run (inputs and states), in graph order.
    pub bound: Vec<NodeId>,
}

/// The node whose storage `id` shares (itself unless it is an alias).
pub(crate) fn root(graph: &Graph, mut id: NodeId) -> NodeId {
    loop {
        let n = graph.node(id);
        match n.op {
            Op::KvWrite | Op::Reshape { .. } => id = n.inputs[0],
            _ => return id,
        }
    }
}

/// Plans storage; `temps[i]` lists the temporaries node `i` needs (bytes).
pub(crate) fn plan(graph: &Graph, temps: &[Vec<u64>]) -> MemoryPlan {
    let n = graph.nodes.len();
    // Last node that reads each root (graph outputs live to the end).
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for &x in &node.inputs {
            let r = root(graph, x).0;
            last_use[r] = last_use[r].max(i);
        }
        // An alias keeps its root alive at least as long as the alias node itself.
        let r = root(graph, NodeId(i)).0;
        last_use[r] = last_use[r].max(i);
    }
    for (_, id) in &graph.outputs {
        last_use[root(graph, *id).0] = n;
    }

    let mut storage = vec![Storage::Slot(usize::MAX); n];
    let mut bound = Vec::new();
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut temp_slots = vec![Vec::new(); n];
    let mut dies_at: Vec<Vec<usize>> = vec![Vec::new(); n + 1];

    let take = |bytes: u64, slot_bytes: &mut Vec<u64>, free: &mut Vec<usize>| -> usize {
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, &s)| slot_bytes[s] >= bytes)
            .min_by_key(|(_, &s)| slot_bytes[s])
            .map(|(i, _)| i);
        let pick = best.or_else(|| {
            free.iter()
                .enumerate()
                .max_by_key(|(_, &s)| slot_bytes[s])
                .map(|(i, _)| i)
        });
        match pick {
            Some(i) => {
                let s = free.swap_remove(i);
                slot_bytes[s] = slot_bytes[s].max(bytes);
                s
            }
            None => {
                slot_bytes.push(bytes);
                slot_bytes.len() - 1
            }
        }
    };

    for (i, node) in graph.nodes.iter().enumerate() {
        storage[i] = match node.op {
            Op::Input { .. } | Op::State { .. } => {
                bound.push(NodeId(i));
                Storage::Bound(bound.len() - 1)
            }
            Op::Weight { .. } => Storage::Weight(NodeId(i)),
            Op::KvWrite | Op::Reshape { .. } => storage[node.inputs[0].0],
            _ => {
                let bytes = node.fact.bytes().unwrap_or(0) as u64;
                let s = take(bytes.max(4), &mut slot_bytes, &mut free);
                dies_at[last_use[i]].push(s);
                Storage::Slot(s)
            }
        };
        // Temporaries are live while the node runs only.
        for &bytes in temps.get(i).map(Vec::as_slice).unwrap_or(&[]) {
            let s = take(bytes.max(4), &mut slot_bytes, &mut free);
            temp_slots[i].push(s);
        }
        free.extend(temp_slots[i].iter().copied());
        free.append(&mut dies_at[i]);
    }
    MemoryPlan {
        storage,
        slot_bytes,
        temp_slots,
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npurt_graph::TensorFact;

    #[test]
    fn dead_values_share_slots_and_live_ones_do_not() {
        let mut g = Graph::new();
        let x = g
            .add(
                "x",
                Op::Input {
                    name: "x".into(),
                    fact: TensorFact::f32([4, 8]),
                },
                &[],
            )
            .unwrap();
        let a = g.add("a", Op::Silu, &[x]).unwrap();
        let b = g.add("b", Op::Silu, &[a]).unwrap();
        let c = g.add("c", Op::Silu, &[b]).unwrap();
        let d = g.add("d", Op::Add, &[c, a]).unwrap();
        g.set_output("out", d);
        let p = plan(&g, &[]);
        let slot = |id: NodeId| match p.storage[id.0] {
            Storage::Slot(s) => s,
            s => panic!("{s:?}"),
        };
        assert_ne!(slot(a), slot(b));
        assert_ne!(slot(a), slot(c), "a is still live when c is computed");
        assert_ne!(slot(c), slot(d));
        assert_eq!(slot(d), slot(b), "b died at c, so d reuses its slot");
        assert!(p.slot_bytes.len() <= 4);
        assert_eq!(p.storage[x.0], Storage::Bound(0));
    }
}
