//! Device layouts of weights (host-side, no GPU): a `[rows, cols]` tensor is split into
//! row ranges ("parts"), each small enough for one storage binding, and each part is
//! repacked so every shader load is an aligned u32 (layouts documented in
//! `kernels/src/wgsl/weights.wgsl`): quantized blocks become a values segment followed
//! by a scales segment (ratchet's layout), Q8Channel rows are padded to 4 bytes.

use npurt_graph::{DType, TensorFact};
use npurt_kernels::{HostData, HostTensor};
use std::ops::Range;

/// One part of a weight: which rows it holds and where its scales start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartLayout {
    pub rows: Range<usize>,
    /// Bytes of the part's buffer (a multiple of 16).
    pub bytes: u64,
    /// Word offset of the scale segment (0 for plain formats).
    pub scale_offset_words: u32,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Repacked bytes of `rows` rows of `cols` values (values + scales, padded to 4).
fn part_bytes(dtype: DType, rows: usize, cols: usize) -> Option<(usize, usize)> {
    let blocks = rows.checked_mul(cols / 32)?;
    let (values, scales) = match dtype {
        DType::F32 | DType::I32 => (rows.checked_mul(cols)?.checked_mul(4)?, 0),
        DType::F16 | DType::BF16 | DType::I16 => (pad4(rows.checked_mul(cols)?.checked_mul(2)?), 0),
        DType::I8 => (pad4(rows.checked_mul(cols)?), 0),
        DType::Q4_0 => (blocks * 16, pad4(blocks * 2)),
        DType::Q4_1 => (blocks * 16, blocks * 4),
        DType::Q8_0 => (blocks * 32, pad4(blocks * 2)),
        DType::Q8Channel => (rows.checked_mul(pad4(cols))?, rows * 4),
        // A KV cache format, never a weight.
        DType::Q8Head { .. } => return None,
    };
    // Parts are padded to 16 bytes: shaders read them as `array<vec4<u32>>`.
    Some((
        values,
        (values.checked_add(scales)?.checked_add(15)? & !15).max(16),
    ))
}

/// Splits a weight into parts of at most `max_bytes` each.
pub(crate) fn plan(fact: &TensorFact, max_bytes: u64) -> Result<Vec<PartLayout>, String> {
    let cols = fact.last_dim();
    let rows = if fact.rank() == 0 { 1 } else { fact.rows() };
    if fact.bytes().is_none() {
        return Err(format!(
            "{fact} is not a whole number of {} blocks",
            fact.dtype
        ));
    }
    if fact.dtype == DType::Q8Channel && fact.rank() != 2 {
        return Err(format!("{fact}: q8_channel weights must be 2-D"));
    }
    let (_, one_row) = part_bytes(fact.dtype, 1, cols).ok_or("row size overflows")?;
    let max = max_bytes as usize;
    // Rows per part: as many as fit (f16/bf16 rows may end mid-word, which is fine: each
    // part is its own buffer starting at word 0).
    let mut per_part = max
        .saturating_sub(16)
        .checked_div(one_row)
        .map_or(rows.max(1), |n| n.max(1));
    while per_part > 1
        && part_bytes(fact.dtype, per_part, cols)
            .map(|(_, b)| b > max)
            .unwrap_or(true)
    {
        per_part -= 1;
    }
    if part_bytes(fact.dtype, per_part.min(rows.max(1)), cols)
        .map(|(_, b)| b > max)
        .unwrap_or(true)
    {
        return Err(format!(
            "one row of {fact} exceeds the adapter's storage binding limit of {max_bytes} bytes"
        ));
    }
    let mut parts = Vec::new();
    let mut r0 = 0;
    loop {
        let r1 = (r0 + per_part).min(rows);
        let (values, bytes) = part_bytes(fact.dtype, r1 - r0, cols).ok_or("part size overflows")?;
        parts.push(PartLayout {
            rows: r0..r1,
            bytes: bytes as u64,
            scale_offset_words: (values / 4) as u32,
        });
        r0 = r1;
        if r0 >= rows {
            break;
        }
    }
    Ok(parts)
}

/// The tensor's bytes in the host storage order (GGUF blocks, plain little-endian).
pub(crate) fn host_bytes(t: &HostTensor) -> std::borrow::Cow<'_, [u8]> {
    match &t.data {
        // Device buffers are little-endian, as are the hosts wgpu runs on.
        HostData::F32(v) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(v)),
        HostData::MappedF32(m) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(m.as_slice())),
        HostData::I32(v) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(v)),
        HostData::F16(v) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(v)),
        HostData::Bytes(b) => std::borrow::Cow::Borrowed(b),
    }
}

/// Repacks rows `part.rows` of `src` (host storage order of a `[rows, cols]` tensor).
pub(crate) fn pack(
    dtype: DType,
    cols: usize,
    total_rows: usize,
    src: &[u8],
    part: &PartLayout,
) -> Vec<u8> {
    let mut out = vec![0u8; part.bytes as usize];
    let (r0, r1) = (part.rows.start, part.rows.end);
    let n = r1 - r0;
    let soff = part.scale_offset_words as usize * 4;
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => {
            let bb = dtype.block_bytes();
            let (head, qs) = match dtype {
                DType::Q4_0 => (2, 16),
                DType::Q4_1 => (4, 16),
                _ => (2, 32),
            };
            let bpr = cols / 32;
            for (i, blk) in src[r0 * bpr * bb..r1 * bpr * bb]
                .chunks_exact(bb)
                .enumerate()
            {
                out[i * qs..(i + 1) * qs].copy_from_slice(&blk[head..]);
                out[soff + i * head..soff + (i + 1) * head].copy_from_slice(&blk[..head]);
            }
        }
        DType::Q8Channel => {
            let stride = pad4(cols);
            for r in 0..n {
                out[r * stride..r * stride + cols]
                    .copy_from_slice(&src[(r0 + r) * cols..(r0 + r + 1) * cols]);
            }
            let scales = total_rows * cols;
            out[soff..soff + 4 * n].copy_from_slice(&src[scales + 4 * r0..scales + 4 * r1]);
        }
        _ => {
            let eb = dtype.block_bytes();
            let bytes = &src[r0 * cols * eb..r1 * cols * eb];
            out[..bytes.len()].copy_from_slice(bytes);
        }
    }
    out
}

/// Inverse of [`pack`]: writes the part's rows back into `dst` (host storage order).
pub(crate) fn unpack(
    dtype: DType,
    cols: usize,
    total_rows: usize,
    packed: &[u8],
    part: &PartLayout,
    dst: &mut [u8],
) {
    let (r0, r1) = (part.rows.start, part.rows.end);
    let n = r1 - r0;
    let soff = part.scale_offset_words as usize * 4;
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => {
            let bb = dtype.block_bytes();
            let (head, qs) = match dtype {
                DType::Q4_0 => (2, 16),
                DType::Q4_1 => (4, 16),
                _ => (2, 32),
            };
            let bpr = cols / 32;
            for (i, blk) in dst[r0 * bpr * bb..r1 * bpr * bb]
                .chunks_exact_mut(bb)
                .enumerate()
            {
                blk[head..].copy_from_slice(&packed[i * qs..(i + 1) * qs]);
                blk[..head].copy_from_slice(&packed[soff + i * head..soff + (i + 1) * head]);
            }
        }
        DType::Q8Channel => {
            let stride = pad4(cols);
            for r in 0..n {
                dst[(r0 + r) * cols..(r0 + r + 1) * cols]
                    .copy_from_slice(&packed[r * stride..r * stride + cols]);
            }
            let scales = total_rows * cols;
            dst[scales + 4 * r0..scales + 4 * r1].copy_from_slice(&packed[soff..soff + 4 * n]);
        }
        _ => {
            let eb = dtype.block_bytes();
            let len = (r1 - r0) * cols * eb;
            dst[r0 * cols * eb..r1 * cols * eb].copy_from_slice(&packed[..len]);
        }
    }
}

/// Host bytes in storage order back into a host tensor.
pub(crate) fn host_tensor(fact: &TensorFact, bytes: Vec<u8>) -> Option<HostTensor> {
    match fact.dtype {
        DType::F32 => Some(HostTensor {
            fact: fact.clone(),
            data: HostData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        }),
        DType::I32 => Some(HostTensor {
            fact: fact.clone(),
            data: HostData::I32(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        }),
        _ => HostTensor::bytes(fact.clone(), bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_every_format_across_parts() {
        let (rows, cols) = (7, 64);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
            .collect();
        for dt in DType::WEIGHT_FORMATS {
            let src = npurt_kernels::quant::quantize(dt, &x, cols).unwrap();
            let fact = TensorFact::new(dt, [rows, cols]);
            let one = part_bytes(dt, 1, cols).unwrap().1 as u64;
            let parts = plan(&fact, 3 * one + 16).unwrap();
            assert!(parts.len() >= 3, "{dt}: {} parts", parts.len());
            assert_eq!(parts.last().unwrap().rows.end, rows);
            let mut back = vec![0u8; src.len()];
            for p in &parts {
                let packed = pack(dt, cols, rows, &src, p);
                assert_eq!(packed.len() as u64, p.bytes);
                unpack(dt, cols, rows, &packed, p, &mut back);
            }
            assert_eq!(back, src, "{dt}");
        }
    }

    #[test]
    fn a_row_larger_than_the_limit_is_an_error() {
        assert!(plan(&TensorFact::f32([2, 100]), 256).is_err());
        assert_eq!(plan(&TensorFact::f32([2, 100]), 1 << 20).unwrap().len(), 1);
    }
}
