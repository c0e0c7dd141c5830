// One thread per output element: add/mul with suffix broadcast, activations, copy, and
// the SwiGLU combine used when a fused gate+up matmul cannot apply it in its epilogue.
#include "common.wgsl"

struct Params {
    // Output elements.
    n: u32,
    // add/mul: elements of `y`, which repeats over `x` (its shape is a suffix of x's).
    y_len: u32,
    // swiglu: output columns N; `x` rows hold gate (0..N) then up (N..2N).
    cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = x[i] + y[i % params.y_len];
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = x[i] * y[i % params.y_len];
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn silu_op(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = silu(x[i]);
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn gelu_erf_op(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = gelu_erf(x[i]);
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn gelu_tanh_op(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = gelu_tanh(x[i]);
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        out[i] = x[i];
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, ELEMENTWISE_WG);
    if i < params.n {
        let row = i / params.cols;
        let col = i % params.cols;
        let base = row * 2u * params.cols + col;
        out[i] = silu(x[base]) * x[base + params.cols];
    }
}
