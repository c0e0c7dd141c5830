//! The adapter's limits, measured by probe.wgsl in the caller's process: the copy
//! bandwidth and the arithmetic peak of each instruction the kernels in use rely on
//! (f32 FMA always; f16 FMA, packed i8 dot products and f16 cooperative matrices
//! where those variants are on).
//! Times come from pass timestamps where the device has TIMESTAMP_QUERY, else from the
//! host clock around one waited submission.

use super::device::GpuContext;
use super::pipelines::{self, PipelineKey};
use super::shader_args::{self as args, Uniform};
use crate::{BackendError, DeviceLimits, Peak, Result};

const FILE: &str = "probe.wgsl";
/// probe.wgsl's workgroup size.
const WG: u32 = 256;
/// Workgroups of an arithmetic probe: enough threads to fill any GPU.
const ARITH_GROUPS: u32 = 2048;
/// Operations per thread and step of the FMA and dot4 probes: 8 chains of 4 lanes, 2
/// ops per multiply-add.
const OPS_PER_STEP: f64 = 64.0;
/// The same for the cooperative-matrix probe: a subgroup of 32 runs 8 chains of
/// 16x16x16 multiply-adds.
const COOP_OPS_PER_STEP: f64 = 8.0 * 16.0 * 16.0 * 16.0 * 2.0 / 32.0;
/// An arithmetic probe's steps grow 4x until one run takes at least this long.
const MIN_SECONDS: f64 = 0.02;
const MAX_ITERS: u32 = 1 << 22;
/// Bytes the copy probe moves each way (less where one binding cannot hold them).
const COPY_BYTES: u64 = 256 << 20;
/// Runs per probe; the fastest counts.
const RUNS: usize = 3;

fn probe_err(what: &str, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Execution {
        node: format!("<probe {what}>"),
        reason: reason.to_string(),
    }
}

pub(crate) fn measure(ctx: &GpuContext) -> Result<DeviceLimits> {
    let timestamps = ctx
        .device
        .features()
        .contains(::wgpu::Features::TIMESTAMP_QUERY);
    let p = Probe { ctx, timestamps };
    let copy_gb_s = p.copy()?;
    let mut peaks = vec![Peak {
        arithmetic: "f32 fma",
        ops_per_s: p.arithmetic("fma_peak", &[], OPS_PER_STEP)?,
    }];
    if ctx.variants.f16 {
        peaks.push(Peak {
            arithmetic: "f16 fma",
            ops_per_s: p.arithmetic("fma_peak", &["F16"], OPS_PER_STEP)?,
        });
    }
    if ctx.variants.dot4 {
        peaks.push(Peak {
            arithmetic: "i8 dot4",
            ops_per_s: p.arithmetic("dot4_i8", &["DOT4"], OPS_PER_STEP)?,
        });
    }
    if ctx.variants.coop {
        peaks.push(Peak {
            arithmetic: "f16 matrix",
            ops_per_s: p.arithmetic("coop_f16", &["COOP"], COOP_OPS_PER_STEP)?,
        });
    }
    Ok(DeviceLimits {
        timed_by: if timestamps {
            "GPU timestamps"
        } else {
            "host clock"
        },
        copy_gb_s,
        peaks,
    })
}

/// Runs single dispatches on bound buffers, timed (`time`): the probes here, and the
/// cooperative-matrix check (coop.rs).
pub(crate) struct Probe<'a> {
    pub ctx: &'a GpuContext,
    /// Time by pass timestamps (else the host clock).
    pub timestamps: bool,
}

impl Probe<'_> {
    fn buffer(
        &self,
        label: &str,
        bytes: u64,
        usage: ::wgpu::BufferUsages,
    ) -> Result<::wgpu::Buffer> {
        self.ctx.scoped(
            || {
                self.ctx.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            },
            |_, _| BackendError::OutOfMemory {
                what: label.into(),
                bytes: bytes as usize,
            },
        )
    }

    /// Best copy rate over `RUNS` runs: bytes read plus bytes written per second.
    fn copy(&self) -> Result<f64> {
        let limits = &self.ctx.limits;
        let bytes = COPY_BYTES
            .min(self.ctx.max_binding)
            .min(limits.max_buffer_size)
            & !15;
        let words = (bytes / 16) as u32;
        let storage = ::wgpu::BufferUsages::STORAGE;
        let src = self.buffer("probe copy src", bytes, storage)?;
        let dst = self.buffer("probe copy dst", bytes, storage)?;
        let groups = words
            .div_ceil(WG)
            .min(limits.max_compute_workgroups_per_dimension);
        let key = PipelineKey::new(FILE, "copy", &["COPY"]);
        let mut best = f64::MAX;
        for _ in 0..RUNS {
            let params = args::probe::Params {
                words,
                ..Default::default()
            };
            let at = &args::probe::NUMBERS;
            let bind = [(at.dst, &dst), (at.src, &src)];
            best = best.min(self.time(&key, params, &bind, [groups, 1, 1])?);
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    }

    /// Peak operations per second of one arithmetic probe entry point, which does
    /// `ops_per_step` operations per thread and step.
    fn arithmetic(&self, entry: &'static str, defines: &[&str], ops_per_step: f64) -> Result<f64> {
        let dst = self.buffer(
            "probe arithmetic dst",
            u64::from(ARITH_GROUPS * WG) * 16,
            ::wgpu::BufferUsages::STORAGE,
        )?;
        let key = PipelineKey::new(FILE, entry, defines);
        let mut iters = 64u32;
        let seconds = loop {
            let params = args::probe::Params {
                words: 0,
                iters,
                decay: 0.999,
            };
            let bind = [(args::probe::NUMBERS.dst, &dst)];
            let t = self.time(&key, params, &bind, [ARITH_GROUPS, 1, 1])?;
            if t >= MIN_SECONDS || iters >= MAX_ITERS {
                break (0..RUNS - 1).try_fold(t, |best, _| {
                    self.time(&key, params, &bind, [ARITH_GROUPS, 1, 1])
                        .map(|t| best.min(t))
                })?;
            }
            iters *= 4;
        };
        let threads = f64::from(ARITH_GROUPS * WG);
        Ok(threads * f64::from(iters) * ops_per_step / seconds)
    }

    /// Seconds one dispatch of `key` over `groups` workgroups takes (finished when it
    /// returns), with `params` as its uniform and each `(binding, buffer)` of `storage`.
    pub fn time(
        &self,
        key: &PipelineKey,
        params: impl Uniform,
        storage: &[(u32, &::wgpu::Buffer)],
        groups: [u32; 3],
    ) -> Result<f64> {
        let ctx = self.ctx;
        let pipeline = pipelines::get(ctx, key)?;
        let mut words = bytemuck::bytes_of(&params).to_vec();
        words.resize(words.len().div_ceil(16).max(1) * 16, 0);
        let uniform = self.buffer(
            "probe params",
            words.len() as u64,
            ::wgpu::BufferUsages::UNIFORM | ::wgpu::BufferUsages::COPY_DST,
        )?;
        ctx.queue.write_buffer(&uniform, 0, &words);
        let mut entries = vec![::wgpu::BindGroupEntry {
            binding: args::PARAMS_BINDING,
            resource: uniform.as_entire_binding(),
        }];
        for &(binding, b) in storage {
            entries.push(::wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            });
        }
        let group = ctx.scoped(
            || {
                ctx.device.create_bind_group(&::wgpu::BindGroupDescriptor {
                    label: Some("probe"),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            },
            |msg, _| probe_err(key.entry, msg),
        )?;
        let queries = self.timestamps.then(|| {
            ctx.device.create_query_set(&::wgpu::QuerySetDescriptor {
                label: Some("probe"),
                ty: ::wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let resolve = match queries {
            Some(_) => Some(self.buffer(
                "probe resolve",
                16,
                ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            )?),
            None => None,
        };
        let mut enc = ctx
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("probe"),
            });
        {
            let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: Some(key.entry),
                timestamp_writes: queries
                    .as_ref()
                    .map(|q| ::wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if let (Some(q), Some(r)) = (&queries, &resolve) {
            enc.resolve_query_set(q, 0..2, r, 0);
        }
        // Nothing else is in flight: the host clock then covers this dispatch alone
        // (plus the submission's own cost, which the timestamps leave out).
        ctx.wait_idle()?;
        let t = std::time::Instant::now();
        let index = ctx.submit([enc.finish()]);
        ctx.wait_for(Some(index))?;
        let host = t.elapsed().as_secs_f64();
        let Some(r) = resolve else {
            return Ok(host);
        };
        let raw = ctx.download(&r, 0, 16)?;
        let tick =
            |i: usize| u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let ticks = tick(1).saturating_sub(tick(0));
        let seconds = ticks as f64 * f64::from(ctx.timestamp_period) * 1e-9;
        // A driver that reports zeros (or garbage) falls back to the host clock.
        Ok(if seconds > 0.0 && seconds <= host {
            seconds
        } else {
            host
        })
    }
}
