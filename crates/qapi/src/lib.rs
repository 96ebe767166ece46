//! # qapi
//!
//! The entry points of qforge: dynamic quantization, static post-training quantization and
//! quantization-aware training, quantized model files, and reports of what was quantized.

pub mod dynamic;
mod error;
pub mod file;
pub mod models;
pub mod qat;
pub mod qat_demo;
pub mod qconfig;
pub mod report;

pub use error::{ApiError, Result};
pub use file::{ModelFile, StoredTensor, FORMAT_VERSION};
pub use qconfig::{ConfigSource, QConfig, QConfigMap};
pub use report::{FloatReason, NodeReport, NodeStatus, QuantReport};
