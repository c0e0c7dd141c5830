//! Weights repacked once, at load, into the layout the quantized microkernels stream.
//!
//! # Layout
//!
//! A `[n, k]` weight (row = output channel) is cut into tiles of [`TILE_ROWS`] = 16
//! rows; the last tile is padded with zero rows. Within a tile, 16 rows are interleaved
//! so that one 64-byte load holds the same 4 bytes of every row: 32-bit lane `r` belongs
//! to row `r`. A dot-product instruction (`vpdpbusd`, `vpdpwssd`, `vpmaddwd`) then sums
//! within a lane, so one 16-lane accumulator holds 16 output channels and no horizontal
//! reduction is ever needed (ggml's `block_q4_0x8` idea, widened to a zmm). An AVX2
//! kernel reads the same tile as two 8-row halves (bytes 0..32 and 32..64 of each load).
//!
//! Each tile stores all of its values, then all of its scales ("values then scales",
//! every array 64-byte aligned):
//!
//! | format    | values per 32-value block               | scales per block           |
//! |-----------|-----------------------------------------|----------------------------|
//! | Q4_0      | 4 loads x 64 B (256 B)                  | 16 x f16 d (32 B)          |
//! | Q4_1      | 4 loads x 64 B (256 B)                  | 16 x f16 d, 16 x f16 m (64 B) |
//! | Q8_0      | 8 loads x 64 B (512 B)                  | 16 x f16 d (32 B)          |
//! | Q8Channel | 8 loads x 64 B (512 B)                  | per tile: 16 x f32 row scales, then 16 x i32 row sums (128 B) |
//! | F32       | per k: 16 x f32 (64 B), no blocks       | none                       |
//!
//! Lane `r` of load `L` of a block holds bytes `4L..4L+4` of row `r`'s GGUF quants. For
//! Q4 that byte `j` carries value `j` in its low nibble and value `j + 16` in its high
//! nibble (GGUF's order), so `w & 0x0f` gives values `4L..4L+4` and `(w >> 4) & 0x0f`
//! gives values `16+4L..16+4L+4`: each is a ready `u8 x 4` operand for `vpdpbusd`. For
//! Q8 the lane is values `4L..4L+4` as i8.
//!
//! Scales stay f16 as in the file (converted with `vcvtph2ps` in the kernel) so the
//! packed matrix is exactly as large as the GGUF data: decode is memory-bound and every
//! byte counts. Q8Channel (no GGUF form) also keeps each row's sum of its i8 values:
//! the VNNI kernel multiplies activations shifted to u8 (`q + 128`) by the weights as
//! stored and subtracts `128 * sum(w)` once per row, instead of flipping every weight
//! load. Packing is lossless: [`PackedMatrix::dequantize_rows`] reproduces
//! [`crate::quant::dequantize_matrix`] bit for bit.

use super::weight_memory::WeightBytes;
use crate::reference::KernelError;
use half::{bf16, f16};
use npurt_graph::DType;

/// Rows per tile (one zmm of i32/f32 lanes).
pub const TILE_ROWS: usize = 16;
/// Values per quantization block (GGUF's, and the I8 activation block).
pub const BLOCK: usize = 32;

/// The packed layout's format (Q4_0/Q4_1 share nibble values, Q8_0/Q8Channel i8 values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
    Q8Channel,
    F32,
}

/// A weight matrix in the microkernels' layout (see the module docs). Built by [`pack`].
pub struct PackedMatrix {
    dtype: DType,
    pub(crate) format: Format,
    n: usize,
    k: usize,
    /// 32-value blocks per row (quantized formats); `k` for F32.
    pub(crate) kb: usize,
    /// Bytes from one tile to the next (a multiple of 64).
    pub(crate) tile_bytes: usize,
    /// Offset of the scales within a tile (a multiple of 64).
    pub(crate) scales_offset: usize,
    data: WeightBytes,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix({} [{}, {}], {} bytes)",
            self.dtype,
            self.n,
            self.k,
            self.bytes()
        )
    }
}

fn err(msg: String) -> KernelError {
    KernelError(msg)
}

fn round64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

impl PackedMatrix {
    /// The dtype the matrix was packed from (F16/BF16 sources are held as F32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Rows (output channels).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Columns (input features).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held, padding of the last tile included.
    pub fn bytes(&self) -> usize {
        self.data.as_slice().len()
    }

    pub(crate) fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The bytes of tile `t` (rows `16t .. 16t+16`).
    pub(crate) fn tile(&self, t: usize) -> &[u8] {
        &self.data()[t * self.tile_bytes..(t + 1) * self.tile_bytes]
    }

    /// Dequantizes rows `rows` into `out` (`rows.len() * k` values), bit-identical to
    /// [`crate::quant::dequantize_matrix`] on the source data.
    pub fn dequantize_rows(
        &self,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if rows.start > rows.end || rows.end > self.n || out.len() != rows.len() * self.k {
            return Err(err(format!(
                "dequantize_rows {rows:?} of a [{}, {}] matrix into {} values",
                self.n,
                self.k,
                out.len()
            )));
        }
        for (r, dst) in rows.zip(out.chunks_exact_mut(self.k.max(1))) {
            self.dequantize_row(r, dst);
        }
        Ok(())
    }

    /// Row `r` (< n) into `dst` (k values).
    pub(crate) fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        let tile = self.tile(r / TILE_ROWS);
        let lane = r % TILE_ROWS;
        let vals = &tile[..self.scales_offset];
        let scales = &tile[self.scales_offset..];
        match self.format {
            Format::Q4_0 | Format::Q4_1 => {
                for (b, out) in dst.chunks_exact_mut(BLOCK).enumerate() {
                    let d = f16_at(scales, q4_scale_offset(self.format, b, lane)).to_f32();
                    // Same expression as quant::dequantize, so the same rounding.
                    let (m, bias) = match self.format {
                        Format::Q4_1 => (f16_at(scales, q4_min_offset(b, lane)).to_f32(), 0.0),
                        _ => (0.0, -8.0),
                    };
                    for j in 0..16 {
                        let byte = vals[b * 256 + (j / 4) * 64 + lane * 4 + j % 4];
                        out[j] = d * ((byte & 0x0f) as f32 + bias) + m;
                        out[j + 16] = d * ((byte >> 4) as f32 + bias) + m;
                    }
                }
            }
            Format::Q8_0 | Format::Q8Channel => {
                for (b, out) in dst.chunks_exact_mut(BLOCK).enumerate() {
                    let d = match self.format {
                        Format::Q8_0 => f16_at(scales, b * 32 + lane * 2).to_f32(),
                        // Q8Channel: the row's f32 scale, the 16 rows' scales after the values.
                        _ => f32::from_le_bytes([
                            scales[lane * 4],
                            scales[lane * 4 + 1],
                            scales[lane * 4 + 2],
                            scales[lane * 4 + 3],
                        ]),
                    };
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = d * (vals[b * 512 + (j / 4) * 64 + lane * 4 + j % 4] as i8) as f32;
                    }
                }
            }
            Format::F32 => {
                for (kk, o) in dst.iter_mut().enumerate() {
                    let p = kk * 64 + lane * 4;
                    *o = f32::from_le_bytes([vals[p], vals[p + 1], vals[p + 2], vals[p + 3]]);
                }
            }
        }
    }
}

/// Byte offset of `d` for (block, lane) within a Q4 tile's scales.
#[inline(always)]
pub(crate) fn q4_scale_offset(format: Format, b: usize, lane: usize) -> usize {
    match format {
        Format::Q4_1 => b * 64 + lane * 2,
        _ => b * 32 + lane * 2,
    }
}

/// Byte offset of `m` for (block, lane) within a Q4_1 tile's scales.
#[inline(always)]
pub(crate) fn q4_min_offset(b: usize, lane: usize) -> usize {
    b * 64 + 32 + lane * 2
}

/// Repacks the storage bytes of a `[n, k]` weight (row = output channel) in `dtype`
/// (Q4_0, Q4_1, Q8_0, Q8Channel, or F32/F16/BF16, held as F32) into the kernels' layout.
/// Quantized formats need `k` to be a multiple of 32 (Q8Channel too: the kernels
/// quantize activations in 32-value blocks).
pub fn pack(dtype: DType, raw: &[u8], n: usize, k: usize) -> Result<PackedMatrix, KernelError> {
    if n == 0 || k == 0 {
        return Err(err(format!(
            "cannot pack an empty [{n}, {k}] {dtype} matrix"
        )));
    }
    let format = match dtype {
        DType::Q4_0 => Format::Q4_0,
        DType::Q4_1 => Format::Q4_1,
        DType::Q8_0 => Format::Q8_0,
        DType::Q8Channel => Format::Q8Channel,
        DType::F32 | DType::F16 | DType::BF16 => Format::F32,
        DType::I32 | DType::I16 | DType::I8 | DType::Q8Head { .. } => {
            return Err(err(format!("{dtype} is not a weight format")))
        }
    };
    if format != Format::F32 && !k.is_multiple_of(BLOCK) {
        return Err(err(format!(
            "{dtype} weight [{n}, {k}]: k must be a multiple of {BLOCK}"
        )));
    }
    let elems = n
        .checked_mul(k)
        .ok_or_else(|| err(format!("[{n}, {k}] overflows")))?;
    let want = if dtype == DType::Q8Channel {
        n.checked_mul(4)
            .and_then(|scales| elems.checked_add(scales))
    } else {
        dtype.storage_bytes(elems)
    };
    if want != Some(raw.len()) {
        return Err(err(format!(
            "{dtype} weight [{n}, {k}] needs {want:?} bytes, got {}",
            raw.len()
        )));
    }
    let kb = if format == Format::F32 { k } else { k / BLOCK };
    let (vals, scales) = match format {
        Format::Q4_0 => (kb * 256, kb * 32),
        Format::Q4_1 => (kb * 256, kb * 64),
        Format::Q8_0 => (kb * 512, kb * 32),
        Format::Q8Channel => (kb * 512, 128),
        Format::F32 => (k * 64, 0),
    };
    let scales_offset = round64(vals);
    let tile_bytes = round64(scales_offset + scales);
    let tiles = n.div_ceil(TILE_ROWS);
    let lines = tiles
        .checked_mul(tile_bytes)
        .map(|b| b / 64)
        .ok_or_else(|| err(format!("packed [{n}, {k}] {dtype} overflows")))?;
    let data = WeightBytes::zeroed(lines * 64).map_err(err)?;
    let mut p = PackedMatrix {
        dtype,
        format,
        n,
        k,
        kb,
        tile_bytes,
        scales_offset,
        data,
    };
    let bytes: &mut [u8] = p.data.as_mut_slice();
    let bb = dtype.block_bytes();
    let row_bytes = match format {
        Format::Q8Channel => k,
        _ => k / dtype.block_elems() * bb,
    };
    for r in 0..n {
        let (t, lane) = (r / TILE_ROWS, r % TILE_ROWS);
        let tile = &mut bytes[t * tile_bytes..(t + 1) * tile_bytes];
        let (tv, ts) = tile.split_at_mut(scales_offset);
        let row = &raw[r * row_bytes..(r + 1) * row_bytes];
        match format {
            Format::Q4_0 | Format::Q4_1 => {
                let q_off = if format == Format::Q4_0 { 2 } else { 4 };
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    for l in 0..4 {
                        let dst = b * 256 + l * 64 + lane * 4;
                        tv[dst..dst + 4].copy_from_slice(&blk[q_off + 4 * l..q_off + 4 * l + 4]);
                    }
                    let so = q4_scale_offset(format, b, lane);
                    ts[so..so + 2].copy_from_slice(&blk[0..2]);
                    if format == Format::Q4_1 {
                        let mo = q4_min_offset(b, lane);
                        ts[mo..mo + 2].copy_from_slice(&blk[2..4]);
                    }
                }
            }
            Format::Q8_0 => {
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    for l in 0..8 {
                        let dst = b * 512 + l * 64 + lane * 4;
                        tv[dst..dst + 4].copy_from_slice(&blk[2 + 4 * l..2 + 4 * l + 4]);
                    }
                    ts[b * 32 + lane * 2..b * 32 + lane * 2 + 2].copy_from_slice(&blk[0..2]);
                }
            }
            Format::Q8Channel => {
                for (b, blk) in row.chunks_exact(BLOCK).enumerate() {
                    for l in 0..8 {
                        let dst = b * 512 + l * 64 + lane * 4;
                        tv[dst..dst + 4].copy_from_slice(&blk[4 * l..4 * l + 4]);
                    }
                }
                let s = n * k + r * 4;
                ts[lane * 4..lane * 4 + 4].copy_from_slice(&raw[s..s + 4]);
                let sum: i32 = row.iter().map(|&q| i32::from(q as i8)).sum();
                ts[64 + lane * 4..64 + lane * 4 + 4].copy_from_slice(&sum.to_le_bytes());
            }
            Format::F32 => {
                for kk in 0..k {
                    let v = match dtype {
                        DType::F32 => f32::from_le_bytes([
                            row[4 * kk],
                            row[4 * kk + 1],
                            row[4 * kk + 2],
                            row[4 * kk + 3],
                        ]),
                        DType::F16 => f16::from_le_bytes([row[2 * kk], row[2 * kk + 1]]).to_f32(),
                        _ => bf16::from_le_bytes([row[2 * kk], row[2 * kk + 1]]).to_f32(),
                    };
                    tv[kk * 64 + lane * 4..kk * 64 + lane * 4 + 4]
                        .copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    Ok(p)
}

/// Embedding lookup from a packed table `[vocab, width]`: row `ids[t]` dequantized into
/// row `t` of `out` (`ids.len() * width` values), bit-identical to dequantizing the
/// table and copying rows. An id outside the table is an error naming it.
pub fn gather_packed(
    table: &PackedMatrix,
    ids: &[i32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let width = table.k;
    if out.len() != ids.len() * width {
        return Err(err(format!(
            "gather of {} ids of width {width} into {} values",
            ids.len(),
            out.len()
        )));
    }
    for (t, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= table.n {
            return Err(err(format!(
                "token id {id} at position {t} is outside the vocabulary (0..{})",
                table.n
            )));
        }
    }
    for (dst, &id) in out.chunks_exact_mut(width).zip(ids) {
        table.dequantize_row(id as usize, dst);
    }
    Ok(())
}
