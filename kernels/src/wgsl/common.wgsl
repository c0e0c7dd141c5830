// Helpers shared by every npurt kernel. Included (textually) by the other files.

// Threads per workgroup of the one-thread-per-element kernels.
const ELEMENTWISE_WG: u32 = 256u;

// The flat index of an invocation in a dispatch whose workgroups are laid out in 2-D:
// WebGPU caps each dispatch dimension at 65535 groups, so large element counts are
// folded into y by the host (see `ops::grid_1d`).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg_size: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg_size;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// erf with |error| < 2e-7: the Numerical Recipes erfc Chebyshev fit that the reference
// kernel (kernels/src/reference/elementwise.rs) uses, evaluated in f32. WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = 1.0 - t * exp(poly);
    return select(-r, r, x >= 0.0);
}

fn gelu_erf(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}

fn gelu_tanh(v: f32) -> f32 {
    // tanh saturates long before |u| = 15; clamping keeps exp-based tanh
    // implementations away from inf/inf.
    let u = clamp(0.79788456080286536 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(u));
}
