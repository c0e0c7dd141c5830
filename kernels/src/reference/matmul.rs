/// `out[m, n] = sum_k a[m, k] * b'[k, n]` where `b' = b^T` if `transpose_b` (b is
/// `[n, k]`, PyTorch Linear layout) else `b` (`[k, n]`). Accumulates in f32 in k order.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    transpose_b: bool,
    out: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                let bv = if transpose_b {
                    b[j * k + p]
                } else {
                    b[p * n + j]
                };
                acc += a[i * k + p] * bv;
            }
            out[i * n + j] = acc;
        }
    }
}

/// Applies a fused matmul epilogue to the raw product `pre [m, n_b]` (`n_b` = weight
/// rows): bias `[n]`, residual `[m, n]`, or SwiGLU (`n_b = 2n`: gate columns `0..n`,
/// up columns `n..2n`; `out = silu(gate) * up`).
pub fn epilogue(
    pre: &[f32],
    m: usize,
    n_b: usize,
    epi: npurt_graph::Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    use npurt_graph::Epilogue;
    if epi == Epilogue::SwiGlu {
        let n = n_b / 2;
        for i in 0..m {
            for j in 0..n {
                let (g, u) = (pre[i * n_b + j], pre[i * n_b + n + j]);
                out[i * n + j] = g / (1.0 + (-g).exp()) * u;
            }
        }
        return;
    }
    for i in 0..m {
        for j in 0..n_b {
            let mut v = pre[i * n_b + j];
            if let Some(b) = bias {
                v += b[j];
            }
            if let Some(r) = residual {
                v += r[i * n_b + j];
            }
            out[i * n_b + j] = v;
        }
    }
}
