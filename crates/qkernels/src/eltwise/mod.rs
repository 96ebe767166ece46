//! Element-wise, pooling, resampling and lookup-table kernels on quantized `u8` NHWC tensors,
//! each written to give PyTorch's integers (the doc comment of every function says which
//! PyTorch code it follows and how it rounds).
//!
//! PyTorch's element-wise quantized kernels round differently in their vectorized loop and in
//! their scalar tail (the vector loop dequantizes with a fused multiply-add against a
//! premultiplied `-zero_point * scale`; the scalar tail subtracts then multiplies).
//! [`FloatRule`] names the two; [`FloatRule::Vectorized`] is what PyTorch computes for all but
//! the last `numel % 128` elements of a tensor and is the default.

pub mod add_mul;
pub mod cat;
pub mod lut;
#[cfg(target_arch = "x86_64")]
mod max_pool_avx512;
pub mod path;
pub mod pool;
pub mod resize;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_vbmi;

pub use add_mul::{add, add_in_place_on, add_on, mul, mul_on, AddOperand};
pub use cat::{cat_channels, cat_channels_on};
pub use lut::ActivationLut;
pub use path::EltwisePath;
pub use pool::{adaptive_avg_pool2d, avg_pool2d, max_pool2d, max_pool2d_on, Pool2d, PoolRounding};
pub use resize::{upsample_bilinear2d, upsample_nearest2d};

/// Which of PyTorch's two float evaluations of an element-wise quantized op to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FloatRule {
    /// PyTorch's vector loop: `x = fma(scale, q, -zp * scale)` (one rounding).
    #[default]
    Vectorized,
    /// PyTorch's scalar loop: `x = (q - zp) * scale`.
    Scalar,
}

impl FloatRule {
    /// Dequantizes one value under this rule; `premul = scale * -(zp as f32)`.
    #[inline]
    pub fn dequantize(self, q: i32, scale: f32, zero_point: i32) -> f32 {
        match self {
            FloatRule::Vectorized => scale.mul_add(q as f32, scale * -(zero_point as f32)),
            FloatRule::Scalar => (q - zero_point) as f32 * scale,
        }
    }
}

/// `clamp(zp + round_half_even(x * inv_scale), 0, 255)` (fbgemm `Quantize`).
#[inline]
pub(crate) fn quantize_u8(x: f32, inv_scale: f32, zero_point: i32) -> u8 {
    qtensor::quantize::quantize_one(x, inv_scale, zero_point, 0, 255, qtensor::Overflow::Saturate) as u8
}

pub(crate) fn check_same_len(op: &'static str, a: usize, b: usize) -> crate::Result<()> {
    if a != b {
        return Err(crate::KernelError::Shape {
            op,
            detail: format!("operands have {a} and {b} elements; they must match"),
        });
    }
    if a == 0 {
        return Err(crate::KernelError::Shape {
            op,
            detail: "empty operands".into(),
        });
    }
    Ok(())
}
