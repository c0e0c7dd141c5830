//! The segments around the entropy-coded data: frame header (SOF), scan header (SOS),
//! quantisation tables (DQT), Huffman tables (DHT), restart interval (DRI), and the two
//! application markers that decide the colour space (JFIF APP0, Adobe APP14).

use super::huffman::HuffTable;
use super::JResult;

pub const SOI: u8 = 0xD8;
pub const EOI: u8 = 0xD9;
pub const SOS: u8 = 0xDA;
pub const DQT: u8 = 0xDB;
pub const DHT: u8 = 0xC4;
pub const DRI: u8 = 0xDD;
pub const APP0: u8 = 0xE0;
pub const APP14: u8 = 0xEE;

/// True for the start-of-frame markers (C0-CF except DHT, JPG and DAC).
pub fn is_sof(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Markers that stand alone, without a length: TEM and RST0-7 (SOI/EOI are handled apart).
pub fn is_parameterless(marker: u8) -> bool {
    marker == 0x01 || (0xD0..=0xD7).contains(&marker)
}

/// The position of the next marker's code byte at or after `pos`, and the code. Like
/// libjpeg's `next_marker`, bytes that are not a marker (garbage, or stuffed `FF 00`
/// left over after a scan) are skipped, and `FF` fill bytes before a code are allowed.
pub fn next_marker(bytes: &[u8], mut pos: usize) -> Option<(usize, u8)> {
    loop {
        while *bytes.get(pos)? != 0xFF {
            pos += 1;
        }
        while *bytes.get(pos)? == 0xFF {
            pos += 1;
        }
        let code = bytes[pos];
        if code != 0 {
            return Some((pos, code));
        }
        pos += 1; // FF 00: stuffed data, not a marker
    }
}

/// The payload of the segment whose marker code is at `code_pos` (its length field
/// counts itself, so the payload is 2 shorter), and the position after it.
pub fn segment(bytes: &[u8], code_pos: usize) -> JResult<(&[u8], usize)> {
    let start = code_pos + 1;
    let len = match bytes.get(start..start + 2) {
        Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
        None => {
            return Err(format!(
                "marker {:#04x}: segment length cut off",
                bytes[code_pos]
            ))
        }
    };
    if len < 2 {
        return Err(format!(
            "marker {:#04x}: segment length {len} is below 2",
            bytes[code_pos]
        ));
    }
    let end = start + len;
    match bytes.get(start + 2..end) {
        Some(p) => Ok((p, end)),
        None => Err(format!(
            "marker {:#04x}: segment of {len} bytes runs past the end of the file",
            bytes[code_pos]
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub id: u8,
    pub h: usize,
    pub v: usize,
    pub quant: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub marker: u8,
    pub precision: u8,
    pub width: u32,
    pub height: u32,
    pub components: Vec<Component>,
}

impl Frame {
    pub fn max_h(&self) -> usize {
        self.components.iter().map(|c| c.h).max().unwrap_or(1)
    }
    pub fn max_v(&self) -> usize {
        self.components.iter().map(|c| c.v).max().unwrap_or(1)
    }
}

/// Parses an SOFn payload. Checks only what any decoder needs (the component count
/// matches the length, sampling factors 1-4, table index 0-3); whether npurt's own
/// decoder takes the frame is decided by the caller.
pub fn parse_sof(marker: u8, p: &[u8]) -> JResult<Frame> {
    if p.len() < 6 {
        return Err(format!("frame header (SOF) of {} bytes, need 6", p.len()));
    }
    let n = usize::from(p[5]);
    if n == 0 {
        return Err("frame header (SOF) declares no components".into());
    }
    // Exact, as in libjpeg: a length that disagrees with the count is a broken header.
    if p.len() != 6 + 3 * n {
        return Err(format!(
            "frame header (SOF) declares {n} components but its {} bytes hold {}",
            p.len(),
            (p.len() - 6) / 3
        ));
    }
    let mut components: Vec<Component> = Vec::with_capacity(n);
    for c in p[6..6 + 3 * n].chunks_exact(3) {
        let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(format!(
                "component {}: sampling factors {h}x{v} (must be 1-4)",
                c[0]
            ));
        }
        if c[2] > 3 {
            return Err(format!(
                "component {}: quantisation table {} (must be 0-3)",
                c[0], c[2]
            ));
        }
        if components.iter().any(|k| k.id == c[0]) {
            return Err(format!("component id {} appears twice in the frame", c[0]));
        }
        components.push(Component {
            id: c[0],
            h,
            v,
            quant: usize::from(c[2]),
        });
    }
    Ok(Frame {
        marker,
        precision: p[0],
        height: u32::from(u16::from_be_bytes([p[1], p[2]])),
        width: u32::from(u16::from_be_bytes([p[3], p[4]])),
        components,
    })
}

/// Stores every table of a DQT segment (8- or 16-bit entries, zigzag order in the file)
/// into `tables` in natural (row-major) order.
pub fn parse_dqt(mut p: &[u8], tables: &mut [Option<[u16; 64]>; 4]) -> JResult<()> {
    while !p.is_empty() {
        let (precision, index) = (p[0] >> 4, usize::from(p[0] & 15));
        if index > 3 {
            return Err(format!("quantisation table index {index} (must be 0-3)"));
        }
        let entry = match precision {
            0 => 1,
            1 => 2,
            _ => {
                return Err(format!(
                    "quantisation table precision {precision} (must be 0 or 1)"
                ))
            }
        };
        let body = p
            .get(1..1 + 64 * entry)
            .ok_or_else(|| format!("quantisation table {index} cut off"))?;
        let mut t = [0u16; 64];
        for (k, &natural) in ZIGZAG_TO_NATURAL[..64].iter().enumerate() {
            t[natural] = if entry == 1 {
                u16::from(body[k])
            } else {
                u16::from_be_bytes([body[2 * k], body[2 * k + 1]])
            };
        }
        tables[index] = Some(t);
        p = &p[1 + 64 * entry..];
    }
    Ok(())
}

/// Stores every table of a DHT segment into `dc` / `ac`.
pub fn parse_dht(
    mut p: &[u8],
    dc: &mut [Option<HuffTable>; 4],
    ac: &mut [Option<HuffTable>; 4],
) -> JResult<()> {
    while !p.is_empty() {
        if p.len() < 17 {
            return Err("Huffman table (DHT) cut off in its code counts".into());
        }
        let (class, index) = (p[0] >> 4, usize::from(p[0] & 15));
        if class > 1 || index > 3 {
            return Err(format!(
                "Huffman table class {class} index {index} (must be 0-1, 0-3)"
            ));
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&p[1..17]);
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 {
            return Err(format!("Huffman table with {total} codes (at most 256)"));
        }
        let values = p
            .get(17..17 + total)
            .ok_or_else(|| "Huffman table (DHT) cut off in its values".to_string())?;
        let table = HuffTable::new(&counts, values)?;
        if class == 0 {
            dc[index] = Some(table);
        } else {
            ac[index] = Some(table);
        }
        p = &p[17 + total..];
    }
    Ok(())
}

pub fn parse_dri(p: &[u8]) -> JResult<u16> {
    match p {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(format!(
            "restart interval (DRI) segment of {} bytes, need 2",
            p.len()
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanHeader {
    /// Per scan component: index into the frame's components, DC table, AC table.
    pub components: Vec<(usize, usize, usize)>,
    pub ss: u8,
    pub se: u8,
    pub ah: u8,
    pub al: u8,
}

pub fn parse_sos(p: &[u8], frame: &Frame) -> JResult<ScanHeader> {
    let n = usize::from(*p.first().ok_or("empty scan header (SOS)")?);
    if n == 0 || n > 4 {
        return Err(format!("scan with {n} components (must be 1-4)"));
    }
    if p.len() != 1 + 2 * n + 3 {
        return Err(format!(
            "scan header (SOS) of {} bytes for {n} components",
            p.len()
        ));
    }
    let mut components = Vec::with_capacity(n);
    for c in p[1..1 + 2 * n].chunks_exact(2) {
        let index = frame
            .components
            .iter()
            .position(|k| k.id == c[0])
            .ok_or_else(|| format!("scan names component id {}, which the frame lacks", c[0]))?;
        if components.iter().any(|&(i, _, _)| i == index) {
            return Err(format!("scan names component id {} twice", c[0]));
        }
        let (dc, ac) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if dc > 3 || ac > 3 {
            return Err(format!(
                "scan component {}: Huffman tables {dc}/{ac} (must be 0-3)",
                c[0]
            ));
        }
        components.push((index, dc, ac));
    }
    let t = &p[1 + 2 * n..];
    Ok(ScanHeader {
        components,
        ss: t[0],
        se: t[1],
        ah: t[2] >> 4,
        al: t[2] & 15,
    })
}

/// JFIF APP0 ("JFIF\0" and at least 14 bytes, as libjpeg requires).
pub fn is_jfif(p: &[u8]) -> bool {
    p.len() >= 14 && p.starts_with(b"JFIF\0")
}

/// The transform flag of an Adobe APP14 segment ("Adobe" and at least 12 bytes).
pub fn adobe_transform(p: &[u8]) -> Option<u8> {
    (p.len() >= 12 && p.starts_with(b"Adobe")).then(|| p[11])
}

/// Zigzag position -> natural (row-major) position, with 16 extra entries of 63 so a
/// run that overshoots the block lands on the last coefficient as in libjpeg (its
/// `jpeg_natural_order` is padded the same way) instead of outside the block.
pub const ZIGZAG_TO_NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];
