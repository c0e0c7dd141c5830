// The attention shaders' uniform (attention.wgsl, attention_lanes.wgsl,
// attention_i8.wgsl, attention_combine.wgsl), one struct for all so the host fills one.
#include "rope_spec.wgsl"

struct Params {
    t_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // Cache rows (causal) or rows per sequence (BIDIRECTIONAL).
    s_rows: u32,
    scale: f32,
    node: u32,
    // q_load.wgsl's fields: where query row t is, and (ROPE_Q) its rope.
    q_stride: u32,
    q_offset: u32,
    // Key ranges per row (attention.wgsl SPLIT_KEYS, attention_combine.wgsl).
    splits: u32,
    @align(16) rope: RopeSpec,
}

@group(0) @binding(0) var<uniform> params: Params;
