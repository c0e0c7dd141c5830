//! The CPU side of matmul epilogues: walks an [`Epilogue`]'s steps over output rows.
//! Used by the packed matmul's per-tile output stage (16 columns of up to 8 rows, in
//! registers) and by the f32-weight matmul path (whole rows, after `matmul_f32`).
//! Inlined into the callers' per-ISA code so every step's loop vectorizes; the oracle
//! is `reference::epilogue`.

use super::{isa, math, Isa};
use crate::reference::KernelError;
use npurt_graph::{Activation, Epilogue, Step};

/// The f32-weight matmul's output stage: `out [m, n] = epi(pre [m, n_b])`
/// (`n = epi.out_cols(n_b)`), or with `pre` `None`, `out = epi(out)` in place (the
/// product already in `out`; not for a GLU, which reads the wider product).
/// `bias [n]` and `residual [m, n]` as the epilogue's steps need them.
pub fn epilogue_f32(
    pre: Option<&[f32]>,
    m: usize,
    n_b: usize,
    epi: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let fail = |what: String| Err(KernelError(format!("epilogue {epi} ({m} x {n_b}): {what}")));
    let Some(n) = epi.out_cols(n_b) else {
        return fail("a GLU needs an even number of product columns".into());
    };
    if Some(out.len()) != m.checked_mul(n) {
        return fail(format!("out has {} values, want {m} * {n}", out.len()));
    }
    match pre {
        Some(p) if Some(p.len()) != m.checked_mul(n_b) => {
            return fail(format!(
                "the product has {} values, want {m} * {n_b}",
                p.len()
            ))
        }
        None if epi.glu().is_some() => return fail("a GLU cannot run in place".into()),
        _ => {}
    }
    if epi.has_bias() != bias.is_some() || bias.is_some_and(|b| b.len() != n) {
        return fail(format!(
            "bias must be [{n}] exactly when the list has a bias step"
        ));
    }
    if epi.has_residual() != residual.is_some() || residual.is_some_and(|r| r.len() != m * n) {
        return fail(format!(
            "residual must be [{m}, {n}] exactly when the list has one"
        ));
    }
    let run = |out: &mut [f32]| match pre {
        Some(p) => apply_rows(p, n_b, epi, bias, residual, out),
        None => apply_in_place(out, n, epi, bias, residual),
    };
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports paths the CPU supports.
        Isa::Avx512Vnni => unsafe { with_avx512(out, run) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { with_avx2(out, run) },
        _ => run(out),
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn with_avx512(out: &mut [f32], run: impl Fn(&mut [f32])) {
    run(out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn with_avx2(out: &mut [f32], run: impl Fn(&mut [f32])) {
    run(out)
}

/// `v = act(gate) * up`, the GLU step.
#[inline(always)]
pub(crate) fn glu(act: Activation, v: &mut [f32], up: &[f32]) {
    math::activate(act, v);
    v.iter_mut().zip(up).for_each(|(v, u)| *v *= u);
}

/// Applies `steps` (an epilogue's steps after its GLU, see [`Epilogue::after_glu`]) to
/// `v`, one output row's columns: `bias` holds the bias of those columns and
/// `residual` the residual row's, each present when its step is (the callers validated
/// the operands against the epilogue; a missing one is skipped, never read).
#[inline(always)]
pub(crate) fn apply(steps: &[Step], v: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>) {
    for &step in steps {
        match (step, bias, residual) {
            (Step::Bias, Some(b), _) => v.iter_mut().zip(b).for_each(|(v, b)| *v += b),
            (Step::Act(a), _, _) => math::activate(a, v),
            (Step::Residual, _, Some(r)) => v.iter_mut().zip(r).for_each(|(v, r)| *v += r),
            // A GLU is applied before the walk (it needs the up product).
            _ => {}
        }
    }
}

/// `out [m, n] = epilogue(pre [m, n_b])` on whole rows (`n = epi.out_cols(n_b)`):
/// the f32-weight matmul path. Without a GLU `pre` may be `out` itself (see
/// [`apply_in_place`]); a GLU reads gate and up columns of the wider `pre`.
#[inline(always)]
fn apply_rows(
    pre: &[f32],
    n_b: usize,
    epi: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let n = epi.out_cols(n_b).unwrap_or(n_b);
    if n == 0 {
        return;
    }
    for (i, (p, o)) in pre
        .chunks_exact(n_b)
        .zip(out.chunks_exact_mut(n))
        .enumerate()
    {
        let res = residual.and_then(|r| r.get(i * n..(i + 1) * n));
        match epi.glu() {
            Some(a) => {
                o.copy_from_slice(&p[..n]);
                glu(a, o, &p[n..2 * n]);
            }
            None => o.copy_from_slice(p),
        }
        apply(epi.after_glu(), o, bias, res);
    }
}

/// `out [m, n] = epilogue(out)` for an epilogue without a GLU (the product was written
/// straight into `out`, no temporary).
#[inline(always)]
fn apply_in_place(
    out: &mut [f32],
    n: usize,
    epi: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) {
    if n == 0 {
        return;
    }
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        let res = residual.and_then(|r| r.get(i * n..(i + 1) * n));
        apply(epi.after_glu(), o, bias, res);
    }
}
