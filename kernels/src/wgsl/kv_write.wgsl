// Writes new [T, D] into rows pos .. pos+T of the KV cache [S, D] in place (the node's
// output aliases the cache). One thread per element of `new`; with KV_F16 one thread
// per pair of elements, stored as one word of two f16 (D is even, so a pair never
// straddles rows; pack2x16float rounds to nearest even like the host). With KV_Q8 (an
// int8 `Q8Head` cache, see kv_load.wgsl) one thread per (new row, KV head) block: it
// finds max|x|, scale = max|x| / 127, and writes q = round(x / scale) (half away from
// zero, as the host's `quant::quantize_kv_head`, computed as x * (1 / scale)) four per
// word, then the scale word. With ROPE the new rows are RoPE's input (rope_value.wgsl):
// each value is rotated at position pos + t as it is read, so a rope whose only reader
// is this write runs no dispatch of its own (bindings 4: n_valid, 5: inv_freq). With
// KV_PAIR the dispatch also does a second write of the same shape at the same
// positions (an attention layer's V beside its K: one dispatch, not two): threads
// past `n` write v_rows (binding 6, never rotated) into v_cache (binding 7).
#include "common.wgsl"
#include "status.wgsl"
#include "rope_spec.wgsl"

struct Params {
    n: u32,
    width: u32,
    cache_rows: u32,
    new_rows: u32,
    node: u32,
    // KV_Q8: values per block (a multiple of 4).
    head_dim: u32,
    // Where row t of the new rows is: new_rows[t * src_stride + src_offset ..] (a
    // column slice read in place; `width` and 0 for a whole matrix).
    src_stride: u32,
    src_offset: u32,
    // KV_PAIR: where row t of v_rows is, as src_stride / src_offset.
    v_stride: u32,
    v_offset: u32,
    // ROPE: the rope's parameters (its head_dim need not be the cache block's).
    @align(16) rope: RopeSpec,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> new_rows: array<f32>;
@group(0) @binding(2) var<storage, read> pos_in: array<i32>;
// A cache's storage element: f16 pairs (KV_F16) and int8 quads (KV_Q8) in words.
#ifdef KV_F16
alias CacheElem = u32;
#else
#ifdef KV_Q8
alias CacheElem = u32;
#else
alias CacheElem = f32;
#endif
#endif
@group(0) @binding(3) var<storage, read_write> cache: array<CacheElem>;

#ifdef KV_PAIR
@group(0) @binding(6) var<storage, read> v_rows: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<CacheElem>;
#endif

#ifdef ROPE
@group(0) @binding(4) var<storage, read> n_valid_in: array<i32>;
@group(0) @binding(5) var<storage, read> inv_freq: array<f32>;
#include "rope_value.wgsl"
#endif

// Element e (row-major over [T, width]) of write `part`'s new rows (0: new_rows, 1:
// KV_PAIR's v_rows), written at row pos + e / width (with ROPE, part 0 is rotated
// there; `seq_len` is pos + n_valid).
fn new_value(part: u32, e: u32, pos: u32, seq_len: u32) -> f32 {
    let t = e / params.width;
    let c = e % params.width;
#ifdef KV_PAIR
    if part == 1u {
        return v_rows[t * params.v_stride + params.v_offset + c];
    }
#endif
    let row = t * params.src_stride + params.src_offset;
#ifdef ROPE
    let spec = params.rope;
    return rope_value(spec, c, new_rows[row + c], new_rows[row + rope_partner(spec, c)], pos + t, seq_len);
#else
    return new_rows[row + c];
#endif
}

// Stores word or value `i` of write `part`'s cache (see new_value).
#ifdef KV_F16
fn store(part: u32, i: u32, v: u32) {
#else
#ifdef KV_Q8
fn store(part: u32, i: u32, v: u32) {
#else
fn store(part: u32, i: u32, v: f32) {
#endif
#endif
#ifdef KV_PAIR
    if part == 1u {
        v_cache[i] = v;
        return;
    }
#endif
    cache[i] = v;
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn kv_write(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = flat_index(gid, nwg, ELEMENTWISE_WG);
    // Thread g does item i of write `part` (KV_PAIR: the second write past n).
    let part = g / params.n;
    let i = g % params.n;
#ifdef KV_PAIR
    if part > 1u {
        return;
    }
#else
    if part > 0u {
        return;
    }
#endif
    let pos = pos_in[0];
#ifdef ROPE
    let n_valid = n_valid_in[0];
#else
    let n_valid = 0i;
#endif
    // As the reference: every row of the chunk (padding included) must fit.
    if pos < 0 || n_valid < 0 || u32(pos) > params.cache_rows || u32(pos) + params.new_rows > params.cache_rows {
        if g == 0u {
            raise_status(STATUS_BAD_POSITION, params.node);
        }
        return;
    }
    let seq_len = u32(pos) + u32(n_valid);
#ifdef KV_F16
    let base = u32(pos) * params.width / 2u;
    store(part, base + i, pack2x16float(vec2<f32>(new_value(part, 2u * i, u32(pos), seq_len),
                                                  new_value(part, 2u * i + 1u, u32(pos), seq_len))));
#else
#ifdef KV_Q8
    let hd = params.head_dim;
    let hd4 = hd / 4u;
    // A block (one KV head's row) never straddles rows: head_dim divides width.
    let first = i * hd;
    var amax = 0.0;
    for (var d = 0u; d < hd; d++) {
        amax = max(amax, abs(new_value(part, first + d, u32(pos), seq_len)));
    }
    let s = amax / 127.0;
    let inv = select(0.0, 1.0 / s, s != 0.0);
    let base = (u32(pos) * params.width / hd + i) * (hd4 + 1u);
    for (var w = 0u; w < hd4; w++) {
        var word = 0u;
        for (var b = 0u; b < 4u; b++) {
            let y = new_value(part, first + 4u * w + b, u32(pos), seq_len) * inv;
            let q = clamp(sign(y) * floor(abs(y) + 0.5), -127.0, 127.0);
            word |= (bitcast<u32>(i32(q)) & 0xffu) << (8u * b);
        }
        store(part, base + w, word);
    }
    store(part, base + hd4, bitcast<u32>(s));
#else
    store(part, u32(pos) * params.width + i, new_value(part, i, u32(pos), seq_len));
#endif
#endif
}
