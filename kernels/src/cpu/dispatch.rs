//! Run-time instruction-set selection.
//!
//! The best path the CPU supports is detected once.
//! `NPURT_CPU_ISA=portable|avx2|avx2vnni|avx512|neon` forces a lower path for the whole
//! process; [`with_isa`] forces one for the calling thread only (tests use it to cover
//! every path in one process). Kernels resolve [`isa()`] once at their API entry, on
//! the calling thread, and pass it down to their pool tasks explicitly: a thread-local
//! override would not be visible on the workers.

use std::cell::Cell;
use std::sync::OnceLock;

/// Kernel paths, ordered from least to most capable (so `min` is a downgrade). The
/// x86-64 paths and the AArch64 path are two chains above `Portable`; a CPU only ever
/// runs its own architecture's ([`Isa::ALL`]). `NeonDot` sits below the x86 paths so
/// that `min` with any x86 path keeps it on an ARM CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Baseline target features only: plain Rust, correct on any CPU.
    Portable,
    /// AArch64 Advanced SIMD plus the dot-product extension (`sdot`/`udot`, Armv8.2's
    /// FEAT_DotProd: Cortex-A55/A75 and later, every Apple and recent phone core). CPUs
    /// without it run `Portable`.
    NeonDot,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen 1 and later).
    Avx2Fma,
    /// The AVX2 path with 256-bit `vpdpbusd` in the integer matmul kernels. Either
    /// encoding will do: VEX (AVX-VNNI: Alder Lake and later, Zen 5) or EVEX
    /// (AVX512-VNNI + VL), so every `Avx512Vnni` CPU runs this path too and the order
    /// stays a chain of downgrades.
    Avx2Vnni,
    /// AVX2 path plus AVX-512 F/BW/VL and VNNI (`vpdpbusd`, `vpdpwssd`): Ice Lake and
    /// later, Zen 4 and later.
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx2Vnni => "avx2+vnni",
            Isa::Avx512Vnni => "avx512+vnni",
            Isa::NeonDot => "neon+dotprod",
        }
    }

    /// This architecture's paths, lowest first.
    #[cfg(target_arch = "x86_64")]
    pub const ALL: &'static [Isa] = &[Isa::Portable, Isa::Avx2Fma, Isa::Avx2Vnni, Isa::Avx512Vnni];
    /// This architecture's paths, lowest first.
    #[cfg(target_arch = "aarch64")]
    pub const ALL: &'static [Isa] = &[Isa::Portable, Isa::NeonDot];
    /// This architecture's paths, lowest first.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub const ALL: &'static [Isa] = &[Isa::Portable];

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        Isa::ALL.contains(&self) && self <= detected()
    }

    /// The paths this CPU can run, lowest first (tests loop over these).
    pub fn supported() -> Vec<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .filter(|i| i.is_supported())
            .collect()
    }
}

/// The best path this CPU supports (ignores every override).
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    return Isa::Avx512Vnni;
                }
                if has!("avxvnni") {
                    return Isa::Avx2Vnni;
                }
                return Isa::Avx2Fma;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            return Isa::NeonDot;
        }
        Isa::Portable
    })
}

/// The process-wide path: detected, optionally forced down by `NPURT_CPU_ISA`.
fn process_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        let want = match std::env::var("NPURT_CPU_ISA").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2Fma,
            Ok("avx2vnni") => Isa::Avx2Vnni,
            Ok("avx512") => Isa::Avx512Vnni,
            Ok("neon") => Isa::NeonDot,
            Ok(other) if !other.is_empty() => {
                log::warn!(
                    "NPURT_CPU_ISA={other} is not one of portable|avx2|avx2vnni|avx512|neon; using {}",
                    best.name()
                );
                best
            }
            _ => best,
        };
        if !Isa::ALL.contains(&want) {
            log::warn!(
                "NPURT_CPU_ISA asks for {}, which is not this architecture's; using {}",
                want.name(),
                best.name()
            );
            return best;
        }
        if want > best {
            log::warn!(
                "NPURT_CPU_ISA asks for {} but this CPU supports at most {}; using it",
                want.name(),
                best.name()
            );
        }
        want.min(best)
    })
}

thread_local! {
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The ISA in use on this thread: the process-wide path, lowered by [`with_isa`].
pub fn isa() -> Isa {
    let base = process_isa();
    match OVERRIDE.with(|o| o.get()) {
        // Another architecture's path has none of its kernels here.
        Some(o) if !Isa::ALL.contains(&o) => Isa::Portable,
        Some(o) => o.min(base),
        None => base,
    }
}

/// Runs `f` with kernels called from this thread using at most `isa` (a request above
/// what the CPU or `NPURT_CPU_ISA` allows is lowered to that; another architecture's
/// path runs the portable kernels). Nests; restores the previous setting even if `f`
/// panics.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(isa))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another architecture's path, asked for, runs the portable kernels and says so;
    /// this architecture's paths are lowered to what the CPU has, and restored.
    #[test]
    fn with_isa_keeps_to_this_architecture_and_this_cpu() {
        #[cfg(target_arch = "aarch64")]
        let foreign = Isa::Avx512Vnni;
        #[cfg(not(target_arch = "aarch64"))]
        let foreign = Isa::NeonDot;
        let outside = isa();
        assert_eq!(with_isa(foreign, isa), Isa::Portable);
        for &path in Isa::ALL {
            assert_eq!(with_isa(path, isa), path.min(outside));
        }
        assert_eq!(isa(), outside);
    }
}
