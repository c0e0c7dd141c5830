// General transpose of up to 8 dims, one thread per output element: the output index is
// decomposed over the output shape and mapped through the permuted input strides.
#include "common.wgsl"

struct Params {
    n: u32,
    rank: u32,
    // Output shape, and for each output dim the input stride it walks (dims packed 4 per
    // vector: uniform arrays need 16-byte elements).
    out_shape: array<vec4<u32>, 2>,
    in_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    var rest = i;
    var src = 0u;
    for (var d = params.rank; d > 0u; d--) {
        let dim = d - 1u;
        let size = params.out_shape[dim / 4u][dim % 4u];
        src += (rest % size) * params.in_stride[dim / 4u][dim % 4u];
        rest /= size;
    }
    out[i] = x[src];
}
