//! Huffman tables and the entropy-coded bit stream of a baseline scan: byte-stuffing,
//! the marker that ends a scan, and one 8x8 block's DC difference and AC run/levels.

use super::markers::ZIGZAG_TO_NATURAL;
use super::JResult;

/// Codes up to this many bits are found with one table look-up; longer ones (rare: the
/// standard tables' longest common codes are 9 bits) by the canonical-code limits.
const LOOKUP_BITS: u32 = 9;

#[derive(Debug, Clone)]
pub struct HuffTable {
    /// Top `LOOKUP_BITS` bits -> (code length, symbol); length 0 means "longer code".
    lookup: Vec<(u8, u8)>,
    /// For code length l (1-16): the largest code of that length, or -1 if none.
    max_code: [i32; 17],
    /// For code length l: index into `values` of the first code minus that code.
    offset: [i32; 17],
    values: Vec<u8>,
    /// The largest symbol: a DC table may not hold one above 15 (libjpeg refuses it too).
    pub max_symbol: u8,
}

impl HuffTable {
    /// Builds the canonical code (JPEG Annex C) from the 16 code counts and the symbols,
    /// refusing counts that overflow a code length, as libjpeg does.
    pub fn new(counts: &[u8; 16], values: &[u8]) -> JResult<HuffTable> {
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKUP_BITS];
        let mut code: i32 = 0;
        let mut k: usize = 0;
        for len in 1..=16u32 {
            let n = i32::from(counts[len as usize - 1]);
            if n > 0 {
                offset[len as usize] = k as i32 - code;
                for _ in 0..n {
                    // Every code of this length must fit in `len` bits.
                    if code >= 1 << len {
                        return Err("bad Huffman table: more codes than their lengths allow".into());
                    }
                    if len <= LOOKUP_BITS {
                        let shift = LOOKUP_BITS - len;
                        let first = (code as usize) << shift;
                        for e in &mut lookup[first..first + (1 << shift)] {
                            *e = (len as u8, values[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                max_code[len as usize] = code - 1;
            }
            code <<= 1;
        }
        Ok(HuffTable {
            lookup,
            max_code,
            offset,
            values: values.to_vec(),
            max_symbol: values.iter().copied().max().unwrap_or(0),
        })
    }
}

/// Reads the entropy-coded segment MSB first. At a marker (or the end of the data) it
/// feeds zero bits, as libjpeg does, but counts them: a block that used any of them ran
/// past the scan's data, which is an error here.
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to read; at a marker, the position of its `FF`.
    pub pos: usize,
    acc: u64,
    nbits: u32,
    /// Zero bits fed after the data ended, at the bottom of `acc`.
    fake: u32,
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            fake: 0,
            at_marker: false,
        }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if self.at_marker {
                self.fake += 8;
            } else {
                match self.data.get(self.pos) {
                    None => {
                        self.at_marker = true;
                        self.fake += 8;
                    }
                    Some(0xFF) => {
                        // FF 00 is a data FF; FF FF.. are fill bytes before a marker.
                        let mut p = self.pos + 1;
                        while self.data.get(p) == Some(&0xFF) {
                            p += 1;
                        }
                        if self.data.get(p) == Some(&0) {
                            byte = 0xFF;
                            self.pos = p + 1;
                        } else {
                            self.at_marker = true;
                            self.fake += 8;
                            self.pos = p - 1;
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn ensure(&mut self, n: u32) {
        if self.nbits < n {
            self.fill();
        }
    }

    /// `n` (1-16) bits as an unsigned number.
    #[inline]
    fn bits(&mut self, n: u32) -> i32 {
        self.ensure(n);
        let v = (self.acc >> (64 - n)) as i32;
        self.acc <<= n;
        self.nbits -= n;
        v
    }

    /// True once a bit past the end of the scan's data has been consumed.
    pub fn overran(&self) -> bool {
        self.nbits < self.fake
    }

    /// Drops the buffered bits, for a restart marker: the next scan data starts on a byte.
    pub fn reset(&mut self) {
        self.acc = 0;
        self.nbits = 0;
        self.fake = 0;
        self.at_marker = false;
    }

    #[inline]
    fn decode(&mut self, t: &HuffTable) -> JResult<u8> {
        self.ensure(16);
        let (len, sym) = t.lookup[(self.acc >> (64 - LOOKUP_BITS)) as usize];
        if len != 0 {
            self.acc <<= len;
            self.nbits -= u32::from(len);
            return Ok(sym);
        }
        let top16 = (self.acc >> 48) as i32;
        for len in LOOKUP_BITS + 1..=16 {
            let code = top16 >> (16 - len);
            if code <= t.max_code[len as usize] {
                self.acc <<= len;
                self.nbits -= len;
                let i = (t.offset[len as usize] + code) as usize;
                return t
                    .values
                    .get(i)
                    .copied()
                    .ok_or_else(|| "bad Huffman table".to_string());
            }
        }
        Err("bad Huffman code in the scan data".into())
    }

    /// Decodes one block's coefficients (zigzag -> natural order) into `block`, updating
    /// the component's DC predictor. Arithmetic wraps where libjpeg's C integers would.
    pub fn decode_block(
        &mut self,
        dc: &HuffTable,
        ac: &HuffTable,
        pred: &mut i32,
        block: &mut [i16; 64],
    ) -> JResult<()> {
        *block = [0; 64];
        let s = u32::from(self.decode(dc)?);
        let diff = if s == 0 { 0 } else { extend(self.bits(s), s) };
        *pred = pred.wrapping_add(diff);
        block[0] = *pred as i16;
        let mut k = 1usize;
        while k < 64 {
            let rs = self.decode(ac)?;
            let (run, s) = (usize::from(rs >> 4), u32::from(rs & 15));
            if s != 0 {
                k += run;
                block[ZIGZAG_TO_NATURAL[k]] = extend(self.bits(s), s) as i16;
            } else if run == 15 {
                k += 15;
            } else {
                break; // end of block
            }
            k += 1;
        }
        if self.overran() {
            return Err("the scan data ends before the last block".into());
        }
        Ok(())
    }
}

/// JPEG's sign extension of an `s`-bit magnitude category value (F.2.2.1 EXTEND).
#[inline]
fn extend(v: i32, s: u32) -> i32 {
    if v < 1 << (s - 1) {
        v + (-1 << s) + 1
    } else {
        v
    }
}
