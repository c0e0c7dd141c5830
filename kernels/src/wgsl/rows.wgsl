// Row and column selection on 32-bit values (f32 or i32 alike): SliceCols and
// SelectRow (its row index read from an i32[1] input at run time).
#include "common.wgsl"
#include "status.wgsl"

struct Params {
    // Output elements.
    n: u32,
    rows: u32,
    in_width: u32,
    start: u32,
    out_width: u32,
    node: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> index_in: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn slice_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let r = i / params.out_width;
    let c = i % params.out_width;
    out[i] = x[r * params.in_width + params.start + c];
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn select_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.n {
        return;
    }
    let row = index_in[0];
    if row < 0 || u32(row) >= params.rows {
        if i == 0u {
            raise_status(STATUS_BAD_ROW, params.node);
        }
        out[i] = 0u;
        return;
    }
    out[i] = x[u32(row) * params.in_width + i];
}
