// GQA attention (see reference/attention.rs), one workgroup per (query row, head).
// Keys are visited in tiles of 64, one key per thread for the score, with an online
// softmax (running max and sum) so no score buffer of cache length is needed; each
// thread then owns up to 4 output dims (head_dim <= 256). Defines: KV_F16 (the caches
// hold f16 pairs, unpacked per value; see kv_load.wgsl); KV_Q8 (int8 caches, a block
// of head_dim values and a scale per row and KV head, see kv_load.wgsl); BIDIRECTIONAL
// (the ViT's mode: K/V are activations of the same rows as q, `s_rows` is the sequence
// length, and row t sees every key of its own sequence; no positions, bindings 4 and 5
// unused); F16_OPERANDS (with BIDIRECTIONAL: q, k and v rounded to f16 as they are
// read, the sums in f32, AttentionPrecision::F16 at its widest).
#include "status.wgsl"

const ATTN_WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const NEG_BIG: f32 = -3.4028235e38;

struct Params {
    t_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // Cache rows (causal) or rows per sequence (BIDIRECTIONAL).
    s_rows: u32,
    scale: f32,
    node: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
#include "kv_load.wgsl"
#ifndef BIDIRECTIONAL
@group(0) @binding(4) var<storage, read> pos_in: array<i32>;
@group(0) @binding(5) var<storage, read> n_valid_in: array<i32>;
#endif
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> q_row: array<f32, MAX_HEAD_DIM>;

// An operand as the attention's precision reads it.
fn operand(x: f32) -> f32 {
#ifdef F16_OPERANDS
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
#else
    return x;
#endif
}
var<workgroup> tile: array<f32, ATTN_WG>;

@compute @workgroup_size(ATTN_WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let t = wg.y;
    let hd = params.head_dim;
    let qw = params.n_heads * hd;
    let kw = params.n_kv_heads * hd;
    let out_base = t * qw + h * hd;
#ifdef BIDIRECTIONAL
    // Keys first..=last: the row's own sequence.
    let first = t / params.s_rows * params.s_rows;
    let last = first + params.s_rows - 1u;
#else
    let first = 0u;
    let pos = pos_in[0];
    let n_valid = n_valid_in[0];
    // Same acceptance rule as the reference: the valid rows must fit the chunk and the
    // cache. Compared in i32 after bounding each term, so nothing overflows.
    let ok = pos >= 0 && n_valid >= 1 && u32(n_valid) <= params.t_rows && pos <= i32(params.s_rows)
        && u32(pos) + u32(n_valid) <= params.s_rows;
    if !ok {
        if li == 0u && h == 0u && t == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        for (var d = li; d < hd; d += ATTN_WG) {
            out[out_base + d] = 0.0;
        }
        return;
    }
    let end = u32(pos) + u32(n_valid);
    let last = min(u32(pos) + t, end - 1u);
#endif
    let kv_base = (h / (params.n_heads / params.n_kv_heads)) * hd;

    for (var d = li; d < hd; d += ATTN_WG) {
        q_row[d] = operand(q[out_base + d]);
    }
    workgroupBarrier();

    var run_max = NEG_BIG;
    var run_sum = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = first; j0 <= last; j0 += ATTN_WG) {
        let j = j0 + li;
        var s = NEG_BIG;
        if j <= last {
            var dot = 0.0;
            let kb = j * kw + kv_base;
            for (var d = 0u; d < hd; d++) {
                dot += q_row[d] * operand(k_at(kb + d));
            }
            s = dot * params.scale;
        }
        tile[li] = s;
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var i = 0u; i < ATTN_WG; i++) {
            tile_max = max(tile_max, tile[i]);
        }
        let new_max = max(run_max, tile_max);
        let correction = exp(run_max - new_max);
        workgroupBarrier();
        tile[li] = select(0.0, exp(s - new_max), j <= last);
        workgroupBarrier();
        let keys = min(ATTN_WG, last + 1u - j0);
        var tile_sum = 0.0;
        for (var i = 0u; i < keys; i++) {
            tile_sum += tile[i];
        }
        run_sum = run_sum * correction + tile_sum;
        for (var r = 0u; r < 4u; r++) {
            let d = li + r * ATTN_WG;
            if d < hd {
                var a = acc[r] * correction;
                for (var i = 0u; i < keys; i++) {
                    a += tile[i] * operand(v_at((j0 + i) * kw + kv_base + d));
                }
                acc[r] = a;
            }
        }
        run_max = new_max;
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * ATTN_WG;
        if d < hd {
            out[out_base + d] = acc[r] / run_sum;
        }
    }
}
