// Conv2D patch embedding (kernel = stride = patch, no padding; see
// reference/layout.rs::patch_embed): one thread per (patch, output channel), the patch's
// pixels read in the weight's [C, p, p] order.
#include "common.wgsl"

struct Params {
    n: u32,
    channels_out: u32,
    channels_in: u32,
    height: u32,
    width: u32,
    patch_size: u32,
    grid_h: u32,
    grid_w: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pixels: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn patch_embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let o = i % params.channels_out;
    let row = i / params.channels_out;
    let px = row % params.grid_w;
    let py = (row / params.grid_w) % params.grid_h;
    let img = row / (params.grid_w * params.grid_h);
    let p = params.patch_size;
    let kk = params.channels_in * p * p;
    var s = 0.0;
    for (var ch = 0u; ch < params.channels_in; ch++) {
        for (var ky = 0u; ky < p; ky++) {
            let src = ((img * params.channels_in + ch) * params.height + py * p + ky) * params.width + px * p;
            let wsrc = o * kk + (ch * p + ky) * p;
            for (var kx = 0u; kx < p; kx++) {
                s += pixels[src + kx] * weight[wsrc + kx];
            }
        }
    }
    out[i] = bias[o] + s;
}
