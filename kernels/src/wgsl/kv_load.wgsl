// The attention shaders' K/V cache bindings (2 and 3) and their loads, by value
// index (`k_at`, `v_at`) or by group of four values (`k4_at`, `v4_at`, index in
// vec4s). With KV_F16 the caches hold f16 values packed in pairs (value 2i in the low
// half of word i, as the host and kv_write.wgsl store them), unpacked with
// unpack2x16float so no shader-f16 feature is needed.

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
