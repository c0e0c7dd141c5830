//! Elementwise math written to auto-vectorize inside the kernels' per-ISA loops (libm's
//! `expf` is a scalar call, and SwiGLU epilogues call it for every output).

/// `e^x` to about 1 ulp (Cephes `expf`: range reduction by ln 2 split in two parts and
/// a degree-5 minimax polynomial). Written without NaN-aware `clamp`/`as` casts (which
/// compile to scalar compare-and-move sequences) so loops over it vectorize: inputs are
/// clamped to [-87.3, 88], where `2^n` is a normal f32, with plain comparisons (a NaN
/// input gives a NaN or garbage result, never UB).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds x * log2(e) to an integer n (ties to even) held in
    // the low mantissa bits, so n is also `bits(t) - bits(ROUND)`.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // n is in [-126, 127]: 2^n is a normal f32 built from its exponent bits.
    e * f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// `sum(x^2)` with sixteen partial sums: f32 addition is not associative, so the
/// compiler only vectorizes a reduction whose order is written out.
#[inline(always)]
pub(crate) fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().map(|v| v * v).sum::<f32>()
}

/// SiLU-gated product of LLaMA's MLP: `silu(g) * u = g / (1 + e^-g) * u`.
#[inline(always)]
pub(crate) fn swiglu(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (want, got) = (x.exp(), super::exp(x));
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want,
                "exp({x}) = {got}, libm {want}"
            );
            x += 0.0137;
        }
        assert!(super::swiglu(-1000.0, 1.0).abs() < 1e-30);
        assert!(super::swiglu(1000.0, 2.0) == 2000.0);
    }
}
