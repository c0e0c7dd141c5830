use npurt_graph::{RopeParams, RopeScaling};

/// Inverse frequencies for a sequence of `seq_len` tokens, with HF's scaling rules.
/// Computed as HF does: `1 / theta^(2i/dim)` in f32.
pub fn rope_inv_freq(p: &RopeParams, seq_len: usize) -> Vec<f32> {
    let dim = p.rotary_dim;
    let mut theta = p.theta;
    if let RopeScaling::DynamicNtk {
        factor,
        original_max_position,
    } = p.scaling
    {
        if seq_len > original_max_position && original_max_position > 0 {
            let s = factor * seq_len as f32 / original_max_position as f32 - (factor - 1.0);
            theta *= s.powf(dim as f32 / (dim as f32 - 2.0));
        }
    }
    let mut inv: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect();
    match p.scaling {
        RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let orig = original_max_position as f32;
            let low_wl = orig / low_freq_factor;
            let high_wl = orig / high_freq_factor;
            for f in inv.iter_mut() {
                let wl = 2.0 * std::f32::consts::PI / *f;
                if wl > low_wl {
                    *f /= factor;
                } else if wl >= high_wl {
                    let smooth =
                        (orig / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        RopeScaling::None | RopeScaling::DynamicNtk { .. } => {}
    }
    inv
}

/// HF rotate_half RoPE on `x [T, heads*head_dim]`, row `t` at position `pos + t`:
/// within each head, dims `i` and `i + rotary_dim/2` rotate together by angle
/// `(pos+t) * inv_freq[i]`; dims past `rotary_dim` pass through.
pub fn rope(x: &[f32], width: usize, p: &RopeParams, pos: usize, n_valid: usize, out: &mut [f32]) {
    let inv = rope_inv_freq(p, pos + n_valid);
    let half = p.rotary_dim / 2;
    out.copy_from_slice(x);
    for (t, (row, o)) in x
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let position = (pos + t) as f32;
        for head in 0..width / p.head_dim {
            let base = head * p.head_dim;
            for i in 0..half {
                let angle = position * inv[i];
                let (sin, cos) = (angle.sin(), angle.cos());
                let (x1, x2) = (row[base + i], row[base + i + half]);
                o[base + i] = x1 * cos - x2 * sin;
                o[base + i + half] = x2 * cos + x1 * sin;
            }
        }
    }
}
