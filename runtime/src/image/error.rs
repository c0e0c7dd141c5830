//! The one error type of the image path: every variant names the problem and, where there
//! is one, the file, so a user can tell a bad photo from a bad option.

/// Everything image decoding, planning and preprocessing can refuse.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    // The I/O error is in the message, not the source chain, so the CLI (which prints
    // the chain) says it once.
    #[error("reading image {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is not an image in a supported format (PNG, JPEG or WebP): {reason}")]
    NotAnImage { path: String, reason: String },
    #[error("{path}: corrupt or truncated {format} data: {reason}")]
    Corrupt {
        path: String,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: unsupported {format} image: {reason}")]
    Unsupported {
        path: String,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: zero-sized image ({width}x{height})")]
    ZeroSized {
        path: String,
        width: u32,
        height: u32,
    },
    #[error(
        "{path}: image too large: {width}x{height} = {pixels} pixels exceeds the limit of {limit} pixels"
    )]
    TooManyPixels {
        path: String,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{path}: file too large: {bytes} bytes exceeds the limit of {limit} bytes")]
    FileTooLarge {
        path: String,
        bytes: u64,
        limit: u64,
    },
    #[error("invalid image option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("the image is {got_width}x{got_height} but the plan was made for {plan_width}x{plan_height}")]
    PlanMismatch {
        plan_width: u32,
        plan_height: u32,
        got_width: u32,
        got_height: u32,
    },
}
