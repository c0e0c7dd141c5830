//! Causal GQA attention, threaded over (query row, head) pairs with a one-pass online
//! softmax per pair (no score matrix), same semantics as `reference::attention`.

use super::SendPtr;
use crate::reference::KernelError;
use rayon::prelude::*;

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
    let qw = n_heads * head_dim;
    let kw = n_kv_heads * head_dim;
    let t_rows = q.len() / qw;
    let end = pos + n_valid;
    if end > k_cache.len() / kw || n_valid == 0 || n_valid > t_rows || out.len() < q.len() {
        return Err(KernelError(format!("attention over positions {pos}..{end} does not fit the cache / chunk")));
    }
    let group = n_heads / n_kv_heads;
    let ptr = SendPtr(out.as_mut_ptr());
    (0..t_rows * n_heads).into_par_iter().for_each(|th| {
        let (t, h) = (th / n_heads, th % n_heads);
        let kvh = h / group;
        let last = (pos + t).min(end - 1);
        let qv = &q[t * qw + h * head_dim..][..head_dim];
        let mut acc = vec![0f32; head_dim];
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
        for j in 0..=last {
            let kv = &k_cache[j * kw + kvh * head_dim..][..head_dim];
            let s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
            let vv = &v_cache[j * kw + kvh * head_dim..][..head_dim];
            if s > max {
                let c = (max - s).exp();
                sum *= c;
                acc.iter_mut().for_each(|x| *x *= c);
                max = s;
            }
            let p = (s - max).exp();
            sum += p;
            for (a, v) in acc.iter_mut().zip(vv) {
                *a += p * v;
            }
        }
        for (d, a) in acc.iter().enumerate() {
            // SAFETY: each (t, h) pair writes only its own head_dim slice of row t.
            unsafe { *ptr.at(t * qw + h * head_dim + d) = a / sum };
        }
    });
    Ok(())
}
