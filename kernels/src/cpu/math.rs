//! Elementwise math written to auto-vectorize inside the kernels' per-ISA loops (libm's
//! `expf` is a scalar call, and SwiGLU/GELU epilogues call it for every output).
//! Branches are written as selects (both sides computed) so loops over them vectorize.

use npurt_graph::Activation;

/// ln 2 in two parts for [`exp`]'s range reduction (`r = x - n ln 2` stays exact), shared
/// with the vector `exp`s of the attention kernels.
pub(crate) const EXP_LN2_HI: f32 = 0.693_359_4;
pub(crate) const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// [`exp`]'s degree-5 polynomial in `r`, highest coefficient first (Horner's order):
/// `e^r ~ 1 + r + r^2 p(r)`.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `2^f` on `f` in `[-1/2, 1/2]` as a degree-5 Taylor polynomial (relative error
/// < 3e-6), highest coefficient first: the panel attentions' softmax weights (u8 and
/// f16) need no more, and their scores are kept in base 2 (`attention_avx512::pow2_ps`,
/// `attention_i8_avx2::pow2`).
pub(crate) const POW2_TAYLOR: [f32; 6] = [
    0.001_333_355_8,
    0.009_618_129,
    0.055_504_11,
    0.240_226_5,
    std::f32::consts::LN_2,
    1.0,
];

/// `e^x` to about 1 ulp (Cephes `expf`: range reduction by ln 2 split in two parts and
/// a degree-5 minimax polynomial). Written without NaN-aware `clamp`/`as` casts (which
/// compile to scalar compare-and-move sequences) so loops over it vectorize: inputs are
/// clamped to [-87.3, 88], where `2^n` is a normal f32, with plain comparisons (a NaN
/// input gives a NaN or garbage result, never UB).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const P: [f32; 6] = EXP_POLY;
    // 1.5 * 2^23: adding it rounds x * log2(e) to an integer n (ties to even) held in
    // the low mantissa bits, so n is also `bits(t) - bits(ROUND)`.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * EXP_LN2_HI - n * EXP_LN2_LO;
    let p = ((((P[0] * r + P[1]) * r + P[2]) * r + P[3]) * r + P[4]) * r + P[5];
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

/// `x * sigmoid(x) = x / (1 + e^-x)`. Below -88 the true value is under 1e-36 and
/// [`exp`]'s clamp would leave `x / e^88`, not 0, for huge `|x|`: select 0 there.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    let s = x / (1.0 + exp(-x));
    if x < -88.0 {
        0.0
    } else {
        s
    }
}

/// `erf(x)` to about 2e-7 relative, vectorizable (std has no erf; the reference's is
/// scalar f64). Two fits, both computed and one selected:
/// - `|x| < 0.5`: the Maclaurin series `2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))`
///   to `x^13` (truncation < 1e-9 relative). Near 0 the other fit's `1 - small`
///   cancels to an absolute, not relative, error;
/// - otherwise the Numerical Recipes erfc Chebyshev fit the reference uses
///   (|error| < 1.2e-7 absolute, and `|erf| > 0.52` here), evaluated in f32 with
///   [`exp`]. Abramowitz-Stegun 7.1.26 (1.5e-7 absolute, worse near 0) is not enough
///   for GELU's 1e-7 conformance bar.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x2 = x * x;
    let series = x
        * (std::f32::consts::FRAC_2_SQRT_PI
            + x2 * (-0.376_126_4
                + x2 * (0.112_837_92
                    + x2 * (-0.026_866_17
                        + x2 * (5.223_977_6e-3 + x2 * (-8.548_327e-4 + x2 * 1.205_533_3e-4))))));
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let r = 1.0 - t * exp(poly);
    let tail = if x < 0.0 { -r } else { r };
    if z < 0.5 {
        series
    } else {
        tail
    }
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation, `0.5 x (1 + tanh(u))` with
/// `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as `x / (1 + e^(-2u))` (the same
/// value: `(1 + tanh u) / 2 = sigmoid(2u)`), which needs one [`exp`] and stays accurate
/// in both tails where `1 + tanh u` would cancel.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    // 2 * sqrt(2 / pi)
    const C: f32 = 1.595_769_2;
    let u2 = C * (x + 0.044715 * x * x * x);
    let g = x / (1.0 + exp(-u2));
    // Below -10 the value is under 1e-70 (0 in f32), but exp's clamp would leave
    // `x / e^88` for huge |x|.
    if x < -10.0 {
        0.0
    } else {
        g
    }
}

/// `v = act(v)` for every value: the activation is matched once, outside the loop, so
/// each arm is a plain loop the compiler vectorizes.
#[inline(always)]
pub(crate) fn activate(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Silu => v.iter_mut().for_each(|x| *x = silu(*x)),
        Activation::Gelu => v.iter_mut().for_each(|x| *x = gelu_erf(*x)),
        Activation::GeluTanh => v.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
    }
}

/// `out = act(x)`, the out-of-place [`activate`].
#[inline(always)]
pub(crate) fn activate_into(act: Activation, x: &[f32], out: &mut [f32]) {
    let pairs = out.iter_mut().zip(x);
    match act {
        Activation::Silu => pairs.for_each(|(o, &v)| *o = silu(v)),
        Activation::Gelu => pairs.for_each(|(o, &v)| *o = gelu_erf(v)),
        Activation::GeluTanh => pairs.for_each(|(o, &v)| *o = gelu_tanh(v)),
    }
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
        assert!(super::silu(-1000.0).abs() < 1e-30);
        assert!(super::silu(1000.0) == 1000.0);
    }

    /// erf against the f64 reference fit (itself < 1.2e-7 from the true erf), relative
    /// near 0 where GELU's output is small, and GELU both ways against the reference.
    #[test]
    fn erf_and_gelu_match_the_reference() {
        use crate::reference as r;
        let mut x = -9.0f32;
        while x < 9.0 {
            let (got, want) = (super::erf(x), r::erf(x));
            let tol = if x.abs() < 0.5 {
                // The reference's own error is absolute; the series is near-exact.
                2.5e-7 * want.abs().max(1e-3)
            } else {
                2.5e-7
            };
            assert!(
                (got - want).abs() <= tol.max(1e-7),
                "erf({x}) = {got}, ref {want}"
            );
            for (got, want) in [
                (super::gelu_erf(x), r::gelu_erf(x)),
                (super::gelu_tanh(x), r::gelu_tanh(x)),
            ] {
                assert!(
                    (got - want).abs() <= 3e-7 * x.abs().max(1.0),
                    "gelu({x}) = {got}, ref {want}"
                );
            }
            x += 0.00731;
        }
        // Tiny inputs: erf(x) = 2/sqrt(pi) (x - x^3/3 + ...) to full f32 precision.
        for x in [1e-6f32, -3e-5, 1e-3] {
            let x64 = x as f64;
            let want = (std::f64::consts::FRAC_2_SQRT_PI * (x64 - x64.powi(3) / 3.0)) as f32;
            assert!((super::erf(x) - want).abs() <= 2.0 * f32::EPSILON * want.abs());
        }
        for x in [-1000.0f32, 1000.0, f32::MAX, -f32::MAX] {
            assert!(super::erf(x).abs() == 1.0 && super::gelu_tanh(x).is_finite());
        }
        assert!(super::gelu_erf(-1000.0) == 0.0 && super::gelu_tanh(1000.0) == 1000.0);
        assert!(super::gelu_tanh(-f32::MAX) == 0.0 && super::silu(-f32::MAX) == 0.0);
    }
}
