//! GELU (`Op::Gelu`, erf or tanh) and SiLU (`Op::Silu`) over f32 values, written so the
//! compiler vectorizes them (`math::gelu_erf`/`gelu_tanh`/`silu`: selects, not
//! branches, and `math::exp` instead of libm's scalar calls), compiled per ISA and
//! picked at run time; large tensors are split over the pool. The same math runs in
//! the packed matmul's epilogue (`Step::Act`), so a fused and an unfused GELU agree.

use super::{isa, math, Isa};
use crate::reference::KernelError;
use npurt_graph::Activation;

/// Tensors at or above this many values are processed in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `out = gelu(x)`: exact (erf) or the tanh approximation.
pub fn gelu_f32(x: &[f32], tanh: bool, out: &mut [f32]) -> Result<(), KernelError> {
    activation_f32(x, Activation::gelu(tanh), out)
}

/// `out = act(x)` elementwise.
pub fn activation_f32(x: &[f32], act: Activation, out: &mut [f32]) -> Result<(), KernelError> {
    if out.len() != x.len() {
        return Err(KernelError(format!(
            "{} of {} values into {} values",
            act.name(),
            x.len(),
            out.len()
        )));
    }
    let isa = isa();
    let run = |x: &[f32], out: &mut [f32]| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports paths the CPU supports.
        Isa::Avx512Vnni => unsafe { values_avx512(x, act, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { values_avx2(x, act, out) },
        _ => math::activate_into(act, x, out),
    };
    // Elementwise: any chunking works; "rows" of 16 keep chunks vector-aligned.
    super::pool::for_row_chunks(x, out, 16, PARALLEL_MIN_VALUES, run);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn values_avx512(x: &[f32], act: Activation, out: &mut [f32]) {
    math::activate_into(act, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_avx2(x: &[f32], act: Activation, out: &mut [f32]) {
    math::activate_into(act, x, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::with_isa;
    use crate::reference as r;

    #[test]
    fn matches_reference_on_every_path_and_tail() {
        // Lengths around the vector widths (8, 16) so every tail length is hit.
        for len in [1, 7, 15, 16, 17, 33, 200] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
                .collect();
            for isa in Isa::supported() {
                for act in Activation::ALL {
                    let mut want = vec![0f32; len];
                    match act {
                        Activation::Silu => r::silu(&x, &mut want),
                        Activation::Gelu => r::gelu(&x, false, &mut want),
                        Activation::GeluTanh => r::gelu(&x, true, &mut want),
                    }
                    let mut got = vec![0f32; len];
                    with_isa(isa, || activation_f32(&x, act, &mut got)).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 4e-7 * w.abs().max(1.0),
                            "{} {} len {len} [{i}] x={}: {g} vs {w}",
                            isa.name(),
                            act.name(),
                            x[i]
                        );
                    }
                }
            }
        }
        assert!(gelu_f32(&[1.0; 4], false, &mut [0.0; 3]).is_err());
    }
}
