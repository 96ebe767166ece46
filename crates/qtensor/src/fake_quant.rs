//! Fake quantization for quantization-aware training: quantize then dequantize in one step, so
//! the forward pass sees int8 rounding while values stay f32, plus the straight-through mask.
//!
//! PyTorch (`fake_quantize_per_tensor_affine`, cachemask kernel):
//! `q = zp + round_half_even(x * (1 / scale))` (unclamped, f32 reciprocal),
//! `y = (clamp(q, qmin, qmax) - zp) * scale`, and the gradient passes where
//! `qmin <= q <= qmax` (the mask) and is zero elsewhere.

use crate::{QError, Result};

/// Parameters of one fake-quantize call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuant {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl FakeQuant {
    /// Checks the scale and that `qmin <= zero_point <= qmax`.
    pub fn new(scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> Result<FakeQuant> {
        crate::qparams::check_scale(scale)?;
        if qmin >= qmax || !(qmin..=qmax).contains(&zero_point) {
            return Err(QError::Unsupported(format!(
                "fake quantize needs qmin < qmax and qmin <= zero point <= qmax; got [{qmin}, {qmax}] with zero point {zero_point}"
            )));
        }
        Ok(FakeQuant {
            scale,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// One value: (fake-quantized value, whether the gradient passes).
    #[inline]
    pub fn apply(&self, x: f32, inv_scale: f32) -> (f32, bool) {
        // Saturating conversion keeps huge inputs well-defined; they fall outside the mask.
        let q = ((x * inv_scale).round_ties_even() as i64).saturating_add(self.zero_point as i64);
        let clamped = q.clamp(self.qmin as i64, self.qmax as i64);
        let y = (clamped - self.zero_point as i64) as f32 * self.scale;
        (y, (self.qmin as i64..=self.qmax as i64).contains(&q) && !x.is_nan())
    }

    /// Fake-quantizes `x` into `y` and writes the straight-through mask into `mask`.
    pub fn forward(&self, x: &[f32], y: &mut [f32], mask: &mut [bool]) -> Result<()> {
        for (what, len) in [("fake quantize output", y.len()), ("fake quantize mask", mask.len())] {
            if len != x.len() {
                return Err(QError::LengthMismatch {
                    what,
                    expected: x.len(),
                    got: len,
                });
            }
        }
        let inv = 1.0 / self.scale;
        // The same arithmetic as `apply`, in a form the compiler vectorizes: with
        // `t = x * inv` clamped to `[lo - 1, hi + 1]` (`lo = qmin - zp`, `hi = qmax - zp`, small
        // integers), adding and subtracting 1.5 * 2^23 rounds half to even exactly, clamping
        // by integers commutes with rounding, and out-of-range values stay out of range. NaN
        // gives 0 outside the mask, as `apply` does.
        const ROUND: f32 = 12_582_912.0;
        let lo = (self.qmin - self.zero_point) as f32;
        let hi = (self.qmax - self.zero_point) as f32;
        for ((&v, out), m) in x.iter().zip(y.iter_mut()).zip(mask.iter_mut()) {
            let t = (v * inv).max(lo - 1.0).min(hi + 1.0);
            let r = (t + ROUND) - ROUND;
            let inside = r >= lo && r <= hi && !v.is_nan();
            *out = if v.is_nan() {
                0.0
            } else {
                r.max(lo).min(hi) * self.scale
            };
            *m = inside;
        }
        Ok(())
    }
}

/// Straight-through estimator: `grad_x = grad_y` where the mask is set, else 0.
pub fn straight_through(grad_y: &[f32], mask: &[bool]) -> Vec<f32> {
    grad_y
        .iter()
        .zip(mask)
        .map(|(&g, &m)| if m { g } else { 0.0 })
        .collect()
}

/// Per-channel fake quantization along `axis` of a row-major tensor of `shape`.
pub fn fake_quantize_per_channel(
    x: &[f32],
    shape: &[usize],
    axis: usize,
    params: &[FakeQuant],
    y: &mut [f32],
    mask: &mut [bool],
) -> Result<()> {
    if axis >= shape.len() {
        return Err(QError::AxisOutOfRange {
            axis,
            rank: shape.len(),
        });
    }
    let n: usize = shape.iter().product();
    for (what, expected, got) in [
        ("fake quantize input", n, x.len()),
        ("fake quantize output", n, y.len()),
        ("fake quantize mask", n, mask.len()),
        ("per-channel fake quantize parameters", shape[axis], params.len()),
    ] {
        if expected != got {
            return Err(QError::LengthMismatch { what, expected, got });
        }
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let channels = shape[axis];
    for (block, (xs, (ys, ms))) in x
        .chunks(inner.max(1))
        .zip(y.chunks_mut(inner.max(1)).zip(mask.chunks_mut(inner.max(1))))
        .enumerate()
    {
        params[block % channels].forward(xs, ys, ms)?;
    }
    Ok(())
}
