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
