//! An open registry of backends by name. npurt registers its own; embedders and
//! vendors register theirs with `Registry::register` (no enum to edit).

use crate::{Backend, BackendError, Result};

/// Options every backend factory receives.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Host threads the backend may use (`None`: one per core).
    pub threads: Option<usize>,
}
use std::sync::Arc;

type Factory = Box<dyn Fn(&BackendOptions) -> Result<Arc<dyn Backend>> + Send + Sync>;

pub struct Registry {
    factories: Vec<(String, Factory)>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry {
            factories: Vec::new(),
        }
    }

    /// The backends built into this crate (by feature).
    pub fn with_builtin() -> Self {
        let mut r = Self::empty();
        #[cfg(feature = "cpu")]
        r.register("cpu", |o| {
            Ok(
                Arc::new(crate::cpu::CpuBackend::new(crate::cpu::CpuOptions {
                    threads: o.threads,
                })) as Arc<dyn Backend>,
            )
        });
        #[cfg(feature = "wgpu")]
        r.register("wgpu", |_| {
            Ok(Arc::new(crate::wgpu::WgpuBackend::new(
                crate::wgpu::WgpuOptions::default(),
            )?) as Arc<dyn Backend>)
        });
        r
    }

    /// Adds (or replaces) a backend factory under `name`.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&BackendOptions) -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) {
        self.factories.retain(|(n, _)| n != name);
        self.factories.push((name.to_string(), Box::new(factory)));
    }

    pub fn names(&self) -> Vec<&str> {
        self.factories.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn create(&self, name: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
        let (_, f) = self
            .factories
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| {
                BackendError::UnknownBackend(name.to_string(), self.names().join(", "))
            })?;
        f(opts)
    }
}
