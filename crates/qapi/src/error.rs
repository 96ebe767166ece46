//! The one error type of `qapi`.

/// Errors from quantizing, saving and loading models.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("model file is truncated or corrupt ({detail}); re-export it with `qforge quantize`")]
    Corrupt { detail: String },

    #[error("not a qforge model file ({detail}); expected a safetensors file written by qforge")]
    NotQforge { detail: String },

    #[error(
        "model file format version {found} is newer than this qforge supports ({supported}); upgrade qforge to load it"
    )]
    NewerVersion { found: u32, supported: u32 },

    #[error("model file has no tensor `{name}`")]
    MissingTensor { name: String },

    #[error("tensor `{name}`: {detail}")]
    BadTensor { name: String, detail: String },

    #[error("invalid configuration: {detail}")]
    Config { detail: String },

    #[error("tokenizer: {detail}")]
    Tokenizer { detail: String },

    #[error(transparent)]
    Quant(#[from] qtensor::QError),

    #[error(transparent)]
    Graph(#[from] qgraph::GraphError),

    #[error(transparent)]
    Kernel(#[from] qkernels::KernelError),
}

/// Result alias of this crate.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;
