// Integer bidirectional attention (AttentionPrecision::I8; the definition is
// reference/attention.rs `attention_bidirectional_i8`): q and k rows quantized to i8
// with a scale per row, v with a scale per channel over the sequence, i32 dot products,
// the softmax's weights rounded to u8, `P V` in i32 over the keys, divided by the sum of
// the weights. WGSL's round() is half to even, as the reference's.
//
// One workgroup per (head, query row), bindings as attention.wgsl's BIDIRECTIONAL mode
// (1 q, 2 k, 3 v, 6 out). Pass 1 finds the row's largest score; pass 2 scores each key
// again for its u8 weight and accumulates P V, each thread owning up to 4 channels.
// Every workgroup quantizes the K rows it scores and the V channels it sums itself, so
// no quantized copy is stored: this is the portable path of a mode whose speed target
// is integer CPU/NPU hardware; a GPU runs the ViT's attention in f32 or f16.

const WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const NEG_BIG: f32 = -3.4028235e38;

#include "attention_params.wgsl"
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> q_row: array<i32, MAX_HEAD_DIM>;
var<workgroup> red: array<f32, WG>;
var<workgroup> weights: array<i32, WG>;

// 127 / amax, or 0 for an all-zero row (every value then quantizes to 0).
fn inv_of(amax: f32) -> f32 {
    return select(0.0, 127.0 / amax, amax > 0.0);
}

fn quantize(x: f32, inv: f32) -> i32 {
    return i32(clamp(round(x * inv), -127.0, 127.0));
}

// Max |x| over the workgroup's `red` (after a barrier).
fn red_max() -> f32 {
    var m = 0.0;
    for (var i = 0u; i < WG; i++) {
        m = max(m, red[i]);
    }
    return m;
}

// The score of the quantized query row against key row `row`: the key quantized with
// its own scale, the i32 dot product, then `dot * c * s_k` (the reference's order).
fn score(row: u32, kv_base: u32, c: f32) -> f32 {
    let hd = params.head_dim;
    let kb = row * params.n_kv_heads * hd + kv_base;
    var amax = 0.0;
    for (var d = 0u; d < hd; d++) {
        amax = max(amax, abs(k[kb + d]));
    }
    let inv = inv_of(amax);
    var dot = 0i;
    for (var d = 0u; d < hd; d++) {
        dot += q_row[d] * quantize(k[kb + d], inv);
    }
    return f32(dot) * c * (amax / 127.0);
}

@compute @workgroup_size(WG)
fn attention_i8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let t = wg.y;
    let hd = params.head_dim;
    let seq = params.s_rows;
    let qw = params.n_heads * hd;
    let kw = params.n_kv_heads * hd;
    let out_base = t * qw + h * hd;
    let first = t / seq * seq;
    let kv_base = (h / (params.n_heads / params.n_kv_heads)) * hd;

    // The query row: its scale, then its i8 values.
    var m = 0.0;
    for (var d = li; d < hd; d += WG) {
        m = max(m, abs(q[out_base + d]));
    }
    red[li] = m;
    workgroupBarrier();
    let amax_q = red_max();
    let inv_q = inv_of(amax_q);
    let c = amax_q / 127.0 * params.scale;
    for (var d = li; d < hd; d += WG) {
        q_row[d] = quantize(q[out_base + d], inv_q);
    }
    workgroupBarrier();

    // Pass 1: the largest score.
    var mx = NEG_BIG;
    for (var j = li; j < seq; j += WG) {
        mx = max(mx, score(first + j, kv_base, c));
    }
    workgroupBarrier();
    red[li] = mx;
    workgroupBarrier();
    var row_max = NEG_BIG;
    for (var i = 0u; i < WG; i++) {
        row_max = max(row_max, red[i]);
    }

    // This thread's channels: their scales over the sequence's keys.
    var inv_v = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var s_v = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * WG;
        if d < hd {
            var amax = 0.0;
            for (var j = 0u; j < seq; j++) {
                amax = max(amax, abs(v[(first + j) * kw + kv_base + d]));
            }
            inv_v[r] = inv_of(amax);
            s_v[r] = amax / 127.0;
        }
    }

    // Pass 2: u8 weights a tile of keys at a time, then P V in i32.
    var l = 0i;
    var acc = array<i32, 4>(0i, 0i, 0i, 0i);
    for (var j0 = 0u; j0 < seq; j0 += WG) {
        let j = j0 + li;
        var p = 0i;
        if j < seq {
            let s = score(first + j, kv_base, c);
            p = i32(clamp(round(255.0 * exp(s - row_max)), 0.0, 255.0));
        }
        l += p;
        weights[li] = p;
        workgroupBarrier();
        let keys = min(WG, seq - j0);
        for (var r = 0u; r < 4u; r++) {
            let d = li + r * WG;
            if d < hd {
                var a = acc[r];
                for (var i = 0u; i < keys; i++) {
                    a += weights[i] * quantize(v[(first + j0 + i) * kw + kv_base + d], inv_v[r]);
                }
                acc[r] = a;
            }
        }
        workgroupBarrier();
    }
    weights[li] = l;
    workgroupBarrier();
    var total = 0i;
    for (var i = 0u; i < WG; i++) {
        total += weights[i];
    }
    let inv_l = 1.0 / f32(total);
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * WG;
        if d < hd {
            out[out_base + d] = f32(acc[r]) * s_v[r] * inv_l;
        }
    }
}
