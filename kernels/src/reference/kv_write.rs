use super::KernelError;

/// The cache values `new` (rows of `width`) overwrites when written at row `pos`, or
/// why it cannot be written. Shared by every `kv_write` kernel (f32 and f16 caches).
pub(crate) fn kv_write_range(
    cache_len: usize,
    new_len: usize,
    width: usize,
    pos: usize,
) -> Result<std::ops::Range<usize>, KernelError> {
    let rows = cache_len / width.max(1);
    let t = new_len / width.max(1);
    if width == 0
        || !new_len.is_multiple_of(width)
        || pos.checked_add(t).is_none_or(|end| end > rows)
    {
        return Err(KernelError(format!(
            "KV write of {new_len} values ({t} rows of {width}) at position {pos} exceeds the cache's {rows} rows"
        )));
    }
    Ok(pos * width..(pos + t) * width)
}

/// Writes `new [T, width]` into rows `pos..pos+T` of `cache [S, width]`.
pub fn kv_write(
    cache: &mut [f32],
    new: &[f32],
    width: usize,
    pos: usize,
) -> Result<(), KernelError> {
    let range = kv_write_range(cache.len(), new.len(), width, pos)?;
    cache[range].copy_from_slice(new);
    Ok(())
}

/// Writes `new [T, width]` into rows `pos..pos+T` of an int8 cache (`DType::Q8Head`
/// blocks of `head_dim`, `width / head_dim` per row, as raw bytes): each head's new
/// row is quantized on its own (`quant::quantize_kv_head`), the other rows untouched.
pub fn kv_write_q8head(
    cache: &mut [u8],
    new: &[f32],
    width: usize,
    head_dim: usize,
    pos: usize,
) -> Result<(), KernelError> {
    if head_dim == 0 || !width.is_multiple_of(head_dim) {
        return Err(KernelError(format!(
            "KV write: width {width} is not whole heads of {head_dim}"
        )));
    }
    let bb = head_dim + 4;
    let row_bytes = width / head_dim * bb;
    let cache_vals = cache.len() / row_bytes.max(1) * width;
    let range = kv_write_range(cache_vals, new.len(), width, pos)?;
    let dst = &mut cache[range.start / head_dim * bb..range.end / head_dim * bb];
    for (row, blk) in new.chunks_exact(head_dim).zip(dst.chunks_exact_mut(bb)) {
        crate::quant::quantize_kv_head(row, blk);
    }
    Ok(())
}

/// An int8 cache (`DType::Q8Head` blocks of `head_dim`) as f32 values.
pub fn dequantize_kv_q8head(cache: &[u8], head_dim: usize) -> Vec<f32> {
    let bb = head_dim + 4;
    let mut out = vec![0f32; cache.len() / bb * head_dim];
    for (o, blk) in out.chunks_exact_mut(head_dim).zip(cache.chunks_exact(bb)) {
        crate::quant::dequantize_kv_head(blk, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8head_write_quantizes_each_head_row_and_reads_back() {
        let (hd, heads, rows) = (8, 2, 3);
        let width = hd * heads;
        let mut cache = vec![0u8; rows * heads * (hd + 4)];
        let new: Vec<f32> = (0..2 * width)
            .map(|i| (i as f32 * 0.37).sin() * (1 + i / hd) as f32)
            .collect();
        let mut zero_head = new.clone();
        zero_head[hd..2 * hd].fill(0.0);
        kv_write_q8head(&mut cache, &zero_head, width, hd, 1).unwrap();
        assert!(kv_write_q8head(&mut cache, &new, width, hd, 2).is_err());
        let back = dequantize_kv_q8head(&cache, hd);
        assert!(back[..width].iter().all(|&x| x == 0.0), "row 0 untouched");
        for (i, (&b, &x)) in back[width..].iter().zip(&zero_head).enumerate() {
            let head = &zero_head[i / hd * hd..][..hd];
            let step = head.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            assert!((b - x).abs() <= step * 0.5 + 1e-7, "{i}: {b} vs {x}");
        }
        // A zero row gets scale 0 and reads back as zeros.
        let blk = &cache[(heads + 1) * (hd + 4)..][..hd + 4];
        assert_eq!(&blk[hd..], &0f32.to_le_bytes());
        // Each head's largest magnitude is exactly +-127.
        let blk0 = &cache[heads * (hd + 4)..][..hd + 4];
        assert!(blk0[..hd].iter().any(|&q| (q as i8).unsigned_abs() == 127));
    }
}
