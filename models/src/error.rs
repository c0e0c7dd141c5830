//! Typed errors for everything a model file, config or tokenizer can get wrong. Each
//! variant names the file or field at fault; none of them is ever a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The I/O error is the source, not part of the message: whoever prints the cause
    // chain (the CLI does) then says it once.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a model file failed (the output path is not writable, the disk is full).
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is no regular file: opening a named pipe would block until
    /// some writer appears, and a device or socket is not a model file.
    #[error("{path}: not a regular file (a {kind})")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{file}: truncated: {what} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        file: String,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{file}: not a {format} file ({detail})")]
    BadFormat {
        file: String,
        format: &'static str,
        detail: String,
    },
    #[error("{file}: header field `{field}` is not credible: {detail}")]
    LyingHeader {
        file: String,
        field: String,
        detail: String,
    },
    #[error("tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDType { tensor: String, dtype: String },
    #[error("tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{0}` is missing from the model files")]
    MissingTensor(String),
    #[error("config field `{field}`: {reason}")]
    BadConfig { field: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A chat template ran past one of the budgets rendering runs under (an endless or
    /// nested loop, or output growing without bound): `limit` names the budget.
    #[error("chat template: rendering exceeded the {limit} limit of {max}")]
    TemplateLimit { limit: &'static str, max: u64 },
    #[error(transparent)]
    Graph(#[from] npurt_graph::GraphError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
