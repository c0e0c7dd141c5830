//! npurt-runtime: the API inference frontends embed.
//!
//! ```no_run
//! use npurt_runtime::{Runtime, LoadOptions, Session, GenerateOptions};
//! use npurt_models::ChatMessage;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::new();
//! let model = rt.load("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), LoadOptions::default())?;
//! let prompt = model.render_chat(&[ChatMessage::new("user", "What is the capital of France?")])?;
//! let ids = model.encode(&prompt)?;
//! let mut session = Session::new(model.clone())?;
//! let out = session.generate(&ids, &GenerateOptions::default(), |piece, _| { print!("{piece}"); true })?;
//! println!("\n{} tokens, {:.1} tok/s", out.tokens.len(), out.decode_tok_s());
//! # Ok(()) }
//! ```

pub mod bench;
pub mod budget;
mod conversation;
mod error;
mod heap;
pub mod image;
pub mod inspect;
mod model;
pub mod multimodal;
pub mod partition;
mod perplexity;
pub mod sampling;
mod session;
pub mod speculative;
pub mod stats;
pub mod vision;

pub use conversation::Conversation;
pub use error::{Result, RuntimeError};
pub use model::{
    CompiledGraph, GraphKind, LoadOptions, LoadReport, Model, Runtime, DEFAULT_CHUNK, DEFAULT_CTX,
};
pub use multimodal::{ImageEmbeddings, ImageInput, PendingImage, PromptPart};
pub use perplexity::{perplexity, Perplexity};
pub use sampling::SamplingOptions;
pub use session::{
    FittedPrompt, GenerateOptions, Generation, Position, PromptOverflow, PromptReuse, Session,
    StopReason,
};
pub use speculative::{PromptLookup, SpeculationStats};
pub use vision::{VisionEncoder, VisionOptions, VisionOutput};
