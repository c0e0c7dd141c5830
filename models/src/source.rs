//! Opening a model by path: a `.gguf` file or an HF directory.

use crate::{ChatTemplate, LlamaConfig, WeightStore};
use crate::tokenizer::Tokenizer;

/// Everything a loaded checkpoint provides, whatever its format.
pub struct ModelSource {
    pub config: LlamaConfig,
    pub weights: WeightStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// A human-readable description (file name, format, tensor count).
    pub description: String,
}
