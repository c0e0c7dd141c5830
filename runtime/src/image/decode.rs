//! Decoding PNG, JPEG and WebP into RGB8, with EXIF orientation applied: baseline JPEGs
//! by npurt's own libjpeg-exact decoder (`super::jpeg`), everything else by the `image`
//! crate. The declared dimensions are checked against [`DecodeLimits`] before any pixel
//! buffer exists, so a hostile header (100000x100000) costs a few bytes of reading, not
//! 30 GB; the `image` crate's own allocation limit is set too, as a second fence.

use super::jpeg;
use super::ImageError;
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::{Cursor, Read};
use std::path::Path;

/// The default pixel limit: 64 Mi pixels admits a 50-megapixel phone photo (8160x6120)
/// with room to spare, and bounds a decode at ~0.5 GiB even for 16-bit RGBA.
pub const DEFAULT_MAX_PIXELS: u64 = 64 << 20;
/// The default file-size limit: far above any compressed 64 Mi pixel photo.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;

/// What a decode may cost. Checked against the header before the pixels are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted.
    pub max_pixels: u64,
    /// Largest file accepted (the whole file is read into memory to decode it).
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl DecodeLimits {
    /// The `image` crate's limits matching ours: no dimension limits there (we check the
    /// dimensions ourselves, to say which and by how much), but an allocation cap of
    /// 8 bytes a pixel (16-bit RGBA, the widest these formats decode to) plus slack.
    fn for_image_crate(&self) -> ::image::Limits {
        let mut l = ::image::Limits::no_limits();
        l.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(16 << 20));
        l
    }
}

/// The container formats npurt decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Png,
    Jpeg,
    WebP,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Png => "png",
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::WebP => "webp",
        }
    }
    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::WebP => ImageFormat::WebP,
        }
    }
}

/// What the header says, without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: SourceFormat,
    /// Size as displayed, i.e. after the EXIF orientation (what the decoder returns).
    pub width: u32,
    pub height: u32,
    /// Size as stored in the file (swapped against `width`/`height` for 90/270 degrees).
    pub stored_width: u32,
    pub stored_height: u32,
    /// EXIF orientation tag, 1 (none) to 8.
    pub exif_orientation: u8,
}

/// Reads only as much of the file as the header needs (64 KiB first, more only if the
/// header is longer, e.g. a large embedded ICC profile) and returns format, size and
/// orientation. The limits are checked as for a decode.
pub fn read_header(path: &Path, limits: &DecodeLimits) -> Result<ImageHeader, ImageError> {
    let name = path.display().to_string();
    let io = |error| ImageError::Io {
        path: name.clone(),
        error,
    };
    let file_len = std::fs::metadata(path).map_err(io)?.len();
    if file_len > limits.max_file_bytes {
        return Err(ImageError::FileTooLarge {
            path: name,
            bytes: file_len,
            limit: limits.max_file_bytes,
        });
    }
    let mut prefix_len: u64 = 64 << 10;
    loop {
        let complete = prefix_len >= file_len;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(prefix_len.min(file_len)).read_to_end(&mut bytes))
            .map_err(io)?;
        match header_from_bytes(&bytes, &name, limits) {
            Ok(h) => return Ok(h),
            // A prefix can end inside the header: only the whole file's error is final.
            // Errors about the image itself (size, format) are final at once.
            Err(ImageError::Corrupt { .. } | ImageError::Unsupported { .. }) if !complete => {
                prefix_len = prefix_len.saturating_mul(16);
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`read_header`] on bytes in memory; `name` is used in error messages.
pub fn header_from_bytes(
    bytes: &[u8],
    name: &str,
    limits: &DecodeLimits,
) -> Result<ImageHeader, ImageError> {
    let format = sniff_format(bytes, name)?;
    let mut decoder = open_decoder(bytes, name, format, limits)?;
    let (stored_width, stored_height) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_axes(orientation) {
        (stored_height, stored_width)
    } else {
        (stored_width, stored_height)
    };
    Ok(ImageHeader {
        format,
        width,
        height,
        stored_width,
        stored_height,
        exif_orientation: orientation.to_exif(),
    })
}

/// Decodes a PNG, JPEG or WebP file to RGB8 (alpha dropped, grey replicated, as PIL's
/// `convert("RGB")`), EXIF orientation applied.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let name = path.display().to_string();
    let io = |error| ImageError::Io {
        path: name.clone(),
        error,
    };
    let file_len = std::fs::metadata(path).map_err(io)?.len();
    let too_large = |bytes| ImageError::FileTooLarge {
        path: name.clone(),
        bytes,
        limit: limits.max_file_bytes,
    };
    if file_len > limits.max_file_bytes {
        return Err(too_large(file_len));
    }
    let mut bytes = Vec::new();
    // `take` bounds the read even if the file grows after the size check.
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(limits.max_file_bytes.saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    decode_bytes(&bytes, &name, limits)
}

/// [`decode_file`] on bytes in memory; `name` is used in error messages.
pub fn decode_bytes(
    bytes: &[u8],
    name: &str,
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    let format = sniff_format(bytes, name)?;
    if format == SourceFormat::Jpeg && !jpeg_ends_after_last_scan(bytes) {
        // The `image` crate's JPEG decoder is lenient: it fills a cut-off scan with grey
        // and succeeds. A photo cut in half is still an error here, as in PIL (npurt's
        // own decoder refuses a short scan too; this check comes first for both).
        return Err(ImageError::Corrupt {
            path: name.to_string(),
            format: format.name(),
            reason: "truncated: no end-of-image marker after the last scan".into(),
        });
    }
    let mut decoder = open_decoder(bytes, name, format, limits)?;
    // A broken EXIF block must not reject an otherwise good photo: no orientation then.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // Baseline JPEGs are decoded by npurt's own decoder, bit-identical to libjpeg-turbo
    // (Pillow's); the `image` crate decodes the rest. The header has been checked above.
    let corrupt = |reason| ImageError::Corrupt {
        path: name.to_string(),
        format: format.name(),
        reason,
    };
    let supported = match format {
        SourceFormat::Jpeg => jpeg::classify(bytes).map_err(corrupt)?,
        _ => None,
    };
    let mut img = match supported {
        Some(s) => {
            let (w, h) = s.size();
            check_dimensions(w, h, name, limits)?;
            let pixels = jpeg::decode(bytes, &s).map_err(corrupt)?;
            let rgb =
                RgbImage::from_raw(w, h, pixels).expect("the decoder returns w * h * 3 bytes");
            DynamicImage::ImageRgb8(rgb)
        }
        None => {
            DynamicImage::from_decoder(decoder).map_err(|e| from_image_error(e, name, format))?
        }
    };
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// True if npurt's own JPEG decoder (bit-identical to libjpeg-turbo) decodes these bytes:
/// a baseline sequential Huffman JPEG, 8-bit, grey or YCbCr in 4:4:4, 4:2:2, 4:2:0 or
/// 4:4:0. False for other JPEGs (the `image` crate decodes them) and for other formats.
pub fn jpeg_decoded_natively(bytes: &[u8]) -> bool {
    matches!(jpeg::classify(bytes), Ok(Some(_)))
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The format from the file's signature, never from its name: a text file called
/// `photo.png` is "not an image", not "corrupt PNG".
fn sniff_format(bytes: &[u8], name: &str) -> Result<SourceFormat, ImageError> {
    let not_image = |reason: String| ImageError::NotAnImage {
        path: name.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(not_image("the file is empty".into()));
    }
    match ::image::guess_format(bytes) {
        Ok(ImageFormat::Png) => Ok(SourceFormat::Png),
        Ok(ImageFormat::Jpeg) => Ok(SourceFormat::Jpeg),
        Ok(ImageFormat::WebP) => Ok(SourceFormat::WebP),
        Ok(other) => Err(not_image(format!(
            "it looks like {other:?}, which npurt does not decode"
        ))),
        Err(_) => Err(not_image("no known image signature".into())),
    }
}

/// Checks the size the header declares, then hands the bytes to the `image` crate, which
/// parses the header only, and checks the size it reports (WebP, or anything the quick
/// look missed).
fn open_decoder<'a>(
    bytes: &'a [u8],
    name: &str,
    format: SourceFormat,
    limits: &DecodeLimits,
) -> Result<impl ImageDecoder + 'a, ImageError> {
    if let Some((w, h)) = declared_dimensions(bytes, format) {
        check_dimensions(w, h, name, limits)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(limits.for_image_crate());
    let decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(e, name, format))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h, name, limits)?;
    Ok(decoder)
}

fn check_dimensions(w: u32, h: u32, name: &str, limits: &DecodeLimits) -> Result<(), ImageError> {
    if w == 0 || h == 0 {
        return Err(ImageError::ZeroSized {
            path: name.to_string(),
            width: w,
            height: h,
        });
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            path: name.to_string(),
            width: w,
            height: h,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// The stored size straight from a PNG IHDR or a JPEG SOF segment, read before the decoder
/// runs: decoders reject a zero width with a generic message, and we want the typed error.
fn declared_dimensions(bytes: &[u8], format: SourceFormat) -> Option<(u32, u32)> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]));
    let be32 = |i: usize| Some(u32::from_be_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    match format {
        SourceFormat::Png => {
            // signature (8), chunk length (4), "IHDR", width, height
            (bytes.get(12..16)? == b"IHDR").then_some(())?;
            Some((be32(16)?, be32(20)?))
        }
        SourceFormat::Jpeg => {
            let mut pos = 2; // after SOI
            loop {
                if *bytes.get(pos)? != 0xFF {
                    return None;
                }
                let marker = *bytes.get(pos + 1)?;
                match marker {
                    0xFF => pos += 1, // fill byte
                    0x01 | 0xD0..=0xD8 => pos += 2,
                    0xDA | 0xD9 => return None, // scan or end before any frame header
                    0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                        // SOFn: length, precision, height, width
                        return Some((u32::from(be16(pos + 7)?), u32::from(be16(pos + 5)?)));
                    }
                    _ => pos += 2 + usize::from(be16(pos + 2)?),
                }
            }
        }
        SourceFormat::WebP => None,
    }
}

/// True if an end-of-image marker follows the last start-of-scan. Entropy-coded data
/// cannot contain either marker (0xFF is byte-stuffed), so a file cut inside its last
/// scan has none after it, while an embedded EXIF thumbnail's markers come earlier.
fn jpeg_ends_after_last_scan(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        (Some(_), None) => false,
        // No scan at all: the decoder reports that itself.
        (None, _) => true,
    }
}

fn from_image_error(e: ::image::ImageError, name: &str, format: SourceFormat) -> ImageError {
    use ::image::ImageError as E;
    let path = name.to_string();
    let format = format.name();
    match e {
        // Decoding reads from memory, so an I/O error can only be the data running out.
        E::IoError(io) => ImageError::Corrupt {
            path,
            format,
            reason: format!("truncated ({io})"),
        },
        E::Decoding(d) => ImageError::Corrupt {
            path,
            format,
            reason: d.to_string(),
        },
        E::Parameter(p) => ImageError::Corrupt {
            path,
            format,
            reason: p.to_string(),
        },
        E::Limits(l) => ImageError::Unsupported {
            path,
            format,
            reason: format!("decoding needs more memory than the limits allow ({l})"),
        },
        E::Unsupported(u) => ImageError::Unsupported {
            path,
            format,
            reason: u.to_string(),
        },
        E::Encoding(x) => ImageError::Corrupt {
            path,
            format,
            reason: x.to_string(),
        },
    }
}
