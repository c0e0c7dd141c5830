use super::KernelError;

/// Writes `new [T, width]` into rows `pos..pos+T` of `cache [S, width]`.
pub fn kv_write(
    cache: &mut [f32],
    new: &[f32],
    width: usize,
    pos: usize,
) -> Result<(), KernelError> {
    let rows = cache.len() / width;
    let t = new.len() / width;
    if pos + t > rows {
        return Err(KernelError(format!(
            "KV write of {t} rows at position {pos} exceeds the cache's {rows} rows"
        )));
    }
    cache[pos * width..(pos + t) * width].copy_from_slice(new);
    Ok(())
}
