//! Cooperative matrices (the `coop` kernel variant, matmul.wgsl's `gemm_coop`): what
//! an adapter must offer for them, and the check a device runs before using them. wgpu
//! marks the feature experimental and no CI machine has matrix units, so the first
//! run of the kernel on a new device is this check, not a user's model.

use super::device::GpuContext;
use super::pipelines::{get, PipelineKey};
use super::probe::Probe;
use crate::{BackendError, Result};

/// Whether the adapter runs matmul.wgsl's `gemm_coop`: cooperative matrices of
/// 16x16x16 f16 operands with f32 accumulators, in subgroups of exactly 32 threads
/// (the kernel's four subgroups each own a quarter of the tile), and the kernel's
/// workgroup memory.
pub(crate) fn offered(
    adapter: &::wgpu::Adapter,
    info: &::wgpu::AdapterInfo,
    limits: &::wgpu::Limits,
) -> bool {
    let needs = ::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | ::wgpu::Features::SHADER_F16;
    adapter.features().contains(needs)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == ::wgpu::CooperativeScalarType::F16
                && p.cr_type == ::wgpu::CooperativeScalarType::F32
        })
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && limits.max_compute_workgroup_storage_size >= super::ops::COOP_WORKGROUP_BYTES
}

/// Whether gemm_coop and its peak probe compile on this device, and the GEMM computes
/// a small product right: a 70 x 40 x 96 f32 matmul (two row tiles, a partial column
/// tile, three K steps) of small integers over powers of two, whose sums every f16
/// split carries exactly.
pub(crate) fn check(ctx: &GpuContext) -> Result<()> {
    let gemm = [
        "COOP", "W_Q4_0", "W_BLOCKS", "W_OFFSET", "NORM", "GLU", "GLU_SILU",
    ];
    get(ctx, &PipelineKey::new("matmul.wgsl", "gemm_coop", &gemm))?;
    get(ctx, &PipelineKey::new("probe.wgsl", "coop_f16", &["COOP"]))?;
    let (m, n, k) = (70usize, 40usize, 96usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
        .collect();
    let a_buf = super::buffers::create_init(ctx, "coop check a", bytemuck::cast_slice(&a))?;
    let w_buf = super::buffers::create_init(ctx, "coop check w", bytemuck::cast_slice(&w))?;
    let out = super::buffers::create_init(ctx, "coop check out", &vec![0; m * n * 4])?;
    let params = super::shader_args::matmul::Params {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        ldo: n as u32,
        lda: k as u32,
        ..Default::default()
    };
    let key = PipelineKey::new("matmul.wgsl", "gemm_coop", &["COOP", "W_F32"]);
    let groups = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1];
    let run = Probe {
        ctx,
        timestamps: false,
    };
    let at = &super::shader_args::matmul::NUMBERS;
    let bind = [(at.a, &a_buf), (at.w, &w_buf), (at.out, &out)];
    run.time(&key, params, &bind, groups)?;
    let got = ctx.download(&out, 0, (m * n * 4) as u64)?;
    for (i, c) in got.chunks_exact(4).enumerate() {
        let (r, col) = (i / n, i % n);
        let want: f32 = (0..k).map(|j| a[r * k + j] * w[col * k + j]).sum();
        let v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        if v != want {
            return Err(BackendError::Unavailable {
                backend: "wgpu".into(),
                reason: format!("gemm_coop computed out[{r}, {col}] = {v}, not {want}"),
            });
        }
    }
    Ok(())
}
