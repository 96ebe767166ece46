//! The one error type of `qgraph`. Every message names the node, parameter or input involved and
//! says what to change.

use qtensor::QError;

/// Errors from building, validating, loading, running, fusing and observing graphs.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node `{node}`: {message}")]
    Shape { node: String, message: String },

    #[error("node `{node}` reads `{input}`, which is not defined before it; define inputs before their consumers")]
    DanglingInput { node: String, input: String },

    #[error("the graph has a cycle through node `{node}`; a model graph must be acyclic")]
    Cycle { node: String },

    #[error("duplicate node name `{name}`: every node needs a unique name (it prefixes its parameter names)")]
    DuplicateName { name: String },

    #[error("unknown node `{name}`")]
    UnknownNode { name: String },

    #[error("the graph has no outputs; mark at least one node as an output")]
    NoOutputs,

    #[error("expected {expected} graph inputs, got {got}")]
    InputCount { expected: usize, got: usize },

    #[error("graph input `{input}`: {message}")]
    InputValue { input: String, message: String },

    #[error("parameter `{name}` is missing from the weights file; export the model's full state_dict")]
    MissingParameter { name: String },

    #[error("the weights file has parameters the graph does not use: {names:?}; check the node names, or load with strict = false")]
    UnexpectedParameters { names: Vec<String> },

    #[error("parameter `{name}` has shape {got:?} but the graph expects {expected:?}")]
    ParameterShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("parameter `{name}` has dtype {dtype}; only float32 weights are supported, convert them before saving")]
    ParameterDType { name: String, dtype: String },

    #[error("weights file: {0}")]
    Safetensors(String),

    #[error("i/o error on `{path}`: {message}")]
    Io { path: String, message: String },

    #[error("cannot fuse {nodes:?}: {reason}")]
    Fusion { nodes: Vec<String>, reason: String },

    #[error("observer at `{node}`: non-finite value {value} at index {index}; calibration data must be finite (check the inputs and the upstream ops)")]
    NonFiniteObservation { node: String, index: usize, value: f32 },

    #[error("observer at `{node}` has seen no data; run at least one calibration batch before computing qparams")]
    EmptyCalibration { node: String },

    #[error("observer at `{node}`: {message}")]
    Observer { node: String, message: String },

    #[error("node `{node}`: unsupported {what}")]
    Unsupported { node: String, what: String },

    #[error("{op}: {detail}")]
    Custom { op: String, detail: String },

    #[error(transparent)]
    Quant(#[from] QError),
}

/// Result alias of this crate.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;

/// Builds a [`GraphError::Shape`] for `node`.
pub(crate) fn shape_err(node: &str, message: impl Into<String>) -> GraphError {
    GraphError::Shape {
        node: node.to_string(),
        message: message.into(),
    }
}
