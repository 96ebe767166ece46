//! The one error type of `qtensor`: every invalid parameter or input is reported here, with a
//! message that says what to change.

use crate::DType;

/// Errors from quantization parameter math and tensor construction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QError {
    #[error("invalid scale {scale}: a quantization scale must be finite and greater than 0 (compute it from a finite, non-empty range)")]
    InvalidScale { scale: f32 },

    #[error("zero point {zero_point} is outside the {dtype} range [{qmin}, {qmax}]; pick a zero point inside the quantized range")]
    ZeroPointOutOfRange {
        zero_point: i32,
        dtype: DType,
        qmin: i32,
        qmax: i32,
    },

    #[error("invalid quantized range [{qmin}, {qmax}] for {dtype}: it must satisfy qmin <= 0 <= qmax, qmin < qmax, and fit the dtype")]
    InvalidQuantRange { qmin: i32, qmax: i32, dtype: DType },

    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange { axis: usize, rank: usize },

    #[error("length mismatch for {what}: expected {expected} elements, got {got}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("shape {shape:?} needs {expected} elements but the data has {got}")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },

    #[error("non-finite value {value} at index {index} in {what}; clean the input (NaN/Inf cannot be quantized meaningfully)")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },

    #[error("invalid range: min {min} is greater than max {max}")]
    InvalidRange { min: f32, max: f32 },

    #[error("{what} is empty: at least one value is needed to compute a range")]
    Empty { what: &'static str },

    #[error("dtype mismatch: expected {expected}, got {got}")]
    DTypeMismatch { expected: DType, got: DType },

    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result alias of this crate.
pub type Result<T, E = QError> = std::result::Result<T, E>;
