// The second half of split-key decode attention (attention.wgsl's `attention` with
// SPLIT_KEYS, flash-decoding): merges the softmax states that the key ranges of each
// (query row, head) holding keys left in `states` (attention_split.wgsl), and writes
// the row's output. Each state weighs exp(its max - the largest max). One workgroup
// per (head, row), a thread per dim. Positions are not checked here: with invalid
// ones `attention` raised the error and left states that merge to zeros.
#include "attention_params.wgsl"
#include "attention_split.wgsl"

const COMBINE_WG: u32 = 64u;
// The most key ranges a row is split into (ops.rs `MAX_ATTENTION_SPLITS`).
const MAX_SPLITS: u32 = 32u;

@group(0) @binding(1) var<storage, read> states: array<f32>;
@group(0) @binding(4) var<storage, read> pos_in: array<i32>;
@group(0) @binding(5) var<storage, read> n_valid_in: array<i32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(COMBINE_WG)
fn attention_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lx: u32) {
    let h = wg.x;
    let t = wg.y;
    let hd = params.head_dim;
    // The row's last key, as `attention` computes it.
    let row_last = min(u32(pos_in[0]) + t, u32(pos_in[0]) + u32(n_valid_in[0]) - 1u);
    let used = min(splits_used(row_last), MAX_SPLITS);
    var m = -3.4028235e38;
    for (var s = 0u; s < used; s++) {
        m = max(m, states[split_state(t, h, s)]);
    }
    var weight: array<f32, MAX_SPLITS>;
    var sum = 0.0;
    for (var s = 0u; s < used; s++) {
        let st = split_state(t, h, s);
        weight[s] = exp(states[st] - m);
        sum += states[st + 1u] * weight[s];
    }
    let out_base = (t * params.n_heads + h) * hd;
    for (var d = lx; d < hd; d += COMBINE_WG) {
        var a = 0.0;
        for (var s = 0u; s < used; s++) {
            a += states[split_state(t, h, s) + 2u + d] * weight[s];
        }
        out[out_base + d] = a / sum;
    }
}
