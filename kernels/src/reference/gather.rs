use super::KernelError;

/// Embedding lookup: row `ids[t]` of `table [vocab, width]` into row `t` of `out`.
pub fn gather(
    table: &[f32],
    width: usize,
    ids: &[i32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let vocab = table.len() / width.max(1);
    for (t, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(KernelError(format!(
                "token id {id} at position {t} is outside the vocabulary (0..{vocab})"
            )));
        }
        let id = id as usize;
        out[t * width..(t + 1) * width].copy_from_slice(&table[id * width..(id + 1) * width]);
    }
    Ok(())
}
