use npurt_backends::BackendError;
use npurt_models::ModelError;

/// Everything the runtime API can refuse or fail at, each naming its cause.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Graph(#[from] npurt_graph::GraphError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(
        "the input needs {needed} positions but the context holds {ctx} ({used} already used)"
    )]
    ContextOverflow {
        needed: usize,
        used: usize,
        ctx: usize,
    },
    #[error("token id {id} at input position {index} is out of range (vocabulary size {vocab})")]
    TokenOutOfRange { id: i64, index: usize, vocab: usize },
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("the model has no chat template")]
    NoChatTemplate,
    #[error("nothing to generate from: the session is empty")]
    EmptySession,
    /// Perplexity predicts each token from the ones before it, so it needs two.
    #[error("nothing to score: perplexity needs at least 2 tokens, the text has {tokens}")]
    NothingToScore { tokens: usize },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
