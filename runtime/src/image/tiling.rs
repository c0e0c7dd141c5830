//! Choosing the grid of tiles an image is cut into (BlueLM-V-3B's dynamic resolution) and
//! the size the image is resized to inside that grid's canvas.
//!
//! Grids are `[m, n]` = m columns x n rows of `tile x tile` tiles; the canvas is
//! `tile*m` wide and `tile*n` high. All arithmetic is IEEE f64 exactly as the Python
//! references write it (`int(w * scale)` truncates, `3000 * 0.288` is 863.999...), so
//! every golden case reproduces bit for bit.

/// How a grid is chosen among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilingRule {
    /// BlueLM-V-3B's relaxed aspect-ratio matching (arXiv 2411.10640, Algorithm 1):
    /// accepts a grid that keeps almost as much resolution (within `alpha`) but wastes
    /// less canvas, so it picks fewer tiles than LLaVA-NeXT.
    Relaxed,
    /// LLaVA-NeXT's `select_best_resolution`: the most effective resolution, ties broken
    /// by the least waste.
    LlavaNext,
}

impl TilingRule {
    pub fn name(self) -> &'static str {
        match self {
            TilingRule::Relaxed => "relaxed",
            TilingRule::LlavaNext => "llava-next",
        }
    }
    /// `relaxed`, `llava-next` (also `llava_next`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "relaxed" => Some(TilingRule::Relaxed),
            "llava-next" | "llava_next" => Some(TilingRule::LlavaNext),
            _ => None,
        }
    }
}

/// All grids of at most `max_tiles` tiles, in the order both rules scan them: most tiles
/// first, and for equal tile counts the wider grid first (`9:1, 3:3, 1:9, 8:1, ...`).
/// The order matters: the relaxed rule keeps the first acceptable grid.
pub fn candidates(max_tiles: u32) -> Vec<[u32; 2]> {
    let mut out = Vec::new();
    for m in 1..=max_tiles {
        for n in 1..=max_tiles / m {
            out.push([m, n]);
        }
    }
    out.sort_by(|a, b| (b[0] * b[1], b[0]).cmp(&(a[0] * a[1], a[0])));
    out
}

/// What a grid keeps and wastes: the image scaled to fit the canvas (aspect kept),
/// `effective` = its pixel count capped at the original's, `wasted` = canvas - effective.
struct Fit {
    effective: i64,
    wasted: i64,
}

fn fit(width: u32, height: u32, tile: u32, grid: [u32; 2]) -> Fit {
    let (w, h) = (f64::from(width), f64::from(height));
    let canvas_w = i64::from(tile) * i64::from(grid[0]);
    let canvas_h = i64::from(tile) * i64::from(grid[1]);
    let scale = (canvas_w as f64 / w).min(canvas_h as f64 / h);
    // Python's int(): truncation toward zero (the values are positive).
    let scaled_w = (w * scale) as i64;
    let scaled_h = (h * scale) as i64;
    let effective = (scaled_w * scaled_h).min(i64::from(width) * i64::from(height));
    Fit {
        effective,
        wasted: canvas_w * canvas_h - effective,
    }
}

/// The relaxed rule, literally: `Re_max` is the effective resolution of the current best
/// (not the largest seen), and comparisons are `int - int` against the float
/// `alpha * Re_max`, as in the reference.
pub fn relaxed_grid(
    width: u32,
    height: u32,
    tile: u32,
    cands: &[[u32; 2]],
    alpha: f64,
) -> [u32; 2] {
    let mut best = [1, 1];
    let mut re_max: i64 = 0;
    let mut rw_min = f64::INFINITY;
    for &g in cands {
        let Fit { effective, wasted } = fit(width, height, tile, g);
        let slack = alpha * re_max as f64;
        let gains = (effective - re_max) as f64 > slack;
        let close_and_leaner = ((re_max - effective) as f64) < slack && (wasted as f64) < rw_min;
        if gains || close_and_leaner {
            re_max = effective;
            rw_min = wasted as f64;
            best = g;
        }
    }
    best
}

/// LLaVA-NeXT's `select_best_resolution`: strictly more effective resolution wins; equal
/// effective resolution with strictly less waste wins; exact ties keep the earlier grid.
pub fn llava_next_grid(width: u32, height: u32, tile: u32, cands: &[[u32; 2]]) -> [u32; 2] {
    let mut best = [1, 1];
    let mut max_effective: i64 = 0;
    let mut min_wasted = i64::MAX;
    for &g in cands {
        let Fit { effective, wasted } = fit(width, height, tile, g);
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = g;
        }
    }
    best
}

/// The grid `rule` picks for a `width x height` image among `candidates(max_tiles)`.
pub fn select_grid(
    width: u32,
    height: u32,
    tile: u32,
    max_tiles: u32,
    rule: TilingRule,
    alpha: f64,
) -> [u32; 2] {
    let cands = candidates(max_tiles);
    match rule {
        TilingRule::Relaxed => relaxed_grid(width, height, tile, &cands, alpha),
        TilingRule::LlavaNext => llava_next_grid(width, height, tile, &cands),
    }
}

/// The size the image is resized to inside a `canvas` (LLaVA-NeXT's
/// `get_patch_output_size`): the side with the smaller scale fills the canvas, the other
/// is `ceil(side * scale)` capped at the canvas.
pub fn resized_size(width: u32, height: u32, canvas: [u32; 2]) -> [u32; 2] {
    let (w, h) = (f64::from(width), f64::from(height));
    let (cw, ch) = (f64::from(canvas[0]), f64::from(canvas[1]));
    let scale_w = cw / w;
    let scale_h = ch / h;
    if scale_w < scale_h {
        [canvas[0], ((h * scale_w).ceil() as u32).min(canvas[1])]
    } else {
        [((w * scale_h).ceil() as u32).min(canvas[0]), canvas[1]]
    }
}
