//! From an RGB8 image and its [`ImagePlan`] to the vision tower's input: the global
//! thumbnail first, then the local tiles of the padded canvas row-major, each normalised
//! to `(u8/255 - 0.5)/0.5` in CHW order (LLaVA-NeXT's processor with mean = std = 0.5).

use super::resample::resize_bicubic;
use super::{ImageError, ImagePlan};
use ::image::RgbImage;

/// `pixel_values` for one image: `[tiles, 3, tile, tile]` f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelTiles {
    pub data: Vec<f32>,
    /// Thumbnail included: `1 + columns * rows`.
    pub tiles: usize,
    /// Side of a square tile in pixels.
    pub tile: usize,
}

impl PixelTiles {
    pub fn shape(&self) -> [usize; 4] {
        [self.tiles, 3, self.tile, self.tile]
    }
    /// One tile's `[3, tile, tile]` values.
    pub fn tile_data(&self, index: usize) -> &[f32] {
        let n = 3 * self.tile * self.tile;
        &self.data[index * n..(index + 1) * n]
    }
}

/// The normalised value of each uint8 level, computed as transformers does: rescale in
/// f64 by 1/255, store f32, then `(x - 0.5) / 0.5` in f32.
fn normalise_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (v, out) in t.iter_mut().enumerate() {
        let rescaled = (v as f64 * (1.0 / 255.0)) as f32;
        *out = (rescaled - 0.5) / 0.5;
    }
    t
}

/// Cuts `img` into the plan's thumbnail and canvas tiles. The image must have the size
/// the plan was made for. Canvas padding is black (0, i.e. -1.0), as in LLaVA-NeXT.
pub fn preprocess(img: &RgbImage, plan: &ImagePlan) -> Result<PixelTiles, ImageError> {
    if img.width() != plan.width || img.height() != plan.height {
        return Err(ImageError::PlanMismatch {
            plan_width: plan.width,
            plan_height: plan.height,
            got_width: img.width(),
            got_height: img.height(),
        });
    }
    plan.check_consistent()?;
    let tile = plan.tile as usize;
    let plane = tile * tile;
    let per_tile = 3 * plane;
    let norm = normalise_table();
    let mut data = vec![0f32; plan.tiles * per_tile];

    // Tile 0: the whole image squeezed to one tile (aspect not kept, no padding).
    let thumb = resize_bicubic(img, plan.tile, plan.tile);
    write_tile(&mut data[..per_tile], tile, &norm, |x, y| {
        Some(thumb.get_pixel(x as u32, y as u32).0)
    });

    // The local canvas: the image resized into it, centred, the rest black.
    let resized = resize_bicubic(img, plan.resized[0], plan.resized[1]);
    let [left, top, _, _] = plan.padding;
    let [cols, rows] = plan.grid;
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            let index = 1 + r * cols as usize + c;
            let out = &mut data[index * per_tile..(index + 1) * per_tile];
            write_tile(out, tile, &norm, |x, y| {
                // Canvas position, then position inside the pasted image (if any).
                let cx = (c * tile + x) as i64 - i64::from(left);
                let cy = (r * tile + y) as i64 - i64::from(top);
                let inside = cx >= 0
                    && cy >= 0
                    && cx < i64::from(plan.resized[0])
                    && cy < i64::from(plan.resized[1]);
                inside.then(|| resized.get_pixel(cx as u32, cy as u32).0)
            });
        }
    }
    Ok(PixelTiles {
        data,
        tiles: plan.tiles,
        tile,
    })
}

/// Fills one `[3, tile, tile]` tile from `pixel(x, y)`; `None` is black padding.
fn write_tile(
    out: &mut [f32],
    tile: usize,
    norm: &[f32; 256],
    pixel: impl Fn(usize, usize) -> Option<[u8; 3]>,
) {
    let plane = tile * tile;
    for y in 0..tile {
        for x in 0..tile {
            let rgb = pixel(x, y).unwrap_or([0, 0, 0]);
            for (ch, &v) in rgb.iter().enumerate() {
                out[ch * plane + y * tile + x] = norm[usize::from(v)];
            }
        }
    }
}
