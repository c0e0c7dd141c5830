// The attention shaders' K/V cache bindings (2 and 3) and their loads, by value
// index (`k_at`, `v_at`) or by group of four values (`k4_at`, `v4_at`, index in
// vec4s). With KV_F16 the caches hold f16 values packed in pairs (value 2i in the low
// half of word i, as the host and kv_write.wgsl store them), unpacked with
// unpack2x16float so no shader-f16 feature is needed. With KV_Q8 they are int8 caches
// (`DType::Q8Head`): per row and KV head a block of head_dim i8 values, four per word
// (value 4w+b in byte b of word w, little endian as the host stores them), then the
// block's f32 scale word, so head_dim/4 + 1 words per block and blocks row by row, head
// after head. A logical value index i (row * n_kv_heads * head_dim + head * head_dim +
// d, as in the f32 layout) is in block i / head_dim at value i % head_dim; a value is
// scale * q, exactly as the host dequantizes. The including shader declares `params`
// with `head_dim` before including this file.

#ifdef KV_Q8
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

// The block length: the HEAD_DIM define where the includer is built for one head size
// (a division by a constant is a multiply, by a uniform a long instruction sequence).
fn q8_head_dim() -> u32 {
#ifdef HEAD_DIM
    return HEAD_DIM;
#else
    return params.head_dim;
#endif
}

// Byte b of a word as a signed int8 value.
fn q8_byte(word: u32, b: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(word), 8u * b, 8u));
}
// All four bytes of a word, in value order.
fn q8_word(word: u32) -> vec4<f32> {
    let w = bitcast<i32>(word);
    return vec4<f32>(f32(extractBits(w, 0u, 8u)), f32(extractBits(w, 8u, 8u)),
                     f32(extractBits(w, 16u, 8u)), f32(extractBits(w, 24u, 8u)));
}
fn k_at(i: u32) -> f32 {
    let hd = q8_head_dim();
    let hd4 = hd / 4u;
    let base = i / hd * (hd4 + 1u);
    let d = i % hd;
    return bitcast<f32>(k_cache[base + hd4]) * q8_byte(k_cache[base + d / 4u], d % 4u);
}
fn v_at(i: u32) -> f32 {
    let hd = q8_head_dim();
    let hd4 = hd / 4u;
    let base = i / hd * (hd4 + 1u);
    let d = i % hd;
    return bitcast<f32>(v_cache[base + hd4]) * q8_byte(v_cache[base + d / 4u], d % 4u);
}
// Group of four values i (in vec4s): one word of its block.
fn k4_at(i: u32) -> vec4<f32> {
    let hd4 = q8_head_dim() / 4u;
    let base = i / hd4 * (hd4 + 1u);
    return bitcast<f32>(k_cache[base + hd4]) * q8_word(k_cache[base + i % hd4]);
}
fn v4_at(i: u32) -> vec4<f32> {
    let hd4 = q8_head_dim() / 4u;
    let base = i / hd4 * (hd4 + 1u);
    return bitcast<f32>(v_cache[base + hd4]) * q8_word(v_cache[base + i % hd4]);
}
#else
#ifdef KV_F16
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

fn k_at(i: u32) -> f32 {
    return unpack2x16float(k_cache[i >> 1u])[i & 1u];
}
fn v_at(i: u32) -> f32 {
    return unpack2x16float(v_cache[i >> 1u])[i & 1u];
}
fn k4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(k_cache[2u * i]), unpack2x16float(k_cache[2u * i + 1u]));
}
fn v4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(v_cache[2u * i]), unpack2x16float(v_cache[2u * i + 1u]));
}
#else
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;

fn k_at(i: u32) -> f32 {
    return k_cache[i];
}
fn v_at(i: u32) -> f32 {
    return v_cache[i];
}
fn k4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(k_cache[4u * i], k_cache[4u * i + 1u], k_cache[4u * i + 2u], k_cache[4u * i + 3u]);
}
fn v4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(v_cache[4u * i], v_cache[4u * i + 1u], v_cache[4u * i + 2u], v_cache[4u * i + 3u]);
}
#endif
#endif
