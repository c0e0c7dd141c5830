// out[m, n] = sum_k a[m, k] * w'[k, n] with the weight dequantized while it is loaded
// (defines W_* pick its format, see weights.wgsl), then the fused epilogue.
// Three kernels:
//   lanes: one output column per thread and up to 8 activation rows per workgroup
//         (y). Every thread of a workgroup reads the same activation values, so a
//         CPU driver (lavapipe) loads them once for all SIMD lanes; the kernel of
//         choice on CPU adapters, any M, no workgroup memory or barriers;
//   gemv: few rows (decode; the host's GEMV_MAX_ROWS): each weight row is read once;
//         GEMV_LANES threads split its K range, every thread keeps one partial per
//         activation row, and subgroup shuffles or workgroup memory add them (see
//         the kernel);
//   gemm: 64x64 output tiles (32x64 with GEMM_ROWS_32), K in steps of 32 (one quant block per weight row), A and
//         the dequantized B tile staged in workgroup memory (B in f16 with GEMM_F16),
//         4x4 outputs per thread (see the kernel);
//   gemm_coop (COOP): gemm's tiles multiplied on the GPU's matrix units (cooperative
//         matrices, f16 operands split into high and low parts, f32 sums).
// Defines: W_KN (weight stored [K, N], f32/f16/bf16 only; otherwise [N, K]), NORM (the
// rms_norm prologue, gemv and gemm; binding 7 its weight), and the
// epilogue's steps (npurt_graph::Epilogue, applied in this fixed order by write_out;
// one flag per step suffices because a list holds each step at most once, in order):
//   GLU + GLU_SILU | GLU_GELU | GLU_GELU_TANH: out = act(a @ gate^T) * (a @ up^T), gate
//       row n and up row `up_row + n` of the same weight buffer (SwiGLU is GLU_SILU);
//   HAS_BIAS: + bias[n];
//   HAS_ACT + ACT_SILU | ACT_GELU | ACT_GELU_TANH: the activation;
//   HAS_RESIDUAL: + residual[m, n].
// Activations are f32 throughout: ActPrecision::I16/I8 are computed as f32 on this
// backend.
#ifdef GEMM_F16
enable f16;
#endif
#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif
#include "common.wgsl"

struct Params {
    // Rows of a and out.
    m: u32,
    // Reduction length of this dispatch (a weight part split along K covers a slice).
    k: u32,
    // Output columns this dispatch computes.
    n: u32,
    // First output column of this dispatch (weight parts split along N).
    n_base: u32,
    // Row stride of out and residual (the full N).
    ldo: u32,
    // Row stride of a.
    lda: u32,
    // First column of a this dispatch reads (weight parts split along K).
    a_k0: u32,
    // Word offset of the scale segment in w.
    w_soff: u32,
    // W_KN: the weight's row length (N).
    w_ld: u32,
    // GLU: weight row of `up` for output column 0.
    up_row: u32,
    // 1: add to what out already holds (the second and later K parts).
    accumulate: u32,
    // NORM: the rms_norm prologue's eps.
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#ifdef HAS_BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#ifdef HAS_RESIDUAL
@group(0) @binding(5) var<storage, read> residual: array<f32>;
#endif

#include "weights.wgsl"

// a[m, col..col+3] of this dispatch's K slice; columns at or past k read 0.
fn a_quad(m: u32, col: u32) -> vec4<f32> {
    let e = m * params.lda + params.a_k0 + col;
    if col + 4u <= params.k && (e & 3u) == 0u {
        return a[e >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if col + i < params.k {
            v[i] = a[(e + i) >> 2u][(e + i) & 3u];
        }
    }
    return v;
}

#ifdef NORM
// The rms_norm prologue folded in (gemv and gemm; norm.wgsl's rms_norm otherwise):
// the workgroup computes the inverse RMS of each of its rows over the whole K, then
// reads a[m, k] as a[m, k] * inv_rms[m] * norm_w[k].
@group(0) @binding(7) var<storage, read> norm_w: array<vec4<f32>>;
var<workgroup> row_inv_rms: array<f32, 64>;
var<workgroup> norm_partial: array<f32, 256>;

// row_inv_rms[r] for rows first + r, r < rows <= cap, the workgroup's `threads`
// threads splitting each row (threads / cap per row). Call from uniform control flow:
// it ends with a barrier.
fn norm_rows(first: u32, rows: u32, cap: u32, li: u32, threads: u32) {
    let per_row = threads / cap;
    let r = li / per_row;
    var ss = 0.0;
    if r < rows {
        for (var k = (li % per_row) * 4u; k < params.k; k += per_row * 4u) {
            let v = a_quad(first + r, k);
            ss += dot(v, v);
        }
    }
    norm_partial[li] = ss;
    workgroupBarrier();
    if li < rows {
        var total = 0.0;
        for (var p = 0u; p < per_row; p++) {
            total += norm_partial[li * per_row + p];
        }
        row_inv_rms[li] = 1.0 / sqrt(total / f32(params.k) + params.eps);
    }
    workgroupBarrier();
}
#endif

// Activation values col..col+3 of row m as the gemv and gemm multiply them: with
// NORM normalized (`slot`: the row's entry in row_inv_rms).
fn a_input(m: u32, slot: u32, col: u32) -> vec4<f32> {
    let v = a_quad(m, col);
#ifdef NORM
    // col is a multiple of 4; past k, v is 0 (and the buffer is padded to 16 bytes).
    return v * row_inv_rms[slot] * norm_w[col >> 2u];
#else
    return v;
#endif
}

#ifdef GLU
// The GLU step's gating activation (common.wgsl has the same functions the reference
// kernels compute: silu, gelu_erf, gelu_tanh).
fn glu_act(v: f32) -> f32 {
#ifdef GLU_SILU
    return silu(v);
#endif
#ifdef GLU_GELU
    return gelu_erf(v);
#endif
#ifdef GLU_GELU_TANH
    return gelu_tanh(v);
#endif
}
#endif

#ifdef HAS_ACT
// The activation step.
fn epilogue_act(v: f32) -> f32 {
#ifdef ACT_SILU
    return silu(v);
#endif
#ifdef ACT_GELU
    return gelu_erf(v);
#endif
#ifdef ACT_GELU_TANH
    return gelu_tanh(v);
#endif
}
#endif

// The epilogue: the list's steps in order on one output value.
fn write_out(m: u32, n: u32, gate: f32, up: f32) {
    let o = m * params.ldo + params.n_base + n;
#ifdef GLU
    var v = glu_act(gate) * up;
#else
    var v = gate;
    if params.accumulate != 0u {
        v = out[o] + v;
    }
#endif
#ifdef HAS_BIAS
    v += bias[params.n_base + n];
#endif
#ifdef HAS_ACT
    v = epilogue_act(v);
#endif
#ifdef HAS_RESIDUAL
    v += residual[o];
#endif
    out[o] = v;
}

#ifdef GEMV_ROWS
// gemv (defines GEMV_ROWS, GEMV_LANES, GEMV_R, GEMV_UNITS, chosen per node by the host;
// the entry exists only in modules built for it): GEMV_LANES threads split the K range
// of GEMV_R output columns in units of one 32-value block (block formats; neighbouring
// threads read neighbouring 16-byte blocks of a weight row) or one quad (other
// formats).
// - Each activation quad a thread loads serves its GEMV_R columns: the activations
//   (f32, and with NORM the norm weight too) are 7 to 14 times the bytes of a Q4
//   weight row, so without that reuse a GPU's L1 throughput, not its memory, would
//   bound the kernel.
// - Each step loads GEMV_UNITS units of each of its columns before it multiplies any,
//   so a thread has GEMV_R x GEMV_UNITS weight loads in flight: decode is bound by the
//   bytes in flight.
// - The partials, one per (column, activation row), stay in registers: GEMV_ROWS is the
//   node's static row count, so every loop over them has a constant bound (an array
//   indexed under a run-time bound lands in local memory on GPUs).
// The GEMV_LANES threads of a column group then add their partials with subgroup
// shuffles (GEMV_SUBGROUP: GEMV_LANES is at most the adapter's smallest subgroup, so
// a group never spans two) or through workgroup memory.
const GEMV_GROUPS: u32 = 64u / GEMV_LANES;   // column groups per workgroup
const GEMV_PARTIALS: u32 = GEMV_R * GEMV_ROWS;
#ifdef W_BLOCKS
const GEMV_UNIT: u32 = 32u;
#else
const GEMV_UNIT: u32 = 4u;
#endif

#ifndef GEMV_SUBGROUP
var<workgroup> partials: array<f32, 64u * GEMV_PARTIALS>;
#ifdef GLU
var<workgroup> partials_up: array<f32, 64u * GEMV_PARTIALS>;
#endif
#endif

// A gemv unit of weight row `row` starting at k0, and its quad q (values k0 + 4q ..).
#ifdef W_BLOCKS
alias GemvUnit = WBlock;
fn gemv_load(row: u32, k0: u32) -> WBlock {
    return w_block(row, k0, params.k, params.w_soff);
}
fn gemv_quad(u: WBlock, q: u32) -> vec4<f32> {
    return block_quad(u, q);
}
#else
alias GemvUnit = vec4<f32>;
fn gemv_load(row: u32, k0: u32) -> vec4<f32> {
    return w_quad(row, k0, params.k, params.w_soff);
}
fn gemv_quad(u: vec4<f32>, q: u32) -> vec4<f32> {
    return u;
}
#endif

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    // Column r of this thread's group: first + r * GEMV_GROUPS.
    let first = (wg.x + wg.y * nwg.x) * GEMV_GROUPS * GEMV_R + li / GEMV_LANES;
    let lane = li % GEMV_LANES;
#ifdef NORM
    norm_rows(0u, GEMV_ROWS, GEMV_ROWS, li, 64u);
#endif
    // Partial (r, m) at r * GEMV_ROWS + m.
    var acc: array<f32, GEMV_PARTIALS>;
    var acc_up: array<f32, GEMV_PARTIALS>;
    if first < params.n {
        // A column past n reloads the group's first (in range), its sums unused.
        var rows: array<u32, GEMV_R>;
        for (var r = 0u; r < GEMV_R; r++) {
            rows[r] = select(first, first + r * GEMV_GROUPS, first + r * GEMV_GROUPS < params.n);
        }
        let stride = GEMV_LANES * GEMV_UNIT;
        for (var k0 = lane * GEMV_UNIT; k0 < params.k; k0 += GEMV_UNITS * stride) {
            // Every load first (a unit past the row reloads the step's first, unused).
            var units: array<GemvUnit, GEMV_R * GEMV_UNITS>;
#ifdef GLU
            var ups: array<GemvUnit, GEMV_R * GEMV_UNITS>;
#endif
            for (var s = 0u; s < GEMV_UNITS; s++) {
                let k = select(k0, k0 + s * stride, k0 + s * stride < params.k);
                for (var r = 0u; r < GEMV_R; r++) {
                    units[s * GEMV_R + r] = gemv_load(rows[r], k);
#ifdef GLU
                    ups[s * GEMV_R + r] = gemv_load(params.up_row + rows[r], k);
#endif
                }
            }
            for (var s = 0u; s < GEMV_UNITS; s++) {
                let k = k0 + s * stride;
                if k < params.k {
                    for (var q = 0u; q < GEMV_UNIT / 4u; q++) {
                        var av: array<vec4<f32>, GEMV_ROWS>;
                        for (var m = 0u; m < GEMV_ROWS; m++) {
                            av[m] = a_input(m, m, k + q * 4u);
                        }
                        for (var r = 0u; r < GEMV_R; r++) {
                            let bq = gemv_quad(units[s * GEMV_R + r], q);
#ifdef GLU
                            let uq = gemv_quad(ups[s * GEMV_R + r], q);
#endif
                            for (var m = 0u; m < GEMV_ROWS; m++) {
                                acc[r * GEMV_ROWS + m] += dot(av[m], bq);
#ifdef GLU
                                acc_up[r * GEMV_ROWS + m] += dot(av[m], uq);
#endif
                            }
                        }
                    }
                }
            }
        }
    }
#ifdef GEMV_SUBGROUP
    for (var p = 0u; p < GEMV_PARTIALS; p++) {
        var s = acc[p];
        var s_up = acc_up[p];
        for (var o = GEMV_LANES / 2u; o > 0u; o >>= 1u) {
            s += subgroupShuffleXor(s, o);
#ifdef GLU
            s_up += subgroupShuffleXor(s_up, o);
#endif
        }
        let col = first + (p / GEMV_ROWS) * GEMV_GROUPS;
        if lane == 0u && col < params.n {
            write_out(p % GEMV_ROWS, col, s, s_up);
        }
    }
#else
    for (var p = 0u; p < GEMV_PARTIALS; p++) {
        partials[p * 64u + li] = acc[p];
#ifdef GLU
        partials_up[p * 64u + li] = acc_up[p];
#endif
    }
    workgroupBarrier();
    if lane == 0u {
        for (var p = 0u; p < GEMV_PARTIALS; p++) {
            let col = first + (p / GEMV_ROWS) * GEMV_GROUPS;
            if col < params.n {
                var s = 0.0;
                var s_up = 0.0;
                for (var l = 0u; l < GEMV_LANES; l++) {
                    s += partials[p * 64u + li + l];
#ifdef GLU
                    s_up += partials_up[p * 64u + li + l];
#endif
                }
                write_out(p % GEMV_ROWS, col, s, s_up);
            }
        }
    }
#endif
}
#endif

// Weight values k..k+3 for output column n of a [K, N] weight.
fn w_quad_kn(k: u32, n: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if k + i < params.k {
            v[i] = w_at(k + i, n, params.w_ld, 0u);
        }
    }
    return v;
}

// gemm: one workgroup of 256 threads per 64 x 64 output tile (GLU: 64 rows x 32
// output columns, whose 32 gate and 32 up weight rows fill the same 64-row weight
// tile). Each K step of 32 (one quant block) stages the activation tile and the
// dequantized weight tile in workgroup memory as quads (f32, or f16 with GEMM_F16),
// so each weight value is dequantized once per 64 rows and each activation once per
// 64 columns; then every thread computes a 4 x 4 block of outputs (rows ty + 16 i,
// weight rows tx + 16 j) with 4-term dot products. A tile row holds 9 quads for 8
// used: the padding spreads a subgroup's reads of 16 different weight rows over all
// banks. The weight tile holds each block's raw values and `b_affine` its scale and
// offset (weights.wgsl w_raw_from_bits, w_affine_from_bits), applied once per block
// to the sums.
// GEMM_F16 (needs SHADER_F16): the weight tile is stored in f16, where those raw
// values (4-bit and 8-bit integers, f16 weights) are exact, halving its workgroup
// memory; never for f32 or bf16 weights. Activations stay f32: f16 activation tiles
// moved SmolLM2's w4a16 logits 4.9e-3 of their range from f32 (and flipped a top-1),
// where the CPU's i16 activations move them 1.5e-3.
// Rows per tile: 64, or 32 with GEMM_ROWS_32 (twice the workgroups for the same
// matrix, for GPUs a 64-row grid leaves idle); the 16 thread rows cover it.
#ifdef GEMM_ROWS_32
const GEMM_TILE: u32 = 32u;
#else
const GEMM_TILE: u32 = 64u;
#endif
// Output rows per thread: ty + 16 i, i < GEMM_RPT.
const GEMM_RPT: u32 = GEMM_TILE / 16u;
// act_quant.wgsl's words per row and block.
const ACT_QUANT_WORDS: u32 = 10u;
const GEMM_QUADS: u32 = 8u;
const GEMM_STRIDE: u32 = 9u;
#ifdef GLU
const GEMM_COLS: u32 = 32u;
#else
const GEMM_COLS: u32 = 64u;
#endif
#ifdef GEMM_F16
alias WeightQuad = vec4<f16>;
#else
alias WeightQuad = vec4<f32>;
#endif

var<workgroup> a_tile: array<vec4<f32>, 576>;   // GEMM_TILE x GEMM_STRIDE
var<workgroup> b_tile: array<WeightQuad, 576>;
var<workgroup> b_affine: array<vec2<f32>, 64>;

// Row `c` of a gemm weight tile (GLU: gate rows, then up rows): its output column
// n (x) and weight row (y); n >= params.n is past the weight.
fn tile_row(n0: u32, c: u32) -> vec2<u32> {
#ifdef GLU
    let n = n0 + c % GEMM_COLS;
    return vec2<u32>(n, select(n, params.up_row + n, c >= GEMM_COLS));
#else
    return vec2<u32>(n0 + c, n0 + c);
#endif
}

// Quad `q` of the K step at k0 of weight tile row `c` as stored (weights.wgsl
// w_raw_bits; zero bits outside the weight, which decode to zero), and decoded to raw
// values (w_raw_from_bits).
fn gemm_b_bits(n0: u32, c: u32, k0: u32, q: u32) -> WRawBits {
    let nr = tile_row(n0, c);
    var b: WRawBits;
    if nr.x < params.n {
#ifdef W_KN
        b = bitcast<vec4<u32>>(w_quad_kn(k0 + q * 4u, nr.x));
#else
        b = w_raw_bits(nr.y, k0 + q * 4u, params.k, params.w_soff);
#endif
    }
    return b;
}

fn gemm_b_raw(b: WRawBits, k0: u32, q: u32) -> vec4<f32> {
    return w_raw_from_bits(b, k0 + q * 4u);
}

// The affine map (d, c) of weight tile row `c`'s block at k0, as stored (zero outside
// the weight) and decoded.
fn gemm_b_affine_bits(n0: u32, c: u32, k0: u32) -> u32 {
    let nr = tile_row(n0, c);
    var b = 0u;
    if nr.x < params.n {
        b = w_affine_bits(nr.y, k0, params.k, params.w_soff);
    }
    return b;
}

fn gemm_b_affine(b: u32, n0: u32, c: u32, k0: u32) -> vec2<f32> {
#ifdef W_KN
    return vec2<f32>(1.0, 0.0);
#else
    return w_affine_from_bits(b, tile_row(n0, c).y, k0, params.k);
#endif
}

// One quad of a gemm or gemm_coop K step's staging, loaded a step ahead (so the loads
// are in flight while the current step multiplies; with one workgroup per compute
// unit, as small prefill grids leave it, nothing else would hide them) and decoded
// when it is staged: the activation quad (with NORM unnormalized, and the norm
// weight's quad) and the weight quad's stored bits. Nothing is computed from loaded
// values until then.
struct StageQuad {
    a: vec4<f32>,
#ifdef NORM
    nw: vec4<f32>,
#endif
    b: WRawBits,
}

// Tile row r's quad q of the K step at k0 (activation rows past `a_rows` or m: zero).
fn stage_fetch(m0: u32, n0: u32, k0: u32, r: u32, q: u32, a_rows: u32) -> StageQuad {
    var st: StageQuad;
    let col = k0 + q * 4u;
    if r < a_rows && m0 + r < params.m {
        st.a = a_quad(m0 + r, col);
#ifdef NORM
        st.nw = norm_w[col >> 2u];
#endif
    }
    st.b = gemm_b_bits(n0, r, k0, q);
    return st;
}

// The staged activation quad as multiplied (a_input's value; `r` its row_inv_rms slot).
fn stage_a(st: StageQuad, r: u32) -> vec4<f32> {
#ifdef NORM
    return st.a * row_inv_rms[r] * st.nw;
#else
    return st.a;
#endif
}

// A gemm thread's share of a K step's staging (see StageQuad): 2 of the 512 quads of
// each tile (the 8 threads of a tile row read its 128 contiguous bytes, of a row of a
// and of one weight block) and, threads < 64, a weight row's affine map.
struct GemmStage {
    q: array<StageQuad, 2>,
    dc: u32,
}

fn gemm_fetch(m0: u32, n0: u32, k0: u32, li: u32) -> GemmStage {
    var st: GemmStage;
    for (var e = 0u; e < 2u; e++) {
        let idx = li + e * 256u;
        st.q[e] = stage_fetch(m0, n0, k0, idx / GEMM_QUADS, idx % GEMM_QUADS, GEMM_TILE);
    }
    if li < 64u {
        st.dc = gemm_b_affine_bits(n0, li, k0);
    }
    return st;
}

fn gemm_stage(st: GemmStage, n0: u32, k0: u32, li: u32) {
    for (var e = 0u; e < 2u; e++) {
        let idx = li + e * 256u;
        let r = idx / GEMM_QUADS;
        let q = idx % GEMM_QUADS;
        if r < GEMM_TILE {
            a_tile[r * GEMM_STRIDE + q] = stage_a(st.q[e], r);
        }
        b_tile[r * GEMM_STRIDE + q] = WeightQuad(gemm_b_raw(st.q[e].b, k0, q));
    }
    if li < 64u {
        b_affine[li] = gemm_b_affine(st.dc, n0, li, k0);
    }
}

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tx = li % 16u;
    let ty = li / 16u;
    let m0 = wg.y * GEMM_TILE;
    let n0 = wg.x * GEMM_COLS;
#ifdef NORM
    norm_rows(m0, min(GEMM_TILE, params.m - m0), GEMM_TILE, li, 256u);
#endif
    var acc: array<array<f32, 4>, 4>;
    // 512 weight quads per tile, 2 per thread (and GEMM_TILE x 8 activation quads).
    var next = gemm_fetch(m0, n0, 0u, li);
    for (var k0 = 0u; k0 < params.k; k0 += 32u) {
        gemm_stage(next, n0, k0, li);
        if k0 + 32u < params.k {
            next = gemm_fetch(m0, n0, k0 + 32u, li);
        }
        workgroupBarrier();
        // Sums of a x raw over the block, then its affine map once: d * sum(a raw)
        // (+ c * sum(a) for the W_OFFSET formats).
        var part: array<array<f32, 4>, 4>;
        var a_sum: array<f32, 4>;
        for (var q = 0u; q < GEMM_QUADS; q++) {
            var av: array<vec4<f32>, 4>;
            for (var i = 0u; i < GEMM_RPT; i++) {
                av[i] = a_tile[(ty + 16u * i) * GEMM_STRIDE + q];
#ifdef W_OFFSET
                a_sum[i] += dot(av[i], vec4<f32>(1.0));
#endif
            }
            for (var j = 0u; j < 4u; j++) {
                let bv = vec4<f32>(b_tile[(tx + 16u * j) * GEMM_STRIDE + q]);
                for (var i = 0u; i < GEMM_RPT; i++) {
                    part[i][j] += dot(av[i], bv);
                }
            }
        }
        for (var j = 0u; j < 4u; j++) {
            let dc = b_affine[tx + 16u * j];
            for (var i = 0u; i < GEMM_RPT; i++) {
                acc[i][j] += dc.x * part[i][j] + dc.y * a_sum[i];
            }
        }
        workgroupBarrier();
    }
    gemm_write(m0, n0, tx, ty, acc);
}

// A gemm thread's GEMM_RPT x 4 block through the epilogue.
fn gemm_write(m0: u32, n0: u32, tx: u32, ty: u32, acc: array<array<f32, 4>, 4>) {
    for (var i = 0u; i < GEMM_RPT; i++) {
        let m = m0 + ty + 16u * i;
#ifdef GLU
        // Weight rows tx and tx + 16 are gate columns, tx + 32 and tx + 48 their ups.
        for (var j = 0u; j < 2u; j++) {
            let n = n0 + tx + 16u * j;
            if m < params.m && n < params.n {
                write_out(m, n, acc[i][j], acc[i][j + 2u]);
            }
        }
#else
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if m < params.m && n < params.n {
                write_out(m, n, acc[i][j], 0.0);
            }
        }
#endif
    }
}

#ifdef DOT4
// gemm_dot4: gemm's tiling with i8 activations (act_quant.wgsl: 8 words, scale and
// q sum per row and 32-value block, binding 6) times i8 weights (weights.wgsl
// w_i8_block), 4 multiply-adds per dot4I8Packed. Each block's i32 sums are scaled
// into the f32 accumulators: as * (d * sum(qa q) + c * sum(qa)).
@group(0) @binding(6) var<storage, read> aq: array<u32>;

var<workgroup> a_words: array<u32, 576>;   // GEMM_TILE x GEMM_STRIDE
var<workgroup> b_words: array<u32, 576>;
var<workgroup> a_scale: array<f32, 64>;
var<workgroup> a_sum: array<f32, 64>;

@compute @workgroup_size(256)
fn gemm_dot4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tx = li % 16u;
    let ty = li / 16u;
    let m0 = wg.y * GEMM_TILE;
    let n0 = wg.x * GEMM_COLS;
    let blocks = (params.k + 31u) / 32u;
    var acc: array<array<f32, 4>, 4>;
    for (var kb = 0u; kb < blocks; kb++) {
        // Threads 0..63 stage weight tile row li's block, the next GEMM_TILE ones
        // activation row li - 64's (rows past the matrices stage zeros).
        if li < 64u {
            let nr = tile_row(n0, li);
            var b = I8Block(vec4<u32>(0u), vec4<u32>(0u), 0.0, 0.0);
            if nr.x < params.n {
                b = w_i8_block(nr.y, kb * 32u, params.k, params.w_soff);
            }
            for (var q = 0u; q < 4u; q++) {
                b_words[li * GEMM_STRIDE + q] = b.lo[q];
                b_words[li * GEMM_STRIDE + q + 4u] = b.hi[q];
            }
            b_affine[li] = vec2<f32>(b.d, b.c);
        } else if li < 64u + GEMM_TILE {
            let r = li - 64u;
            var words = array<u32, ACT_QUANT_WORDS>();
            if m0 + r < params.m {
                let base = ((m0 + r) * blocks + kb) * ACT_QUANT_WORDS;
                for (var q = 0u; q < ACT_QUANT_WORDS; q++) {
                    words[q] = aq[base + q];
                }
            }
            for (var q = 0u; q < 8u; q++) {
                a_words[r * GEMM_STRIDE + q] = words[q];
            }
            a_scale[r] = bitcast<f32>(words[8]);
            a_sum[r] = f32(bitcast<i32>(words[9]));
        }
        workgroupBarrier();
        var isum: array<array<i32, 4>, 4>;
        for (var q = 0u; q < 8u; q++) {
            var av: array<u32, 4>;
            for (var i = 0u; i < GEMM_RPT; i++) {
                av[i] = a_words[(ty + 16u * i) * GEMM_STRIDE + q];
            }
            for (var j = 0u; j < 4u; j++) {
                let bw = b_words[(tx + 16u * j) * GEMM_STRIDE + q];
                for (var i = 0u; i < GEMM_RPT; i++) {
                    isum[i][j] += dot4I8Packed(av[i], bw);
                }
            }
        }
        for (var i = 0u; i < GEMM_RPT; i++) {
            let r = ty + 16u * i;
            for (var j = 0u; j < 4u; j++) {
                let dc = b_affine[tx + 16u * j];
                acc[i][j] += a_scale[r] * (dc.x * f32(isum[i][j]) + dc.y * a_sum[r]);
            }
        }
        workgroupBarrier();
    }
    gemm_write(m0, n0, tx, ty, acc);
}
#endif

#ifdef COOP
// gemm_coop: gemm's 64 x 64 output tile (GLU: 64 x 32, gate and up rows sharing the
// weight tile), K in steps of one 32-value block, with the products on the matrix
// units (EXPERIMENTAL_COOPERATIVE_MATRIX: 16 x 16 x 16 f16 operands, f32
// accumulators, one subgroup of 32 threads per matrix). 128 threads, four subgroups
// of 32 (the variant requires that subgroup size), each owning a 32 x 32 quarter of
// the tile as 2 x 2 accumulators. Each K step stages the activation tile and the
// dequantized weight tile in workgroup memory as f16 pairs: x = hi + lo with
// hi = f16(x) and lo = f16(x - hi), and sums a_hi b_hi + a_hi b_lo + a_lo b_hi, so
// the products keep about 22 bits of each operand (near f32, like gemm) at three
// matrix products per step. Activations are staged scaled by COOP_A_SCALE and the sums
// unscaled: f16's range then holds activations up to 1.6e7, at an absolute error
// near 2^-16 of the unscaled value (the CPU's i16 activations: 2^-16 of the row's
// max). After the last step each subgroup stores its accumulators to workgroup memory
// and the threads apply the epilogue (write_out).
const COOP_STRIDE: u32 = 40u;             // f16 row stride of a staged tile (32 + 8)
const COOP_PART: u32 = 2560u;             // 64 rows x COOP_STRIDE: the lo half's offset
const COOP_A_SCALE: f32 = 0.00390625;     // 2^-8

var<workgroup> coop_a: array<f16, 5120>;  // a_hi then a_lo, [64 rows][COOP_STRIDE]
var<workgroup> coop_b: array<f16, 5120>;  // b_hi then b_lo, [64 weight rows][COOP_STRIDE]
var<workgroup> coop_out: array<f32, 4096>; // the sums, [64][64]

// Stages an activation quad `x` and a weight quad `y` at `at` of coop_a and coop_b,
// each as its f16 high part there and its low part at `at + COOP_PART`.
fn coop_stage(at: u32, x: vec4<f32>, y: vec4<f32>) {
    let xh = vec4<f16>(x);
    let xl = vec4<f16>(x - vec4<f32>(xh));
    let yh = vec4<f16>(y);
    let yl = vec4<f16>(y - vec4<f32>(yh));
    for (var i = 0u; i < 4u; i++) {
        coop_a[at + i] = xh[i];
        coop_a[COOP_PART + at + i] = xl[i];
        coop_b[at + i] = yh[i];
        coop_b[COOP_PART + at + i] = yl[i];
    }
}

// A gemm_coop thread's share of a K step's staging (see StageQuad): 4 of the 512
// quads of each tile (the 8 threads of a tile row read its 128 contiguous bytes) and
// their weight rows' affine maps.
struct CoopStage {
    q: array<StageQuad, 4>,
    dc: array<u32, 4>,
}

fn coop_fetch(m0: u32, n0: u32, k0: u32, li: u32) -> CoopStage {
    var st: CoopStage;
    for (var e = 0u; e < 4u; e++) {
        let idx = li + e * 128u;
        st.q[e] = stage_fetch(m0, n0, k0, idx / 8u, idx % 8u, 64u);
        st.dc[e] = gemm_b_affine_bits(n0, idx / 8u, k0);
    }
    return st;
}

@compute @workgroup_size(128)
fn gemm_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * 64u;
    let n0 = wg.x * GEMM_COLS;
    // This subgroup's quarter: rows wm .. wm + 32, weight tile rows wn .. wn + 32.
    let sg = li / 32u;
    let wm = (sg / 2u) * 32u;
    let wn = (sg % 2u) * 32u;
#ifdef NORM
    norm_rows(m0, min(64u, params.m - m0), 64u, li, 128u);
#endif
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var next = coop_fetch(m0, n0, 0u, li);
    for (var k0 = 0u; k0 < params.k; k0 += 32u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 128u;
            let r = idx / 8u;
            let q = idx % 8u;
            let dc = gemm_b_affine(next.dc[e], n0, r, k0);
            coop_stage(r * COOP_STRIDE + q * 4u, stage_a(next.q[e], r) * COOP_A_SCALE,
                       dc.x * gemm_b_raw(next.q[e].b, k0, q) + dc.y);
        }
        if k0 + 32u < params.k {
            next = coop_fetch(m0, n0, k0 + 32u, li);
        }
        workgroupBarrier();
        for (var ks = 0u; ks < 32u; ks += 16u) {
            let a0 = wm * COOP_STRIDE + ks;
            let a1 = (wm + 16u) * COOP_STRIDE + ks;
            let b0 = wn * COOP_STRIDE + ks;
            let b1 = (wn + 16u) * COOP_STRIDE + ks;
            // A is [M, K] row-major (coopLoadT); B is [K, N] with each weight row's K
            // values contiguous: column-major (coopLoad).
            let ah0 = coopLoadT<coop_mat16x16<f16, A>>(&coop_a[a0], COOP_STRIDE);
            let ah1 = coopLoadT<coop_mat16x16<f16, A>>(&coop_a[a1], COOP_STRIDE);
            let al0 = coopLoadT<coop_mat16x16<f16, A>>(&coop_a[COOP_PART + a0], COOP_STRIDE);
            let al1 = coopLoadT<coop_mat16x16<f16, A>>(&coop_a[COOP_PART + a1], COOP_STRIDE);
            let bh0 = coopLoad<coop_mat16x16<f16, B>>(&coop_b[b0], COOP_STRIDE);
            let bh1 = coopLoad<coop_mat16x16<f16, B>>(&coop_b[b1], COOP_STRIDE);
            let bl0 = coopLoad<coop_mat16x16<f16, B>>(&coop_b[COOP_PART + b0], COOP_STRIDE);
            let bl1 = coopLoad<coop_mat16x16<f16, B>>(&coop_b[COOP_PART + b1], COOP_STRIDE);
            c00 = coopMultiplyAdd(al0, bh0, coopMultiplyAdd(ah0, bl0, coopMultiplyAdd(ah0, bh0, c00)));
            c01 = coopMultiplyAdd(al0, bh1, coopMultiplyAdd(ah0, bl1, coopMultiplyAdd(ah0, bh1, c01)));
            c10 = coopMultiplyAdd(al1, bh0, coopMultiplyAdd(ah1, bl0, coopMultiplyAdd(ah1, bh0, c10)));
            c11 = coopMultiplyAdd(al1, bh1, coopMultiplyAdd(ah1, bl1, coopMultiplyAdd(ah1, bh1, c11)));
        }
        workgroupBarrier();
    }
    coopStoreT(c00, &coop_out[wm * 64u + wn], 64u);
    coopStoreT(c01, &coop_out[wm * 64u + wn + 16u], 64u);
    coopStoreT(c10, &coop_out[(wm + 16u) * 64u + wn], 64u);
    coopStoreT(c11, &coop_out[(wm + 16u) * 64u + wn + 16u], 64u);
    workgroupBarrier();
    let unscale = 1.0 / COOP_A_SCALE;
    for (var e = li; e < 64u * GEMM_COLS; e += 128u) {
        let r = e / GEMM_COLS;
        let c = e % GEMM_COLS;
        let m = m0 + r;
        let n = n0 + c;
        if m < params.m && n < params.n {
#ifdef GLU
            // Weight tile rows c and c + 32: the gate and up of column n.
            write_out(m, n, coop_out[r * 64u + c] * unscale, coop_out[r * 64u + c + 32u] * unscale);
#else
            write_out(m, n, coop_out[r * 64u + c] * unscale, 0.0);
#endif
        }
    }
}
#endif

// lanes: each thread computes a LANE_ROWS x LANE_COLS register tile (4 x 4, or 1 x 4
// for a single row): per step it loads LANE_COLS weight quads (or blocks) and
// LANE_ROWS activation quads and does LANE_ROWS * LANE_COLS * 4 FMAs, with no
// workgroup memory and no barriers. Out-of-range rows/columns repeat the last valid
// one (valid memory) and are not written.
#ifdef ROWS_1
const LANE_ROWS: u32 = 1u;
#else
const LANE_ROWS: u32 = 4u;
#endif
const LANE_COLS: u32 = 4u;

fn lanes_step(n0: u32, m0: u32, k: u32, b: array<vec4<f32>, LANE_COLS>, u: array<vec4<f32>, LANE_COLS>,
              acc: ptr<function, array<array<f32, LANE_COLS>, LANE_ROWS>>,
              acc_up: ptr<function, array<array<f32, LANE_COLS>, LANE_ROWS>>) {
    for (var r = 0u; r < LANE_ROWS; r++) {
        let av = a_quad(min(m0 + r, params.m - 1u), k);
        for (var c = 0u; c < LANE_COLS; c++) {
            (*acc)[r][c] += dot(av, b[c]);
#ifdef GLU
            (*acc_up)[r][c] += dot(av, u[c]);
#endif
        }
    }
}

@compute @workgroup_size(64)
fn lanes(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let n0 = gid.x * LANE_COLS;
    let m0 = wg.y * LANE_ROWS;
    if n0 >= params.n {
        return;
    }
    var acc: array<array<f32, LANE_COLS>, LANE_ROWS>;
    var acc_up: array<array<f32, LANE_COLS>, LANE_ROWS>;
    var cols: array<u32, LANE_COLS>;
    for (var c = 0u; c < LANE_COLS; c++) {
        cols[c] = min(n0 + c, params.n - 1u);
    }
    var b: array<vec4<f32>, LANE_COLS>;
    var u: array<vec4<f32>, LANE_COLS>;
#ifdef W_BLOCKS
    // Whole blocks: one or two loads per column per 32 values.
    for (var k0 = 0u; k0 < params.k; k0 += 32u) {
        var blocks: array<WBlock, LANE_COLS>;
        var up_blocks: array<WBlock, LANE_COLS>;
        for (var c = 0u; c < LANE_COLS; c++) {
            blocks[c] = w_block(cols[c], k0, params.k, params.w_soff);
#ifdef GLU
            up_blocks[c] = w_block(params.up_row + cols[c], k0, params.k, params.w_soff);
#endif
        }
        for (var q = 0u; q < 8u; q++) {
            for (var c = 0u; c < LANE_COLS; c++) {
                b[c] = block_quad(blocks[c], q);
#ifdef GLU
                u[c] = block_quad(up_blocks[c], q);
#endif
            }
            lanes_step(n0, m0, k0 + q * 4u, b, u, &acc, &acc_up);
        }
    }
#else
    for (var k = 0u; k < params.k; k += 4u) {
        for (var c = 0u; c < LANE_COLS; c++) {
#ifdef W_KN
            b[c] = w_quad_kn(k, cols[c]);
#else
            b[c] = w_quad(cols[c], k, params.k, params.w_soff);
#endif
#ifdef GLU
            u[c] = w_quad(params.up_row + cols[c], k, params.k, params.w_soff);
#endif
        }
        lanes_step(n0, m0, k, b, u, &acc, &acc_up);
    }
#endif
    for (var r = 0u; r < LANE_ROWS; r++) {
        for (var c = 0u; c < LANE_COLS; c++) {
            if m0 + r < params.m && n0 + c < params.n {
                write_out(m0 + r, n0 + c, acc[r][c], acc_up[r][c]);
            }
        }
    }
}
