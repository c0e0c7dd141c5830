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
                let (m, bias) = if dtype == DType::Q4_1 { (f16_at(blk, 2), 0.0) } else { (0.0, -8.0) };
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
        DType::I32 | DType::I16 | DType::I8 => return false,
    }
    true
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
