//! # qgraph
//!
//! Model graphs for qforge: a builder to define models in Rust (sequential or functional), fp32
//! execution of the usual CNN, transformer and recurrent layers (NCHW, PyTorch semantics),
//! safetensors weights by PyTorch `state_dict` name, automatic or manual module fusion with
//! PyTorch's BatchNorm folding, and the calibration observers of PyTorch and ONNX Runtime.
//!
//! ```
//! use qgraph::{GraphBuilder, Value};
//! use qtensor::Tensor;
//!
//! let mut b = GraphBuilder::new();
//! let x = b.input("x", &[1, 4]);
//! let h = b.linear("fc1", x, 4, 3);
//! let y = b.relu("relu", h);
//! b.output(y);
//! let graph = b.build().unwrap();
//! let out = graph.run(vec![Value::F32(Tensor::full([1, 4], 1.0))]).unwrap();
//! assert_eq!(out[0].shape(), &[1, 3]);
//! ```

mod builder;
mod error;
mod exec;
pub mod fuse;
mod graph;
pub mod observers;
pub mod op;
pub mod ops;
mod value;
mod weights;

pub use builder::GraphBuilder;
pub use error::{GraphError, Result};
pub use fuse::{FusedGroup, FusionReport};
pub use graph::{Graph, NamedNode, Node, NodeId, NodeQConfig};
pub use observers::{Observer, ObserverConfig, ObserverKind};
pub use op::{
    AttentionAttrs, BatchNormAttrs, Conv2dAttrs, ConvTranspose2dAttrs, CustomOp, FusedActivation, GeluApprox,
    LayerNormAttrs, LinearAttrs, Op, OpKind, Pool2dAttrs, RnnAttrs, UpsampleMode,
};
pub use value::{IdTensor, Value, ValueType};
