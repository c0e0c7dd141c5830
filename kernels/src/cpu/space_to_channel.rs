//! SpaceToChannel (`Op::SpaceToChannel`, the ViT token downsampler's merge; reference
//! `reference::space_to_channel`): `x [B * h * w, c]` -> `[B * ceil(h/b) * ceil(w/b),
//! b * b * c]`, each output row the `b x b` cell's token rows concatenated in row-major
//! order, cells past the grid's bottom/right edge zero. Pure data movement: one `c`-value
//! copy per token, one task per output row of cells when the tensor is large.

use crate::reference::KernelError;

/// Outputs at or above this many values are copied in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// See the module docs; `c` is the channel count (row width of `x`).
pub fn space_to_channel_f32(
    x: &[f32],
    [h, w]: [usize; 2],
    block: usize,
    c: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let bad = || {
        KernelError(format!(
            "space_to_channel of {} values as {h}x{w} grids of {c} channels (block {block}) into {} values",
            x.len(),
            out.len()
        ))
    };
    let grid = h
        .checked_mul(w)
        .and_then(|n| n.checked_mul(c))
        .ok_or_else(bad)?;
    if grid == 0 || block == 0 || !x.len().is_multiple_of(grid) {
        return Err(bad());
    }
    let (h2, w2) = (h.div_ceil(block), w.div_ceil(block));
    let images = x.len() / grid;
    // One output row of cells: w2 cells of block * block token rows.
    let cell_row = [block, block, c]
        .into_iter()
        .try_fold(w2, usize::checked_mul)
        .ok_or_else(bad)?;
    if cell_row.checked_mul(h2).and_then(|n| n.checked_mul(images)) != Some(out.len()) {
        return Err(bad());
    }
    // Output cell row `n` (image n / h2, cell row n % h2).
    let copy = |n: usize, o: &mut [f32]| {
        let (b, i) = (n / h2, n % h2);
        for (j, cell) in o.chunks_exact_mut(block * block * c).enumerate() {
            for (s, dst) in cell.chunks_exact_mut(c).enumerate() {
                let (r, col) = (block * i + s / block, block * j + s % block);
                if r < h && col < w {
                    dst.copy_from_slice(&x[((b * h + r) * w + col) * c..][..c]);
                } else {
                    dst.fill(0.0);
                }
            }
        }
    };
    if out.len() >= PARALLEL_MIN_VALUES && super::pool::current_threads() > 1 {
        super::pool::for_each_item(out.chunks_mut(cell_row).enumerate().collect(), |(n, o)| {
            copy(n, o)
        });
    } else {
        out.chunks_mut(cell_row)
            .enumerate()
            .for_each(|(n, o)| copy(n, o));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ThreadPool;

    #[test]
    fn matches_reference_at_one_and_two_threads() {
        // (images, grid, block, channels): the ViT's 27x27 -> 14x14, a large batch
        // that takes the parallel path, non-square grids, block 3.
        for (images, grid, block, c) in [
            (1usize, [3usize, 3], 2usize, 1usize),
            (2, [27, 27], 2, 8),
            (3, [27, 27], 2, 64),
            (1, [4, 6], 2, 5),
            (3, [5, 3], 2, 13),
            (1, [7, 7], 3, 4),
            (1, [1, 1], 2, 3),
        ] {
            let x: Vec<f32> = (0..images * grid[0] * grid[1] * c)
                .map(|i| i as f32 * 0.5 - 3.0)
                .collect();
            let n = images * grid[0].div_ceil(block) * grid[1].div_ceil(block) * block * block * c;
            let mut want = vec![0f32; n];
            crate::reference::space_to_channel(&x, grid, block, c, &mut want);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; n];
                ThreadPool::new(threads)
                    .unwrap()
                    .install(|| space_to_channel_f32(&x, grid, block, c, &mut got))
                    .unwrap();
                assert_eq!(
                    got, want,
                    "{images}x{grid:?} b{block} c{c} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = vec![0f32; 2 * 3 * 4];
        // One 2x3 grid: 1x2 cells of 2x2 tokens.
        let mut out = vec![0f32; 2 * 2 * 2 * 4];
        assert!(space_to_channel_f32(&x, [2, 3], 2, 4, &mut out).is_ok());
        assert!(space_to_channel_f32(&x, [2, 3], 2, 4, &mut out[1..]).is_err());
        assert!(space_to_channel_f32(&x[1..], [2, 3], 2, 4, &mut out).is_err());
        assert!(space_to_channel_f32(&x, [2, 3], 0, 4, &mut out).is_err());
        assert!(space_to_channel_f32(&x, [0, 3], 2, 4, &mut out).is_err());
        assert!(space_to_channel_f32(&x, [usize::MAX, 3], 2, 4, &mut out).is_err());
        assert!(space_to_channel_f32(&x, [2, 3], usize::MAX, 4, &mut out).is_err());
    }
}
