//! Row softmax (`Op::Softmax`, last dimension), written so the compiler vectorizes
//! the max, the exponentials (`math::exp`, not libm's scalar `expf`) and the sums,
//! compiled per ISA and picked at run time; rows are split over the pool when large.
//! (Attention has its own online softmax; this serves graphs with explicit scores.)

use super::{isa, Isa};
use crate::reference::KernelError;

/// Rows at or above this many values are processed in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `out[r] = exp(x[r] - max(x[r])) / sum(exp(x[r] - max(x[r])))` for each row of `width`.
pub fn softmax_f32(x: &[f32], width: usize, out: &mut [f32]) -> Result<(), KernelError> {
    if width == 0 || !x.len().is_multiple_of(width) || out.len() != x.len() {
        return Err(KernelError(format!(
            "softmax of {} values in rows of {width} into {} values",
            x.len(),
            out.len()
        )));
    }
    let isa = isa();
    let run = |x: &[f32], out: &mut [f32]| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports paths the CPU supports.
        Isa::Avx512Vnni => unsafe { rows_avx512(x, width, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { rows_avx2(x, width, out) },
        _ => rows(x, width, out),
    };
    super::pool::for_row_chunks(x, out, width, PARALLEL_MIN_VALUES, run);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_avx512(x: &[f32], width: usize, out: &mut [f32]) {
    rows(x, width, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(x: &[f32], width: usize, out: &mut [f32]) {
    rows(x, width, out)
}

#[inline(always)]
fn rows(x: &[f32], width: usize, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        // Sixteen partial maxima and sums: the compiler only vectorizes reductions whose
        // order is written out (f32 max and + are not associative for it).
        let mut m = [f32::NEG_INFINITY; 16];
        let mut it = row.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                m[i] = if c[i] > m[i] { c[i] } else { m[i] };
            }
        }
        let max = it
            .remainder()
            .iter()
            .chain(&m)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (o, &v) in o.iter_mut().zip(row) {
            *o = super::math::exp(v - max);
        }
        let mut s = [0f32; 16];
        let mut it = o.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                s[i] += c[i];
            }
        }
        let inv = 1.0 / (s.iter().sum::<f32>() + it.remainder().iter().sum::<f32>());
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::with_isa;

    #[test]
    fn matches_reference_on_every_path() {
        // Widths around the vector length, large and negative logits (stability).
        for width in [1, 7, 16, 37, 200] {
            let x: Vec<f32> = (0..3 * width)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.7 + if i % 5 == 0 { 60.0 } else { 0.0 })
                .collect();
            let mut want = vec![0f32; x.len()];
            crate::reference::softmax(&x, width, &mut want);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; x.len()];
                with_isa(isa, || softmax_f32(&x, width, &mut got)).unwrap();
                for (g, r) in got.iter().zip(&want) {
                    assert!(
                        (g - r).abs() <= 1e-6 * r.abs().max(1e-30) + 1e-37,
                        "{} width {width}: {g} vs {r}",
                        isa.name()
                    );
                }
            }
        }
        assert!(softmax_f32(&[1.0; 5], 2, &mut [0.0; 5]).is_err());
    }
}
