//! The one error type of `qkernels`.

/// Errors from kernel calls: bad shapes, bad parameters, or a forced path this CPU lacks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("invalid parameter for {op}: {detail}")]
    Param { op: &'static str, detail: String },

    #[error("kernel path `{path}` is not available on this CPU (available: {available}); unset QFORGE_KERNEL or pick one of those")]
    PathUnavailable { path: String, available: String },

    #[error("unknown kernel path `{0}` in QFORGE_KERNEL; expected one of reference, avx2, avx512vnni, avxvnni, amx")]
    UnknownPath(String),

    #[error("{op}: K = {k} can overflow the i32 accumulator (at most {max} for full-range u8 x s8); split K or use fewer bits")]
    AccumulatorOverflow { op: &'static str, k: usize, max: usize },

    #[error(transparent)]
    Quant(#[from] qtensor::QError),
}

/// Result alias of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
