//! libjpeg's accurate integer inverse DCT (`jpeg_idct_islow`, the default `JDCT_ISLOW`):
//! the Loeffler-Ligtenberg-Moschytz algorithm in 13-bit fixed point, columns first with
//! 2 extra bits of precision kept between the passes. Every rounding, shortcut and the
//! final range limit are libjpeg's, so the output bytes are too.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// Round-half-up right shift (libjpeg's `DESCALE`), arithmetic on negatives.
#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: it takes the result's low 10 bits (`& RANGE_MASK`)
/// and maps them as `IDCT_range_limit` does: 0..127 -> 128..255, 128..511 -> 255,
/// 512..895 -> 0, 896..1023 -> 0..127. For in-range data that is `clamp(x + 128)`;
/// wildly out-of-range (corrupt) coefficients wrap exactly as libjpeg's table does.
#[inline]
fn range_limit(x: i64) -> u8 {
    let u = ((x & 1023) + 128) & 1023;
    if u < 256 {
        u as u8
    } else if u < 640 {
        255
    } else {
        0
    }
}

/// The even and odd halves shared by both passes: returns the 8 outputs before descaling
/// (`tmp10 +- tmp3`, `tmp11 +- tmp2`, `tmp12 +- tmp1`, `tmp13 +- tmp0` in libjpeg's names).
#[inline]
fn butterfly(x: [i64; 8]) -> [i64; 8] {
    // Even part: inputs 0, 2, 4, 6.
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << CONST_BITS;
    let tmp1 = (x[0] - x[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);

    // Odd part: inputs 7, 5, 3, 1.
    let (mut t0, mut t1, mut t2, mut t3) = (x[7], x[5], x[3], x[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;

    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Inverse-transforms one block of quantised coefficients (natural order) with its
/// quantisation table into 8 rows of 8 samples at `out[row * stride..]`.
///
/// The coefficient and the table entry are both 16-bit in libjpeg (`JCOEF`, and
/// `ISLOW_MULT_TYPE` is `short`, so a 16-bit table entry above 32767 goes negative), and
/// the workspace between the passes is `int`: the casts below reproduce that.
pub fn idct_islow(coef: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    let deq = |i: usize| i64::from(i32::from(coef[i]) * i32::from(quant[i] as i16));

    // Pass 1: columns, results scaled up by 2^PASS1_BITS.
    for c in 0..8 {
        if (1..8).all(|r| coef[r * 8 + c] == 0) {
            // A column with only its DC term is flat: libjpeg skips the arithmetic.
            let dc = (deq(c) << PASS1_BITS) as i32;
            for r in 0..8 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let x = std::array::from_fn(|r| deq(r * 8 + c));
        let y = butterfly(x);
        for r in 0..8 {
            ws[r * 8 + c] = descale(y[r], CONST_BITS - PASS1_BITS) as i32;
        }
    }

    // Pass 2: rows, removing the pass-1 scaling and the DCT's factor of 8.
    const SHIFT: u32 = CONST_BITS + PASS1_BITS + 3;
    for r in 0..8 {
        let w = &ws[r * 8..r * 8 + 8];
        let row = &mut out[r * stride..r * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            row.fill(range_limit(descale(i64::from(w[0]), PASS1_BITS + 3)));
            continue;
        }
        let y = butterfly(std::array::from_fn(|i| i64::from(w[i])));
        for (o, v) in row.iter_mut().zip(y) {
            *o = range_limit(descale(v, SHIFT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(coef: &[i16; 64], quant: &[u16; 64]) -> [u8; 64] {
        let mut out = [0u8; 64];
        idct_islow(coef, quant, &mut out, 8);
        out
    }

    #[test]
    fn dc_only_block_is_flat_at_libjpegs_rounding() {
        let q = [1u16; 64];
        // DC d gives 128 + round(d / 8) (libjpeg: DESCALE(d << 2, 5)).
        for (dc, want) in [
            (0, 128),
            (8, 129),
            (-8, 127),
            (4, 129),
            (-4, 128),
            (-5, 127),
            (1016, 255),
            (2000, 255),
            (-1024, 0),
        ] {
            let mut c = [0i16; 64];
            c[0] = dc;
            assert_eq!(run(&c, &q), [want; 64], "DC {dc}");
        }
        // The quantisation table scales the coefficient.
        let mut c = [0i16; 64];
        c[0] = 3;
        assert_eq!(run(&c, &[16; 64]), [134; 64]);
    }

    #[test]
    fn range_limit_wraps_like_libjpegs_table() {
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(128), 255);
        assert_eq!(range_limit(511), 255);
        assert_eq!(range_limit(512), 0); // wraps: libjpeg's table, not a clamp
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(-129), 0);
        assert_eq!(range_limit(-512), 0);
        assert_eq!(range_limit(-513), 255);
        assert_eq!(range_limit(1024), 128);
    }

    /// A block with AC terms (and a column and rows that take the DC-only shortcuts),
    /// against a line-by-line Python transliteration of libjpeg-turbo's C function.
    #[test]
    fn known_block_matches_libjpeg() {
        let mut c = [0i16; 64];
        c[0] = -40; // DC
        c[1] = 25; // horizontal frequency 1
        c[8] = -12; // vertical frequency 1
        c[9] = 7;
        c[18] = -3;
        c[63] = 2;
        let mut q = [1u16; 64];
        q[0] = 8;
        q[1] = 6;
        q[8] = 6;
        let out = run(&c, &q);
        assert_eq!(out, KNOWN_BLOCK);
    }

    #[rustfmt::skip]
    const KNOWN_BLOCK: [u8; 64] = [
        103, 99, 92, 82, 71, 60, 52, 47,
        105, 101, 93, 83, 72, 62, 54, 50,
        108, 104, 96, 86, 76, 65, 58, 54,
        112, 108, 100, 91, 79, 71, 63, 60,
        117, 112, 105, 94, 85, 75, 69, 65,
        120, 117, 109, 100, 89, 81, 74, 70,
        123, 119, 113, 103, 94, 85, 78, 74,
        124, 121, 114, 106, 96, 87, 80, 76,
    ];
}
