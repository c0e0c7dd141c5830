//! Compute pipelines, compiled once per key (shader file + entry point + defines) and
//! shared by every executable of the backend. Shaders come from
//! `npurt_kernels::wgsl`; the bind group layout is derived from the entry point, so a
//! pipeline's bindings are exactly what its entry point uses.

use super::device::GpuContext;
use crate::{BackendError, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PipelineKey {
    pub file: &'static str,
    pub entry: &'static str,
    /// Sorted, deduplicated (`NAME` flags and `NAME=N` constants).
    pub defines: Vec<String>,
}

impl PipelineKey {
    pub(crate) fn new(file: &'static str, entry: &'static str, defines: &[&str]) -> Self {
        let mut defines: Vec<String> = defines.iter().map(|d| d.to_string()).collect();
        defines.sort_unstable();
        defines.dedup();
        PipelineKey {
            file,
            entry,
            defines,
        }
    }
}

impl std::fmt::Display for PipelineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.file, self.entry)?;
        if !self.defines.is_empty() {
            write!(f, " [{}]", self.defines.join(" "))?;
        }
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, Arc<::wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<(&'static str, Vec<String>), ::wgpu::ShaderModule>>,
}

impl PipelineCache {
    pub(crate) fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
}

fn shader_error(key: &PipelineKey, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Execution {
        node: format!("<shader {key}>"),
        reason: reason.to_string(),
    }
}

/// The pipeline for `key`, compiled on first use.
pub(crate) fn get(ctx: &GpuContext, key: &PipelineKey) -> Result<Arc<::wgpu::ComputePipeline>> {
    let cache = &ctx.pipelines;
    if let Some(p) = cache
        .pipelines
        .lock()
        .map_err(|_| shader_error(key, "pipeline cache poisoned"))?
        .get(key)
    {
        return Ok(p.clone());
    }
    // Modules are shared by the entry points of one file with the same defines.
    let module = {
        let mut modules = cache
            .modules
            .lock()
            .map_err(|_| shader_error(key, "module cache poisoned"))?;
        let mkey = (key.file, key.defines.clone());
        match modules.get(&mkey) {
            Some(m) => m.clone(),
            None => {
                let src = npurt_kernels::wgsl::preprocess(key.file, &key.defines)
                    .map_err(|e| shader_error(key, e))?;
                let m = ctx.scoped(
                    || {
                        ctx.device
                            .create_shader_module(::wgpu::ShaderModuleDescriptor {
                                label: Some(key.file),
                                source: ::wgpu::ShaderSource::Wgsl(src.into()),
                            })
                    },
                    |msg, _| shader_error(key, msg),
                )?;
                modules.insert(mkey, m.clone());
                m
            }
        }
    };
    let label = key.to_string();
    let pipeline = ctx.scoped(
        || {
            ctx.device
                .create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: None,
                    module: &module,
                    entry_point: Some(key.entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        },
        |msg, _| shader_error(key, msg),
    )?;
    let pipeline = Arc::new(pipeline);
    cache
        .pipelines
        .lock()
        .map_err(|_| shader_error(key, "pipeline cache poisoned"))?
        .insert(key.clone(), pipeline.clone());
    Ok(pipeline)
}
