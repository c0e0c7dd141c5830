//! The ViT stem (`Op::PatchEmbed`, a Conv2D with kernel = stride = patch) as im2col +
//! the SIMD f32 matmul: each image's patches are unrolled into rows of
//! `C * p * p` pixels (the conv weight's flattening order), multiplied by the weight
//! `[D, C*p*p]` as a Linear layer, and the bias added. Same semantics as
//! `reference::patch_embed`; the unrolled rows cost one pass over the pixels, the
//! matmul is the work.

use super::matmul_f32;

/// `pixels [B, C, H, W]` -> `out [B * (H/p) * (W/p), D]` (patches row-major per image).
pub fn patch_embed_f32(
    pixels: &[f32],
    [b, c, h, w]: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    patch: usize,
    out: &mut [f32],
) {
    let (gh, gw, d) = (h / patch, w / patch, bias.len());
    let kk = c * patch * patch;
    let per_image = gh * gw;
    let mut cols = vec![0f32; per_image * kk];
    for img in 0..b {
        for py in 0..gh {
            for px in 0..gw {
                let row = &mut cols[(py * gw + px) * kk..][..kk];
                for ch in 0..c {
                    for ky in 0..patch {
                        let src = ((img * c + ch) * h + py * patch + ky) * w + px * patch;
                        row[(ch * patch + ky) * patch..][..patch]
                            .copy_from_slice(&pixels[src..src + patch]);
                    }
                }
            }
        }
        let o = &mut out[img * per_image * d..(img + 1) * per_image * d];
        matmul_f32(&cols, weight, per_image, kk, d, true, o);
        for r in o.chunks_exact_mut(d) {
            for (x, b) in r.iter_mut().zip(bias) {
                *x += b;
            }
        }
    }
}
