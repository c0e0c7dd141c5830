//! The ViT stem (`Op::PatchEmbed`, a Conv2D with kernel = stride = patch) as im2col +
//! the packed f32 matmul: each image's patches are unrolled into rows of
//! `C * p * p` pixels (the conv weight's flattening order), multiplied by the weight
//! `[D, C*p*p]` as a Linear layer with the bias as its epilogue. Same semantics as
//! `reference::patch_embed`; the unrolled rows cost one pass over the pixels, the
//! matmul is the work. The weight is packed into the register-tiled kernels' layout
//! per call (2.7 MB for SigLIP-so400m, a few ms against its ~1 GFLOP a tile): the
//! dot-product `matmul_f32` ran this stem at about 10 GFLOP/s.

use super::{matmul_packed, pack};
use crate::reference::KernelError;
use npurt_graph::{ActPrecision, DType, Epilogue};

/// `pixels [B, C, H, W]` -> `out [B * (H/p) * (W/p), D]` (patches row-major per image).
pub fn patch_embed_f32(
    pixels: &[f32],
    [b, c, h, w]: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    patch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (gh, gw, d) = (h / patch, w / patch, bias.len());
    let kk = c * patch * patch;
    let packed = pack(DType::F32, bytemuck::cast_slice(weight), d, kk)?;
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
        let f32_act = ActPrecision::F32;
        matmul_packed(
            &cols,
            per_image,
            &packed,
            f32_act,
            Epilogue::BIAS,
            Some(bias),
            None,
            o,
        )?;
    }
    Ok(())
}
