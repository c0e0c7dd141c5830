// HF rotate_half RoPE, one thread per output element (the math: rope_value.wgsl).
// Positions come from the `pos` input buffer. A rope whose only reader is a KV write
// or a causal attention runs inside that kernel instead (ROPE, ROPE_Q).
#include "common.wgsl"
#include "status.wgsl"
#include "rope_spec.wgsl"

struct Params {
    n: u32,
    width: u32,
    node: u32,
    // Where row t of x is: x[t * in_stride + in_offset ..] (a column slice read in
    // place; `width` and 0 for a whole matrix).
    in_stride: u32,
    in_offset: u32,
    @align(16) rope: RopeSpec,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos_in: array<i32>;
@group(0) @binding(3) var<storage, read> n_valid_in: array<i32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#include "rope_value.wgsl"

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
    let spec = params.rope;
    let t = i / params.width;
    let c = i % params.width;
    let row = t * params.in_stride + params.in_offset;
    out[i] = rope_value(spec, c, x[row + c], x[row + rope_partner(spec, c)], u32(pos) + t,
                        u32(pos) + u32(n_valid));
}
