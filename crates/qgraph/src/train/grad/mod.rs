//! Reverse-mode gradients of the fp32 ops, one file per op family, mirroring `crate::ops`.
//! Each function takes what the forward saw and the gradient of the output, and returns the
//! gradient of the input(s) and of the parameters.

pub mod activation;
pub mod conv;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod pool;
