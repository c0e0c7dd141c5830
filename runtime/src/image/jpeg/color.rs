//! YCbCr -> RGB as libjpeg's jdcolor.c does it: per-value tables in 16-bit fixed point
//! (`SCALEBITS` 16), each rounded where libjpeg rounds, arithmetic right shifts, and a
//! clamp to 0..255 at the end.

const SCALEBITS: u32 = 16;
const ONE_HALF: i64 = 1 << (SCALEBITS - 1);

/// libjpeg's `FIX(x)`: `x` in 16-bit fixed point, rounded.
const fn fix(x: f64) -> i64 {
    (x * (1u32 << SCALEBITS) as f64 + 0.5) as i64
}

pub struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    /// Kept at full precision, summed, then shifted once (with `ONE_HALF` folded into
    /// `cb_g`), as libjpeg does for green.
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    pub fn new() -> Self {
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    #[inline]
    pub fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let y = i32::from(y);
        let (cb, cr) = (usize::from(cb), usize::from(cr));
        let g = ((self.cb_g[cb] + self.cr_g[cr]) >> SCALEBITS) as i32;
        [
            clamp(y + self.cr_r[cr]),
            clamp(y + g),
            clamp(y + self.cb_b[cb]),
        ]
    }
}

#[inline]
fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_constants_are_libjpegs() {
        assert_eq!(fix(1.40200), 91881);
        assert_eq!(fix(1.77200), 116130);
        assert_eq!(fix(0.71414), 46802);
        assert_eq!(fix(0.34414), 22554);
    }

    #[test]
    fn table_spot_values() {
        let t = YccTables::new();
        // Cr -> R: nearest integer to 1.402 * (i - 128).
        assert_eq!(t.cr_r[0], -179);
        assert_eq!(t.cr_r[128], 0);
        assert_eq!(t.cr_r[255], 178);
        assert_eq!(t.cb_b[0], -227);
        assert_eq!(t.cb_b[255], 225);
        // Neutral chroma leaves grey alone.
        assert_eq!(t.rgb(77, 128, 128), [77, 77, 77]);
        // Pure-ish colours, clamped.
        assert_eq!(t.rgb(76, 85, 255), [254, 0, 0]);
        assert_eq!(t.rgb(255, 0, 0), [76, 255, 28]);
        assert_eq!(t.rgb(0, 255, 255), [178, 0, 225]);
        // Green uses one shift of the summed products: -0.34414*27 - 0.71414*(-40) = 19.27.
        assert_eq!(t.rgb(100, 155, 88), [44, 119, 148]);
    }
}
