//! Bicubic resizing of RGB8 images that reproduces PIL's `Image.resize(..., BICUBIC)`
//! (Pillow's Resample.c) exactly, because the reference `pixel_values` were made with it
//! and the vision tower was trained on it.
//!
//! What makes it PIL's and not just "a bicubic":
//! - Keys' cubic with a = -0.5 (Catmull-Rom), support 2;
//! - on a downscale the kernel is stretched by the scale factor (antialiasing), so every
//!   source pixel under an output pixel contributes;
//! - pixel-centre geometry: output pixel `i` samples source position `(i + 0.5) * scale`;
//! - each output's weights are normalised to sum to 1, then rounded to 22-bit fixed point
//!   (32 bits less 8 for the pixel, less 2 for the negative lobes' headroom);
//! - two separable passes, horizontal first, each rounding (+half) and clamping to uint8.

use ::image::RgbImage;
use rayon::prelude::*;

/// Bits of fraction in the fixed-point weights (PIL's PRECISION_BITS).
const PRECISION_BITS: u32 = 22;
const CHANNELS: usize = 3;

/// Keys' cubic convolution kernel with a = -0.5, written with PIL's operation order so
/// the f64 results (and hence the rounded weights) are the same.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel along one axis: the first source pixel it reads and its
/// fixed-point weights (`ksize` slots, the unused ones zero).
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Taps {
        // PIL computes the box extent in f32 before widening to f64.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        let inv = 1.0 / filterscale;
        for (xx, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as Rust's `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                *kx = bicubic(((x + xmin) as f64 - center + 0.5) * inv);
                total += *kx;
            }
            for (w, &kx) in row.iter_mut().zip(&k[..n]) {
                let kx = if total != 0.0 { kx / total } else { kx };
                let fixed = kx * f64::from(1u32 << PRECISION_BITS);
                // Round half away from zero, as PIL's normalize_coeffs_8bpc.
                *w = if kx < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            first.push(xmin);
            count.push(n);
        }
        Taps {
            first,
            count,
            weights,
            ksize,
        }
    }

    fn weights(&self, i: usize) -> &[i32] {
        &self.weights[i * self.ksize..i * self.ksize + self.count[i]]
    }
}

/// Rounds a fixed-point sum (which started at one half) to uint8, clamping the overshoot
/// of the negative lobes. Sums fit in i32 as in PIL: the weights' absolute values add up
/// to at most 1.25 (Catmull-Rom's lobes), and 1.25 * 255 * 2^22 < 2^31.
#[inline]
fn to_u8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `src` (RGB8) to `width x height` exactly as PIL's bicubic resize does.
/// Sizes must be non-zero (the caller's plan guarantees it).
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let vert = Taps::new(in_h, out_h);
    // Horizontal pass first, over only the source rows the vertical pass will read.
    let (rows_from, rows_to) = (vert.first[0], vert.first[out_h - 1] + vert.count[out_h - 1]);
    let src = src.as_raw();
    let horizontal: Vec<u8>;
    let (mid, mid_w, row0) = if out_w != in_w {
        let horiz = Taps::new(in_w, out_w);
        let mut buf = vec![0u8; (rows_to - rows_from) * out_w * CHANNELS];
        buf.par_chunks_mut(out_w * CHANNELS)
            .enumerate()
            .for_each(|(r, out_row)| {
                let y = rows_from + r;
                let in_row = &src[y * in_w * CHANNELS..(y + 1) * in_w * CHANNELS];
                for (xx, px) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
                    let ws = horiz.weights(xx);
                    let x0 = horiz.first[xx] * CHANNELS;
                    let taps = &in_row[x0..x0 + ws.len() * CHANNELS];
                    let (mut r, mut g, mut b) = (HALF, HALF, HALF);
                    for (s, &w) in taps.chunks_exact(CHANNELS).zip(ws) {
                        r += i32::from(s[0]) * w;
                        g += i32::from(s[1]) * w;
                        b += i32::from(s[2]) * w;
                    }
                    px.copy_from_slice(&[to_u8(r), to_u8(g), to_u8(b)]);
                }
            });
        horizontal = buf;
        (&horizontal[..], out_w, rows_from)
    } else {
        (&src[..], in_w, 0)
    };
    let mut out = vec![0u8; out_w * out_h * CHANNELS];
    if out_h != in_h {
        let stride = mid_w * CHANNELS;
        out.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(yy, out_row)| {
                let y0 = vert.first[yy] - row0;
                let ws = vert.weights(yy);
                // Row by row, so the inner loop runs along contiguous memory.
                let mut acc = vec![HALF; stride];
                for (i, &w) in ws.iter().enumerate() {
                    let row = &mid[(y0 + i) * stride..(y0 + i + 1) * stride];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += i32::from(v) * w;
                    }
                }
                for (o, &a) in out_row.iter_mut().zip(&acc) {
                    *o = to_u8(a);
                }
            });
    } else {
        let n = out.len();
        out.copy_from_slice(&mid[..n]);
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized width * height * 3")
}
