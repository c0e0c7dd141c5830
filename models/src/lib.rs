//! npurt-models: what a model *is*, independent of where it runs.
//!
//! - [`config`]: `LlamaConfig` (HF config.json or GGUF metadata), validated;
//! - [`weights`]: `WeightStore`, memory-mapped tensors under HF names;
//! - [`gguf`], [`hf_dir`]: the two loaders; [`source`]: open either by path;
//! - [`tokenizer`], [`chat`]: tokenizers and chat templates;
//! - [`llama`]: the one LLaMA-family graph builder (prefill-chunk and decode graphs);
//! - [`siglip`]: the one SigLIP vision-tower builder (patch-embedding and encoder stages);
//! - [`projector`]: BlueLM-V's 2x2 token downsampler + MLP projector;
//! - [`vlm`]: the BlueLM-V model directory (vision + projector + LLM);
//! - [`random_llama`]: seeded random-weight LLaMAs of named shapes, written as an HF
//!   directory or a GGUF ([`stream_write`], `gguf::start_gguf`: the streaming writers);
//!   [`random_vlm`]: the same for a whole BlueLM-V directory (tower, projector, LLM).

pub mod chat;
pub mod config;
mod error;
pub mod gguf;
pub mod hf_dir;
pub mod llama;
pub mod projector;
pub mod random_llama;
pub mod random_vlm;
pub mod siglip;
pub mod source;
pub mod stream_write;
/// Test-file writers: feature `testfiles` (always on for this crate's unit tests).
#[cfg(any(test, feature = "testfiles"))]
pub mod testfiles;
pub mod tokenizer;
pub mod vlm;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use source::ModelSource;
pub use weights::WeightStore;
