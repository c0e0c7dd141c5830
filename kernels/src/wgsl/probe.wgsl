// Microbenchmarks of the adapter's limits, run in the same process as the work they
// are compared with (`npurt bench`, backends/src/wgpu/probe.rs):
//   copy:     memory bandwidth. Each thread copies 16-byte words, grid-stride, so the
//             reads and writes of a subgroup are contiguous;
//   fma_peak: FMA peak, f32 (or f16 with F16: needs SHADER_F16; vec4<f16> is packed
//             halves where the GPU has them). 8 independent vec4 chains per thread,
//             each step depending on the last (nothing folds or hoists), one store
//             per thread so nothing is dead code;
//   dot4_i8:  packed 4x8 integer dot products (`dot4I8Packed`, 4 multiply-adds each),
//             the instruction the i8 matmul variant uses (DOT4: needs WGSL's
//             packed_4x8_integer_dot_product);
//   coop_f16: cooperative-matrix multiply-adds, 16x16x16 f16 operands into f32
//             accumulators (COOP: the matmul `coop` variant's instruction, subgroups
//             of 32), 8 independent accumulator chains per subgroup, each from its
//             own starting values.
// Arithmetic counts: one FMA or multiply-add is 2 ops.
#ifdef F16
enable f16;
#endif
#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif

const PROBE_WG: u32 = 256u;

struct Params {
    // copy: 16-byte words to copy; arithmetic probes: unused.
    words: u32,
    // Arithmetic probes: steps per chain.
    iters: u32,
    // A multiplier below 1 the compiler cannot see (chains stay finite).
    decay: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
#ifdef COPY
@group(0) @binding(2) var<storage, read> src: array<vec4<u32>>;

@compute @workgroup_size(PROBE_WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * PROBE_WG;
    for (var i = gid.x; i < params.words; i += stride) {
        dst[i] = src[i];
    }
}
#endif

// The FMA probe's element type: f32, or f16 with F16.
#ifdef F16
alias Real = f16;
#else
alias Real = f32;
#endif

@compute @workgroup_size(PROBE_WG)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = vec4<Real>(Real(params.decay));
    let c = vec4<Real>(Real(1.0 - params.decay));
    var x0 = vec4<Real>(Real(f32(gid.x & 255u) * 1e-3));
    var x1 = x0 + Real(0.1);
    var x2 = x0 + Real(0.2);
    var x3 = x0 + Real(0.3);
    var x4 = x0 + Real(0.4);
    var x5 = x0 + Real(0.5);
    var x6 = x0 + Real(0.6);
    var x7 = x0 + Real(0.7);
    for (var i = 0u; i < params.iters; i++) {
        x0 = fma(x0, m, c);
        x1 = fma(x1, m, c);
        x2 = fma(x2, m, c);
        x3 = fma(x3, m, c);
        x4 = fma(x4, m, c);
        x5 = fma(x5, m, c);
        x6 = fma(x6, m, c);
        x7 = fma(x7, m, c);
    }
    dst[gid.x] = bitcast<vec4<u32>>(vec4<f32>(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7));
}

#ifdef DOT4
@compute @workgroup_size(PROBE_WG)
fn dot4_i8(@builtin(global_invocation_id) gid: vec3<u32>) {
    // Each step's left operand is the chain's own running sum, bit for bit.
    let w = 0x01ff02feu ^ bitcast<u32>(params.decay);
    var a = vec4<i32>(i32(gid.x), i32(gid.x) + 1, i32(gid.x) + 2, i32(gid.x) + 3);
    var b = a + 4;
    for (var i = 0u; i < params.iters; i++) {
        a.x += dot4I8Packed(bitcast<u32>(a.x), w);
        a.y += dot4I8Packed(bitcast<u32>(a.y), w);
        a.z += dot4I8Packed(bitcast<u32>(a.z), w);
        a.w += dot4I8Packed(bitcast<u32>(a.w), w);
        b.x += dot4I8Packed(bitcast<u32>(b.x), w);
        b.y += dot4I8Packed(bitcast<u32>(b.y), w);
        b.z += dot4I8Packed(bitcast<u32>(b.z), w);
        b.w += dot4I8Packed(bitcast<u32>(b.w), w);
    }
    dst[gid.x] = bitcast<vec4<u32>>(a + b);
}
#endif

#ifdef COOP
var<workgroup> coop_in: array<f16, 256>;
var<workgroup> coop_sums: array<f32, 2048>;   // a 16 x 16 tile per subgroup

@compute @workgroup_size(PROBE_WG)
fn coop_f16(@builtin(local_invocation_index) li: u32, @builtin(global_invocation_id) gid: vec3<u32>) {
    coop_in[li] = f16(params.decay * 1e-3 * f32(li % 7u));
    // Each chain starts from different values (a compiler must not merge them).
    for (var e = li; e < 2048u; e += PROBE_WG) {
        coop_sums[e] = params.decay * f32(e);
    }
    workgroupBarrier();
    let a = coopLoadT<coop_mat16x16<f16, A>>(&coop_in[0], 16u);
    let b = coopLoad<coop_mat16x16<f16, B>>(&coop_in[0], 16u);
    var c0 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[0], 16u);
    var c1 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[256], 16u);
    var c2 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[512], 16u);
    var c3 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[768], 16u);
    var c4 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[1024], 16u);
    var c5 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[1280], 16u);
    var c6 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[1536], 16u);
    var c7 = coopLoadT<coop_mat16x16<f32, C>>(&coop_sums[1792], 16u);
    workgroupBarrier();
    for (var i = 0u; i < params.iters; i++) {
        c0 = coopMultiplyAdd(a, b, c0);
        c1 = coopMultiplyAdd(a, b, c1);
        c2 = coopMultiplyAdd(a, b, c2);
        c3 = coopMultiplyAdd(a, b, c3);
        c4 = coopMultiplyAdd(a, b, c4);
        c5 = coopMultiplyAdd(a, b, c5);
        c6 = coopMultiplyAdd(a, b, c6);
        c7 = coopMultiplyAdd(a, b, c7);
    }
    // Every chain reaches memory (nothing is dead code): each subgroup stores them
    // all over its own tile, in turn.
    let tile = (li / 32u) * 256u;
    coopStoreT(c0, &coop_sums[tile], 16u);
    coopStoreT(c1, &coop_sums[tile], 16u);
    coopStoreT(c2, &coop_sums[tile], 16u);
    coopStoreT(c3, &coop_sums[tile], 16u);
    coopStoreT(c4, &coop_sums[tile], 16u);
    coopStoreT(c5, &coop_sums[tile], 16u);
    coopStoreT(c6, &coop_sums[tile], 16u);
    coopStoreT(c7, &coop_sums[tile], 16u);
    workgroupBarrier();
    dst[gid.x] = vec4<u32>(bitcast<u32>(coop_sums[li * 8u]));
}
#endif
