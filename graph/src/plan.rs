//! Memory planning: where every intermediate value lives during a run, decided once per
//! compiled graph, for every backend.
//!
//! A value is live from the node that computes it to the last node that reads it
//! (graph outputs to the end of the run). Sources (inputs, weights, states) live in
//! their own buffers, and aliases (a KV write is the cache it updates, a reshape is its
//! input) take no memory. Every other value gets an offset in one arena, so that no two
//! values live at the same time overlap and the arena stays small: values are placed
//! largest first, each at the lowest offset that fits between the values already placed
//! whose lifetimes overlap its own (TFLite's "greedy by size" offset planner, which is
//! at least as tight as best-fit in node order on these graphs).
//!
//! [`plan_slots`] assigns the same lifetimes to whole buffers instead (best fit in node
//! order, ratchet's approach), for backends that cannot bind two ranges of one buffer
//! in one dispatch: wgpu tracks usage per buffer, so an input bound read-only and an
//! output bound read-write in the same arena buffer would conflict.

use crate::{Graph, NodeId, Op};

/// Where a node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// An input, weight or state: its own bound or prepared buffer.
    Source,
    /// The storage of another node (the root of a KV write or reshape chain).
    Alias(NodeId),
    /// `bytes` at `offset` in the arena.
    Arena { offset: u64, bytes: u64 },
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub placement: Vec<Placement>,
    /// `[first, last]` node indices during which each node's value is live (for an
    /// alias, its root's; `last == nodes.len()` for graph outputs).
    pub lifetime: Vec<(usize, usize)>,
    /// Size of the arena.
    pub arena_bytes: u64,
    /// The sum of every arena value's bytes: what one buffer per node costs.
    pub naive_bytes: u64,
    /// Every offset is a multiple of this.
    pub align: u64,
}

impl MemoryPlan {
    /// The arena range of `id`'s value (through aliases), if it has one.
    pub fn range(&self, id: NodeId) -> Option<std::ops::Range<u64>> {
        match self.placement[self.root(id).0] {
            Placement::Arena { offset, bytes } => Some(offset..offset + bytes),
            _ => None,
        }
    }

    /// The node whose storage `id` uses.
    pub fn root(&self, id: NodeId) -> NodeId {
        match self.placement[id.0] {
            Placement::Alias(r) => r,
            _ => id,
        }
    }

    /// Checks the plan's promise: values live at the same time do not overlap and all
    /// fit in the arena. `Err` names the first two that collide (tests, debugging).
    pub fn check(&self) -> Result<(), String> {
        let placed: Vec<(usize, u64, u64)> = self
            .placement
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Placement::Arena { offset, bytes } => Some((i, *offset, *bytes)),
                _ => None,
            })
            .collect();
        for (k, &(a, ao, ab)) in placed.iter().enumerate() {
            if ao + ab > self.arena_bytes || ao % self.align != 0 {
                return Err(format!("value {a} at {ao}+{ab} is outside or misaligned"));
            }
            for &(b, bo, bb) in &placed[k + 1..] {
                let live = overlaps(self.lifetime[a], self.lifetime[b]);
                if live && ao < bo + bb && bo < ao + ab {
                    return Err(format!(
                        "values {a} ({ao}+{ab}, live {:?}) and {b} ({bo}+{bb}, live {:?}) overlap",
                        self.lifetime[a], self.lifetime[b]
                    ));
                }
            }
        }
        Ok(())
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Whether a node's value is its first input's storage.
fn is_alias(op: &Op) -> bool {
    matches!(op, Op::KvWrite | Op::Reshape { .. })
}

/// The node whose storage `id` uses: through KV writes (the cache they update) and
/// reshapes (their input).
pub fn root(graph: &Graph, id: NodeId) -> NodeId {
    root_with(graph, id, &[])
}

/// `root`, also through the nodes `views` marks: a backend's views, values it reads in
/// place from their first input's storage (column slices read by strided kernels:
/// wgpu's RoPE, KV writes and attention, the CPU's bidirectional attention) rather
/// than computes.
fn root_with(graph: &Graph, mut id: NodeId, views: &[bool]) -> NodeId {
    while is_alias(&graph.node(id).op) || views.get(id.0) == Some(&true) {
        id = graph.node(id).inputs[0];
    }
    id
}

/// `[first, last]` node indices during which each node's value is live: from its node
/// to its last reader, counting readers of its aliases and the aliases themselves;
/// graph outputs live to `nodes.len()`. An alias reports its root's lifetime.
pub fn lifetimes(graph: &Graph) -> Vec<(usize, usize)> {
    lifetimes_with(graph, &[])
}

/// `lifetimes`, with `views` (see `root_with`) counted as aliases.
fn lifetimes_with(graph: &Graph, views: &[bool]) -> Vec<(usize, usize)> {
    let n = graph.nodes.len();
    let roots: Vec<usize> = graph
        .ids()
        .map(|id| root_with(graph, id, views).0)
        .collect();
    let mut lifetime: Vec<(usize, usize)> = (0..n).map(|i| (i, i)).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for x in node.inputs.iter().map(|x| roots[x.0]).chain([roots[i]]) {
            lifetime[x].1 = lifetime[x].1.max(i);
        }
    }
    for (_, id) in &graph.outputs {
        lifetime[roots[id.0]].1 = n;
    }
    for i in 0..n {
        lifetime[i] = lifetime[roots[i]];
    }
    lifetime
}

/// Plans `graph`'s intermediates into one arena, offsets aligned to `align` bytes
/// (a power of two; 64 keeps CPU rows cache-line aligned, GPUs want 256).
pub fn plan(graph: &Graph, align: u64) -> MemoryPlan {
    plan_with_views(graph, align, &[])
}

/// [`plan`], with the nodes `views` marks placed as aliases of their first input's
/// storage (see `root_with`; the CPU's column slices read in place by the
/// bidirectional attention), which so stays live for their readers.
pub fn plan_with_views(graph: &Graph, align: u64, views: &[bool]) -> MemoryPlan {
    let align = align.max(1).next_power_of_two();
    let n = graph.nodes.len();
    let mut placement = Vec::with_capacity(n);
    for (i, node) in graph.nodes.iter().enumerate() {
        placement.push(if node.op.is_source() {
            Placement::Source
        } else if is_alias(&node.op) || views.get(i) == Some(&true) {
            let first = node.inputs[0];
            Placement::Alias(match placement[first.0] {
                Placement::Alias(r) => r,
                _ => first,
            })
        } else {
            Placement::Arena {
                offset: 0,
                bytes: node.fact.bytes().unwrap_or(0) as u64,
            }
        });
    }
    let lifetime = lifetimes_with(graph, views);
    // Largest first; ties in node order (deterministic).
    let mut order: Vec<(usize, u64)> = placement
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Placement::Arena { bytes, .. } => Some((i, *bytes)),
            _ => None,
        })
        .collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let round = |b: u64| b.div_ceil(align) * align;
    let mut placed: Vec<(usize, u64, u64)> = Vec::new(); // (node, offset, rounded bytes)
    let mut arena = 0u64;
    for &(i, bytes) in &order {
        let need = round(bytes.max(1));
        // Values already placed that are live with this one, by offset.
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|(j, _, _)| overlaps(lifetime[i], lifetime[*j]))
            .map(|&(_, o, b)| (o, o + b))
            .collect();
        busy.sort_unstable();
        // The smallest gap that fits (best fit); past the last busy value otherwise.
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut at = 0u64;
        for (start, end) in busy {
            if start >= at + need {
                let gap = start - at;
                if best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, at));
                }
            }
            at = at.max(end);
        }
        let offset = best.map(|(_, o)| o).unwrap_or(at);
        placed.push((i, offset, need));
        arena = arena.max(offset + need);
        placement[i] = Placement::Arena { offset, bytes };
    }
    let naive_bytes = order.iter().map(|&(_, b)| round(b.max(1))).sum();
    MemoryPlan {
        placement,
        lifetime,
        arena_bytes: arena,
        naive_bytes,
        align,
    }
}

/// Where a value lives under [`plan_slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// An input or state bound per run (index into [`SlotPlan::bound`]).
    Bound(usize),
    /// A weight prepared at compile time.
    Weight(NodeId),
    /// A scratch buffer.
    Slot(usize),
}

pub struct SlotPlan {
    /// Storage of every node's value (aliases resolved).
    pub storage: Vec<Storage>,
    /// Bytes of each slot.
    pub slot_bytes: Vec<u64>,
    /// Per node, the slots of its temporaries (live while the node runs only).
    pub temp_slots: Vec<Vec<usize>>,
    /// Nodes bound per run (inputs and states), in graph order.
    pub bound: Vec<NodeId>,
}

/// Plans values into whole buffers (slots): slots are handed out in node order, and a
/// freed slot goes to the next value it fits best. `temps[i]` lists the temporaries
/// node `i` needs (bytes); `views[i]` marks a node the backend reads in place from its
/// first input's storage (it gets that storage, and keeps it live for its readers).
pub fn plan_slots(graph: &Graph, temps: &[Vec<u64>], views: &[bool]) -> SlotPlan {
    let n = graph.nodes.len();
    let lifetime = lifetimes_with(graph, views);
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
        // Nothing fits: grow the largest free slot rather than add one.
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
            _ if is_alias(&node.op) || views.get(i) == Some(&true) => storage[node.inputs[0].0],
            _ => {
                let bytes = node.fact.bytes().unwrap_or(0) as u64;
                let s = take(bytes.max(4), &mut slot_bytes, &mut free);
                dies_at[lifetime[i].1.min(n)].push(s);
                Storage::Slot(s)
            }
        };
        for &bytes in temps.get(i).map(Vec::as_slice).unwrap_or(&[]) {
            let s = take(bytes.max(4), &mut slot_bytes, &mut free);
            temp_slots[i].push(s);
        }
        free.extend(temp_slots[i].iter().copied());
        free.append(&mut dies_at[i]);
    }
    SlotPlan {
        storage,
        slot_bytes,
        temp_slots,
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorFact;

    fn input(g: &mut Graph, name: &str, shape: [usize; 2]) -> NodeId {
        g.add(
            name,
            Op::Input {
                name: name.into(),
                fact: TensorFact::f32(shape),
            },
            &[],
        )
        .unwrap()
    }

    /// x -> a -> b -> c, d = c + a: `a` lives to `d`, `b` dies at `c`.
    fn chain() -> (Graph, [NodeId; 5]) {
        let mut g = Graph::new();
        let x = input(&mut g, "x", [4, 8]);
        let a = g.add("a", Op::Silu, &[x]).unwrap();
        let b = g.add("b", Op::Silu, &[a]).unwrap();
        let c = g.add("c", Op::Silu, &[b]).unwrap();
        let d = g.add("d", Op::Add, &[c, a]).unwrap();
        g.set_output("out", d);
        (g, [x, a, b, c, d])
    }

    #[test]
    fn dead_values_share_memory_and_live_ones_do_not() {
        let (g, [x, a, b, _, d]) = chain();
        let p = plan(&g, 64);
        p.check().unwrap();
        assert_eq!(p.placement[x.0], Placement::Source);
        assert_eq!(p.naive_bytes, 4 * 128);
        // a lives to d; b dies at c; c and d overlap at d: three values at once.
        assert_eq!(p.arena_bytes, 3 * 128);
        assert_eq!(p.range(b), p.range(d), "d reuses b's memory");
        // The check catches a plan that puts two live values together.
        let mut bad = p.clone();
        bad.placement[d.0] = bad.placement[a.0];
        assert!(bad.check().is_err());
    }

    #[test]
    fn slots_are_reused_once_dead() {
        let (g, [x, a, b, c, d]) = chain();
        let p = plan_slots(&g, &[], &[]);
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

    /// A backend's view (b, read in place from a) gets a's slot and keeps it live to
    /// the view's last reader: c, computed in between, may not take it.
    #[test]
    fn views_share_their_input_slot_and_keep_it_live() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", [4, 8]);
        let a = g.add("a", Op::Silu, &[x]).unwrap();
        let b = g.add("b", Op::Silu, &[a]).unwrap();
        let c = g.add("c", Op::Silu, &[x]).unwrap();
        let d = g.add("d", Op::Add, &[b, c]).unwrap();
        g.set_output("out", d);
        let plain = plan_slots(&g, &[], &[]);
        assert_eq!(
            plain.storage[c.0], plain.storage[a.0],
            "a dies at b, c reuses it"
        );
        let mut views = vec![false; g.nodes.len()];
        views[b.0] = true;
        let p = plan_slots(&g, &[], &views);
        assert_eq!(p.storage[b.0], p.storage[a.0], "the view is a's storage");
        assert_ne!(p.storage[c.0], p.storage[a.0], "a lives until d reads b");
    }

    /// Random graphs of elementwise ops and reshapes over random widths: no two live
    /// values overlap, and the arena is never more than the naive sum.
    #[test]
    fn random_graphs_never_overlap_live_values() {
        // Seeded, so a failing case reproduces.
        let mut rng = crate::SeededRng::new(7);
        for case in 0..300 {
            let mut g = Graph::new();
            let rows = 1 + rng.below(8);
            let mut by_width: Vec<Vec<NodeId>> = vec![Vec::new(); 4];
            for (w, pool) in by_width.iter_mut().enumerate() {
                pool.push(input(&mut g, &format!("x{w}"), [rows, 8 << w]));
            }
            for k in 0..(5 + rng.below(60)) {
                let w = rng.below(4);
                let pool = &by_width[w];
                let a = pool[rng.below(pool.len())];
                let b = pool[rng.below(pool.len())];
                let id = match rng.below(4) {
                    0 => g.add(format!("n{k}"), Op::Add, &[a, b]),
                    1 => g.add(format!("n{k}"), Op::Mul, &[a, b]),
                    2 => g.add(
                        format!("n{k}"),
                        Op::Reshape {
                            shape: vec![rows, 8 << w],
                        },
                        &[a],
                    ),
                    _ => g.add(format!("n{k}"), Op::Silu, &[a]),
                }
                .unwrap();
                by_width[w].push(id);
                if rng.below(6) == 0 {
                    g.set_output(format!("o{k}"), id);
                }
            }
            let p = plan(&g, 1 << rng.below(9));
            p.check().unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert!(p.arena_bytes <= p.naive_bytes, "case {case}");
        }
    }
}
