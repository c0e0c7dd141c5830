// The attention shaders' query loads (binding 1). Query row t is read at
// q[t * q_stride + q_offset ..]: a column slice of a fused q/k/v matmul's output is
// read in place (`n_heads * head_dim` and 0 for a whole matrix). With ROPE_Q (causal
// mode) q is RoPE's input and each value is rotated at position pos + t as it is
// loaded (rope_value.wgsl, the rope's head_dim being the attention's), so the query
// rope runs no dispatch of its own (binding 7: inv_freq). The including shader
// declares `params` (attention_params.wgsl) and with ROPE_Q the position bindings
// before including this file.

@group(0) @binding(1) var<storage, read> q: array<f32>;
#ifdef ROPE_Q
@group(0) @binding(7) var<storage, read> inv_freq: array<f32>;
#include "rope_value.wgsl"
#endif

// Value d of head h of query row t.
fn q_at(t: u32, h: u32, d: u32) -> f32 {
    let c = h * params.head_dim + d;
    let row = t * params.q_stride + params.q_offset;
#ifdef ROPE_Q
    let spec = params.rope;
    let pos = u32(pos_in[0]);
    return rope_value(spec, c, q[row + c], q[row + rope_partner(spec, c)], pos + t,
                      pos + u32(n_valid_in[0]));
#else
    return q[row + c];
#endif
}
