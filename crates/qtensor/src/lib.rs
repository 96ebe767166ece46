//! # qtensor
//!
//! Quantized tensor types and the numerics every other qforge crate relies on: dtypes,
//! quantization schemes (per-tensor and per-channel, affine and symmetric), the range to
//! scale/zero-point rules, the rounding rule, vectorized quantize/dequantize, and the
//! requantization forms shared by the kernels.
//!
//! The PyTorch-parity behaviour is the default wherever PyTorch is well defined; where fbgemm's
//! vector code wraps around on huge values, [`Overflow::Fbgemm`] reproduces it and the default
//! [`Overflow::Saturate`] clamps instead.
//!
//! ```
//! use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};
//!
//! let x = Tensor::new([4], vec![-1.0, 0.0, 0.5, 2.0]).unwrap();
//! let (min, max) = x.min_max().unwrap();
//! let spec = QuantSpec::new(DType::QUInt8, Scheme::Affine);
//! let (scale, zero_point) = spec.qparams_from_range(min, max).unwrap();
//! let q = QTensor::quantize(&x, DType::QUInt8, QParams::per_tensor(scale, zero_point, DType::QUInt8).unwrap()).unwrap();
//! assert_eq!(q.int_repr(), vec![0, 85, 127, 255]);
//! let back = q.dequantize().unwrap();
//! assert!((back.data()[3] - 2.0).abs() <= scale / 2.0);
//! ```

mod dtype;
mod error;
pub mod fake_quant;
pub mod qparams;
mod qtensor;
pub mod quantize;
pub mod requant;
#[cfg(target_arch = "x86_64")]
mod simd;
mod tensor;

pub use dtype::DType;
pub use error::{QError, Result};
pub use qparams::{choose_dynamic_qparams, QParams, QuantSpec, Scheme};
pub use qtensor::{pack_nibbles, unpack_nibbles, QData, QTensor};
pub use quantize::{ElementPath, Overflow};
pub use requant::{FixedPointRequant, FloatRequant};
pub use tensor::{min_max, strides, Tensor};
