//! Human-readable description of a compiled model (`npurt inspect`): what each pass
//! did, what every node runs as on its backend, and where the weight bytes are.

use crate::model::{GraphKind, Model};
use npurt_graph::{plan, Graph, Op, TensorFact};
use std::collections::BTreeMap;
use std::fmt::Write;

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub fn describe(model: &Model, kind: GraphKind, nodes: bool) -> String {
    let cg = model.graph(kind);
    let g = &cg.graph;
    let be = &model.backend;
    let mut s = String::new();
    let _ = writeln!(s, "model      {}", model.description);
    let _ = writeln!(s, "backend    {} ({})", be.name(), be.capabilities().device);
    let p = &model.options.precision;
    let _ = writeln!(s, "precision  {} (KV cache {})", p.name, p.kv_cache);
    let _ = writeln!(
        s,
        "graph      {kind:?}: {} rows, context {}, KV cache {} rows",
        cg.rows, model.ctx, model.cache_rows
    );
    // The built-in backends compute only a chunk's valid rows of these
    // (`npurt_graph::rows`), unless their variable says otherwise.
    let padded_var = match be.name() {
        "cpu" => Some("NPURT_CPU_PADDED_ROWS"),
        "wgpu" => Some("NPURT_WGPU_PADDED_ROWS"),
        _ => None,
    };
    if let (Some(v), Some(var)) = (npurt_graph::rows::ValidRows::of(g), padded_var) {
        let computed = g.ids().filter(|&id| !g.node(id).op.is_source());
        let (limited, all) = computed.fold((0, 0), |(l, a), id| {
            (l + usize::from(v.limits(g, id)), a + 1)
        });
        let _ = writeln!(
            s,
            "valid rows {limited} of {all} nodes compute only the chunk's n_valid rows ({var}=1: every row)"
        );
    }
    let _ = writeln!(s, "\npasses (nodes before -> after):");
    for r in &cg.pass_reports {
        let _ = writeln!(
            s,
            "  iter {} {:<26} {:>5} -> {:<5}{}",
            r.iteration,
            r.pass,
            r.nodes_before,
            r.nodes_after,
            if r.changed { "  changed" } else { "" }
        );
    }
    let _ = writeln!(s, "\npartition:\n{}", cg.exec.report());
    let _ = writeln!(
        s,
        "\nops: {}",
        g.op_histogram()
            .iter()
            .map(|(k, c)| format!("{k} x{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut bytes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for n in &g.nodes {
        if let Op::Weight { fact, .. } = &n.op {
            let e = bytes.entry(fact.dtype.to_string()).or_default();
            e.0 += 1;
            e.1 += fact.bytes().unwrap_or(0);
        }
    }
    let _ = writeln!(s, "\nweights by format:");
    for (d, (count, b)) in &bytes {
        let _ = writeln!(s, "  {d:<11} {count:>4} tensors {:>9.2} MiB", mib(*b));
    }
    let _ = writeln!(
        s,
        "  total                    {:>9.2} MiB",
        mib(bytes.values().map(|v| v.1).sum())
    );

    let m = memory(model);
    let _ = writeln!(s, "\nmemory (planned):");
    for (name, arena, naive) in &m.graphs {
        let _ = writeln!(
            s,
            "  {name:<24} arena {:>9.2} MiB (one buffer per value: {:>9.2} MiB)",
            mib(*arena as usize),
            mib(*naive as usize)
        );
    }
    let _ = writeln!(
        s,
        "  weights {:.2} MiB + KV cache {:.2} MiB = floor {:.2} MiB; arenas {:.2} MiB (naive {:.2} MiB)",
        mib(m.weights_bytes),
        mib(m.kv_bytes),
        mib(m.floor_bytes),
        mib(m.arena_bytes as usize),
        mib(m.naive_activation_bytes as usize)
    );

    if nodes {
        let _ = writeln!(s, "\nnodes (id name: kernel -> output):");
        for id in g.ids() {
            let n = g.node(id);
            if n.op.is_source() {
                continue;
            }
            let ins: Vec<String> = n.inputs.iter().map(|i| short(g.fact(*i))).collect();
            let _ = writeln!(
                s,
                "  #{:<4} {:<44} {:<40} ({}) -> {}",
                id.0,
                n.name,
                be.kernel_name(g, id),
                ins.join(", "),
                short(&n.fact)
            );
        }
    }
    s
}

/// Arena alignment the planner is asked for here (the CPU backend's).
const PLAN_ALIGN: u64 = 64;

/// A model's memory as planned: what a session needs besides the weights.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemorySummary {
    /// Prepared weights of every loaded program (LLM, and the vision part while loaded).
    pub weights_bytes: usize,
    /// One session's KV cache (every layer's K and V, `cache_rows` rows).
    pub kv_bytes: usize,
    /// Planned activation arenas, summed over the compiled graphs.
    pub arena_bytes: u64,
    /// One buffer per intermediate instead, summed over the same graphs.
    pub naive_activation_bytes: u64,
    /// Weights + KV cache: what no plan can go below.
    pub floor_bytes: usize,
    /// Per graph: (name, arena bytes, naive bytes).
    pub graphs: Vec<(String, u64, u64)>,
}

/// Plans every graph of `model` (and of its vision part, while loaded).
pub fn memory(model: &Model) -> MemorySummary {
    let mut graphs: Vec<(String, &Graph)> = model
        .graphs
        .iter()
        .map(|(k, cg)| (format!("{k:?}"), &cg.graph))
        .collect();
    graphs.sort_by(|a, b| a.0.cmp(&b.0));
    let enc = model.vision.as_ref().and_then(|v| v.encoder());
    if let Some(enc) = &enc {
        graphs.extend(
            enc.stages
                .iter()
                .map(|st| (format!("vision {}", st.name), &st.graph)),
        );
        graphs.extend(
            enc.tail_stages
                .iter()
                .map(|st| (format!("vision {} (1 tile)", st.name), &st.graph)),
        );
    }
    let planned: Vec<(String, u64, u64)> = graphs
        .into_iter()
        .map(|(name, g)| {
            let p = plan::plan(g, PLAN_ALIGN);
            (name, p.arena_bytes, p.naive_bytes)
        })
        .collect();
    let cfg = &model.config;
    // One cache's storage (block dtypes included: int8 adds a scale per row and head).
    let kv_one = TensorFact::new(
        model.options.precision.kv_cache.dtype(cfg.head_dim),
        [model.cache_rows, cfg.kv_width()],
    )
    .bytes()
    .unwrap_or(4 * model.cache_rows * cfg.kv_width());
    let kv_bytes = 2 * cfg.num_hidden_layers * kv_one;
    let weights_bytes = model.weight_bytes + enc.as_ref().map_or(0, |e| e.weight_bytes);
    MemorySummary {
        weights_bytes,
        kv_bytes,
        arena_bytes: planned.iter().map(|g| g.1).sum(),
        naive_activation_bytes: planned.iter().map(|g| g.2).sum(),
        floor_bytes: weights_bytes + kv_bytes,
        graphs: planned,
    }
}

fn short(f: &TensorFact) -> String {
    f.to_string()
}
