//! # qapi
//!
//! The entry points of qforge: dynamic quantization, static post-training quantization and
//! quantization-aware training, quantized model files, and reports of what was quantized.

pub mod dynamic;
mod error;
pub mod file;
pub mod qconfig;
pub mod report;
pub mod static_ptq;

pub use error::{ApiError, Result};
pub use file::{ModelFile, StoredTensor, FORMAT_VERSION};
pub use qconfig::{ConfigSource, QConfig, QConfigMap};
pub use report::{FloatReason, NodeReport, NodeStatus, QuantReport};
pub use static_ptq::{prepare, Prepared};
