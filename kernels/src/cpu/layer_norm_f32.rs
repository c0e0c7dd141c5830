//! LayerNorm (`Op::LayerNorm`, HF `nn.LayerNorm`: `(x - mean) * rsqrt(var + eps) * w + b`
//! per row, biased variance), the ViT's norm. Two passes over each row in f32 like the
//! reference (mean, then the mean of squared deviations: a one-pass `E[x^2] - E[x]^2`
//! loses digits when the mean is large), with sixteen partial sums so the compiler
//! vectorizes the reductions; compiled per ISA and picked at run time.

use super::{isa, Isa};
use crate::reference::KernelError;

/// Rows at or above this many values are normalised in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `out = (x - mean) * rsqrt(var + eps) * w + b` for each row of `w.len()` values of `x`.
pub fn layer_norm_f32(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let h = w.len();
    if h == 0 || b.len() != h || !x.len().is_multiple_of(h) || out.len() != x.len() {
        return Err(KernelError(format!(
            "layer_norm of {} values with a weight of {h} and a bias of {} into {} values",
            x.len(),
            b.len(),
            out.len()
        )));
    }
    let isa = isa();
    let run = |x: &[f32], out: &mut [f32]| rows_on(isa, x, w, b, eps, out);
    super::pool::for_row_chunks(x, out, h, PARALLEL_MIN_VALUES, run);
    Ok(())
}

/// The rows of `x` normalized into `out` on this thread with `isa`'s code (also the
/// matmul's LayerNorm prologue, `act_quant`, which so gives this kernel's values bit
/// for bit). The caller checked the lengths (whole rows of `w.len()`); `isa` is at most
/// what the CPU supports.
pub(crate) fn rows_on(isa: Isa, x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract: the CPU supports `isa`.
        Isa::Avx512Vnni => unsafe { rows_avx512(x, w, b, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { rows_avx2(x, w, b, eps, out) },
        _ => rows(x, w, b, eps, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_avx512(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    rows(x, w, b, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    rows(x, w, b, eps, out)
}

/// `sum(f(x))` with sixteen partial sums (f32 addition is not associative, so the
/// compiler only vectorizes a reduction whose order is written out).
#[inline(always)]
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

#[inline(always)]
fn rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let mean = sum16(row, |v| v) / h as f32;
        let var = sum16(row, |v| (v - mean) * (v - mean)) / h as f32;
        let r = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &c) in o.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mean) * r * g + c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::with_isa;

    #[test]
    fn matches_reference_on_every_path() {
        for h in [1, 13, 72, 1152] {
            // A mean far from zero, as the ViT's residual stream has.
            let x: Vec<f32> = (0..5 * h)
                .map(|i| 4.0 + ((i * 37 % 101) as f32 - 50.0) / 13.0)
                .collect();
            let w: Vec<f32> = (0..h).map(|i| 0.5 + i as f32 / h as f32).collect();
            let b: Vec<f32> = (0..h).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
            let mut want = vec![0f32; x.len()];
            crate::reference::layer_norm(&x, &w, &b, 1e-6, &mut want);
            for isa in Isa::supported() {
                let mut got = vec![0f32; x.len()];
                with_isa(isa, || layer_norm_f32(&x, &w, &b, 1e-6, &mut got)).unwrap();
                for (g, r) in got.iter().zip(&want) {
                    assert!(
                        (g - r).abs() <= 1e-5 * r.abs().max(1.0),
                        "h {h} {}: {g} vs {r}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (w, b) = (vec![1f32; 4], vec![0f32; 4]);
        assert!(layer_norm_f32(&[0.0; 5], &w, &b, 1e-5, &mut [0.0; 5]).is_err());
        assert!(layer_norm_f32(&[0.0; 8], &w, &b[..3], 1e-5, &mut [0.0; 8]).is_err());
        assert!(layer_norm_f32(&[0.0; 8], &w, &b, 1e-5, &mut [0.0; 4]).is_err());
        assert!(layer_norm_f32(&[], &[], &[], 1e-5, &mut []).is_err());
    }
}
