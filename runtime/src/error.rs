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
    #[error("the model has no vision part (images need a BlueLM-V model directory)")]
    NotMultimodal,
    #[error("the vision encoder was released after encoding; load the model again to encode more images")]
    VisionReleased,
    #[error(
        "the image takes {image_tokens} positions ({tiles} tiles) but the context holds {ctx}"
    )]
    ImageTooLarge {
        image_tokens: usize,
        tiles: usize,
        ctx: usize,
    },
    #[error("the prompt has {placeholders} image placeholder(s) `{placeholder}` but {images} image(s) were given")]
    PlaceholderWithoutImage {
        placeholder: String,
        placeholders: usize,
        images: usize,
    },
    #[error("{images} image(s) were given but the prompt has only {placeholders} placeholder(s) `{placeholder}` for them")]
    MoreImagesThanPlaceholders {
        placeholder: String,
        placeholders: usize,
        images: usize,
    },
    #[error("image encoding failed: {0}")]
    ImageFailed(String),
    #[error(
        "{what} needs {needed} bytes ({:.1} MiB) but {used} of the memory budget's {budget} bytes ({:.1} MiB) are already planned; raise --mem-budget (LoadOptions::mem_budget) or ask for less",
        *needed as f64 / 1048576.0, *budget as f64 / 1048576.0
    )]
    OverBudget {
        what: String,
        needed: u64,
        used: u64,
        budget: u64,
    },
    /// Perplexity predicts each token from the ones before it, so it needs two.
    #[error("nothing to score: perplexity needs at least 2 tokens, the text has {tokens}")]
    NothingToScore { tokens: usize },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
