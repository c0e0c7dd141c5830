// Writes new [T, D] into rows pos .. pos+T of the KV cache [S, D] in place (the node's
// output aliases the cache). One thread per element of `new`; with KV_F16 one thread
// per pair of elements, stored as one word of two f16 (D is even, so a pair never
// straddles rows; pack2x16float rounds to nearest even like the host).
#include "common.wgsl"
#include "status.wgsl"

struct Params {
    n: u32,
    width: u32,
    cache_rows: u32,
    new_rows: u32,
    node: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> new_rows: array<f32>;
@group(0) @binding(2) var<storage, read> pos_in: array<i32>;
#ifdef KV_F16
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;
#else
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;
#endif

@compute @workgroup_size(ELEMENTWISE_WG)
fn kv_write(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let pos = pos_in[0];
    // As the reference: every row of the chunk (padding included) must fit.
    if pos < 0 || u32(pos) > params.cache_rows || u32(pos) + params.new_rows > params.cache_rows {
        if i == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        return;
    }
#ifdef KV_F16
    let base = u32(pos) * params.width / 2u;
    cache[base + i] = pack2x16float(vec2<f32>(new_rows[2u * i], new_rows[2u * i + 1u]));
#else
    cache[u32(pos) * params.width + i] = new_rows[i];
#endif
}
