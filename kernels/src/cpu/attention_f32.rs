//! Causal GQA attention, threaded over (query row, head) pairs, same semantics as
//! `reference::attention`. Per pair: all scores first (8-lane dot products the compiler
//! vectorizes), then softmax, then a vectorizable weighted sum of V rows. The per-pair
//! routine is compiled for the baseline, AVX2+FMA and AVX-512 and picked at run time:
//! at 512-token prefill this is a third of the work, so it must not run scalar.

use super::{isa, Isa, SendPtr};
use crate::reference::{check_attention_args, AttentionDims, KernelError};
use rayon::prelude::*;

const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for p in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += a[p + l] * b[p + l];
        }
    }
    acc.iter().sum::<f32>() + (full..a.len()).map(|p| a[p] * b[p]).sum::<f32>()
}

/// One (query, head) pair: `out = softmax(q . K[kv_off..] * scale) @ V`, over keys
/// `0..=last`, using `scores` as scratch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair(q: &[f32], k_cache: &[f32], v_cache: &[f32], kw: usize, kv_off: usize, last: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores[..=last].iter_mut().enumerate() {
        *s = dot(q, &k_cache[j * kw + kv_off..][..hd]) * scale;
        max = max.max(*s);
    }
    // Vectorizable exp (math.rs) over all scores, then the sum.
    for s in scores[..=last].iter_mut() {
        *s = super::math::exp(*s - max);
    }
    let sum: f32 = scores[..=last].iter().sum();
    out.fill(0.0);
    for (j, &p) in scores[..=last].iter().enumerate() {
        let v = &v_cache[j * kw + kv_off..][..hd];
        for (o, &x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_avx2(q: &[f32], k: &[f32], v: &[f32], kw: usize, off: usize, last: usize, scale: f32, s: &mut [f32], out: &mut [f32]) {
    pair(q, k, v, kw, off, last, scale, s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_avx512(q: &[f32], k: &[f32], v: &[f32], kw: usize, off: usize, last: usize, scale: f32, s: &mut [f32], out: &mut [f32]) {
    pair(q, k, v, kw, off, last, scale, s, out)
}

#[allow(clippy::too_many_arguments)]
pub fn attention_f32(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos: usize,
    n_valid: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttentionDims { qw, kw, t_rows, end } = check_attention_args(q, k_cache, v_cache, pos, n_valid, n_heads, n_kv_heads, head_dim, out)?;
    let group = n_heads / n_kv_heads;
    let ptr = SendPtr(out.as_mut_ptr());
    let path = isa();
    (0..t_rows * n_heads).into_par_iter().for_each_init(
        || vec![0f32; end],
        |scores, th| {
            let (t, h) = (th / n_heads, th % n_heads);
            let last = (pos + t).min(end - 1);
            let qv = &q[t * qw + h * head_dim..][..head_dim];
            // SAFETY: each (t, h) pair writes only its own head_dim slice of row t.
            let o = unsafe { std::slice::from_raw_parts_mut(ptr.at(t * qw + h * head_dim), head_dim) };
            let off = (h / group) * head_dim;
            match path {
                // SAFETY: isa() reports these paths only when the CPU has the features.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => unsafe { pair_avx512(qv, k_cache, v_cache, kw, off, last, scale, scores, o) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { pair_avx2(qv, k_cache, v_cache, kw, off, last, scale, scores, o) },
                _ => pair(qv, k_cache, v_cache, kw, off, last, scale, scores, o),
            }
        },
    );
    Ok(())
}
