use super::activation;

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
/// rows): the list's steps in order on every output value (see `npurt_graph::Epilogue`):
/// a GLU (`n_b = 2n`: gate columns `0..n`, up columns `n..2n`; `act(gate) * up`), then
/// `+ bias [n]`, an activation, `+ residual [m, n]`. `out` is `[m, n]`; a step whose
/// operand is missing is skipped (the graph guarantees they are there).
pub fn epilogue(
    pre: &[f32],
    m: usize,
    n_b: usize,
    epi: npurt_graph::Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    use npurt_graph::Step;
    let n = epi.out_cols(n_b).unwrap_or(n_b / 2);
    for i in 0..m {
        for j in 0..n {
            let mut v = pre[i * n_b + j];
            for &step in epi.steps() {
                v = match (step, bias, residual) {
                    (Step::Glu(a), _, _) => activation(a, v) * pre[i * n_b + n + j],
                    (Step::Bias, Some(b), _) => v + b[j],
                    (Step::Act(a), _, _) => activation(a, v),
                    (Step::Residual, _, Some(r)) => v + r[i * n + j],
                    _ => v,
                };
            }
            out[i * n + j] = v;
        }
    }
}
