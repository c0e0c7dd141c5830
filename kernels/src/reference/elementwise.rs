//! Elementwise ops and softmax. `add`/`mul` broadcast `b` over `a` (b's length divides a's).

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = a[i] + b[i % b.len()];
    }
}

pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = a[i] * b[i % b.len()];
    }
}

pub fn silu(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v / (1.0 + (-v).exp());
    }
}

/// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit, evaluated in f64),
/// since std has no erf. PyTorch's exact GELU uses erf.
pub fn erf(x: f32) -> f32 {
    let z = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = 1.0 - t * poly.exp();
    (if x >= 0.0 { r } else { -r }) as f32
}

pub fn gelu_erf(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_tanh(v: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

/// One activation of a matmul epilogue or a standalone `silu`/`gelu` node.
pub fn activation(act: npurt_graph::Activation, v: f32) -> f32 {
    use npurt_graph::Activation;
    match act {
        Activation::Silu => v / (1.0 + (-v).exp()),
        Activation::Gelu => gelu_erf(v),
        Activation::GeluTanh => gelu_tanh(v),
    }
}

pub fn gelu(x: &[f32], tanh: bool, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if tanh { gelu_tanh(v) } else { gelu_erf(v) };
    }
}

/// Softmax over rows of length `width` (max-subtracted).
pub fn softmax(x: &[f32], width: usize, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (oi, &v) in o.iter_mut().zip(row) {
            *oi = (v - max).exp();
            sum += *oi;
        }
        for oi in o.iter_mut() {
            *oi /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [
            (0.0f32, 0.0f32),
            (0.5, 0.5204999),
            (1.0, 0.8427008),
            (-2.0, -0.9953223),
            (3.0, 0.9999779),
        ] {
            assert!((super::erf(x) - e).abs() < 2e-7, "erf({x})");
        }
    }
}
