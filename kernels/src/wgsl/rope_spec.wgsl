// A RoPE's parameters (rope_value.wgsl applies them). Shaders that rotate carry one
// in their uniform Params as the last member `@align(16) rope: RopeSpec` (a struct
// member of a uniform must start on 16 bytes); the host fills it from one typed struct
// (backends/src/wgpu/shader_args.rs `RopeSpec`), not field by field per shader.
struct RopeSpec {
    head_dim: u32,
    rotary_dim: u32,
    // 1 for HF dynamic NTK scaling: the frequencies depend on the sequence length
    // (pos + n_valid), so they are recomputed here instead of read from inv_freq.
    dynamic_ntk: u32,
    theta: f32,
    factor: f32,
    original_max_position: u32,
}
