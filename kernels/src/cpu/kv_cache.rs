//! KV cache element types: f32, f16, or int8 (the precision policy's `kv_cache`). An
//! f16 cache halves the bytes decode attention reads per token, int8 (`DType::Q8Head`,
//! read as raw `u8`: per row and KV head, `head_dim` i8 values then an f32 scale)
//! about quarters them; attention still computes in f32, converting each K/V block
//! once as it is loaded (with F16C's `vcvtph2ps` on the x86 paths, inlined into the
//! attention task: `half`'s slice conversion makes an out-of-line call per 8 values,
//! which cost more than the attention arithmetic; int8 blocks as one widening
//! multiply per value, vectorized in the attention task's target features).

use super::Isa;
use crate::reference::{kv_write_range, KernelError};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// What a KV cache's storage units are: the decode kernel widens each kind its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvKind {
    F32,
    F16,
    /// `DType::Q8Head` bytes: i8 values, then each head row's f32 scale.
    I8,
}

/// What the attention kernel can read a KV cache as.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// The storage kind.
    const KIND: KvKind;

    /// Storage units (`Self`) one KV head's row takes: `head_dim` values, or for int8
    /// the block of `head_dim` bytes and its 4-byte scale. Heads are this far apart in
    /// a row, and a row is `n_kv_heads` of them.
    #[inline(always)]
    fn head_len(head_dim: usize) -> usize {
        head_dim
    }

    /// `src` as f16 values when it holds them (the attention's AVX-512 K transpose
    /// widens them as it loads); `None` otherwise.
    #[inline(always)]
    fn as_f16(src: &[Self]) -> Option<&[f16]> {
        let _ = src;
        None
    }

    /// Rows `0..n` of `src` (row stride `stride`, `width` values each) as f32, with
    /// their row stride: `src` itself when it already is f32, else converted into
    /// `buf` (row stride `width`), which is grown as needed, on kernel path `path`.
    fn rows_f32<'s>(
        path: Isa,
        src: &'s [Self],
        n: usize,
        stride: usize,
        width: usize,
        buf: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize);
}

impl KvElem for f32 {
    const KIND: KvKind = KvKind::F32;

    #[inline(always)]
    fn rows_f32<'s>(
        _path: Isa,
        src: &'s [f32],
        _n: usize,
        stride: usize,
        _width: usize,
        _buf: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        (src, stride)
    }
}

impl KvElem for f16 {
    const KIND: KvKind = KvKind::F16;

    #[inline(always)]
    fn as_f16(src: &[f16]) -> Option<&[f16]> {
        Some(src)
    }

    #[inline(always)]
    fn rows_f32<'s>(
        path: Isa,
        src: &'s [f16],
        n: usize,
        stride: usize,
        width: usize,
        buf: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        if buf.len() < n * width {
            buf.resize(n * width, 0.0);
        }
        for (j, dst) in buf.chunks_exact_mut(width).take(n).enumerate() {
            let row = &src[j * stride..][..width];
            #[cfg(target_arch = "x86_64")]
            if path >= Isa::Avx2Fma {
                // SAFETY: every path from Avx2Fma up includes F16C (dispatch.rs).
                unsafe { f16_to_f32_f16c(row, dst) };
                continue;
            }
            let _ = path;
            // half's slice conversion: vector instructions where half detects them
            // (F16C, AArch64 FP16; once per slice, where `to_f32` checks for every
            // value). The conversion is exact either way.
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(row, dst);
        }
        (&buf[..n * width], width)
    }
}

/// `dst = src` widened, 8 values per `vcvtph2ps` (exact: every f16 is an f32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds both accesses; f16 is a plain u16.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const _);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = src[j].to_f32();
    }
}

/// The int8 cache (`DType::Q8Head`) as its raw bytes: each row's head block is `width`
/// i8 values then the f32 scale (little endian), dequantized as `scale * q`, exactly
/// what `quant::dequantize_kv_head` (the reference) computes.
impl KvElem for u8 {
    const KIND: KvKind = KvKind::I8;

    #[inline(always)]
    fn head_len(head_dim: usize) -> usize {
        head_dim + 4
    }

    #[inline(always)]
    fn rows_f32<'s>(
        _path: Isa,
        src: &'s [u8],
        n: usize,
        stride: usize,
        width: usize,
        buf: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        if buf.len() < n * width {
            buf.resize(n * width, 0.0);
        }
        for (j, dst) in buf.chunks_exact_mut(width).take(n).enumerate() {
            crate::quant::dequantize_kv_head(&src[j * stride..][..width + 4], dst);
        }
        (&buf[..n * width], width)
    }
}

/// Writes `new [T, width]` into rows `pos..pos+T` of an int8 cache (`DType::Q8Head`
/// blocks of `head_dim`, raw bytes), each head's row quantized on its own (scale =
/// max|x|/127, q = round(x/scale)), as `Op::KvWrite` specifies: one pass per head row
/// (the reference's `quant::quantize_kv_head`, which the compiler vectorizes).
pub fn kv_write_q8head(
    cache: &mut [u8],
    new: &[f32],
    width: usize,
    head_dim: usize,
    pos: usize,
) -> Result<(), KernelError> {
    crate::reference::kv_write_q8head(cache, new, width, head_dim, pos)
}

/// Writes `new [T, width]` into rows `pos..pos+T` of an f16 `cache [S, width]`, each
/// value rounded to the nearest f16 (ties to even), as `Op::KvWrite` specifies.
pub fn kv_write_f16(
    cache: &mut [f16],
    new: &[f32],
    width: usize,
    pos: usize,
) -> Result<(), KernelError> {
    let range = kv_write_range(cache.len(), new.len(), width, pos)?;
    cache[range].convert_from_f32_slice(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8head_rows_read_the_reference_values() {
        let (hd, heads, rows) = (12, 2, 5);
        let width = hd * heads;
        let x: Vec<f32> = (0..rows * width)
            .map(|i| (i as f32 * 0.71).cos() * 3.0)
            .collect();
        let mut cache = vec![0u8; rows * heads * (hd + 4)];
        kv_write_q8head(&mut cache, &x, width, hd, 0).unwrap();
        let want = crate::reference::dequantize_kv_q8head(&cache, hd);
        let mut buf = Vec::new();
        let stride = heads * u8::head_len(hd);
        for isa in Isa::supported() {
            for g in 0..heads {
                let (got, s) = u8::rows_f32(
                    isa,
                    &cache[g * u8::head_len(hd)..],
                    rows,
                    stride,
                    hd,
                    &mut buf,
                );
                assert_eq!(s, hd);
                for j in 0..rows {
                    assert_eq!(&got[j * hd..][..hd], &want[j * width + g * hd..][..hd]);
                }
            }
        }
    }

    #[test]
    fn f16_write_rounds_to_nearest_and_reads_back() {
        let mut cache = vec![f16::ZERO; 4 * 3];
        let new = [1.0f32, 1.0 + 1.0 / 4096.0, -65504.0, 0.1, 2.5e-8, 3.0];
        kv_write_f16(&mut cache, &new, 3, 1).unwrap();
        assert!(kv_write_f16(&mut cache, &new, 3, 3).is_err());
        let mut buf = Vec::new();
        for isa in Isa::supported() {
            let (rows, stride) = f16::rows_f32(isa, &cache[3..], 2, 3, 3, &mut buf);
            assert_eq!(stride, 3);
            for (got, want) in rows.iter().zip(new) {
                assert_eq!(*got, f16::from_f32(want).to_f32());
            }
            // 1 + 2^-12 is halfway between two f16 values: ties to even gives 1.
            assert_eq!(rows[1], 1.0);
        }
        // Whole vectors and a tail on the vector paths.
        let long: Vec<f16> = (0..21)
            .map(|i| f16::from_f32(i as f32 * 0.37 - 3.0))
            .collect();
        for isa in Isa::supported() {
            let (rows, _) = f16::rows_f32(isa, &long, 1, 21, 21, &mut buf);
            assert!(rows.iter().zip(&long).all(|(a, b)| *a == b.to_f32()));
        }
    }
}
