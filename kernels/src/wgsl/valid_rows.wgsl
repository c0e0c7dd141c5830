// A prefill chunk's grids sized to its valid rows (npurt_graph::rows): one thread per
// row-wise dispatch of the graph writes the workgroup counts that cover the chunk's
// first n_valid rows, which that dispatch then reads (dispatch_workgroups_indirect).
// The first dispatch of every run of such a graph, so the grids follow n_valid on the
// GPU, without the host reading it.
#include "common.wgsl"

// `RowGrid::Flat`: `threads` threads in groups of `wg`, folded into y past 65535.
const FLAT: u32 = 1u;
// `RowGrid::Axis`: grid dimension `a` counts blocks of `b` rows.
const AXIS: u32 = 2u;
const MAX_GROUPS: u32 = 65535u;

struct Params {
    // Entries in `grids`.
    grids: u32,
    // The chunk's rows (n_valid's upper bound).
    rows: u32,
}

// How one dispatch's grid covers the rows (ops.rs `RowGrid`), and its whole grid.
struct RowGrid {
    kind: u32,
    // FLAT: threads per row; AXIS: the dimension.
    a: u32,
    // FLAT: threads per workgroup; AXIS: rows per workgroup.
    b: u32,
    _pad: u32,
    whole: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> n_valid_in: array<i32>;
@group(0) @binding(2) var<storage, read> grids: array<RowGrid>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn valid_row_grids(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.grids {
        return;
    }
    // An n_valid out of range is reported by the kernels that read it (attention's
    // status word); here it only bounds the grid.
    let n = u32(clamp(n_valid_in[0], 0, i32(params.rows)));
    let g = grids[i];
    var size = g.whole.xyz;
    if g.kind == FLAT {
        let groups = (n * g.a + g.b - 1u) / g.b;
        if groups <= MAX_GROUPS {
            size = vec3<u32>(groups, 1u, 1u);
        } else {
            size = vec3<u32>(MAX_GROUPS, (groups + MAX_GROUPS - 1u) / MAX_GROUPS, 1u);
        }
    } else if g.kind == AXIS {
        size[g.a] = (n + g.b - 1u) / g.b;
    }
    out[3u * i] = size.x;
    out[3u * i + 1u] = size.y;
    out[3u * i + 2u] = size.z;
}
