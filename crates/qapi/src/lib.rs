//! # qapi
//!
//! The entry points of qforge: dynamic quantization, static post-training quantization and
//! quantization-aware training, quantized model files, and reports of what was quantized.

pub mod dynamic;
pub mod dynamic_graph;
mod error;
pub mod file;
pub mod models;
pub mod qconfig;
pub mod report;

pub use dynamic_graph::{quantize_dynamic, stored_size_bytes, DynamicLinearOp, DynamicRnnOp, RnnCell, RnnLayerWeights};
pub use error::{ApiError, Result};
pub use file::{ModelFile, StoredTensor, FORMAT_VERSION};
pub use qconfig::{ConfigSource, QConfig, QConfigMap};
pub use report::{FloatReason, NodeReport, NodeStatus, QuantReport};
