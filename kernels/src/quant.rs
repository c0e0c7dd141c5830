//! Quantized block formats: bit-exact dequantization of the GGUF formats (the import
//! path and the oracle for quantized kernels). Layouts are GGUF's, little-endian:
//! - Q4_0: f16 d, 16 bytes; byte j holds value j (low nibble) and j+16 (high nibble); x = d*(q-8)
//! - Q4_1: f16 d, f16 m, 16 bytes as Q4_0; x = d*q + m
//! - Q8_0: f16 d, 32 x i8; x = d*q

use half::{bf16, f16};
use npurt_graph::DType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `src` (whole blocks of `dtype`, or plain f16/bf16/f32 values) into `dst`.
/// Returns `false` if the lengths disagree or the dtype is not a float/quant format.
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> bool {
    if dtype.storage_bytes(dst.len()) != Some(src.len()) {
        return false;
    }
    let bb = dtype.block_bytes();
    match dtype {
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q4_0 | DType::Q4_1 => {
            let q_off = if dtype == DType::Q4_0 { 2 } else { 4 };
            for (out, blk) in dst.chunks_exact_mut(32).zip(src.chunks_exact(bb)) {
                let d = f16_at(blk, 0);
                let (m, bias) = if dtype == DType::Q4_1 {
                    (f16_at(blk, 2), 0.0)
                } else {
                    (0.0, -8.0)
                };
                for j in 0..16 {
                    let byte = blk[q_off + j];
                    out[j] = d * ((byte & 0x0f) as f32 + bias) + m;
                    out[j + 16] = d * ((byte >> 4) as f32 + bias) + m;
                }
            }
        }
        DType::Q8_0 => {
            for (out, blk) in dst.chunks_exact_mut(32).zip(src.chunks_exact(bb)) {
                let d = f16_at(blk, 0);
                for j in 0..32 {
                    out[j] = d * (blk[2 + j] as i8) as f32;
                }
            }
        }
        DType::Q8Head { .. } => {
            for (out, blk) in dst.chunks_exact_mut(bb - 4).zip(src.chunks_exact(bb)) {
                dequantize_kv_head(blk, out);
            }
        }
        DType::I32 | DType::I16 | DType::I8 | DType::Q8Channel => return false,
    }
    true
}

/// Quantizes one KV head's row into a `DType::Q8Head` block (`row.len() + 4` bytes):
/// scale = max|x| / 127 (0 for a zero row), q = round(x / scale) half away from zero,
/// computed as `x * (1 / scale)`; the block is the i8 values then the f32 scale.
/// Every int8 KV write (reference, CPU, and kv_write.wgsl) quantizes this way.
pub fn quantize_kv_head(row: &[f32], block: &mut [u8]) {
    let hd = row.len();
    let s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    for (b, v) in block[..hd].iter_mut().zip(row) {
        *b = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
    }
    block[hd..hd + 4].copy_from_slice(&s.to_le_bytes());
}

/// Dequantizes one `DType::Q8Head` block (`out.len() + 4` bytes): x = scale * q.
#[inline]
pub fn dequantize_kv_head(block: &[u8], out: &mut [f32]) {
    let hd = out.len();
    let s = f32::from_le_bytes([block[hd], block[hd + 1], block[hd + 2], block[hd + 3]]);
    for (o, &q) in out.iter_mut().zip(&block[..hd]) {
        *o = s * (q as i8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block() {
        let mut blk = vec![0u8; 20];
        blk[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        blk[4] = 0x3a; // value 0 = 10, value 16 = 3
        let mut out = [0f32; 32];
        assert!(dequantize(DType::Q4_1, &blk, &mut out));
        assert_eq!(out[0], 0.5 * 10.0 - 1.0);
        assert_eq!(out[16], 0.5 * 3.0 - 1.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn q8_0_block_and_length_check() {
        let mut blk = vec![0u8; 34];
        blk[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        blk[2] = (-4i8) as u8;
        let mut out = [0f32; 32];
        assert!(dequantize(DType::Q8_0, &blk, &mut out));
        assert_eq!(out[0], -1.0);
        assert!(!dequantize(DType::Q8_0, &blk[..33], &mut out));
    }
}

/// Quantizes a row-major `[rows, cols]` f32 matrix to `dtype` with round-to-nearest
/// (the rule npurt uses when compiling f32/f16/bf16 checkpoints to low-bit formats):
/// - Q8_0: d = max|x| / 127, q = round(x / d);
/// - Q4_0: as llama.cpp: d = m / -8 where m is the value of largest magnitude (sign
///   kept), q = clamp(round(x / d) + 8, 0, 15);
/// - Q4_1: d = (max - min) / 15, m = min, q = clamp(round((x - min) / d), 0, 15);
/// - Q8Channel: per row, scale = max|x| / 127, q = round(x / scale);
/// - F32/F16/BF16: conversion. Scales are stored as f16 (f32 for Q8Channel), and the
///   rounding uses the stored (f16-rounded) scale so dequantization matches exactly.
///
/// Returns `None` if `cols` is not a multiple of the block size or the dtype is not a
/// weight format.
pub fn quantize(dtype: DType, x: &[f32], cols: usize) -> Option<Vec<u8>> {
    if cols == 0 || !x.len().is_multiple_of(cols) || !cols.is_multiple_of(dtype.block_elems()) {
        return None;
    }
    let mut out =
        Vec::with_capacity(npurt_graph::TensorFact::new(dtype, [x.len() / cols, cols]).bytes()?);
    match dtype {
        DType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        DType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = f16::from_f32(amax / 127.0);
                let inv = if d.to_f32() != 0.0 {
                    1.0 / d.to_f32()
                } else {
                    0.0
                };
                out.extend_from_slice(&d.to_le_bytes());
                out.extend(
                    blk.iter()
                        .map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
                );
            }
        }
        DType::Q4_0 | DType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let q: Vec<u8> = if dtype == DType::Q4_0 {
                    let m = blk
                        .iter()
                        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    let d = f16::from_f32(m / -8.0);
                    out.extend_from_slice(&d.to_le_bytes());
                    let inv = if d.to_f32() != 0.0 {
                        1.0 / d.to_f32()
                    } else {
                        0.0
                    };
                    blk.iter()
                        .map(|v| (v * inv + 8.0).round().clamp(0.0, 15.0) as u8)
                        .collect()
                } else {
                    let (mn, mx) = blk
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                            (a.min(v), b.max(v))
                        });
                    let d = f16::from_f32((mx - mn) / 15.0);
                    let m = f16::from_f32(mn);
                    out.extend_from_slice(&d.to_le_bytes());
                    out.extend_from_slice(&m.to_le_bytes());
                    let inv = if d.to_f32() != 0.0 {
                        1.0 / d.to_f32()
                    } else {
                        0.0
                    };
                    blk.iter()
                        .map(|v| ((v - m.to_f32()) * inv).round().clamp(0.0, 15.0) as u8)
                        .collect()
                };
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
        }
        DType::Q8Channel => {
            let mut scales = Vec::with_capacity(x.len() / cols);
            for row in x.chunks_exact(cols) {
                let s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                out.extend(
                    row.iter()
                        .map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
                );
                scales.push(s);
            }
            scales
                .iter()
                .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
        }
        DType::Q8Head { head_dim } => {
            let hd = head_dim as usize;
            let mut blk = vec![0u8; hd + 4];
            for row in x.chunks_exact(hd) {
                quantize_kv_head(row, &mut blk);
                out.extend_from_slice(&blk);
            }
        }
        DType::I32 | DType::I16 | DType::I8 => return None,
    }
    Some(out)
}

/// Dequantizes any weight format, including `Q8Channel` (which needs the row length).
pub fn dequantize_matrix(dtype: DType, src: &[u8], cols: usize, dst: &mut [f32]) -> bool {
    if dtype != DType::Q8Channel {
        return dequantize(dtype, src, dst);
    }
    if cols == 0 || !dst.len().is_multiple_of(cols) {
        return false;
    }
    let rows = dst.len() / cols;
    if src.len() != dst.len() + 4 * rows {
        return false;
    }
    let (vals, scales) = src.split_at(dst.len());
    for (r, out) in dst.chunks_exact_mut(cols).enumerate() {
        let s = f32::from_le_bytes([
            scales[4 * r],
            scales[4 * r + 1],
            scales[4 * r + 2],
            scales[4 * r + 3],
        ]);
        for (o, &q) in out.iter_mut().zip(&vals[r * cols..(r + 1) * cols]) {
            *o = s * (q as i8) as f32;
        }
    }
    true
}

#[cfg(test)]
mod quantize_tests {
    use super::*;

    #[test]
    fn round_trip_errors_are_within_half_a_step() {
        let x: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for (dt, steps) in [
            (DType::Q8_0, 127.0),
            (DType::Q4_0, 8.0),
            (DType::Q4_1, 15.0),
            (DType::Q8Channel, 127.0),
        ] {
            let q = quantize(dt, &x, 64).unwrap();
            let mut y = vec![0f32; 128];
            assert!(dequantize_matrix(dt, &q, 64, &mut y), "{dt}");
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err <= amax * 2.0 / steps, "{dt}: max error {err}");
        }
    }

    #[test]
    fn requantizing_gguf_blocks_is_lossless() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.731).sin()).collect();
        for dt in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let q = quantize(dt, &x, 64).unwrap();
            let mut y = vec![0f32; 64];
            dequantize(dt, &q, &mut y);
            let q2 = quantize(dt, &y, 64).unwrap();
            let mut y2 = vec![0f32; 64];
            dequantize(dt, &q2, &mut y2);
            assert_eq!(
                y, y2,
                "{dt}: quantize(dequantize(q)) must reproduce the values"
            );
        }
    }
}
