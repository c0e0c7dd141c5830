/// HF LlamaRMSNorm: `x * rsqrt(mean(x^2) + eps) * w`, per row of `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..h {
            o[i] = row[i] * r * w[i];
        }
    }
}

/// LayerNorm with biased variance, as PyTorch.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..h {
            o[i] = (row[i] - mean) * r * w[i] + b[i];
        }
    }
}
