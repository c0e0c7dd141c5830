//! GGUF (v2/v3) reader over a memory-mapped file, and the llama loader built on it.
//!
//! Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 KV count,
//! the metadata KV pairs, the tensor infos, then (after padding to `general.alignment`)
//! the data section that tensor offsets are relative to.
//!
//! Every count, length and offset in the file is untrusted. The parser never sizes an
//! allocation by a header field before checking that the remaining bytes could hold
//! that many items, uses checked arithmetic for every offset, and reports problems as
//! typed errors naming the field or tensor; it never panics on any input.
//!
//! The module is split by concern, and everything public is re-exported here, so
//! callers keep writing `npurt_models::gguf::GgufFile` and so on:
//! - `value`: metadata value types (`GgufValue`, `GgufArray`, type ids and names);
//! - `ggml_type`: ggml tensor types (ids, names, block sizes, runtime dtypes);
//! - `file`: the parsed file (`GgufFile`, `GgufTensorInfo`) and metadata lookups;
//! - `parse`: the bounds-checked reader that builds a `GgufFile` from bytes;
//! - `llama`: GGUF names to LLaMA: the config from `llama.*` metadata and the
//!   weights under their HF names;
//! - `write`: the value encoders and a streaming writer (header first, then each
//!   tensor's bytes), for files larger than memory.

mod file;
mod ggml_type;
mod llama;
mod parse;
mod value;
mod write;

pub use file::{GgufFile, GgufTensorInfo};
pub use ggml_type::GgmlType;
pub(crate) use llama::gguf_name;
pub use llama::{llama_config, load};
pub use value::{type_name, value_type, GgufArray, GgufValue};
#[cfg(any(test, feature = "testfiles"))]
pub(crate) use write::{put_str, put_value};
pub use write::{start_gguf, TensorInfo};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent (the GGUF spec's default).
pub const DEFAULT_ALIGNMENT: u64 = 32;

#[cfg(test)]
mod tests;
