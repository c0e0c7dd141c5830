// GQA attention (see reference/attention.rs) with an online softmax (running max and
// sum), so no score buffer of cache length is needed. Two entry points:
//   attention: one workgroup per (query row, head), ATTN_GROUPS groups of 64 threads.
//       Each step takes ATTN_GROUPS tiles of 64 keys, one per group, one key per
//       thread for the score; each thread then owns up to 4 output dims of its group's
//       sums (head_dim <= 256). Each group keeps its own online softmax, merged at the
//       end. Decode's kernel: one row has only its keys to spread, and a decode step
//       has a workgroup per head and nothing else, so at long contexts the keys it
//       reads at once (ATTN_GROUPS tiles, not one) set its speed. With SPLIT_KEYS
//       (flash-decoding) it is one workgroup per (query row, head, key range): the
//       grid's z is `params.splits` ranges of a row's keys, each at least one step
//       (ATTN_THREADS keys) long, so a long context fills a GPU that one workgroup per
//       head leaves idle; each writes its softmax state to `out` (attention_split.wgsl)
//       and attention_combine.wgsl merges the states of a row and head into its output.
//   attention_rows: one workgroup per (block of ROWS_BLOCK query rows, head), for
//       prefill (head_dim <= ROWS_HEAD_DIM). Each tile of KEYS_BLOCK keys is staged in
//       workgroup memory once (K, then V in the same buffer) and serves all the
//       block's rows, so K/V are read once per block instead of once per row.
// Defines: HEAD_DIM=<n> (always: the pipeline is built for one head size); KV_F16 (the caches
// hold f16 pairs, unpacked per value; see kv_load.wgsl); KV_Q8 (int8 caches, a block
// of head_dim values and a scale per row and KV head, see kv_load.wgsl); BIDIRECTIONAL
// (the ViT's mode: K/V are activations of the same rows as q, `s_rows` is the sequence
// length, and row t sees every key of its own sequence; no positions, bindings 4 and 5
// unused); F16_OPERANDS (with BIDIRECTIONAL: q, k and v rounded to f16 as they are
// read, the sums in f32, AttentionPrecision::F16 at its widest); SPLIT_KEYS (causal
// only, the `attention` entry: above). Queries are read through q_load.wgsl (a column
// slice in place, and with ROPE_Q rotated as they load).
#include "status.wgsl"

const ATTN_WG: u32 = 64u;
const ATTN_GROUPS: u32 = 4u;
const ATTN_THREADS: u32 = ATTN_WG * ATTN_GROUPS;
// The `attention` entry loads K and V values in batches of ATTN_BATCH before it uses
// any, so a thread waits for memory once per batch rather than once per value: one
// decode row's attention is bound by that latency, not by bandwidth. Every entry reads
// the head size as HEAD_DIM, the define each pipeline of this file is built with, so
// its loops have constant bounds and its divisions by it are multiplies.
const ATTN_BATCH: u32 = 16u;
const MAX_HEAD_DIM: u32 = 256u;
const NEG_BIG: f32 = -3.4028235e38;

#include "attention_params.wgsl"
#include "kv_load.wgsl"
#ifndef BIDIRECTIONAL
@group(0) @binding(4) var<storage, read> pos_in: array<i32>;
@group(0) @binding(5) var<storage, read> n_valid_in: array<i32>;
#endif
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
#include "q_load.wgsl"

var<workgroup> q_row: array<f32, MAX_HEAD_DIM>;

// An operand as the attention's precision reads it.
fn operand(x: f32) -> f32 {
#ifdef F16_OPERANDS
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
#else
    return x;
#endif
}
// Each group's scores, then its softmax weights.
var<workgroup> tile: array<f32, ATTN_THREADS>;
// Each group's final running max, sum and sums per dim (for the merge).
var<workgroup> group_max: array<f32, ATTN_GROUPS>;
var<workgroup> group_sum: array<f32, ATTN_GROUPS>;
var<workgroup> group_acc: array<f32, ATTN_GROUPS * MAX_HEAD_DIM>;

#ifdef SPLIT_KEYS
#include "attention_split.wgsl"
#endif

@compute @workgroup_size(ATTN_THREADS)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lx: u32) {
    let h = wg.x;
    let t = wg.y;
    // This thread's group, and its lane in the group.
    let g = lx / ATTN_WG;
    let li = lx % ATTN_WG;
    let hd = HEAD_DIM;
    let qw = params.n_heads * hd;
    let kw = params.n_kv_heads * hd;
    let out_base = t * qw + h * hd;
#ifdef BIDIRECTIONAL
    // Keys first..=last: the row's own sequence.
    let first = t / params.s_rows * params.s_rows;
    let last = first + params.s_rows - 1u;
#else
    let pos = pos_in[0];
    let n_valid = n_valid_in[0];
    let ok = positions_ok(pos, n_valid, params.t_rows, params.s_rows);
    if !ok {
        if lx == 0u && h == 0u && t == 0u && wg.z == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
#ifdef SPLIT_KEYS
        // A state of weight 1 and zero sums in every range: the merged output is
        // zeros too.
        let st = split_state(t, h, wg.z);
        for (var i = lx; i < hd + 2u; i += ATTN_THREADS) {
            out[st + i] = select(0.0, 1.0, i == 1u);
        }
#else
        for (var d = lx; d < hd; d += ATTN_THREADS) {
            out[out_base + d] = 0.0;
        }
#endif
        return;
    }
    let row_last = min(u32(pos) + t, u32(pos) + u32(n_valid) - 1u);
#ifdef SPLIT_KEYS
    // This workgroup's range of the row's keys (attention_split.wgsl).
    if wg.z >= splits_used(row_last) {
        return;
    }
    let first = wg.z * split_len(row_last);
    let last = min(row_last, first + split_len(row_last) - 1u);
#else
    let first = 0u;
    let last = row_last;
#endif
#endif
    let kv_base = (h / (params.n_heads / params.n_kv_heads)) * hd;

    for (var d = lx; d < hd; d += ATTN_THREADS) {
        q_row[d] = operand(q_at(t, h, d));
    }
    workgroupBarrier();

    let slot = g * ATTN_WG;
    var run_max = NEG_BIG;
    var run_sum = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var tile0 = first; tile0 <= last; tile0 += ATTN_THREADS) {
        // This group's tile; past `last` it has no keys (keys = 0) this step.
        let j0 = tile0 + slot;
        let j = j0 + li;
        var s = NEG_BIG;
        if j <= last {
            var dot = 0.0;
            let kb = j * kw + kv_base;
            for (var d0 = 0u; d0 < HEAD_DIM; d0 += ATTN_BATCH) {
                var kv: array<f32, ATTN_BATCH>;
                for (var e = 0u; e < ATTN_BATCH; e++) {
                    kv[e] = k_at(kb + min(d0 + e, HEAD_DIM - 1u));
                }
                for (var e = 0u; e < ATTN_BATCH; e++) {
                    if d0 + e < HEAD_DIM {
                        dot += q_row[d0 + e] * operand(kv[e]);
                    }
                }
            }
            s = dot * params.scale;
        }
        tile[lx] = s;
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var i = 0u; i < ATTN_WG; i++) {
            tile_max = max(tile_max, tile[slot + i]);
        }
        let new_max = max(run_max, tile_max);
        let correction = exp(run_max - new_max);
        workgroupBarrier();
        tile[lx] = select(0.0, exp(s - new_max), j <= last);
        workgroupBarrier();
        let keys = select(0u, min(ATTN_WG, last + 1u - j0), j0 <= last);
        var tile_sum = 0.0;
        for (var i = 0u; i < keys; i++) {
            tile_sum += tile[slot + i];
        }
        run_sum = run_sum * correction + tile_sum;
        for (var r = 0u; r < 4u; r++) {
            let d = li + r * ATTN_WG;
            if d < HEAD_DIM {
                var a = acc[r] * correction;
                for (var i0 = 0u; i0 < keys; i0 += ATTN_BATCH) {
                    var vv: array<f32, ATTN_BATCH>;
                    for (var e = 0u; e < ATTN_BATCH; e++) {
                        vv[e] = v_at((j0 + min(i0 + e, keys - 1u)) * kw + kv_base + d);
                    }
                    for (var e = 0u; e < ATTN_BATCH; e++) {
                        if i0 + e < keys {
                            a += tile[slot + i0 + e] * operand(vv[e]);
                        }
                    }
                }
                acc[r] = a;
            }
        }
        run_max = new_max;
        workgroupBarrier();
    }
    // Merge the groups' softmax states (a group that saw no key has sum 0 and max
    // NEG_BIG, so weight 0; group 0 always sees key `first`).
    if li == 0u {
        group_max[g] = run_max;
        group_sum[g] = run_sum;
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * ATTN_WG;
        if d < HEAD_DIM {
            group_acc[g * MAX_HEAD_DIM + d] = acc[r];
        }
    }
    workgroupBarrier();
    if g == 0u {
        var m = NEG_BIG;
        for (var i = 0u; i < ATTN_GROUPS; i++) {
            m = max(m, group_max[i]);
        }
        var weight: array<f32, ATTN_GROUPS>;
        var sum = 0.0;
        for (var i = 0u; i < ATTN_GROUPS; i++) {
            weight[i] = exp(group_max[i] - m);
            sum += group_sum[i] * weight[i];
        }
#ifdef SPLIT_KEYS
        let st = split_state(t, h, wg.z);
        if li == 0u {
            out[st] = m;
            out[st + 1u] = sum;
        }
#endif
        for (var r = 0u; r < 4u; r++) {
            let d = li + r * ATTN_WG;
            if d < HEAD_DIM {
                var a = 0.0;
                for (var i = 0u; i < ATTN_GROUPS; i++) {
                    a += group_acc[i * MAX_HEAD_DIM + d] * weight[i];
                }
#ifdef SPLIT_KEYS
                out[st + 2u + d] = a;
#else
                out[out_base + d] = a / sum;
#endif
            }
        }
    }
}

const ROWS_BLOCK: u32 = 8u;
const KEYS_BLOCK: u32 = 32u;
const ROWS_HEAD_DIM: u32 = 128u;
// Output dims per thread: 8 threads per row, head_dim <= 128.
const ROWS_DIMS: u32 = ROWS_HEAD_DIM / 8u;

var<workgroup> q_block: array<f32, 1024>;    // ROWS_BLOCK x ROWS_HEAD_DIM
// KEYS_BLOCK rows of head_dim + 1: the padding puts the 32 keys a subgroup scores at
// once in different banks.
var<workgroup> kv_block: array<f32, 4128>;   // KEYS_BLOCK x (ROWS_HEAD_DIM + 1)
var<workgroup> scores: array<f32, 256>;      // ROWS_BLOCK x KEYS_BLOCK

// The keys query row t sees, [first, last] (a first past last: none, for rows past
// the chunk); `ok` is false when the run-time positions are invalid.
struct KeyRange {
    first: u32,
    last: u32,
}

fn key_range(t: u32) -> KeyRange {
#ifdef BIDIRECTIONAL
    let first = t / params.s_rows * params.s_rows;
    return KeyRange(first, first + params.s_rows - 1u);
#else
    let end = u32(pos_in[0]) + u32(n_valid_in[0]);
    return KeyRange(0u, min(u32(pos_in[0]) + t, end - 1u));
#endif
}

// Stages K (or V, `values`) of keys j0 .. j0 + keys into kv_block (rows of
// head_dim + 1); rows past `keys` are zeros, so the loops over a tile run whole tiles
// (their weights are 0, and 0 times stale memory could be NaN).
fn stage_keys(j0: u32, keys: u32, kv_base: u32, li: u32, values: bool) {
    let hd = HEAD_DIM;
    let kw = params.n_kv_heads * hd;
    for (var e = li; e < KEYS_BLOCK * hd; e += 64u) {
        let kk = e / hd;
        var v = 0.0;
        if kk < keys {
            let i = (j0 + kk) * kw + kv_base + e % hd;
            if values {
                v = operand(v_at(i));
            } else {
                v = operand(k_at(i));
            }
        }
        kv_block[kk * (hd + 1u) + e % hd] = v;
    }
}

@compute @workgroup_size(64)
fn attention_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let t0 = wg.y * ROWS_BLOCK;
    let hd = HEAD_DIM;
    let qw = params.n_heads * hd;
    let kv_base = (h / (params.n_heads / params.n_kv_heads)) * hd;
    // kv_block's row stride (see stage_keys).
    let hs = hd + 1u;
    // This thread's output row and its dims d = lane + 8 i.
    let r = li / 8u;
    let lane = li % 8u;
    let t = t0 + r;
#ifndef BIDIRECTIONAL
    let pos = pos_in[0];
    let n_valid = n_valid_in[0];
    let ok = positions_ok(pos, n_valid, params.t_rows, params.s_rows);
    if !ok {
        if li == 0u && h == 0u && t0 == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        if t < params.t_rows {
            for (var d = lane; d < hd; d += 8u) {
                out[t * qw + h * hd + d] = 0.0;
            }
        }
        return;
    }
#endif
    let rows = min(ROWS_BLOCK, params.t_rows - t0);
    // The block's keys: from its first row's first to its last row's last.
    let lo = key_range(t0).first;
    let hi = key_range(t0 + rows - 1u).last;
    for (var e = li; e < ROWS_BLOCK * hd; e += 64u) {
        let rr = e / hd;
        var v = 0.0;
        if rr < rows {
            v = operand(q_at(t0 + rr, h, e % hd));
        }
        q_block[e] = v;
    }

    var run_max = NEG_BIG;
    var run_sum = 0.0;
    var acc: array<f32, ROWS_DIMS>;
    for (var j0 = lo; j0 <= hi; j0 += KEYS_BLOCK) {
        let keys = min(KEYS_BLOCK, hi + 1u - j0);
        workgroupBarrier();
        stage_keys(j0, keys, kv_base, li, false);
        workgroupBarrier();
        // ROWS_BLOCK x KEYS_BLOCK scores, 4 per thread; keys a row does not see get
        // NEG_BIG.
        for (var e = li; e < ROWS_BLOCK * KEYS_BLOCK; e += 64u) {
            let rr = e / KEYS_BLOCK;
            let kk = e % KEYS_BLOCK;
            let j = j0 + kk;
            let seen = key_range(t0 + rr);
            var s = NEG_BIG;
            if rr < rows && kk < keys && j >= seen.first && j <= seen.last {
                var dot = 0.0;
                for (var d = 0u; d < hd; d++) {
                    dot += q_block[rr * hd + d] * kv_block[kk * hs + d];
                }
                s = dot * params.scale;
            }
            scores[e] = s;
        }
        workgroupBarrier();
        stage_keys(j0, keys, kv_base, li, true);
        // This row's weights for the tile (each of its 8 threads computes them).
        var tile_max = NEG_BIG;
        for (var kk = 0u; kk < KEYS_BLOCK; kk++) {
            tile_max = max(tile_max, scores[r * KEYS_BLOCK + kk]);
        }
        let new_max = max(run_max, tile_max);
        let correction = exp(run_max - new_max);
        var w: array<f32, KEYS_BLOCK>;
        var tile_sum = 0.0;
        for (var kk = 0u; kk < KEYS_BLOCK; kk++) {
            let sc = scores[r * KEYS_BLOCK + kk];
            w[kk] = select(0.0, exp(sc - new_max), sc > NEG_BIG);
            tile_sum += w[kk];
        }
        run_sum = run_sum * correction + tile_sum;
        run_max = new_max;
        workgroupBarrier();
        for (var i = 0u; i < ROWS_DIMS; i++) {
            let d = lane + 8u * i;
            if d < hd {
                var a = acc[i] * correction;
                for (var kk = 0u; kk < KEYS_BLOCK; kk++) {
                    a += w[kk] * kv_block[kk * hs + d];
                }
                acc[i] = a;
            }
        }
    }
    if r < rows {
        for (var i = 0u; i < ROWS_DIMS; i++) {
            let d = lane + 8u * i;
            if d < hd {
                out[t * qw + h * hd + d] = acc[i] / run_sum;
            }
        }
    }
}
