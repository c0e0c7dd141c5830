// Activations quantized to i8 per 32-value block for matmul.wgsl's gemm_dot4
// (`ActPrecision::I8`; it also serves `I8Row`, which allows finer): per row and block,
// scale = amax / 127 and q = round_half_even(x / scale) clamped to +-127 (a zero block
// is all zeros with scale 0), as the reference quantizer. One thread per (row, block).
// Output, ACT_QUANT_WORDS words per block, blocks row by row: 8 words of four i8 (value
// 4w + b in byte b of word w; values at or past k are 0), the f32 scale, and the i32
// sum of the 32 q (the dot4 GEMM's correction term for weights with an offset).

const ACT_QUANT_WORDS: u32 = 10u;

struct Params {
    m: u32,
    k: u32,
    // Row stride of a, in values.
    lda: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> aq: array<u32>;

@compute @workgroup_size(64)
fn quantize_blocks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blocks = (params.k + 31u) / 32u;
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= params.m * blocks {
        return;
    }
    let r = i / blocks;
    let k0 = (i % blocks) * 32u;
    var x: array<f32, 32>;
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        var v = 0.0;
        if k0 + j < params.k {
            v = a[r * params.lda + k0 + j];
        }
        x[j] = v;
        amax = max(amax, abs(v));
    }
    let inv = select(0.0, 127.0 / amax, amax > 0.0);
    let base = i * ACT_QUANT_WORDS;
    var sum = 0;
    for (var w = 0u; w < 8u; w++) {
        var word = 0u;
        for (var b = 0u; b < 4u; b++) {
            let q = i32(clamp(round(x[4u * w + b] * inv), -127.0, 127.0));
            sum += q;
            word |= (bitcast<u32>(q) & 0xffu) << (8u * b);
        }
        aq[base + w] = word;
    }
    aq[base + 8u] = bitcast<u32>(amax / 127.0);
    aq[base + 9u] = bitcast<u32>(sum);
}
