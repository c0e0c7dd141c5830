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

/// Columns `start..start+len` of `x [rows, width]`.
pub fn slice_cols(x: &[f32], width: usize, start: usize, len: usize, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(len)) {
        o.copy_from_slice(&row[start..start + len]);
    }
}

/// Conv2D with kernel = stride = `patch`, no padding: `pixels [B, C, H, W]`,
/// `weight [D, C*patch*patch]` (PyTorch `[D, C, p, p]` flattened), `bias [D]` ->
/// `out [B * (H/p) * (W/p), D]`, patches row-major.
pub fn patch_embed(
    pixels: &[f32],
    shape: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    patch: usize,
    out: &mut [f32],
) {
    let [b, c, h, w] = shape;
    let (gh, gw, d) = (h / patch, w / patch, bias.len());
    let kk = c * patch * patch;
    let mut col = vec![0f32; kk];
    for img in 0..b {
        for py in 0..gh {
            for px in 0..gw {
                for ch in 0..c {
                    for ky in 0..patch {
                        for kx in 0..patch {
                            col[(ch * patch + ky) * patch + kx] = pixels
                                [((img * c + ch) * h + py * patch + ky) * w + px * patch + kx];
                        }
                    }
                }
                let row = (img * gh + py) * gw + px;
                for o in 0..d {
                    let wr = &weight[o * kk..(o + 1) * kk];
                    out[row * d + o] =
                        bias[o] + wr.iter().zip(&col).map(|(a, b)| a * b).sum::<f32>();
                }
            }
        }
    }
}

/// The ViT token downsampler's merge (`Op::SpaceToChannel`): `x [B * h * w, c]` ->
/// `out [B * h2 * w2, block*block*c]`, each `block x block` cell of a row-major token
/// grid concatenated in row-major cell order, zero where the cell overhangs the grid.
pub fn space_to_channel(x: &[f32], [h, w]: [usize; 2], block: usize, c: usize, out: &mut [f32]) {
    let (h2, w2) = (h.div_ceil(block), w.div_ceil(block));
    let images = x.len() / (h * w * c).max(1);
    for b in 0..images {
        for i in 0..h2 {
            for j in 0..w2 {
                let o =
                    &mut out[((b * h2 + i) * w2 + j) * block * block * c..][..block * block * c];
                for dr in 0..block {
                    for dc in 0..block {
                        let dst = &mut o[(dr * block + dc) * c..][..c];
                        let (r, col) = (block * i + dr, block * j + dc);
                        if r < h && col < w {
                            dst.copy_from_slice(&x[((b * h + r) * w + col) * c..][..c]);
                        } else {
                            dst.fill(0.0);
                        }
                    }
                }
            }
        }
    }
}
