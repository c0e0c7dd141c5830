//! An open registry of backends by name. npurt registers its own; embedders and
//! vendors register theirs with `Registry::register` (no enum to edit).

use crate::{Backend, BackendError, Result};
use std::sync::Arc;

/// Most host threads a backend may be asked for. Far above any core count this runtime
/// targets; a larger number is a typo or a hostile option, and would spawn that many
/// OS threads before failing.
pub const MAX_THREADS: usize = 1024;

/// Options every backend factory receives.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Host threads the backend may use (`None`: one per core), 1..=[`MAX_THREADS`].
    pub threads: Option<usize>,
}

impl BackendOptions {
    /// Refuses `threads` 0 (which used to mean 1 silently) and above [`MAX_THREADS`].
    pub fn validate(&self) -> Result<()> {
        match self.threads {
            Some(n) if n == 0 || n > MAX_THREADS => Err(BackendError::InvalidOption {
                option: "threads",
                reason: format!("{n} is outside 1..={MAX_THREADS}"),
            }),
            _ => Ok(()),
        }
    }
}

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
                    padded_rows: std::env::var("NPURT_CPU_PADDED_ROWS").is_ok_and(|v| v == "1"),
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

    /// Creates backend `name`; the options are validated first, so no factory (ours or
    /// a vendor's) sees an absurd thread count.
    pub fn create(&self, name: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
        opts.validate()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry whose one factory records that it ran: validation must come first.
    fn probe() -> (Registry, Arc<std::sync::atomic::AtomicBool>) {
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut r = Registry::empty();
        let flag = ran.clone();
        r.register("probe", move |_| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(BackendError::Unavailable {
                backend: "probe".into(),
                reason: "reached the factory".into(),
            })
        });
        (r, ran)
    }

    #[test]
    fn absurd_thread_counts_are_refused_before_any_factory_runs() {
        for n in [0, MAX_THREADS + 1, 100_000, usize::MAX] {
            let (r, ran) = probe();
            let e = r
                .create("probe", &BackendOptions { threads: Some(n) })
                .err()
                .expect("refused");
            assert!(
                matches!(&e, BackendError::InvalidOption { option: "threads", reason } if reason.contains(&n.to_string())),
                "{n}: {e}"
            );
            assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "{n}");
        }
        for n in [None, Some(1), Some(MAX_THREADS)] {
            let (r, ran) = probe();
            let e = r
                .create("probe", &BackendOptions { threads: n })
                .err()
                .unwrap();
            assert!(matches!(e, BackendError::Unavailable { .. }), "{n:?}: {e}");
            assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        }
    }
}
