//! Run-time instruction-set selection. `NPURT_CPU_ISA=portable|avx2` forces a path
//! (tests use it to cover every path the machine supports).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Baseline target features only.
    Portable,
    /// x86-64 AVX2 + FMA.
    Avx2Fma,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2+fma",
        }
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// The ISA in use: detected once, optionally forced down by `NPURT_CPU_ISA`.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("NPURT_CPU_ISA").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") if best == Isa::Avx2Fma => Isa::Avx2Fma,
            Ok(other) if !other.is_empty() => {
                log::warn!("NPURT_CPU_ISA={other} is not available here; using {}", best.name());
                best
            }
            _ => best,
        }
    })
}
