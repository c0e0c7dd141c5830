//! Images in: decoding, BlueLM-V-3B's dynamic-resolution tiling, and the preprocessing
//! that turns a photo into the vision tower's `pixel_values`.
//!
//! ```no_run
//! use npurt_runtime::image::{decode_file, plan, preprocess, DecodeLimits, TilingOptions};
//! # fn main() -> Result<(), npurt_runtime::image::ImageError> {
//! let img = decode_file("photo.jpg".as_ref(), &DecodeLimits::default())?;
//! let p = plan(img.width(), img.height(), &TilingOptions::default())?;
//! let pixels = preprocess(&img, &p)?; // [1 + cols*rows, 3, 384, 384]
//! println!("{} tiles, {} image tokens", p.tiles, p.image_tokens);
//! # Ok(()) }
//! ```
//!
//! Conventions (golden README section 3): grid `[m, n]` = m columns x n rows; tile 0 is
//! the global thumbnail, then the canvas tiles row-major; padding is black.

mod decode;
mod error;
mod jpeg;
mod preprocess;
mod resample;
mod tiling;

pub use ::image::RgbImage;
pub use decode::{
    decode_bytes, decode_file, header_from_bytes, jpeg_decoded_natively, read_header, DecodeLimits,
    ImageHeader, SourceFormat, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS,
};
pub use error::ImageError;
pub use preprocess::{preprocess, PixelTiles};
pub use resample::resize_bicubic;
pub use tiling::{
    candidates, llava_next_grid, relaxed_grid, resized_size, select_grid, TilingRule,
};

/// Largest tile count accepted: well past the paper's 9, small enough that the candidate
/// list and the pixel buffer stay bounded whatever a caller passes.
pub const MAX_TILES_LIMIT: u32 = 64;
/// Largest tile side accepted (SigLIP variants use 224 to 512).
pub const MAX_TILE_SIDE: u32 = 1024;

/// How an image is cut into tiles, and what a tile costs in LLM tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilingOptions {
    pub rule: TilingRule,
    /// The relaxed rule's threshold (ignored by LLaVA-NeXT's).
    pub alpha: f64,
    /// Most local tiles (the thumbnail is not counted).
    pub max_tiles: u32,
    /// Side of a square tile: the vision encoder's input size.
    pub tile: u32,
    /// The encoder's patch size: a tile is `tile / patch` patches a side (384/14 = 27).
    pub patch: u32,
    /// The token downsampler merges `merge x merge` patch tokens into one (2 -> 27x27
    /// tokens become 14x14 = 196, the grid zero-padded to 28).
    pub merge: u32,
}

impl Default for TilingOptions {
    /// BlueLM-V-3B: relaxed rule, alpha 0.1, up to 9 tiles of 384, SigLIP patch 14, 2x2 merge.
    fn default() -> Self {
        TilingOptions {
            rule: TilingRule::Relaxed,
            alpha: 0.1,
            max_tiles: 9,
            tile: 384,
            patch: 14,
            merge: 2,
        }
    }
}

impl TilingOptions {
    /// Refuses options no image could be planned with (typed, naming the option).
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |option, reason: String| Err(ImageError::InvalidOption { option, reason });
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return bad(
                "alpha",
                format!("{} (must be a finite number >= 0)", self.alpha),
            );
        }
        if self.max_tiles == 0 || self.max_tiles > MAX_TILES_LIMIT {
            return bad(
                "max_tiles",
                format!("{} (must be 1 to {MAX_TILES_LIMIT})", self.max_tiles),
            );
        }
        if self.tile == 0 || self.tile > MAX_TILE_SIDE {
            return bad(
                "tile",
                format!("{} (must be 1 to {MAX_TILE_SIDE})", self.tile),
            );
        }
        if self.patch == 0 || self.patch > self.tile {
            return bad(
                "patch",
                format!("{} (must be 1 to the tile size {})", self.patch, self.tile),
            );
        }
        if self.merge == 0 {
            return bad("merge", "0 (must be at least 1)".into());
        }
        Ok(())
    }

    /// LLM tokens one tile becomes: `ceil(g / merge)^2` with `g = tile / patch`
    /// (196 for 384 / 14 / 2).
    pub fn tokens_per_tile(&self) -> usize {
        let g = (self.tile / self.patch.max(1)) as usize;
        let side = g.div_ceil(self.merge.max(1) as usize);
        side * side
    }
}

/// What an image will cost and how it is laid out, before any pixel is touched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImagePlan {
    /// The image's size (after EXIF orientation).
    pub width: u32,
    pub height: u32,
    pub tile: u32,
    /// `[columns, rows]` of local tiles.
    pub grid: [u32; 2],
    /// `[width, height]` of the local canvas: `tile * grid`.
    pub canvas: [u32; 2],
    /// `[width, height]` the image is resized to inside the canvas.
    pub resized: [u32; 2],
    /// Black border around the resized image: `[left, top, right, bottom]`
    /// (an odd remainder goes right / bottom).
    pub padding: [u32; 4],
    /// Tiles fed to the encoder, the thumbnail included: `1 + columns * rows`.
    pub tiles: usize,
    pub tokens_per_tile: usize,
    /// LLM positions the image takes: `tiles * tokens_per_tile`.
    pub image_tokens: usize,
}

impl ImagePlan {
    /// The fields are public, so a plan may have been built or edited by hand: refuse one
    /// whose parts disagree instead of indexing past a buffer.
    pub fn check_consistent(&self) -> Result<(), ImageError> {
        let [cols, rows] = self.grid;
        let [w, h] = self.resized;
        let [l, t, r, b] = self.padding;
        let ok = (1..=MAX_TILE_SIDE).contains(&self.tile)
            && cols >= 1
            && rows >= 1
            && u64::from(cols) * u64::from(rows) <= u64::from(MAX_TILES_LIMIT)
            && self.tiles == 1 + (cols * rows) as usize
            && self.canvas == [self.tile * cols, self.tile * rows]
            && w >= 1
            && h >= 1
            && u64::from(l) + u64::from(w) + u64::from(r) == u64::from(self.canvas[0])
            && u64::from(t) + u64::from(h) + u64::from(b) == u64::from(self.canvas[1])
            && self.width >= 1
            && self.height >= 1;
        if ok {
            Ok(())
        } else {
            Err(ImageError::InvalidOption {
                option: "plan",
                reason: format!("inconsistent image plan {self:?}"),
            })
        }
    }
}

/// Plans a `width x height` image: grid, canvas, resize, padding and token count.
pub fn plan(width: u32, height: u32, opts: &TilingOptions) -> Result<ImagePlan, ImageError> {
    opts.validate()?;
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized {
            path: "(planned image)".into(),
            width,
            height,
        });
    }
    let grid = select_grid(
        width,
        height,
        opts.tile,
        opts.max_tiles,
        opts.rule,
        opts.alpha,
    );
    let canvas = [opts.tile * grid[0], opts.tile * grid[1]];
    let resized = resized_size(width, height, canvas);
    let (pad_w, pad_h) = (canvas[0] - resized[0], canvas[1] - resized[1]);
    let padding = [pad_w / 2, pad_h / 2, pad_w - pad_w / 2, pad_h - pad_h / 2];
    let tiles = 1 + (grid[0] * grid[1]) as usize;
    let tokens_per_tile = opts.tokens_per_tile();
    Ok(ImagePlan {
        width,
        height,
        tile: opts.tile,
        grid,
        canvas,
        resized,
        padding,
        tiles,
        tokens_per_tile,
        image_tokens: tiles * tokens_per_tile,
    })
}

/// A `WIDTHxHEIGHT` size (e.g. `768x1536`: the paper's 9-tile example) as
/// `(width, height)`. Sizes outside [`DecodeLimits`]' pixel budget are refused, as a
/// decoded file of that size would be.
pub fn parse_size(size: &str) -> Result<(u32, u32), ImageError> {
    let bad = |reason: String| ImageError::InvalidOption {
        option: "image size",
        reason,
    };
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .ok_or_else(|| bad(format!("`{size}` is not WIDTHxHEIGHT (e.g. 768x1536)")))?;
    let max = DecodeLimits::default().max_pixels;
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > max {
        return Err(bad(format!("{w}x{h} is outside 1..={max} pixels")));
    }
    Ok((w, h))
}

/// A deterministic test pattern of `size` ([`parse_size`]), gradients and a
/// checkerboard, for speed runs (`encode-image --image-size`, `bench --image-size`):
/// content does not change what an encode costs, only the size does.
pub fn test_pattern(size: &str) -> Result<RgbImage, ImageError> {
    let (w, h) = parse_size(size)?;
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let c = if (x / 32 + y / 32) % 2 == 0 { 40 } else { 0 };
        ::image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (128 + c) as u8])
    }))
}

/// Decodes, plans and preprocesses an image file in one call.
pub fn load_pixel_tiles(
    path: &std::path::Path,
    opts: &TilingOptions,
    limits: &DecodeLimits,
) -> Result<(ImagePlan, PixelTiles), ImageError> {
    opts.validate()?;
    let img = decode_file(path, limits)?;
    let p = plan(img.width(), img.height(), opts)?;
    let pixels = preprocess(&img, &p)?;
    Ok((p, pixels))
}
