use super::KernelError;

/// Row widths and extents of an attention call, once its arguments are checked.
#[derive(Clone, Copy)]
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
    row_len: usize,
    out: &[f32],
) -> Result<Dims, KernelError> {
    let qw = n_heads * head_dim;
    let kw = n_kv_heads * head_dim;
    let t_rows = q.len() / qw.max(1);
    let end = pos + n_valid;
    if end > k_cache.len() / row_len.max(1)
        || n_valid == 0
        || n_valid > t_rows
        || out.len() < q.len()
        || v_cache.len() != k_cache.len()
    {
        return Err(KernelError(format!("attention over positions {pos}..{end} does not fit a {}-row cache / {t_rows}-row chunk", k_cache.len() / row_len.max(1))));
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
    let dims = check_args(
        q,
        k_cache,
        v_cache,
        pos,
        n_valid,
        n_heads,
        n_kv_heads,
        head_dim,
        n_kv_heads * head_dim,
        out,
    )?;
    let heads = Heads {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    };
    eager(q, k_cache, v_cache, pos, &dims, heads, true, out);
    Ok(())
}

/// Causal GQA attention over int8 caches (`DType::Q8Head` blocks of `head_dim`, raw
/// bytes `[S, n_kv_heads * (head_dim + 4)]`): the caches dequantized, then [`attention`].
#[allow(clippy::too_many_arguments)]
pub fn attention_q8head(
    q: &[f32],
    k_cache: &[u8],
    v_cache: &[u8],
    pos: usize,
    n_valid: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let k = super::dequantize_kv_q8head(k_cache, head_dim);
    let v = super::dequantize_kv_q8head(v_cache, head_dim);
    attention(
        q, &k, &v, pos, n_valid, n_heads, n_kv_heads, head_dim, scale, out,
    )
}

/// Bidirectional attention (the ViT's `AttentionMode::Bidirectional`): `q, k, v` are
/// `[B * seq, width]`, `B` independent sequences; every query sees all `seq` keys of
/// its own sequence. The same eager loop as the causal mode, without the mask.
#[allow(clippy::too_many_arguments)]
pub fn attention_bidirectional(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (qw, kw, rows) =
        check_bidirectional_args(q, k, v, seq, n_heads, n_kv_heads, head_dim, out)?;
    let heads = Heads {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    };
    for b in 0..rows / seq {
        let (qs, ks) = (b * seq * qw, b * seq * kw);
        let dims = check_args(
            &q[qs..qs + seq * qw],
            &k[ks..ks + seq * kw],
            &v[ks..ks + seq * kw],
            0,
            seq,
            n_heads,
            n_kv_heads,
            head_dim,
            kw,
            &out[qs..qs + seq * qw],
        )?;
        eager(
            &q[qs..qs + seq * qw],
            &k[ks..ks + seq * kw],
            &v[ks..ks + seq * kw],
            0,
            &dims,
            heads,
            false,
            &mut out[qs..qs + seq * qw],
        );
    }
    Ok(())
}

/// The longest sequence the integer attention takes: its `P V` sums over the keys stay
/// in i32 (`seq * 255 * 127 < 2^31`). Mirrors `npurt_graph::MAX_I8_ATTENTION_SEQ`.
pub const MAX_I8_ATTENTION_SEQ: usize = 65536;

/// One row quantized to i8 with one scale: `amax / 127`, `q = round_half_even(x *
/// (127 / amax))` clamped to +-127 (0 for a zero row). Returns the scale. The SIMD
/// kernels compute the same products and round the same way, so they get the same
/// integers.
pub(crate) fn quantize_row_i8(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// A softmax weight `p = exp(s - max)` in `[0, 1]` as the u8 `round(255 p)` the integer
/// `P V` multiplies.
#[inline]
pub(crate) fn quantize_prob(p: f32) -> u8 {
    (255.0 * p).round_ties_even().clamp(0.0, 255.0) as u8
}

/// Bidirectional attention with integer products (`AttentionPrecision::I8`, the ViT's
/// w8a8), exactly as the IR defines it: per sequence and head, `q` and `k` rows in i8
/// with a scale per row, `v` in i8 with a scale per channel over the sequence's keys,
/// i32 dot products for the scores, the softmax's weights rounded to u8 and i32 sums for
/// `P V`, normalised by the sum of the u8 weights. Backends are held to this emulation
/// (their `exp` may round a weight to the neighbouring u8).
#[allow(clippy::too_many_arguments)]
pub fn attention_bidirectional_i8(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (qw, kw, rows) =
        check_bidirectional_args(q, k, v, seq, n_heads, n_kv_heads, head_dim, out)?;
    if seq > MAX_I8_ATTENTION_SEQ {
        return Err(KernelError(format!(
            "int8 attention over sequences of {seq} rows (at most {MAX_I8_ATTENTION_SEQ})"
        )));
    }
    let (hd, group) = (head_dim, n_heads / n_kv_heads);
    let (mut kq, mut sk) = (vec![0i8; seq * hd], vec![0f32; seq]);
    let (mut vq, mut sv) = (vec![0i8; seq * hd], vec![0f32; hd]);
    let (mut qq, mut s, mut p) = (vec![0i8; hd], vec![0f32; seq], vec![0u8; seq]);
    let mut column = vec![0f32; seq];
    let mut column_q = vec![0i8; seq];
    for b in 0..rows / seq {
        for g in 0..n_kv_heads {
            let at = |j: usize| (b * seq + j) * kw + g * hd;
            for j in 0..seq {
                sk[j] = quantize_row_i8(&k[at(j)..at(j) + hd], &mut kq[j * hd..(j + 1) * hd]);
            }
            for d in 0..hd {
                for (j, c) in column.iter_mut().enumerate() {
                    *c = v[at(j) + d];
                }
                sv[d] = quantize_row_i8(&column, &mut column_q);
                for (j, &c) in column_q.iter().enumerate() {
                    vq[j * hd + d] = c;
                }
            }
            for h in g * group..(g + 1) * group {
                for i in 0..seq {
                    let row = (b * seq + i) * qw + h * hd;
                    let c = quantize_row_i8(&q[row..row + hd], &mut qq) * scale;
                    for (j, s) in s.iter_mut().enumerate() {
                        let dot: i32 = qq
                            .iter()
                            .zip(&kq[j * hd..(j + 1) * hd])
                            .map(|(&a, &b)| i32::from(a) * i32::from(b))
                            .sum();
                        *s = dot as f32 * c * sk[j];
                    }
                    let m = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                    let mut l = 0i32;
                    for (p, &s) in p.iter_mut().zip(&s) {
                        *p = quantize_prob((s - m).exp());
                        l += i32::from(*p);
                    }
                    let inv_l = 1.0 / l as f32;
                    for d in 0..hd {
                        let acc: i32 = p
                            .iter()
                            .enumerate()
                            .map(|(j, &p)| i32::from(p) * i32::from(vq[j * hd + d]))
                            .sum();
                        out[row + d] = acc as f32 * sv[d] * inv_l;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Bidirectional attention in f16 (`AttentionPrecision::F16`): `q`, `k` and `v` rounded
/// to f16 (nearest, ties to even), then [`attention_bidirectional`] in f32: the
/// definition's "f16 or wider" sums at their widest. Backends that sum in f16 are held
/// to it by the conformance threshold.
#[allow(clippy::too_many_arguments)]
pub fn attention_bidirectional_f16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let round =
        |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() };
    attention_bidirectional(
        &round(q),
        &round(k),
        &round(v),
        seq,
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
        out,
    )
}

/// The checks every bidirectional attention kernel makes: whole sequences of `seq`
/// rows, k/v/out sized to match q, heads that group evenly. Returns `(qw, kw, rows)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_bidirectional_args(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &[f32],
) -> Result<(usize, usize, usize), KernelError> {
    if head_dim == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(KernelError(format!(
            "bidirectional attention: {n_heads} heads over {n_kv_heads} kv heads of head_dim {head_dim}"
        )));
    }
    let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
    let rows = q.len() / qw;
    if seq == 0
        || !q.len().is_multiple_of(qw)
        || !rows.is_multiple_of(seq)
        || k.len() != rows * kw
        || v.len() != k.len()
        || out.len() != q.len()
    {
        return Err(KernelError(format!(
            "bidirectional attention: {rows} query rows are not whole sequences of {seq} matching k/v"
        )));
    }
    Ok((qw, kw, rows))
}

#[derive(Clone, Copy)]
struct Heads {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

/// The eager loop both modes share: with `causal`, query `t` sees keys up to
/// `pos + t`; without, every key before `dims.end`.
#[allow(clippy::too_many_arguments)]
fn eager(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos: usize,
    dims: &Dims,
    heads: Heads,
    causal: bool,
    out: &mut [f32],
) {
    let Dims {
        qw,
        kw,
        t_rows,
        end,
    } = *dims;
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    } = heads;
    let group = n_heads / n_kv_heads;
    let mut scores = vec![0f32; end];
    for t in 0..t_rows {
        let last = if causal {
            (pos + t).min(end - 1)
        } else {
            end - 1
        };
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
}
