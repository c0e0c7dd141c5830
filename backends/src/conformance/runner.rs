//! Runs one case on a backend exactly as the runtime would drive it: ask support for
//! every node, prepare weights, compile, bind, run, synchronise, read back.

use super::case::{Case, CaseData, Compared};
use super::oracle;
use super::report::{Row, Status};
use crate::{Backend, Bindings, BufferUsage, DeviceBuffer, Support};
use npurt_graph::{DType, NodeId, Op};
use npurt_kernels::HostData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Normalised mean squared error `sum((ours - ref)^2) / sum(ref^2)`. An all-zero
/// reference falls back to the plain sum of squared errors (0 iff exact); anything
/// non-finite in `ours` is infinitely wrong.
pub fn nmse(ours: &[f32], reference: &[f32]) -> f64 {
    if ours.len() != reference.len() || ours.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut err, mut norm) = (0f64, 0f64);
    for (&o, &r) in ours.iter().zip(reference) {
        err += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    if norm > 0.0 {
        err / norm
    } else {
        err
    }
}

/// Runs `case` on `backend`. Never panics: a panicking backend is a failed case.
pub fn run_case(backend: &dyn Backend, case: &Case) -> Row {
    let row = |nmse: Option<f64>, status: Status| Row {
        op: case.op.to_string(),
        case: case.name.clone(),
        backend: backend.name().to_string(),
        nmse,
        threshold: case.threshold,
        status,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| run_checked(backend, case)));
    match outcome {
        Ok(Outcome::Unsupported(why)) => row(None, Status::Unsupported(why)),
        Ok(Outcome::Error(why)) => row(None, Status::Fail(why)),
        Ok(Outcome::Measured(e)) if e <= case.threshold => row(Some(e), Status::Pass),
        Ok(Outcome::Measured(e)) => row(
            Some(e),
            Status::Fail(format!(
                "NMSE {e:.3e} exceeds {:.1e} (seed {:#x})",
                case.threshold, case.seed
            )),
        ),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            row(None, Status::Fail(format!("panicked: {msg}")))
        }
    }
}

enum Outcome {
    Unsupported(String),
    Error(String),
    /// Worst NMSE over the compared values.
    Measured(f64),
}

fn run_checked(backend: &dyn Backend, case: &Case) -> Outcome {
    // A case that does not build or that the oracle rejects is a bug in the suite, not
    // in the backend; it still shows up as a failure so nobody ships on it.
    let data = match case.instantiate() {
        Ok(d) => d,
        Err(e) => return Outcome::Error(format!("suite bug: case does not build: {e}")),
    };
    for id in data.graph.ids() {
        if let Support::Unsupported(why) = backend.supports(&data.graph, id) {
            let n = data.graph.node(id);
            return Outcome::Unsupported(format!("{} `{}`: {why}", n.op.kind(), n.name));
        }
    }
    let expected = match oracle::expected(&data) {
        Ok(e) => e,
        Err(e) => return Outcome::Error(format!("suite bug: oracle failed: {e}")),
    };
    match execute(backend, &data) {
        Ok(got) => Outcome::Measured(
            got.iter()
                .zip(&expected)
                .map(|(g, e)| nmse(g, e))
                .fold(0.0, f64::max),
        ),
        Err(e) => Outcome::Error(e),
    }
}

/// Prepares, compiles, binds and runs the case graph; returns the compared values.
fn execute(backend: &dyn Backend, data: &CaseData) -> Result<Vec<Vec<f32>>, String> {
    let g = &data.graph;
    let missing = |id: NodeId| format!("suite bug: source `{}` has no data", g.node(id).name);
    let mut weights = Vec::new();
    let mut sources: Vec<(NodeId, Arc<dyn DeviceBuffer>)> = Vec::new();
    for id in g.ids() {
        let n = g.node(id);
        let usage = match &n.op {
            Op::Weight { name, .. } => {
                let t = data.source(id).ok_or_else(|| missing(id))?;
                weights.push((
                    id,
                    backend
                        .prepare_weight(name, t.clone())
                        .map_err(|e| format!("prepare_weight: {e}"))?,
                ));
                continue;
            }
            Op::Input { .. } => BufferUsage::Activations,
            Op::State { .. } => BufferUsage::State,
            _ => continue,
        };
        let buf = backend
            .alloc(&n.fact, usage)
            .map_err(|e| format!("alloc: {e}"))?;
        backend
            .write(buf.as_ref(), data.source(id).ok_or_else(|| missing(id))?)
            .map_err(|e| format!("write `{}`: {e}", n.name))?;
        sources.push((id, buf));
    }
    let exec = backend
        .compile(g, &weights)
        .map_err(|e| format!("compile: {e}"))?;
    let mut outputs = Vec::new();
    for (name, id) in &g.outputs {
        outputs.push((
            name.clone(),
            backend
                .alloc(g.fact(*id), BufferUsage::Activations)
                .map_err(|e| format!("alloc output: {e}"))?,
        ));
    }
    let bindings = Bindings { sources, outputs };
    let mut scratch = exec
        .new_scratch()
        .map_err(|e| format!("new_scratch: {e}"))?;
    exec.run(&bindings, scratch.as_mut())
        .map_err(|e| format!("run: {e}"))?;
    backend
        .synchronize()
        .map_err(|e| format!("synchronize: {e}"))?;
    data.compared
        .iter()
        .map(|c| {
            let buf = match c {
                Compared::Output(name) | Compared::OutputRows(name, _) => bindings.output(name),
                Compared::State(id) => bindings.source(*id),
            }
            .ok_or_else(|| format!("suite bug: {c:?} is not bound"))?;
            let t = backend
                .read(buf.as_ref())
                .map_err(|e| format!("read: {e}"))?;
            if &t.fact != buf.fact() {
                return Err(format!(
                    "read returned {}, the buffer is {}",
                    t.fact,
                    buf.fact()
                ));
            }
            let values = match t.data {
                HostData::F32(v) if t.fact.dtype == DType::F32 => Ok(v),
                // An f16 state compares by value (the oracle's are f16-rounded f32).
                HostData::F16(v) if t.fact.dtype == DType::F16 => {
                    Ok(v.iter().map(|x| x.to_f32()).collect())
                }
                // An int8 cache compares by its dequantized values (the oracle's are
                // the reference's quantized rows, read back).
                HostData::Bytes(b) if matches!(t.fact.dtype, DType::Q8Head { .. }) => {
                    let mut v = vec![0f32; t.fact.elems().unwrap_or(0)];
                    if npurt_kernels::quant::dequantize(t.fact.dtype, &b, &mut v) {
                        Ok(v)
                    } else {
                        Err(format!("{} bytes do not match {}", b.len(), t.fact))
                    }
                }
                _ => Err(format!(
                    "read returned {} storage that does not match",
                    t.fact
                )),
            };
            values.map(|v| c.kept(&t.fact, v))
        })
        .collect()
}
