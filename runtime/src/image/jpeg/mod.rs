//! npurt's own decoder for baseline sequential Huffman JPEG (SOF0/SOF1, 8-bit, grey or
//! YCbCr with 4:4:4, 4:2:2, 4:2:0 or 4:4:0 chroma), bit-identical to libjpeg-turbo's
//! default decode (what Pillow, and so the golden pipeline, uses): its accurate integer
//! IDCT, its fancy chroma upsampling and its YCbCr tables. The `image` crate's JPEG
//! decoder (zune-jpeg) rounds differently in all three, a few levels off libjpeg.
//!
//! [`classify`] says whether a file is one of these before anything is decoded; other
//! JPEGs (progressive, arithmetic-coded, 12-bit, lossless, CMYK, RGB-coded, other
//! sampling) go to the `image` crate as before.

mod color;
mod huffman;
mod idct;
mod markers;
mod upsample;

use huffman::{BitReader, HuffTable};
use markers::{Frame, ScanHeader};
use upsample::Method;

/// Errors inside the decoder are plain reasons; [`decode`] adds the file name.
type JResult<T> = Result<T, String>;

/// What [`classify`] found: the frame, if npurt's decoder takes the file.
pub struct Supported {
    frame: Frame,
    methods: Vec<Method>,
}

/// Walks the segments up to the first scan and decides whether npurt decodes the file
/// itself. Anything it cannot read or does not take returns `None`, leaving the file to
/// the fallback decoder exactly as before this decoder existed.
pub fn classify(bytes: &[u8]) -> Option<Supported> {
    if bytes.get(..2)? != [0xFF, markers::SOI] {
        return None;
    }
    let (mut pos, mut frame, mut jfif, mut adobe) = (2, None, false, None);
    loop {
        let (at, code) = markers::next_marker(bytes, pos)?;
        if code == markers::SOS || code == markers::EOI {
            break;
        }
        if markers::is_parameterless(code) || code == markers::SOI {
            pos = at + 1;
            continue;
        }
        let (payload, end) = markers::segment(bytes, at).ok()?;
        match code {
            markers::APP0 => jfif |= markers::is_jfif(payload),
            markers::APP14 => adobe = adobe.or(markers::adobe_transform(payload)),
            c if markers::is_sof(c) => {
                // The first frame header decides (a second one is an error later on).
                if frame.is_none() {
                    frame = Some(markers::parse_sof(c, payload).ok()?);
                }
            }
            _ => {}
        }
        pos = end;
    }
    let frame = frame?;
    if !matches!(frame.marker, 0xC0 | 0xC1) || frame.precision != 8 {
        return None; // progressive, lossless, arithmetic, or 12-bit
    }
    match frame.components.len() {
        1 => {}
        3 => {
            // libjpeg's colour-space guess (jdapimin.c): JFIF means YCbCr; else an Adobe
            // transform of 0, or ids 'R','G','B', mean the components are RGB.
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            let rgb = !jfif && (adobe == Some(0) || (adobe.is_none() && ids == b"RGB"));
            if rgb {
                return None;
            }
        }
        _ => return None,
    }
    let (max_h, max_v) = (frame.max_h(), frame.max_v());
    let mut methods = Vec::new();
    for c in &frame.components {
        if max_h % c.h != 0 || max_v % c.v != 0 {
            return None;
        }
        let width = div_ceil(frame.width as usize * c.h, max_h);
        methods.push(Method::choose(max_h / c.h, max_v / c.v, width)?);
    }
    Some(Supported { frame, methods })
}

impl Supported {
    /// The frame's stored size, to check against the limits before decoding.
    pub fn size(&self) -> (u32, u32) {
        (self.frame.width, self.frame.height)
    }
}

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// One component's decoded samples, stored in whole blocks.
struct Plane {
    data: Vec<u8>,
    stride: usize,
    /// Real size (before block padding): libjpeg's `downsampled_width/height`.
    width: usize,
    height: usize,
    /// Blocks per row and column when the component is scanned on its own.
    blocks_w: usize,
    blocks_h: usize,
    done: bool,
}

impl Plane {
    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.stride..(r + 1) * self.stride]
    }
}

/// Decodes a file [`classify`] accepted into interleaved RGB8 (grey replicated),
/// `width * height * 3` bytes. Errors are reasons for a corrupt-file message.
pub fn decode(bytes: &[u8], s: &Supported) -> JResult<Vec<u8>> {
    let frame = &s.frame;
    let (w, h) = (frame.width as usize, frame.height as usize);
    if w == 0 || h == 0 {
        return Err(format!("zero-sized frame ({w}x{h})"));
    }
    let (max_h, max_v) = (frame.max_h(), frame.max_v());
    let (mcus_x, mcus_y) = (div_ceil(w, 8 * max_h), div_ceil(h, 8 * max_v));
    let mut planes: Vec<Plane> = frame
        .components
        .iter()
        .map(|c| {
            // Big enough for the interleaved layout, which covers the single one too.
            let stride = mcus_x * c.h * 8;
            let rows = mcus_y * c.v * 8;
            let (width, height) = (div_ceil(w * c.h, max_h), div_ceil(h * c.v, max_v));
            Plane {
                data: vec![0; stride * rows],
                stride,
                width,
                height,
                blocks_w: div_ceil(width, 8),
                blocks_h: div_ceil(height, 8),
                done: false,
            }
        })
        .collect();

    let mut quant: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<HuffTable>; 4] = Default::default();
    let mut ac: [Option<HuffTable>; 4] = Default::default();
    let mut restart_interval = 0u16;
    let mut seen_frame = false;
    let mut pos = 2;
    loop {
        let Some((at, code)) = markers::next_marker(bytes, pos) else {
            return Err("the file ends before the end-of-image marker".into());
        };
        if code == markers::EOI {
            break;
        }
        if markers::is_parameterless(code) {
            pos = at + 1;
            continue;
        }
        if code == markers::SOI {
            return Err("a second start-of-image marker".into());
        }
        let (payload, end) = markers::segment(bytes, at)?;
        match code {
            markers::DQT => markers::parse_dqt(payload, &mut quant)?,
            markers::DHT => markers::parse_dht(payload, &mut dc, &mut ac)?,
            markers::DRI => restart_interval = markers::parse_dri(payload)?,
            c if markers::is_sof(c) => {
                if seen_frame {
                    return Err("a second frame header (SOF)".into());
                }
                // `classify` parsed the same bytes; the frame it returned is this one.
                seen_frame = true;
            }
            markers::SOS => {
                if !seen_frame {
                    return Err("a scan before the frame header".into());
                }
                let scan = markers::parse_sos(payload, frame)?;
                pos = decode_scan(
                    bytes,
                    end,
                    frame,
                    &scan,
                    &quant,
                    &dc,
                    &ac,
                    restart_interval,
                    (mcus_x, mcus_y),
                    &mut planes,
                )?;
                if planes.iter().all(|p| p.done) {
                    // A sequential image is complete once every component has had its
                    // scan; libjpeg outputs it then too.
                    break;
                }
                continue;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(i) = planes.iter().position(|p| !p.done) {
        return Err(format!(
            "component {} has no scan before the end of the image",
            frame.components[i].id
        ));
    }
    Ok(to_rgb(w, h, &planes, &s.methods))
}

/// Decodes one scan into the planes of its components; returns where the scan's data
/// ends (a marker, or the end of the file).
#[allow(clippy::too_many_arguments)]
fn decode_scan(
    bytes: &[u8],
    start: usize,
    frame: &Frame,
    scan: &ScanHeader,
    quant: &[Option<[u16; 64]>; 4],
    dc: &[Option<HuffTable>; 4],
    ac: &[Option<HuffTable>; 4],
    restart_interval: u16,
    (mcus_x, mcus_y): (usize, usize),
    planes: &mut [Plane],
) -> JResult<usize> {
    if (scan.ss, scan.se, scan.ah, scan.al) != (0, 63, 0, 0) {
        return Err(format!(
            "sequential scan with spectral selection {}..{} and approximation {}/{} (must be 0..63, 0/0)",
            scan.ss, scan.se, scan.ah, scan.al
        ));
    }
    // Everything the scan needs, looked up (and checked) once.
    struct Part<'t> {
        plane: usize,
        dc: &'t HuffTable,
        ac: &'t HuffTable,
        quant: &'t [u16; 64],
        h: usize,
        v: usize,
        pred: i32,
    }
    let mut parts = Vec::with_capacity(scan.components.len());
    for &(ci, dci, aci) in &scan.components {
        let c = &frame.components[ci];
        if planes[ci].done {
            return Err(format!("component {} is in two scans", c.id));
        }
        let dc = dc[dci]
            .as_ref()
            .ok_or_else(|| format!("scan uses DC Huffman table {dci}, which is not defined"))?;
        if dc.max_symbol > 15 {
            return Err(format!("DC Huffman table {dci} has a symbol above 15"));
        }
        let ac = ac[aci]
            .as_ref()
            .ok_or_else(|| format!("scan uses AC Huffman table {aci}, which is not defined"))?;
        let quant = quant[c.quant].as_ref().ok_or_else(|| {
            format!("component {} uses quantisation table {}, which is not defined", c.id, c.quant)
        })?;
        parts.push(Part {
            plane: ci,
            dc,
            ac,
            quant,
            h: c.h,
            v: c.v,
            pred: 0,
        });
    }

    // A single-component scan is not interleaved: one block per MCU, covering only the
    // component's own blocks; otherwise an MCU holds h x v blocks of each component.
    let single = parts.len() == 1;
    let (mx, my) = if single {
        (planes[parts[0].plane].blocks_w, planes[parts[0].plane].blocks_h)
    } else {
        (mcus_x, mcus_y)
    };
    let total = mx * my;
    let interval = usize::from(restart_interval);
    let mut reader = BitReader::new(bytes, start);
    let mut block = [0i16; 64];
    let mut next_rst = 0u8;
    for n in 0..total {
        if interval > 0 && n > 0 && n % interval == 0 {
            // Restart: the data realigns to a byte, an RSTn marker follows, and every
            // DC predictor starts again from 0.
            reader.reset();
            match markers::next_marker(bytes, reader.pos) {
                Some((at, code)) if code == 0xD0 + next_rst => reader.pos = at + 1,
                Some((_, code)) => {
                    return Err(format!(
                        "expected restart marker RST{next_rst}, found marker {code:#04x}"
                    ))
                }
                None => return Err("the scan data ends before its last restart interval".into()),
            }
            next_rst = (next_rst + 1) % 8;
            for p in &mut parts {
                p.pred = 0;
            }
        }
        let (bx, by) = (n % mx, n / mx);
        for p in &mut parts {
            let plane = &mut planes[p.plane];
            let (bh, bv) = if single { (1, 1) } else { (p.h, p.v) };
            for v in 0..bv {
                for u in 0..bh {
                    reader.decode_block(p.dc, p.ac, &mut p.pred, &mut block)?;
                    let (col, row) = ((bx * bh + u) * 8, (by * bv + v) * 8);
                    let at = row * plane.stride + col;
                    idct::idct_islow(&block, p.quant, &mut plane.data[at..], plane.stride);
                }
            }
        }
    }
    for p in &parts {
        planes[p.plane].done = true;
    }
    // Resume the marker search where the entropy data stopped.
    Ok(reader.pos)
}

/// Upsamples the chroma and converts each output row to RGB.
fn to_rgb(w: usize, h: usize, planes: &[Plane], methods: &[Method]) -> Vec<u8> {
    let mut out = vec![0u8; w * h * 3];
    if planes.len() == 1 {
        let p = &planes[0];
        for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
            for (px, &g) in row.chunks_exact_mut(3).zip(&p.row(y)[..w]) {
                px.fill(g);
            }
        }
        return out;
    }
    let tables = color::YccTables::new();
    let buf_len = planes.iter().map(|p| 2 * p.width).max().unwrap_or(0).max(w);
    let mut rows = [vec![0u8; buf_len], vec![0u8; buf_len], vec![0u8; buf_len]];
    for (y, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        for ((p, &m), buf) in planes.iter().zip(methods).zip(&mut rows) {
            upsample::upsample_row(m, |r| p.row(r), p.width, p.height, y, w, buf);
        }
        let [ys, cbs, crs] = &rows;
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&tables.rgb(ys[x], cbs[x], crs[x]));
        }
    }
    out
}
