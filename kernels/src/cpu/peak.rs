//! Instruction-peak microbenchmark: how many operations per second this machine's
//! multiply-accumulate instruction really retires, measured by running the instruction
//! itself (not read from a datasheet), so a kernel's speed can be reported as a
//! fraction of it in the same run.
//!
//! For each [`PeakKind`], every thread runs `N` independent accumulator chains of the
//! one instruction on register operands (16 chains on zmm and on AArch64's q
//! registers, 12 on ymm: more than latency x throughput on every core with these
//! units, so the loop is bound by issue throughput alone) in a tight loop for a fixed time. The threads are OS threads
//! of their own (not the kernel pool, whose size is fixed), started together behind a
//! barrier after a short warm-up (which also lets the core settle at its
//! AVX-512 / AVX2 clock); each counts the instructions it retired and its own elapsed
//! time, and the rates add up. Operands and results pass through
//! [`std::hint::black_box`], so the optimizer can neither fold nor drop the loop.
//!
//! The instruction picked follows the kernel path in use ([`isa()`], so
//! `NPURT_CPU_ISA` and [`with_isa`](super::with_isa) lower it too): zmm on the
//! AVX-512 path, ymm on the AVX2 paths, VEX `{vex} vpdpbusd`/`vpdpwssd` where only
//! AVX-VNNI exists, the `vpmaddubsw` / `vpmaddwd` sequences the AVX2 kernels use
//! where there is no VNNI (one sequence counts as one "instruction"), `sdot`/`fmla` on
//! 128-bit vectors on the AArch64 path (which has no 16-bit dot product: its I16
//! kernels run `sdot` on byte planes); where the path has no such instruction the
//! result is `None`.
//!
//! 1 MAC = 2 operations: a `vpdpbusd` zmm counts 64 u8 x i8 MACs = 128 ops, a
//! `vpdpwssd` zmm 32 i16 x i16 MACs = 64 ops, a `vfmadd231ps` zmm 16 MACs = 32 ops
//! (half that on ymm), an `sdot` 16 i8 x i8 MACs, an `fmla` 4.

use super::dispatch::{isa, Isa};
use std::time::{Duration, Instant};

/// The instruction whose peak is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeakKind {
    /// `vpdpbusd` (x86; `vpmaddubsw` + `vpmaddwd` without VNNI) or `sdot` (AArch64):
    /// 8-bit dot products accumulated into i32 lanes (the w8a8 and Q4/Q8 x I8 integer
    /// kernels).
    Int8Dot,
    /// `vfmadd231ps` / `fmla`: f32 fused multiply-add (the f32 kernels).
    F32Fma,
    /// `vpdpwssd` (`vpmaddwd` + `vpaddd` without VNNI): i16 x i16 dot products of 2
    /// accumulated into i32 lanes (16-bit activation kernels; x86 only).
    Int16Dot,
}

impl PeakKind {
    pub const ALL: [PeakKind; 3] = [PeakKind::Int8Dot, PeakKind::F32Fma, PeakKind::Int16Dot];

    pub fn name(self) -> &'static str {
        match self {
            PeakKind::Int8Dot => "int8-dot",
            PeakKind::F32Fma => "f32-fma",
            PeakKind::Int16Dot => "int16-dot",
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakReport {
    pub kind: PeakKind,
    /// Threads that ran the loop at once.
    pub threads: usize,
    /// Billions of operations per second, all threads together (1 MAC = 2 ops).
    pub gops: f64,
    /// The instruction and register width, e.g. `"vpdpbusd zmm"`.
    pub instruction: &'static str,
    /// The kernel path whose instruction this is.
    pub isa: Isa,
    /// Multiply-accumulates one instruction performs.
    pub macs_per_instruction: u32,
    /// Instructions retired by all threads.
    pub instructions: u64,
    /// The longest thread's timed window.
    pub elapsed: Duration,
}

impl PeakReport {
    /// Operations one instruction performs (2 per MAC).
    pub fn ops_per_instruction(&self) -> u32 {
        2 * self.macs_per_instruction
    }

    /// `achieved_gops` as a fraction of this peak.
    pub fn fraction(&self, achieved_gops: f64) -> f64 {
        achieved_gops / self.gops
    }
}

/// The peak that bounds the integer kernels with 16-bit activations on the kernel path
/// in use, and how many of its instructions one product takes: two 8-bit dot products
/// (byte planes) with VNNI and on AArch64, one `vpmaddwd` on whole i16 values on AVX2
/// without VNNI.
pub fn i16_activation_peak() -> (PeakKind, f64) {
    if isa() == Isa::Avx2Fma {
        (PeakKind::Int16Dot, 1.0)
    } else {
        (PeakKind::Int8Dot, 2.0)
    }
}

/// Measures the peak of `kind` on the kernel path in use ([`isa()`]) with `threads`
/// threads running at once for `duration` (100-200 ms gives a stable number; a short
/// warm-up comes on top). `None` when the path has no such instruction.
pub fn measure_peak(kind: PeakKind, threads: usize, duration: Duration) -> Option<PeakReport> {
    measure_peak_on(kind, isa(), threads, duration)
}

/// [`measure_peak`] for an explicit kernel path (lowered to what this CPU supports).
pub fn measure_peak_on(
    kind: PeakKind,
    path: Isa,
    threads: usize,
    duration: Duration,
) -> Option<PeakReport> {
    let (imp, isa) = select(kind, path.min(super::dispatch::detected()))?;
    let threads = threads.max(1);
    let warm = (duration / 5).clamp(Duration::from_millis(2), Duration::from_millis(30));
    let start = std::sync::Barrier::new(threads);
    let go = std::sync::Barrier::new(threads);
    let results: Vec<(u64, Duration)> = std::thread::scope(|sc| {
        let run = || {
            start.wait();
            // SAFETY: `select` returned `imp` only if this CPU has its target features.
            unsafe { (imp.run)(Instant::now() + warm) };
            go.wait();
            let t0 = Instant::now();
            let n = unsafe { (imp.run)(t0 + duration) };
            (n, t0.elapsed())
        };
        let handles: Vec<_> = (1..threads).map(|_| sc.spawn(run)).collect();
        let mut results = vec![run()];
        results.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("peak thread panicked")),
        );
        results
    });
    let ops = 2.0 * imp.macs as f64;
    let gops = results
        .iter()
        .map(|&(n, t)| n as f64 * ops / t.as_secs_f64() / 1e9)
        .sum();
    Some(PeakReport {
        kind,
        threads,
        gops,
        instruction: imp.instruction,
        isa,
        macs_per_instruction: imp.macs,
        instructions: results.iter().map(|r| r.0).sum(),
        elapsed: results.iter().map(|r| r.1).max().unwrap_or_default(),
    })
}

/// One loop: runs until `deadline` and returns the instructions retired.
#[derive(Clone, Copy)]
struct Impl {
    run: unsafe fn(Instant) -> u64,
    instruction: &'static str,
    macs: u32,
}

#[cfg(target_arch = "x86_64")]
fn select(kind: PeakKind, path: Isa) -> Option<(Impl, Isa)> {
    use std::arch::is_x86_feature_detected as has;
    let imp = |run, instruction, macs| Impl {
        run,
        instruction,
        macs,
    };
    // The EVEX ymm forms need AVX512-VNNI + VL; where only AVX-VNNI exists, the VEX
    // forms (the `Avx2Vnni` path accepts either, see `Isa::Avx2Vnni`).
    let vex = || has!("avxvnni");
    Some(match (kind, path) {
        (_, Isa::Portable | Isa::NeonDot) => return None,
        (PeakKind::Int8Dot, Isa::Avx512Vnni) => (imp(x86::vpdpbusd_zmm, "vpdpbusd zmm", 64), path),
        (PeakKind::Int8Dot, Isa::Avx2Vnni) if vex() => {
            (imp(x86::vpdpbusd_ymm_vex, "{vex} vpdpbusd ymm", 32), path)
        }
        (PeakKind::Int8Dot, Isa::Avx2Vnni) => {
            (imp(x86::vpdpbusd_ymm_evex, "vpdpbusd ymm", 32), path)
        }
        (PeakKind::Int16Dot, Isa::Avx512Vnni) => (imp(x86::vpdpwssd_zmm, "vpdpwssd zmm", 32), path),
        (PeakKind::Int16Dot, Isa::Avx2Vnni) if vex() => {
            (imp(x86::vpdpwssd_ymm_vex, "{vex} vpdpwssd ymm", 16), path)
        }
        (PeakKind::Int16Dot, Isa::Avx2Vnni) => {
            (imp(x86::vpdpwssd_ymm_evex, "vpdpwssd ymm", 16), path)
        }
        (PeakKind::Int8Dot, Isa::Avx2Fma) => (
            imp(
                x86::vpmaddubsw_ymm,
                "vpmaddubsw + vpmaddwd + vpaddd ymm",
                32,
            ),
            path,
        ),
        (PeakKind::Int16Dot, Isa::Avx2Fma) => {
            (imp(x86::vpmaddwd_ymm, "vpmaddwd + vpaddd ymm", 16), path)
        }
        (PeakKind::F32Fma, Isa::Avx512Vnni) => {
            (imp(x86::vfmadd231ps_zmm, "vfmadd231ps zmm", 16), path)
        }
        (PeakKind::F32Fma, Isa::Avx2Fma | Isa::Avx2Vnni) => {
            (imp(x86::vfmadd231ps_ymm, "vfmadd231ps ymm", 8), path)
        }
    })
}

#[cfg(target_arch = "aarch64")]
fn select(kind: PeakKind, path: Isa) -> Option<(Impl, Isa)> {
    let imp = |run, instruction, macs| Impl {
        run,
        instruction,
        macs,
    };
    Some(match (kind, path) {
        (PeakKind::Int8Dot, Isa::NeonDot) => (imp(arm::sdot_q, "sdot v.4s", 16), path),
        (PeakKind::F32Fma, Isa::NeonDot) => (imp(arm::fmla_q, "fmla v.4s", 4), path),
        _ => return None,
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn select(_kind: PeakKind, _path: Isa) -> Option<(Impl, Isa)> {
    None
}

/// Rounds of all chains between two clock reads: 256 x 16 instructions is some
/// 4k-8k cycles, against a ~25 ns clock read (and the accumulators' spill around
/// it): under 1% overhead.
const ROUNDS: u64 = 256;

macro_rules! peak_loop {
    ($name:ident, $features:literal, $vec:ty, $chains:literal,
     a = $a:expr, b = $b:expr, zero = $zero:expr, |$acc:ident, $x:ident, $y:ident| $op:expr) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(deadline: Instant) -> u64 {
            let $x: $vec = black_box($a);
            let $y: $vec = black_box($b);
            let mut acc: [$vec; $chains] = black_box([$zero; $chains]);
            let mut count = 0u64;
            loop {
                for _ in 0..ROUNDS {
                    for c in 0..$chains {
                        let $acc = acc[c];
                        acc[c] = $op;
                    }
                }
                count += ROUNDS * $chains;
                if Instant::now() >= deadline {
                    break;
                }
            }
            black_box(acc);
            count
        }
    };
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::super::microkernels::neon_dot::sdot_lane;
    use super::ROUNDS;
    use std::arch::aarch64::*;
    use std::hint::black_box;
    use std::time::Instant;

    peak_loop!(
        sdot_q,
        "neon,dotprod",
        int32x4_t,
        16,
        a = vreinterpretq_s32_s8(vdupq_n_s8(3)),
        b = vreinterpretq_s32_s8(vdupq_n_s8(-5)),
        zero = vdupq_n_s32(0),
        |acc, x, y| sdot_lane::<0>(acc, vreinterpretq_s8_s32(x), vreinterpretq_s8_s32(y))
    );
    // As on x86: 1e-3 x 1e-3 stays normal and the sums finite.
    peak_loop!(
        fmla_q,
        "neon",
        float32x4_t,
        16,
        a = vdupq_n_f32(1e-3),
        b = vdupq_n_f32(1e-3),
        zero = vdupq_n_f32(1.0),
        |acc, x, y| vfmaq_f32(acc, x, y)
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ROUNDS;
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    peak_loop!(
        vpdpbusd_zmm,
        "avx512f,avx512vnni",
        __m512i,
        16,
        a = _mm512_set1_epi8(3),
        b = _mm512_set1_epi8(-5),
        zero = _mm512_setzero_si512(),
        |acc, x, y| _mm512_dpbusd_epi32(acc, x, y)
    );
    peak_loop!(
        vpdpbusd_ymm_evex,
        "avx2,avx512f,avx512vl,avx512vnni",
        __m256i,
        12,
        a = _mm256_set1_epi8(3),
        b = _mm256_set1_epi8(-5),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_dpbusd_epi32(acc, x, y)
    );
    peak_loop!(
        vpdpbusd_ymm_vex,
        "avx2,avxvnni",
        __m256i,
        12,
        a = _mm256_set1_epi8(3),
        b = _mm256_set1_epi8(-5),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_dpbusd_avx_epi32(acc, x, y)
    );
    peak_loop!(
        vpdpwssd_zmm,
        "avx512f,avx512vnni",
        __m512i,
        16,
        a = _mm512_set1_epi16(3),
        b = _mm512_set1_epi16(-5),
        zero = _mm512_setzero_si512(),
        |acc, x, y| _mm512_dpwssd_epi32(acc, x, y)
    );
    peak_loop!(
        vpdpwssd_ymm_evex,
        "avx2,avx512f,avx512vl,avx512vnni",
        __m256i,
        12,
        a = _mm256_set1_epi16(3),
        b = _mm256_set1_epi16(-5),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_dpwssd_epi32(acc, x, y)
    );
    peak_loop!(
        vpdpwssd_ymm_vex,
        "avx2,avxvnni",
        __m256i,
        12,
        a = _mm256_set1_epi16(3),
        b = _mm256_set1_epi16(-5),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_dpwssd_avx_epi32(acc, x, y)
    );
    // AVX2 without VNNI: the integer kernels' dot products are instruction sequences,
    // `vpmaddubsw` (u8 x i8 pairs to i16) then `vpmaddwd` (by ones: i16 pairs to i32)
    // then `vpaddd`, or `vpmaddwd` on i16 operands then `vpaddd`. The accumulator is
    // an operand of the first multiply, so the compiler cannot hoist the products out
    // of the loop.
    peak_loop!(
        vpmaddubsw_ymm,
        "avx2",
        __m256i,
        12,
        a = _mm256_set1_epi8(3),
        b = _mm256_set1_epi16(1),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(acc, x), y))
    );
    peak_loop!(
        vpmaddwd_ymm,
        "avx2",
        __m256i,
        12,
        a = _mm256_set1_epi16(3),
        b = _mm256_set1_epi16(-5),
        zero = _mm256_setzero_si256(),
        |acc, x, y| _mm256_add_epi32(_mm256_madd_epi16(acc, y), x)
    );
    // Products of 1e-3 x 1e-3 stay normal (no denormal slow path) and the sums stay
    // finite for far longer than any run.
    peak_loop!(
        vfmadd231ps_zmm,
        "avx512f",
        __m512,
        16,
        a = _mm512_set1_ps(1e-3),
        b = _mm512_set1_ps(1e-3),
        zero = _mm512_set1_ps(1.0),
        |acc, x, y| _mm512_fmadd_ps(x, y, acc)
    );
    peak_loop!(
        vfmadd231ps_ymm,
        "avx,fma",
        __m256,
        12,
        a = _mm256_set1_ps(1e-3),
        b = _mm256_set1_ps(1e-3),
        zero = _mm256_set1_ps(1.0),
        |acc, x, y| _mm256_fmadd_ps(x, y, acc)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_feature(kind: PeakKind) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let path = isa();
            match kind {
                PeakKind::F32Fma => path >= Isa::Avx2Fma && (has!("fma") || has!("avx512f")),
                PeakKind::Int8Dot | PeakKind::Int16Dot => {
                    path == Isa::Avx2Fma
                        || path >= Isa::Avx2Vnni && (has!("avxvnni") || has!("avx512vnni"))
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            kind != PeakKind::Int16Dot && isa() == Isa::NeonDot
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = kind;
            false
        }
    }

    #[test]
    fn every_kind_measures_where_the_cpu_has_it() {
        for kind in PeakKind::ALL {
            for threads in [1, 2] {
                let r = measure_peak(kind, threads, Duration::from_millis(20));
                if has_feature(kind) {
                    let r = r.unwrap_or_else(|| panic!("{kind:?}: no report"));
                    assert!(r.gops > 0.0 && r.gops.is_finite(), "{r:?}");
                    assert_eq!(r.threads, threads);
                    assert!(r.instructions > 0 && r.elapsed >= Duration::from_millis(20));
                } else {
                    assert_eq!(r, None, "{kind:?}: the path has no such instruction");
                }
            }
        }
    }

    #[test]
    fn every_supported_path_measures_f32() {
        for path in Isa::supported() {
            let r = measure_peak_on(PeakKind::F32Fma, path, 1, Duration::from_millis(5));
            assert_eq!(r.is_some(), path != Isa::Portable, "{path:?}");
            if let Some(r) = r {
                assert!(r.gops > 0.0, "{r:?}");
                assert_eq!(r.isa, path);
            }
        }
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_instruction_matches_the_path() {
        if let Some(r) =
            measure_peak_on(PeakKind::Int8Dot, Isa::NeonDot, 1, Duration::from_millis(2))
        {
            assert_eq!((r.instruction, r.ops_per_instruction()), ("sdot v.4s", 32));
        }
        assert_eq!(
            measure_peak_on(
                PeakKind::Int16Dot,
                Isa::NeonDot,
                1,
                Duration::from_millis(2)
            ),
            None
        );
        assert_eq!(
            measure_peak_on(PeakKind::F32Fma, Isa::Portable, 1, Duration::from_millis(2)),
            None
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_instruction_matches_the_path() {
        if let Some(r) = measure_peak_on(
            PeakKind::Int8Dot,
            Isa::Avx512Vnni,
            1,
            Duration::from_millis(2),
        ) {
            assert_eq!(
                (r.instruction, r.macs_per_instruction),
                ("vpdpbusd zmm", 64)
            );
            assert_eq!(r.ops_per_instruction(), 128);
        }
        if let Some(r) = measure_peak_on(
            PeakKind::Int16Dot,
            Isa::Avx2Vnni,
            1,
            Duration::from_millis(2),
        ) {
            assert!(r.instruction.ends_with("vpdpwssd ymm"), "{r:?}");
            assert_eq!(r.macs_per_instruction, 16);
        }
        if let Some(r) =
            measure_peak_on(PeakKind::Int8Dot, Isa::Avx2Fma, 1, Duration::from_millis(2))
        {
            assert!(r.instruction.starts_with("vpmaddubsw"), "{r:?}");
            assert_eq!(r.macs_per_instruction, 32);
        }
        assert_eq!(
            measure_peak_on(PeakKind::F32Fma, Isa::Portable, 1, Duration::from_millis(2)),
            None
        );
    }
}
