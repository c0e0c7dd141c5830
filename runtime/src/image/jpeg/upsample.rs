//! libjpeg's chroma upsampling with `do_fancy_upsampling` (its default): a 3:1 triangle
//! filter between a sample and its nearer neighbour, with libjpeg's alternating rounding
//! biases so the errors do not all lean one way. The rows above the first and below the
//! last replicate the edge row (libjpeg's context-row pointers, jdmainct.c), and the
//! edge columns use the component's real (downsampled) width, not the padded block width.

/// How one component's samples map onto output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Same resolution as the output.
    Full,
    /// Twice as wide, triangle-filtered (libjpeg's `h2v1_fancy_upsample`).
    H2V1Fancy,
    /// Twice as wide, each sample doubled (`h2v1_upsample`: libjpeg's choice when the
    /// downsampled width is 2 or less).
    H2V1Box,
    /// Twice as tall, triangle-filtered (`h1v2_fancy_upsample`).
    H1V2Fancy,
    /// Twice as wide and tall, triangle-filtered both ways (`h2v2_fancy_upsample`).
    H2V2Fancy,
    /// Twice as wide and tall, replicated (`h2v2_upsample`, width 2 or less).
    H2V2Box,
}

impl Method {
    /// libjpeg's choice (jdsample.c `jinit_upsampler`) for a component whose sampling
    /// factors are `1/h_ratio`, `1/v_ratio` of the largest; `None` for ratios it handles
    /// with the generic integer upsampler, which npurt leaves to the fallback decoder.
    pub fn choose(h_ratio: usize, v_ratio: usize, downsampled_width: usize) -> Option<Method> {
        Some(match (h_ratio, v_ratio) {
            (1, 1) => Method::Full,
            (2, 1) if downsampled_width > 2 => Method::H2V1Fancy,
            (2, 1) => Method::H2V1Box,
            (1, 2) => Method::H1V2Fancy,
            (2, 2) if downsampled_width > 2 => Method::H2V2Fancy,
            (2, 2) => Method::H2V2Box,
            _ => return None,
        })
    }

    pub fn v_ratio(self) -> usize {
        match self {
            Method::Full | Method::H2V1Fancy | Method::H2V1Box => 1,
            _ => 2,
        }
    }
}

/// Output row `y`'s samples of a component into `out[..out_width]`: `rows(r)` gives its
/// stored row `r` (padded to whole blocks), `width` and `height` its downsampled size.
/// `out` must hold `max(out_width, 2 * width)` samples: the filters write whole pairs.
pub fn upsample_row<'a>(
    method: Method,
    rows: impl Fn(usize) -> &'a [u8],
    width: usize,
    height: usize,
    y: usize,
    out_width: usize,
    out: &mut [u8],
) {
    let r = y / method.v_ratio();
    // The neighbour row for the vertical filter: above for an even output row, below for
    // an odd one, the edge row itself past the top or bottom.
    let far = || {
        if y.is_multiple_of(2) {
            rows(r.saturating_sub(1))
        } else {
            rows((r + 1).min(height - 1))
        }
    };
    match method {
        Method::Full => out[..out_width].copy_from_slice(&rows(r)[..out_width]),
        Method::H2V1Box | Method::H2V2Box => {
            let row = rows(r);
            for (x, o) in out[..out_width].iter_mut().enumerate() {
                *o = row[x / 2];
            }
        }
        Method::H2V1Fancy => h2v1_fancy(&rows(r)[..width], &mut out[..2 * width]),
        Method::H1V2Fancy => {
            let (near, far) = (rows(r), far());
            // +1 towards the row above, +2 towards the row below: libjpeg's biases.
            let bias = if y.is_multiple_of(2) { 1 } else { 2 };
            for (x, o) in out[..out_width].iter_mut().enumerate() {
                *o = ((u32::from(near[x]) * 3 + u32::from(far[x]) + bias) >> 2) as u8;
            }
        }
        Method::H2V2Fancy => h2v2_fancy(&rows(r)[..width], &far()[..width], &mut out[..2 * width]),
    }
}

/// Doubles a row horizontally: each output is 3/4 the nearer input plus 1/4 the further,
/// rounding with +1 for the left and +2 for the right output of each pair; the first and
/// last outputs copy the edge sample. Needs `input.len() > 2` (libjpeg's condition).
pub fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let w = input.len();
    let s = |i: usize| u32::from(input[i]);
    out[0] = input[0];
    out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
    for i in 1..w - 1 {
        let near = s(i) * 3;
        out[2 * i] = ((near + s(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((near + s(i + 1) + 2) >> 2) as u8;
    }
    out[2 * w - 2] = ((s(w - 1) * 3 + s(w - 2) + 1) >> 2) as u8;
    out[2 * w - 1] = input[w - 1];
}

/// Doubles a row both ways: the column sums `3 * near + far` (near: this row, far: the
/// neighbouring row) are kept unrounded, then filtered horizontally as in
/// [`h2v1_fancy`] with 16ths and biases +8 / +7. Needs `near.len() > 2`.
pub fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let w = near.len();
    let col = |i: usize| u32::from(near[i]) * 3 + u32::from(far[i]);
    out[0] = ((col(0) * 4 + 8) >> 4) as u8;
    out[1] = ((col(0) * 3 + col(1) + 7) >> 4) as u8;
    for i in 1..w - 1 {
        let this = col(i) * 3;
        out[2 * i] = ((this + col(i - 1) + 8) >> 4) as u8;
        out[2 * i + 1] = ((this + col(i + 1) + 7) >> 4) as u8;
    }
    out[2 * w - 2] = ((col(w - 1) * 3 + col(w - 2) + 8) >> 4) as u8;
    out[2 * w - 1] = ((col(w - 1) * 4 + 7) >> 4) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2v1_edges_copy_and_interior_rounds_with_alternating_bias() {
        let mut out = [0u8; 8];
        h2v1_fancy(&[10, 20, 30, 41], &mut out);
        // first: copy, (30+20+2)/4 = 13; (60+10+1)/4 = 17, (60+30+2)/4 = 23; ...
        assert_eq!(out, [10, 13, 17, 23, 27, 33, (123 + 30 + 1) / 4, 41]);
        // A flat row stays flat, whatever the bias.
        let mut out = [0u8; 6];
        h2v1_fancy(&[7, 7, 7], &mut out);
        assert_eq!(out, [7; 6]);
    }

    #[test]
    fn h2v2_keeps_the_vertical_sum_unrounded() {
        // near 1, far 2: column sum 5 = 1.25 * 4; flat, so every output is (5*16/4 + bias) >> 4.
        let mut out = [0u8; 6];
        h2v2_fancy(&[1, 1, 1], &[2, 2, 2], &mut out);
        assert_eq!(out, [1; 6]);
        // Each output from the unrounded column sums 3 * near + far.
        let mut out = [0u8; 6];
        h2v2_fancy(&[10, 11, 12], &[13, 13, 13], &mut out);
        let col = [43u32, 46, 49];
        let want = [
            (col[0] * 4 + 8) >> 4,
            (col[0] * 3 + col[1] + 7) >> 4,
            (col[1] * 3 + col[0] + 8) >> 4,
            (col[1] * 3 + col[2] + 7) >> 4,
            (col[2] * 3 + col[1] + 8) >> 4,
            (col[2] * 4 + 7) >> 4,
        ]
        .map(|v| v as u8);
        assert_eq!(out, want);
        assert_eq!(out, [11, 11, 11, 12, 12, 12]);
    }

    fn rows3(y: usize) -> &'static [u8] {
        const R: [[u8; 4]; 3] = [[0, 0, 0, 0], [100, 100, 100, 100], [200, 200, 200, 200]];
        &R[y]
    }

    #[test]
    fn vertical_context_replicates_the_edge_rows() {
        let mut out = [0u8; 4];
        // Output row 0: near row 0, "above" is row 0 itself -> unchanged.
        upsample_row(Method::H1V2Fancy, rows3, 4, 3, 0, 4, &mut out);
        assert_eq!(out, [0; 4]);
        // Output row 1: near row 0, far row 1: (0 + 100 + 2) / 4 = 25.
        upsample_row(Method::H1V2Fancy, rows3, 4, 3, 1, 4, &mut out);
        assert_eq!(out, [25; 4]);
        // Output row 2: near row 1, far row 0: (300 + 0 + 1) / 4 = 75.
        upsample_row(Method::H1V2Fancy, rows3, 4, 3, 2, 4, &mut out);
        assert_eq!(out, [75; 4]);
        // Output row 5: near row 2, "below" is row 2 itself (height 3).
        upsample_row(Method::H1V2Fancy, rows3, 4, 3, 5, 4, &mut out);
        assert_eq!(out, [200; 4]);
        // The same for h2v2, and an odd output width (7 of the 8 upsampled columns).
        let mut out = [0u8; 8];
        upsample_row(Method::H2V2Fancy, rows3, 4, 3, 5, 7, &mut out);
        assert_eq!(out, [200; 8]);
        upsample_row(Method::H2V2Fancy, rows3, 4, 3, 1, 7, &mut out);
        // column sums 100 everywhere: (400 + 8) >> 4 = 25, (300 + 100 + 7) >> 4 = 25.
        assert_eq!(out, [25; 8]);
    }

    #[test]
    fn edge_columns_use_the_real_width_not_the_padded_block() {
        // A stored row padded to 8 with garbage past the real width of 3.
        fn row(_: usize) -> &'static [u8] {
            &[10, 20, 30, 255, 255, 255, 255, 255]
        }
        let mut out = [0u8; 6];
        upsample_row(Method::H2V1Fancy, row, 3, 1, 0, 6, &mut out);
        assert_eq!(out[5], 30, "last column copies the last real sample");
        assert_eq!(out[4], ((30 * 3 + 20 + 1) >> 2) as u8);
        // Width 2 or less: libjpeg doubles the samples instead of filtering.
        assert_eq!(Method::choose(2, 1, 2), Some(Method::H2V1Box));
        assert_eq!(Method::choose(2, 2, 1), Some(Method::H2V2Box));
        assert_eq!(Method::choose(1, 2, 1), Some(Method::H1V2Fancy));
        assert_eq!(Method::choose(4, 1, 100), None);
        let mut out = [0u8; 4];
        upsample_row(Method::H2V1Box, row, 2, 1, 0, 3, &mut out);
        assert_eq!(out[..3], [10, 10, 20]);
    }
}
