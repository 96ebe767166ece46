//! # qapi
//!
//! The entry points of qforge: dynamic quantization, static post-training quantization and
//! quantization-aware training, quantized model files, and reports of what was quantized.

pub mod benchmark;
pub mod compare;
pub mod dynamic;
pub mod dynamic_embedding;
pub mod dynamic_fuse;
pub mod dynamic_graph;
mod dynamic_persist;
mod error;
pub mod fallback;
pub mod file;
pub mod models;
pub mod qat;
pub mod qat_demo;
pub mod qconfig;
pub mod report;
pub mod serialize;
pub mod static_ptq;
pub mod supported;

pub use dynamic_graph::{
    quantize_dynamic, quantize_dynamic_unfused, stored_size_bytes, DynamicLinearOp, DynamicRnnOp, RnnCell,
    RnnLayerWeights,
};
pub use error::{ApiError, Result};
pub use file::{ModelFile, StoredTensor, FORMAT_VERSION};
pub use qconfig::{ConfigSource, QConfig, QConfigMap};
pub use report::{FloatReason, NodeReport, NodeStatus, QuantReport};
pub use serialize::{file_size, inspect, load_graph, save_graph, save_graph_with_report, InspectedNode};
pub use static_ptq::{prepare, Prepared};
pub use supported::{supported_ops, SupportedOp};
