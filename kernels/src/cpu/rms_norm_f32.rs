//! RMSNorm (HF LlamaRMSNorm: `x * rsqrt(mean(x^2) + eps) * w` per row), written so the
//! compiler vectorizes it (eight partial sums), compiled per ISA and picked at run time.

use super::{isa, Isa};
use crate::reference::KernelError;

/// Rows at or above this many values are normalised in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `out = x * rsqrt(mean(x^2) + eps) * w` for each row of `w.len()` values of `x`.
pub fn rms_norm_f32(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let h = w.len();
    if h == 0 || !x.len().is_multiple_of(h) || out.len() != x.len() {
        return Err(KernelError(format!(
            "rms_norm of {} values with a weight of {h} into {} values",
            x.len(),
            out.len()
        )));
    }
    let isa = isa();
    let run = |x: &[f32], out: &mut [f32]| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports paths the CPU supports.
        Isa::Avx512Vnni => unsafe { rows_avx512(x, w, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { rows_avx2(x, w, eps, out) },
        _ => rows(x, w, eps, out),
    };
    super::pool::for_row_chunks(x, out, h, PARALLEL_MIN_VALUES, run);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rows(x, w, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rows(x, w, eps, out)
}

#[inline(always)]
fn rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ms = super::math::sum_squares(row) / h as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * r * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::with_isa;

    #[test]
    fn matches_reference_on_every_path() {
        let h = 72;
        let x: Vec<f32> = (0..5 * h)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let w: Vec<f32> = (0..h).map(|i| 0.5 + i as f32 / h as f32).collect();
        let mut want = vec![0f32; x.len()];
        crate::reference::rms_norm(&x, &w, 1e-5, &mut want);
        for isa in Isa::supported() {
            let mut got = vec![0f32; x.len()];
            with_isa(isa, || rms_norm_f32(&x, &w, 1e-5, &mut got)).unwrap();
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "{}: {g} vs {r}",
                    isa.name()
                );
            }
        }
        assert!(rms_norm_f32(&x[..h + 1], &w, 1e-5, &mut vec![0f32; h + 1]).is_err());
    }
}
