// SpaceToChannel, the ViT token downsampler's pad + merge (see
// reference/layout.rs::space_to_channel): `x [B * h * w, c]` -> `[B * h2 * w2, b * b * c]`
// with h2 = ceil(h / b), w2 = ceil(w / b); output row (image, cell row i, cell column j)
// holds the cell's b x b token rows in row-major order, zeros past the grid's
// bottom/right edge. One thread per output value, copied as raw 32-bit words.
#include "common.wgsl"

struct Params {
    // Output values.
    n: u32,
    channels: u32,
    grid_h: u32,
    grid_w: u32,
    block: u32,
    cells_h: u32,
    cells_w: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn space_to_channel(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let b = params.block;
    let ch = i % params.channels;
    // Token slot within the cell (row-major), then the cell and its image.
    let slot = (i / params.channels) % (b * b);
    let cell = i / (params.channels * b * b);
    let cj = cell % params.cells_w;
    let ci = (cell / params.cells_w) % params.cells_h;
    let img = cell / (params.cells_w * params.cells_h);
    let r = ci * b + slot / b;
    let col = cj * b + slot % b;
    var v = 0u;
    if r < params.grid_h && col < params.grid_w {
        v = x[((img * params.grid_h + r) * params.grid_w + col) * params.channels + ch];
    }
    out[i] = v;
}
