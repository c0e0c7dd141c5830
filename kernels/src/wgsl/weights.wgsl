// Weight element access for every storage format the wgpu backend prepares. The
// including shader declares `w: array<u32>` (one buffer part: rows of `k` values) and
// defines exactly one of W_F32, W_F16, W_BF16, W_Q4_0, W_Q4_1, W_Q8_0, W_Q8_CHANNEL
// (plus W_HALF with the 16-bit floats and W_BLOCKS with the GGUF block formats).
// `w` is `array<vec4<u32>>` (buffers are padded to 16 bytes): an aligned 16-byte load is
// one load instruction, which is what CPU drivers (lavapipe) pay for, per lane.
// Part layouts (written by backends/src/wgpu/weights.rs):
//   f32:        k words per row;
//   f16, bf16:  2 values per word, element e = row * k + col at bits 16 * (e % 2);
//   q4_0:       4 words of nibbles per 32-value block (GGUF order: byte j holds value j
//               in its low nibble and j + 16 in its high one), then from word `soff`
//               the f16 block scales, 2 per word;
//   q4_1:       as q4_0, then one word per block: f16 d (low half), f16 min (high half);
//   q8_0:       8 words of i8 per block, then f16 scales, 2 per word;
//   q8_channel: each row's i8 values padded to a multiple of 4 bytes, then one f32
//               scale per row.
// Quantized blocks are stored as aligned segments (values, then scales), so every
// load is an aligned u32: GGUF's 18/20/34-byte blocks would straddle words.

fn word(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

// Sign-extends the 4 bytes of `v` (little-endian order) to i32.
fn unpack_i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(
        bitcast<i32>(v << 24u) >> 24u,
        bitcast<i32>(v << 16u) >> 24u,
        bitcast<i32>(v << 8u) >> 24u,
        bitcast<i32>(v) >> 24u));
}

fn f16_scale(soff: u32, blk: u32) -> f32 {
    return unpack2x16float(word(soff + (blk >> 1u)))[blk & 1u];
}

// The 4 values 4q..4q+3 of a q4 block from the block's word q % 4, q in 0..8.
fn nibbles(v: u32, q: u32) -> vec4<f32> {
    let x = v >> ((q >> 2u) * 4u);
    return vec4<f32>(vec4<u32>(x, x >> 8u, x >> 16u, x >> 24u) & vec4<u32>(15u));
}

fn q4_quad(blk: u32, q: u32) -> vec4<f32> {
    return nibbles(w[blk][q & 3u], q);
}

// Value `col` of 16-bit-float row `row`.
fn half_at(e: u32) -> f32 {
    let bits = (word(e >> 1u) >> ((e & 1u) * 16u)) & 0xffffu;
#ifdef W_BF16
    return bitcast<f32>(bits << 16u);
#else
    return unpack2x16float(bits).x;
#endif
}

// One weight value: row `row`, column `col`, rows of `k` values.
fn w_at(row: u32, col: u32, k: u32, soff: u32) -> f32 {
#ifdef W_F32
    return bitcast<f32>(word(row * k + col));
#endif
#ifdef W_F16
    return half_at(row * k + col);
#endif
#ifdef W_BF16
    return half_at(row * k + col);
#endif
#ifdef W_Q4_0
    let v = w_quad(row, col & ~3u, k, soff);
    return v[col & 3u];
#endif
#ifdef W_Q4_1
    let v = w_quad(row, col & ~3u, k, soff);
    return v[col & 3u];
#endif
#ifdef W_Q8_0
    let v = w_quad(row, col & ~3u, k, soff);
    return v[col & 3u];
#endif
#ifdef W_Q8_CHANNEL
    let v = w_quad(row, col & ~3u, k, soff);
    return v[col & 3u];
#endif
}

// Values col..col+3 of row `row` (col a multiple of 4); values at or past `k` read 0.
fn w_quad(row: u32, col: u32, k: u32, soff: u32) -> vec4<f32> {
#ifdef W_F32
    let e = row * k + col;
    if col + 4u <= k && (e & 3u) == 0u {
        return bitcast<vec4<f32>>(w[e >> 2u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if col + i < k {
            v[i] = bitcast<f32>(word(e + i));
        }
    }
    return v;
#endif
#ifdef W_HALF
    let e = row * k + col;
    if col + 4u <= k && (e & 3u) == 0u {
        let pair = w[e >> 3u];
        let at = (e >> 1u) & 2u;
        let lo = pair[at];
        let hi = pair[at + 1u];
#ifdef W_BF16
        return vec4<f32>(bitcast<f32>(lo << 16u), bitcast<f32>(lo & 0xffff0000u), bitcast<f32>(hi << 16u), bitcast<f32>(hi & 0xffff0000u));
#else
        return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
#endif
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if col + i < k {
            v[i] = half_at(e + i);
        }
    }
    return v;
#endif
#ifdef W_Q4_0
    let blk = row * (k >> 5u) + (col >> 5u);
    return f16_scale(soff, blk) * (q4_quad(blk, (col & 31u) >> 2u) - 8.0);
#endif
#ifdef W_Q4_1
    let blk = row * (k >> 5u) + (col >> 5u);
    let dm = unpack2x16float(word(soff + blk));
    return dm.x * q4_quad(blk, (col & 31u) >> 2u) + dm.y;
#endif
#ifdef W_Q8_0
    let blk = row * (k >> 5u) + (col >> 5u);
    return f16_scale(soff, blk) * unpack_i8x4(word(blk * 8u + ((col & 31u) >> 2u)));
#endif
#ifdef W_Q8_CHANNEL
    let words_per_row = (k + 3u) >> 2u;
    return bitcast<f32>(word(soff + row)) * unpack_i8x4(word(row * words_per_row + (col >> 2u)));
#endif
}

// A weight tile's view of the 32-value block holding `col` (matmul.wgsl's gemm): raw
// values, exact in f16 (q4: the nibble 0..15; q8: the i8 q; float formats: the value),
// and the block's affine map, value = d * raw + c (vec2(d, c); c != 0 only for the
// W_OFFSET formats), so the scale multiplies a whole block's sum once.
// Each comes in two halves, so a kernel can load a step ahead and keep the loads in
// flight behind other work: `*_bits` loads the stored words and computes nothing from
// them, `*_from_bits` decodes (the float formats decode as they load: their raw
// quad is w_quad's value).
#ifdef W_BLOCKS
alias WRawBits = u32;
#else
#ifdef W_Q8_CHANNEL
alias WRawBits = u32;
#else
alias WRawBits = vec4<u32>;
#endif
#endif

fn w_raw_bits(row: u32, col: u32, k: u32, soff: u32) -> WRawBits {
#ifdef W_BLOCKS
    let blk = row * (k >> 5u) + (col >> 5u);
#ifdef W_Q8_0
    return word(blk * 8u + ((col & 31u) >> 2u));
#else
    return w[blk][((col & 31u) >> 2u) & 3u];
#endif
#else
#ifdef W_Q8_CHANNEL
    return word(row * ((k + 3u) >> 2u) + (col >> 2u));
#else
    return bitcast<vec4<u32>>(w_quad(row, col, k, soff));
#endif
#endif
}

fn w_raw_from_bits(b: WRawBits, col: u32) -> vec4<f32> {
#ifdef W_BLOCKS
#ifdef W_Q8_0
    return unpack_i8x4(b);
#else
    return nibbles(b, (col & 31u) >> 2u);
#endif
#else
#ifdef W_Q8_CHANNEL
    return unpack_i8x4(b);
#else
    return bitcast<vec4<f32>>(b);
#endif
#endif
}

// The word holding the affine map of `row`'s block at `col` (0 for the float formats).
fn w_affine_bits(row: u32, col: u32, k: u32, soff: u32) -> u32 {
#ifdef W_BLOCKS
    let blk = row * (k >> 5u) + (col >> 5u);
#ifdef W_Q4_1
    return word(soff + blk);
#else
    return word(soff + (blk >> 1u));
#endif
#else
#ifdef W_Q8_CHANNEL
    return word(soff + row);
#else
    return 0u;
#endif
#endif
}

fn w_affine_from_bits(b: u32, row: u32, col: u32, k: u32) -> vec2<f32> {
#ifdef W_BLOCKS
#ifdef W_Q4_1
    return unpack2x16float(b);
#else
    let blk = row * (k >> 5u) + (col >> 5u);
    let d = unpack2x16float(b)[blk & 1u];
#ifdef W_Q4_0
    return vec2<f32>(d, -8.0 * d);
#else
    return vec2<f32>(d, 0.0);
#endif
#endif
#else
#ifdef W_Q8_CHANNEL
    return vec2<f32>(bitcast<f32>(b), 0.0);
#else
    return vec2<f32>(1.0, 0.0);
#endif
#endif
}

#ifdef W_BLOCKS
// One whole 32-value block of a GGUF block format, loaded with one or two 16-byte
// loads, so a kernel can dequantize its 8 quads from registers.
struct WBlock {
    lo: vec4<u32>,
    hi: vec4<u32>,
    d: f32,
    m: f32,
}

fn w_block(row: u32, col: u32, k: u32, soff: u32) -> WBlock {
    let blk = row * (k >> 5u) + (col >> 5u);
    var b: WBlock;
#ifdef W_Q8_0
    b.lo = w[blk * 2u];
    b.hi = w[blk * 2u + 1u];
#else
    b.lo = w[blk];
#endif
#ifdef W_Q4_1
    let dm = unpack2x16float(word(soff + blk));
    b.d = dm.x;
    b.m = dm.y;
#else
    b.d = f16_scale(soff, blk);
#endif
    return b;
}

// Values 4q..4q+3 of a block, q in 0..8.
fn block_quad(b: WBlock, q: u32) -> vec4<f32> {
#ifdef W_Q8_0
    let v = select(b.lo, b.hi, q >= 4u)[q & 3u];
    return b.d * unpack_i8x4(v);
#endif
#ifdef W_Q4_0
    return b.d * (nibbles(b.lo[q & 3u], q) - 8.0);
#endif
#ifdef W_Q4_1
    return b.d * nibbles(b.lo[q & 3u], q) + b.m;
#endif
}
#endif

#ifdef DOT4
// One 32-value block of an integer weight format as matmul.wgsl's gemm_dot4 reads it:
// 8 words of four i8 q in value order, and (d, c) such that the block's values are
// d * q + c (Q4_0: q the raw nibble 0..15 and c = -8 d; Q4_1: c the block minimum;
// Q8_0, Q8Channel: c = 0). So sum_i a_i w_i = as * (d * sum(qa q) + c * sum(qa)) for
// activations a = as * qa.
struct I8Block {
    lo: vec4<u32>,
    hi: vec4<u32>,
    d: f32,
    c: f32,
}

fn w_i8_block(row: u32, k0: u32, k: u32, soff: u32) -> I8Block {
    var b: I8Block;
#ifdef W_Q8_CHANNEL
    // Words past the row's end read 0 (the activations there are 0 too).
    let wpr = (k + 3u) >> 2u;
    var words: array<u32, 8>;
    for (var q = 0u; q < 8u; q++) {
        let wi = (k0 >> 2u) + q;
        words[q] = select(0u, word(row * wpr + wi), wi < wpr);
    }
    b.lo = vec4<u32>(words[0], words[1], words[2], words[3]);
    b.hi = vec4<u32>(words[4], words[5], words[6], words[7]);
    b.d = bitcast<f32>(word(soff + row));
    b.c = 0.0;
#else
    // The block formats: w_block's loads, the nibbles split into bytes.
    let wb = w_block(row, k0, k, soff);
    b.d = wb.d;
#ifdef W_Q8_0
    b.lo = wb.lo;
    b.hi = wb.hi;
    b.c = 0.0;
#else
    b.lo = wb.lo & vec4<u32>(0x0f0f0f0fu);
    b.hi = (wb.lo >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
#ifdef W_Q4_1
    b.c = wb.m;
#else
    b.c = -8.0 * wb.d;
#endif
#endif
#endif
    return b;
}
#endif
