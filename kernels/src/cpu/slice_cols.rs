//! SliceCols (`Op::SliceCols`; reference `reference::slice_cols`): columns
//! `start..start + len` of `x [rows, width]`, the split of a fused q/k/v product. Pure
//! data movement, copied in row chunks on the pool when the slice is large (a copy on
//! one thread leaves the others spinning). A ViT block's slices are not copied at all:
//! its attention reads them in place (`attention_qkv.rs`).

use crate::reference::KernelError;

/// Slices at or above this many values are copied in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `out [rows, len] = x[:, start..start + len]` for `x [rows, width]`.
pub fn slice_cols_f32(
    x: &[f32],
    width: usize,
    start: usize,
    len: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let rows = x.len().checked_div(width).unwrap_or(0);
    let fits = start.checked_add(len).is_some_and(|end| end <= width);
    if width == 0 || len == 0 || !fits || rows * width != x.len() || rows * len != out.len() {
        return Err(KernelError(format!(
            "slice_cols {start}..{start}+{len} of {} values in rows of {width} into {} values",
            x.len(),
            out.len()
        )));
    }
    let copy = |r0: usize, o: &mut [f32]| {
        for (r, dst) in o.chunks_exact_mut(len).enumerate() {
            let row = (r0 + r) * width + start;
            dst.copy_from_slice(&x[row..row + len]);
        }
    };
    if out.len() >= PARALLEL_MIN_VALUES && super::pool::current_threads() > 1 {
        // Chunks of about a quarter of the threshold each, whole rows.
        let chunk_rows = (PARALLEL_MIN_VALUES / 4 / len).max(1);
        super::pool::for_each_item(
            out.chunks_mut(chunk_rows * len).enumerate().collect(),
            |(i, o)| copy(i * chunk_rows, o),
        );
    } else {
        copy(0, out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ThreadPool;

    #[test]
    fn matches_reference_at_one_and_two_threads() {
        // (rows, width, start, len): a q/k/v split of a batch large enough for the
        // parallel path, a ragged one, one column, the whole row.
        for (rows, width, start, len) in [
            (2916usize, 3456usize, 1152usize, 1152usize),
            (300, 96, 64, 32),
            (7, 5, 4, 1),
            (33, 40, 0, 40),
        ] {
            let x: Vec<f32> = (0..rows * width).map(|i| i as f32 * 0.25 - 7.0).collect();
            let mut want = vec![0f32; rows * len];
            crate::reference::slice_cols(&x, width, start, len, &mut want);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; rows * len];
                ThreadPool::new(threads)
                    .unwrap()
                    .install(|| slice_cols_f32(&x, width, start, len, &mut got))
                    .unwrap();
                assert_eq!(
                    got, want,
                    "{rows}x{width} [{start}, +{len}) threads {threads}"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = vec![0f32; 4 * 6];
        let mut out = vec![0f32; 4 * 2];
        assert!(slice_cols_f32(&x, 6, 4, 2, &mut out).is_ok());
        assert!(slice_cols_f32(&x, 6, 5, 2, &mut out).is_err());
        assert!(slice_cols_f32(&x, 6, usize::MAX, 2, &mut out).is_err());
        assert!(slice_cols_f32(&x, 0, 0, 2, &mut out).is_err());
        assert!(slice_cols_f32(&x, 6, 0, 0, &mut out).is_err());
        assert!(slice_cols_f32(&x[1..], 6, 0, 2, &mut out).is_err());
        assert!(slice_cols_f32(&x, 6, 0, 2, &mut out[1..]).is_err());
    }
}
