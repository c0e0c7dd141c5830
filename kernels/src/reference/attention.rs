use super::KernelError;

/// Row widths and extents of an attention call, once its arguments are checked.
pub(crate) struct Dims {
    pub qw: usize,
    pub kw: usize,
    pub t_rows: usize,
    /// One past the last valid position (`pos + n_valid`).
    pub end: usize,
}

/// The checks every attention kernel makes on run-time arguments (positions come from
/// the caller, so they are never trusted): the valid rows fit the chunk and the cache,
/// and the caches and output have matching sizes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_args<C>(
    q: &[f32],
    k_cache: &[C],
    v_cache: &[C],
    pos: usize,
    n_valid: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &[f32],
) -> Result<Dims, KernelError> {
    let qw = n_heads * head_dim;
    let kw = n_kv_heads * head_dim;
    let t_rows = q.len() / qw.max(1);
    let end = pos + n_valid;
    if end > k_cache.len() / kw.max(1)
        || n_valid == 0
        || n_valid > t_rows
        || out.len() < q.len()
        || v_cache.len() != k_cache.len()
    {
        return Err(KernelError(format!("attention over positions {pos}..{end} does not fit a {}-row cache / {t_rows}-row chunk", k_cache.len() / kw.max(1))));
    }
    Ok(Dims {
        qw,
        kw,
        t_rows,
        end,
    })
}

/// Causal GQA attention (eager: scores, softmax, weighted sum, all f32).
/// `q [T, nh*hd]`, caches `[S, nkv*hd]`. Query `t` sits at position `pos + t` and sees
/// keys `j <= pos + t` with `j < pos + n_valid`; query head `h` reads KV head
/// `h / (nh / nkv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
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
    let Dims {
        qw,
        kw,
        t_rows,
        end,
    } = check_args(
        q, k_cache, v_cache, pos, n_valid, n_heads, n_kv_heads, head_dim, out,
    )?;
    let group = n_heads / n_kv_heads;
    let mut scores = vec![0f32; end];
    for t in 0..t_rows {
        let last = (pos + t).min(end - 1);
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[t * qw + h * head_dim..][..head_dim];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate().take(last + 1) {
                let kv = &k_cache[j * kw + kvh * head_dim..][..head_dim];
                *s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut().take(last + 1) {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[t * qw + h * head_dim..][..head_dim];
            o.fill(0.0);
            for (j, s) in scores.iter().enumerate().take(last + 1) {
                let vv = &v_cache[j * kw + kvh * head_dim..][..head_dim];
                for d in 0..head_dim {
                    o[d] += s / sum * vv[d];
                }
            }
        }
    }
    Ok(())
}
