// Embedding lookup from a table in any weight format (defines W_*, see weights.wgsl),
// dequantized on the fly: one thread per (token, 4 columns). A table split into
// several buffer parts is gathered with one dispatch per part; each dispatch writes
// the tokens whose id falls in its rows.
#include "common.wgsl"
#include "status.wgsl"

struct Params {
    tokens: u32,
    width: u32,
    // Rows of the whole table (ids at or past it are rejected).
    vocab: u32,
    // This part's first row and row count.
    row_begin: u32,
    row_count: u32,
    w_soff: u32,
    node: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#include "weights.wgsl"

@compute @workgroup_size(ELEMENTWISE_WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let quads = (params.width + 3u) / 4u;
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i >= params.tokens * quads {
        return;
    }
    let t = i / quads;
    let col = (i % quads) * 4u;
    let id = ids[t];
    if id < 0 || u32(id) >= params.vocab {
        // The first part's dispatch reports the bad id and zeroes the row.
        if params.row_begin == 0u {
            raise_status(STATUS_BAD_TOKEN, params.node);
            for (var c = col; c < min(col + 4u, params.width); c++) {
                out[t * params.width + c] = 0.0;
            }
        }
        return;
    }
    let row = u32(id);
    if row < params.row_begin || row >= params.row_begin + params.row_count {
        return;
    }
    let v = w_quad(row - params.row_begin, col, params.width, params.w_soff);
    for (var c = 0u; c < 4u; c++) {
        if col + c < params.width {
            out[t * params.width + col + c] = v[c];
        }
    }
}
