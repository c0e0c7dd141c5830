// HF rotate_half RoPE, one thread per output element (see reference/rope.rs): within
// each head, dims i and i + rotary_dim/2 rotate together by (pos + t) * inv_freq[i];
// dims past rotary_dim pass through. Positions come from the `pos` input buffer.
#include "common.wgsl"
#include "status.wgsl"

struct Params {
    n: u32,
    width: u32,
    head_dim: u32,
    rotary_dim: u32,
    // 1 for HF dynamic NTK scaling: inv_freq depends on pos + n_valid, so it is
    // recomputed here; otherwise `inv_freq` holds the host's exact table.
    dynamic_ntk: u32,
    theta: f32,
    factor: f32,
    original_max_position: u32,
    node: u32,
    // Where row t of x is: x[t * in_stride + in_offset ..] (a column slice read in
    // place; `width` and 0 for a whole matrix).
    in_stride: u32,
    in_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos_in: array<i32>;
@group(0) @binding(3) var<storage, read> n_valid_in: array<i32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// sin/cos of large angles: reduce to [-pi, pi] first (Cody-Waite with a two-part 2*pi
// and fma), because GPU sin/cos are only specified near zero and positions reach
// thousands of radians.
fn sin_cos(angle: f32) -> vec2<f32> {
    let two_pi_hi = 6.28318548202514648;
    let two_pi_lo = -1.7484556e-7;
    let k = round(angle * 0.159154943091895336);
    let r = fma(-k, two_pi_lo, fma(-k, two_pi_hi, angle));
    return vec2<f32>(sin(r), cos(r));
}

fn frequency(i: u32, seq_len: u32) -> f32 {
    let dim = f32(params.rotary_dim);
    if params.dynamic_ntk != 0u && params.original_max_position > 0u && seq_len > params.original_max_position {
        let s = params.factor * f32(seq_len) / f32(params.original_max_position) - (params.factor - 1.0);
        let theta = params.theta * pow(s, dim / (dim - 2.0));
        return 1.0 / pow(theta, f32(2u * i) / dim);
    }
    return inv_freq[i];
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let pos = pos_in[0];
    let n_valid = n_valid_in[0];
    if pos < 0 || n_valid < 0 {
        if i == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        out[i] = 0.0;
        return;
    }
    let t = i / params.width;
    let d = (i % params.width) % params.head_dim;
    let xi = t * params.in_stride + params.in_offset + i % params.width;
    let half = params.rotary_dim / 2u;
    if d >= params.rotary_dim {
        out[i] = x[xi];
        return;
    }
    let angle = f32(u32(pos) + t) * frequency(d % half, u32(pos) + u32(n_valid));
    let sc = sin_cos(angle);
    if d < half {
        out[i] = x[xi] * sc.y - x[xi + half] * sc.x;
    } else {
        out[i] = x[xi] * sc.y + x[xi - half] * sc.x;
    }
}
