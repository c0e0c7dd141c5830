// GQA attention for CPU drivers (lavapipe): one thread per query row, 64 rows of one
// head per workgroup. All threads of a workgroup walk the same keys in lockstep, so K
// and V rows are loaded once for every SIMD lane; each thread keeps its query, an
// online softmax (running max and sum) and its output row in registers. Same semantics
// as attention.wgsl / reference/attention.rs. Defines: HEAD_DIM=<n> (a multiple of 4),
// KV_F16 (f16 caches, see kv_load.wgsl), KV_Q8 (int8 caches, per row and KV head a
// block of HEAD_DIM values, four per word, and its scale; see kv_load.wgsl),
// BIDIRECTIONAL (the ViT's mode, as in attention.wgsl: `s_rows` is the sequence
// length; workgroup x counts the 64-row groups
// of each sequence in turn, so a group never straddles two sequences and all its
// threads walk the same keys). Queries are read through q_load.wgsl (a column slice
// in place, and with ROPE_Q rotated as they load).
#include "status.wgsl"

const ROWS_PER_GROUP: u32 = 64u;
const HD4: u32 = HEAD_DIM / 4u;
const NEG_BIG: f32 = -3.4028235e38;

#include "attention_params.wgsl"
#include "kv_load.wgsl"
#ifndef BIDIRECTIONAL
@group(0) @binding(4) var<storage, read> pos_in: array<i32>;
@group(0) @binding(5) var<storage, read> n_valid_in: array<i32>;
#endif
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
#include "q_load.wgsl"

@compute @workgroup_size(ROWS_PER_GROUP)
fn attention_lanes(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.y;
#ifdef BIDIRECTIONAL
    let seq = params.s_rows;
    let groups_per_seq = (seq + ROWS_PER_GROUP - 1u) / ROWS_PER_GROUP;
    let first = wg.x / groups_per_seq * seq;
    let r = wg.x % groups_per_seq * ROWS_PER_GROUP + li;
    let t = first + r;
    if r >= seq {
        return;
    }
    let last = first + seq - 1u;
    let group_last = last;
#else
    let first = 0u;
    let t = wg.x * ROWS_PER_GROUP + li;
    if t >= params.t_rows {
        return;
    }
#endif
    let qw4 = params.n_heads * HD4;
    let kw4 = params.n_kv_heads * HD4;
    let out_base = t * qw4 + h * HD4;
#ifndef BIDIRECTIONAL
    let pos = pos_in[0];
    let n_valid = n_valid_in[0];
    let ok = positions_ok(pos, n_valid, params.t_rows, params.s_rows);
    if !ok {
        if t == 0u && h == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        for (var d = 0u; d < HD4; d++) {
            out[out_base + d] = vec4<f32>(0.0);
        }
        return;
    }
    let end = u32(pos) + u32(n_valid);
    let last = min(u32(pos) + t, end - 1u);
    // The workgroup's last key: the same for every thread, so key loads stay uniform.
    let group_rows_end = min(wg.x * ROWS_PER_GROUP + ROWS_PER_GROUP, params.t_rows) - 1u;
    let group_last = min(u32(pos) + group_rows_end, end - 1u);
#endif
    let kv_base = (h / (params.n_heads / params.n_kv_heads)) * HD4;

    var qv: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var d = 0u; d < HD4; d++) {
        let e = 4u * d;
        qv[d] = vec4<f32>(q_at(t, h, e), q_at(t, h, e + 1u), q_at(t, h, e + 2u), q_at(t, h, e + 3u))
            * params.scale;
    }
    var run_max = NEG_BIG;
    var run_sum = 0.0;
    for (var j = first; j <= group_last; j++) {
        let kb = j * kw4 + kv_base;
        var s4 = vec4<f32>(0.0);
        for (var d = 0u; d < HD4; d++) {
            s4 += qv[d] * k4_at(kb + d);
        }
        let s = select(NEG_BIG, s4.x + s4.y + s4.z + s4.w, j <= last);
        let new_max = max(run_max, s);
        let correction = exp(run_max - new_max);
        let p = select(0.0, exp(s - new_max), j <= last);
        run_sum = run_sum * correction + p;
        for (var d = 0u; d < HD4; d++) {
            acc[d] = acc[d] * correction + p * v4_at(kb + d);
        }
        run_max = new_max;
    }
    for (var d = 0u; d < HD4; d++) {
        out[out_base + d] = acc[d] / run_sum;
    }
}
