//! Requantization: mapping an i32 accumulator (a sum of int8 products) to an 8-bit output.
//! Shared by every kernel so that all of them round the same way.
//!
//! Two forms:
//! - [`FloatRequant`]: PyTorch/fbgemm's `ReQuantizeOutput`: the accumulator (after zero-point
//!   corrections) becomes f32, the f32 bias divided by `act_scale * weight_scale` is added, the
//!   sum is multiplied by the f32 `multiplier = act_scale * weight_scale / out_scale`, rounded
//!   half to even (`lrintf`), offset by the output zero point and clamped.
//! - [`FixedPointRequant`]: an integer-only (multiplier, shift) form for targets without fast
//!   floats (gemmlowp/TFLite style): a Q31 multiplier applied with a rounding doubling high
//!   multiply, then a rounding right shift (ties away from zero).

use crate::{QError, Result};

/// The float form of requantization. See the module docs for the formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatRequant {
    /// `act_scale * weight_scale / out_scale`, computed in f32 as fbgemm does.
    pub multiplier: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl FloatRequant {
    /// Builds the multiplier from the three scales, in the order fbgemm multiplies them.
    pub fn from_scales(
        act_scale: f32,
        weight_scale: f32,
        out_scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
    ) -> Result<FloatRequant> {
        for s in [act_scale, weight_scale, out_scale] {
            crate::qparams::check_scale(s)?;
        }
        Ok(FloatRequant {
            multiplier: act_scale * weight_scale / out_scale,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// `clamp(round_half_even(value * multiplier) + zero_point, qmin, qmax)`.
    #[inline]
    pub fn apply(&self, value: f32) -> i32 {
        let r = (value * self.multiplier).round_ties_even() as i64;
        (r + self.zero_point as i64).clamp(self.qmin as i64, self.qmax as i64) as i32
    }
}

/// fbgemm's bias term for a float bias: `bias / (act_scale * weight_scale)`, added to the
/// corrected accumulator in f32 before the multiplier.
#[inline]
pub fn float_bias_term(bias: f32, act_scale: f32, weight_scale: f32) -> f32 {
    bias / (act_scale * weight_scale)
}

/// The integer-only form. `real_multiplier ~= multiplier * 2^(shift - 31)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPointRequant {
    /// Q31 fixed-point mantissa in [2^30, 2^31).
    pub multiplier: i32,
    /// Power of two applied after the Q31 product: positive shifts left, negative right.
    pub shift: i32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl FixedPointRequant {
    /// Decomposes a positive real multiplier (e.g. `act_scale * weight_scale / out_scale`).
    pub fn new(real_multiplier: f64, zero_point: i32, qmin: i32, qmax: i32) -> Result<FixedPointRequant> {
        if !(real_multiplier.is_finite() && real_multiplier > 0.0) {
            return Err(QError::InvalidScale {
                scale: real_multiplier as f32,
            });
        }
        // real = m * 2^e with m in [0.5, 1).
        let mut exponent = real_multiplier.log2().floor() as i32 + 1;
        let mut mantissa = real_multiplier / 2f64.powi(exponent);
        if mantissa >= 1.0 {
            mantissa /= 2.0;
            exponent += 1;
        } else if mantissa < 0.5 {
            mantissa *= 2.0;
            exponent -= 1;
        }
        let mut q = (mantissa * (1i64 << 31) as f64).round() as i64;
        if q == 1i64 << 31 {
            q /= 2;
            exponent += 1;
        }
        if !(-31..=30).contains(&exponent) {
            return Err(QError::Unsupported(format!(
                "requantization multiplier {real_multiplier} is outside the fixed-point range 2^-31..2^30; use FloatRequant"
            )));
        }
        Ok(FixedPointRequant {
            multiplier: q as i32,
            shift: exponent,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// `clamp(rounding_shift(sat_rounding_doubling_high_mul(acc << max(shift, 0), m), max(-shift, 0)) + zp)`.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let left = self.shift.max(0);
        let right = (-self.shift).max(0);
        let shifted = (acc as i64) << left;
        let shifted = shifted.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let high = saturating_rounding_doubling_high_mul(shifted, self.multiplier);
        let r = rounding_divide_by_pot(high, right) as i64 + self.zero_point as i64;
        r.clamp(self.qmin as i64, self.qmax as i64) as i32
    }
}

/// `round(a * b / 2^31)` to nearest (a positive tie rounds up, a negative one toward zero, as
/// gemmlowp defines it), saturating the single overflow case.
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 { 1i64 << 30 } else { 1 - (1i64 << 30) };
    // Division truncates toward zero (gemmlowp's definition); an arithmetic shift would floor
    // negative products and land one below the rounded value.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// `x / 2^exponent` rounded to nearest, ties away from zero.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    if exponent == 0 {
        return x;
    }
    let mask = (1i64 << exponent) - 1;
    let remainder = x as i64 & mask;
    let threshold = (mask >> 1) + if x < 0 { 1 } else { 0 };
    ((x as i64 >> exponent) + if remainder > threshold { 1 } else { 0 }) as i32
}
