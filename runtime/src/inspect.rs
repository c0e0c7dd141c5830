//! Human-readable description of a compiled model (`npurt inspect`): what each pass
//! did, what every node runs as on its backend, and where the weight bytes are.

use crate::model::{GraphKind, Model};
use npurt_graph::{Op, TensorFact};
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

fn short(f: &TensorFact) -> String {
    f.to_string()
}
