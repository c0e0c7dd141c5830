//! RoPE (HF rotate_half), same semantics as `reference::rope`, organised for speed: the
//! angles of a row are computed once and shared by all its heads (the reference
//! recomputes `sin`/`cos` per head: 9x the transcendental calls for SmolLM2's queries),
//! and the per-head rotation is a straight loop over precomputed `cos`/`sin` that the
//! compiler vectorizes.

use crate::reference::rope_inv_freq;
use npurt_graph::RopeParams;

/// `out = rope(x)` for `x [T, width]`, row `t` at position `pos + t` (see
/// [`crate::reference::rope`]).
pub fn rope_f32(
    x: &[f32],
    width: usize,
    p: &RopeParams,
    pos: usize,
    n_valid: usize,
    out: &mut [f32],
) {
    let inv = rope_inv_freq(p, pos + n_valid);
    let half = p.rotary_dim / 2;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    out.copy_from_slice(x);
    for (t, (row, o)) in x
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let position = (pos + t) as f32;
        for i in 0..half {
            // The same f32 angle as the reference, so the same values.
            let angle = position * inv[i];
            (sin[i], cos[i]) = (angle.sin(), angle.cos());
        }
        for (xh, oh) in row
            .chunks_exact(p.head_dim)
            .zip(o.chunks_exact_mut(p.head_dim))
        {
            let (x1, x2) = (&xh[..half], &xh[half..2 * half]);
            let (o1, o2) = oh[..2 * half].split_at_mut(half);
            for i in 0..half {
                o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
            }
        }
    }
}
