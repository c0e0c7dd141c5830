// One value of HF rotate_half RoPE (see reference/rope.rs), for rope.wgsl and for the
// kernels that apply RoPE while they read their input (kv_write.wgsl's ROPE: the keys
// rotated as they are written; attention's ROPE_Q: the queries rotated as they are
// loaded), so a decode step runs no rope dispatch of its own. Within each head, dims
// i and i + rotary_dim/2 rotate together by position * inv_freq[i]; dims past
// rotary_dim pass through. The includer declares `inv_freq` (the host's exact
// frequency table, `reference::rope_inv_freq`), at a binding of its choice.

#include "rope_spec.wgsl"

// sin/cos of large angles: reduce to [-pi, pi] first (Cody-Waite with a two-part 2*pi
// and fma), because GPU sin/cos are only specified near zero and positions reach
// thousands of radians.
fn rope_sin_cos(angle: f32) -> vec2<f32> {
    let two_pi_hi = 6.28318548202514648;
    let two_pi_lo = -1.7484556e-7;
    let k = round(angle * 0.159154943091895336);
    let r = fma(-k, two_pi_lo, fma(-k, two_pi_hi, angle));
    return vec2<f32>(sin(r), cos(r));
}

fn rope_frequency(s: RopeSpec, i: u32, seq_len: u32) -> f32 {
    let dim = f32(s.rotary_dim);
    if s.dynamic_ntk != 0u && s.original_max_position > 0u && seq_len > s.original_max_position {
        let g = s.factor * f32(seq_len) / f32(s.original_max_position) - (s.factor - 1.0);
        let theta = s.theta * pow(g, dim / (dim - 2.0));
        return 1.0 / pow(theta, f32(2u * i) / dim);
    }
    return inv_freq[i];
}

// The column whose value rotates with column `c` of a row of heads (`c` itself past
// rotary_dim).
fn rope_partner(s: RopeSpec, c: u32) -> u32 {
    let d = c % s.head_dim;
    let half = s.rotary_dim / 2u;
    if d < half {
        return c + half;
    }
    if d < s.rotary_dim {
        return c - half;
    }
    return c;
}

// Column `c`'s value `x` after RoPE at `position`, given its partner's value
// (rope_partner); `seq_len` drives dynamic NTK scaling.
fn rope_value(s: RopeSpec, c: u32, x: f32, partner: f32, position: u32, seq_len: u32) -> f32 {
    let d = c % s.head_dim;
    let half = s.rotary_dim / 2u;
    if d >= s.rotary_dim {
        return x;
    }
    let sc = rope_sin_cos(f32(position) * rope_frequency(s, d % half, seq_len));
    if d < half {
        return x * sc.y - partner * sc.x;
    }
    return x * sc.y + partner * sc.x;
}
