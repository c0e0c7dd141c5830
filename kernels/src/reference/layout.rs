use super::KernelError;

/// General transpose: output dim `i` is input dim `perm[i]`.
pub fn transpose(x: &[f32], shape: &[usize], perm: &[usize], out: &mut [f32]) {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut idx = vec![0usize; rank];
    for o in out.iter_mut() {
        let src: usize = (0..rank).map(|i| idx[i] * in_strides[perm[i]]).sum();
        *o = x[src];
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

/// Copies row `index` of `x [T, width]` into `out [1, width]`.
pub fn select_row(x: &[f32], width: usize, index: i32, out: &mut [f32]) -> Result<(), KernelError> {
    let rows = x.len() / width;
    if index < 0 || index as usize >= rows {
        return Err(KernelError(format!("row {index} is outside 0..{rows}")));
    }
    let i = index as usize;
    out.copy_from_slice(&x[i * width..(i + 1) * width]);
    Ok(())
}
