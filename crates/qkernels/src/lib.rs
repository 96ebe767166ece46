//! # qkernels
//!
//! int8 math for qforge, usable on its own: u8 x s8 GEMM with i32 accumulation and fused
//! epilogues, convolution, pooling and element-wise kernels. Every operation has a portable
//! reference (the oracle) and SIMD paths chosen at run time that produce identical integers.
//! On targets other than x86-64 only the portable paths exist; the blocking and packing
//! machinery the SIMD kernels share still compiles there, unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables, unused_mut))]

pub mod conv;
pub mod eltwise;
mod error;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod prefetch;
pub mod team;

pub use conv::forced_reference;
pub use gemm::available_paths;

pub use error::{KernelError, Result};
