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
/// itself: `Ok(None)` leaves it to the fallback decoder exactly as before this decoder
/// existed (not a baseline frame, or segments too broken to find one). A baseline frame
/// header that is itself broken is an error here.
pub fn classify(bytes: &[u8]) -> JResult<Option<Supported>> {
    if bytes.get(..2) != Some(&[0xFF, markers::SOI][..]) {
        return Ok(None);
    }
    let (mut pos, mut frame, mut jfif, mut adobe) = (2, None, false, None);
    while let Some((at, code)) = markers::next_marker(bytes, pos) {
        if code == markers::SOS || code == markers::EOI {
            break;
        }
        if markers::is_parameterless(code) || code == markers::SOI {
            pos = at + 1;
            continue;
        }
        let Ok((payload, end)) = markers::segment(bytes, at) else {
            return Ok(None);
        };
        match code {
            markers::APP0 => jfif |= markers::is_jfif(payload),
            markers::APP14 => adobe = adobe.or(markers::adobe_transform(payload)),
            // The first frame header decides (a second one is an error later on).
            c if markers::is_sof(c) && frame.is_none() => {
                if !matches!(c, 0xC0 | 0xC1) {
                    return Ok(None); // progressive, lossless or arithmetic-coded
                }
                frame = Some(markers::parse_sof(c, payload)?);
            }
            _ => {}
        }
        pos = end;
    }
    let Some(frame) = frame else {
        return Ok(None);
    };
    if frame.precision != 8 {
        return Ok(None); // 12-bit
    }
    match frame.components.len() {
        1 => {}
        3 => {
            // libjpeg's colour-space guess (jdapimin.c): JFIF means YCbCr; else an Adobe
            // transform of 0, or ids 'R','G','B', mean the components are RGB.
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            let rgb = !jfif && (adobe == Some(0) || (adobe.is_none() && ids == b"RGB"));
            if rgb {
                return Ok(None);
            }
        }
        _ => return Ok(None), // CMYK / YCCK, or 2 components
    }
    let (max_h, max_v) = (frame.max_h(), frame.max_v());
    let mut methods = Vec::new();
    for c in &frame.components {
        if max_h % c.h != 0 || max_v % c.v != 0 {
            return Ok(None);
        }
        let width = div_ceil(frame.width as usize * c.h, max_h);
        let Some(m) = Method::choose(max_h / c.h, max_v / c.v, width) else {
            return Ok(None);
        };
        methods.push(m);
    }
    Ok(Some(Supported { frame, methods }))
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
            format!(
                "component {} uses quantisation table {}, which is not defined",
                c.id, c.quant
            )
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
        (
            planes[parts[0].plane].blocks_w,
            planes[parts[0].plane].blocks_h,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4:2:0 baseline JPEG (the `image` crate's encoder) of a 21x13 gradient.
    fn sample_jpeg() -> Vec<u8> {
        let img = ::image::RgbImage::from_fn(21, 13, |x, y| {
            ::image::Rgb([(x * 12) as u8, (y * 19) as u8, ((x + y) * 7) as u8])
        });
        let mut out = Vec::new();
        ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn decode_all(bytes: &[u8]) -> JResult<Vec<u8>> {
        let s = classify(bytes)?.ok_or("not taken by npurt's decoder")?;
        decode(bytes, &s)
    }

    /// Position of the first marker `code` (its `FF`).
    fn find(bytes: &[u8], code: u8) -> usize {
        bytes
            .windows(2)
            .position(|w| w == [0xFF, code])
            .unwrap_or_else(|| panic!("no marker {code:#04x}"))
    }

    fn without_segments(bytes: &[u8], code: u8) -> Vec<u8> {
        let mut out = bytes.to_vec();
        while let Some(p) = out.windows(2).position(|w| w == [0xFF, code]) {
            let len = usize::from(u16::from_be_bytes([out[p + 2], out[p + 3]]));
            out.drain(p..p + 2 + len);
        }
        out
    }

    fn assert_err(bytes: &[u8], what: &str, want: &str) {
        match decode_all(bytes) {
            Ok(_) => panic!("{what}: decoded without an error"),
            Err(e) => assert!(e.contains(want), "{what}: error {e:?} lacks {want:?}"),
        }
    }

    #[test]
    fn the_sample_decodes() {
        let rgb = decode_all(&sample_jpeg()).unwrap();
        assert_eq!(rgb.len(), 21 * 13 * 3);
    }

    #[test]
    fn truncated_scan_is_an_error() {
        let j = sample_jpeg();
        let sos = find(&j, markers::SOS);
        let mut cut = j[..sos + 20].to_vec();
        cut.extend_from_slice(&[0xFF, markers::EOI]);
        assert_err(&cut, "scan cut short", "ends");
    }

    #[test]
    fn bad_huffman_code_is_an_error() {
        let j = sample_jpeg();
        let sos = find(&j, markers::SOS);
        let data = sos + 2 + usize::from(u16::from_be_bytes([j[sos + 2], j[sos + 3]]));
        // All one bits: the all-ones code is never assigned in a JPEG Huffman table.
        let mut bad = j[..data].to_vec();
        for _ in 0..64 {
            bad.extend_from_slice(&[0xFF, 0x00]);
        }
        bad.extend_from_slice(&[0xFF, markers::EOI]);
        assert_err(&bad, "all-ones scan data", "bad Huffman code");
    }

    #[test]
    fn missing_tables_are_errors() {
        let j = sample_jpeg();
        assert_err(
            &without_segments(&j, markers::DHT),
            "no DHT",
            "Huffman table",
        );
        assert_err(
            &without_segments(&j, markers::DQT),
            "no DQT",
            "quantisation table",
        );
    }

    #[test]
    fn dqt_index_out_of_range_is_an_error() {
        let mut j = sample_jpeg();
        let dqt = find(&j, markers::DQT);
        j[dqt + 4] = 0x05; // 8-bit table number 5
        assert_err(&j, "DQT index 5", "index 5");
        // A component naming quantisation table 7 in the frame header.
        let mut j = sample_jpeg();
        let sof = find(&j, 0xC0);
        j[sof + 12] = 7;
        assert_err(&j, "SOF table 7", "quantisation table 7");
    }

    #[test]
    fn bad_frame_headers_are_errors() {
        let j = sample_jpeg();
        let sof = find(&j, 0xC0);
        // Zero width.
        let mut z = j.clone();
        z[sof + 7..sof + 9].copy_from_slice(&[0, 0]);
        assert_err(&z, "zero width", "zero-sized");
        // Claims 4 components; the segment holds 3.
        let mut more = j.clone();
        more[sof + 9] = 4;
        assert_err(&more, "4 components claimed", "declares 4 components");
        // Sampling factor 0.
        let mut s0 = j.clone();
        s0[sof + 11] = 0x01;
        assert_err(&s0, "sampling 0x1", "sampling factors");
    }

    #[test]
    fn scan_naming_an_unknown_component_is_an_error() {
        let mut j = sample_jpeg();
        let sos = find(&j, markers::SOS);
        j[sos + 5] = 9; // first scan component id
        assert_err(&j, "scan component 9", "component id 9");
    }

    #[test]
    fn wrong_restart_marker_is_an_error() {
        // DRI of 1 MCU, but the scan holds no RST markers.
        let j = sample_jpeg();
        let sos = find(&j, markers::SOS);
        let mut r = j[..sos].to_vec();
        r.extend_from_slice(&[0xFF, markers::DRI, 0, 4, 0, 1]);
        r.extend_from_slice(&j[sos..]);
        assert!(decode_all(&r).is_err());
    }

    /// Every prefix and thousands of byte flips: an error or an image, never a panic.
    #[test]
    fn mangled_files_never_panic() {
        let j = sample_jpeg();
        for n in 0..j.len() {
            let _ = decode_all(&j[..n]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut m = j.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            if let Ok(Some(s)) = classify(&m) {
                let (w, h) = s.size();
                if u64::from(w) * u64::from(h) <= 1 << 20 {
                    let _ = decode(&m, &s);
                }
            }
        }
    }
}
