// Row-wise reductions: RMSNorm, LayerNorm and softmax, one workgroup per row. Each
// thread folds a strided slice of the row, then a tree reduction in workgroup memory
// combines the 64 partials.
#include "common.wgsl"

const NORM_WG: u32 = 64u;

struct Params {
    rows: u32,
    // Row length.
    h: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, NORM_WG>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var stride = NORM_WG / 2u; stride > 0u; stride >>= 1u) {
        if li < stride {
            partial[li] += partial[li + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn reduce_max(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var stride = NORM_WG / 2u; stride > 0u; stride >>= 1u) {
        if li < stride {
            partial[li] = max(partial[li], partial[li + stride]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn row_of(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

@compute @workgroup_size(NORM_WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.h;
    var ss = 0.0;
    for (var i = li; i < params.h; i += NORM_WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let ms = reduce_sum(li, ss) / f32(params.h);
    let r = 1.0 / sqrt(ms + params.eps);
    for (var i = li; i < params.h; i += NORM_WG) {
        out[base + i] = x[base + i] * r * weight[i];
    }
}

@compute @workgroup_size(NORM_WG)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.h;
    var s = 0.0;
    for (var i = li; i < params.h; i += NORM_WG) {
        s += x[base + i];
    }
    let mean = reduce_sum(li, s) / f32(params.h);
    var sq = 0.0;
    for (var i = li; i < params.h; i += NORM_WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let variance = reduce_sum(li, sq) / f32(params.h);
    let r = 1.0 / sqrt(variance + params.eps);
    for (var i = li; i < params.h; i += NORM_WG) {
        out[base + i] = (x[base + i] - mean) * r * weight[i] + bias[i];
    }
}

@compute @workgroup_size(NORM_WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.h;
    var m = -3.4028235e38;
    for (var i = li; i < params.h; i += NORM_WG) {
        m = max(m, x[base + i]);
    }
    let row_max = reduce_max(li, m);
    var s = 0.0;
    for (var i = li; i < params.h; i += NORM_WG) {
        let e = exp(x[base + i] - row_max);
        out[base + i] = e;
        s += e;
    }
    let total = reduce_sum(li, s);
    for (var i = li; i < params.h; i += NORM_WG) {
        out[base + i] = out[base + i] / total;
    }
}
