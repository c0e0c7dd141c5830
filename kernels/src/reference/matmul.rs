/// `out[m, n] = sum_k a[m, k] * b'[k, n]` where `b' = b^T` if `transpose_b` (b is
/// `[n, k]`, PyTorch Linear layout) else `b` (`[k, n]`). Accumulates in f32 in k order.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, transpose_b: bool, out: &mut [f32]) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                let bv = if transpose_b { b[j * k + p] } else { b[p * n + j] };
                acc += a[i * k + p] * bv;
            }
            out[i * n + j] = acc;
        }
    }
}
