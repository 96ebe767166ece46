//! Boundary conversions between the user's layout and the quantized region's: NCHW `f32` ->
//! quantize -> NHWC `u8` on the way in, NHWC `u8` -> dequantize -> NCHW `f32` on the way out.
//! They run once per quantized region, never per op. The rounding is qtensor's
//! (PyTorch fbgemm `Quantize`): `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)`;
//! dequantize is `(q - zp) as f32 * scale`.

use rayon::prelude::*;

use qtensor::quantize::{dequantize_one, quantize_one, Overflow};

use super::{ActQuant, NhwcShape};
use crate::{KernelError, Result};

/// Quantizes an NCHW `f32` tensor of shape `(xs.n, xs.c, xs.h, xs.w)` into NHWC `u8`.
/// NaN or infinite inputs are rejected.
pub fn nchw_f32_to_nhwc_u8(x: &[f32], xs: NhwcShape, q: ActQuant) -> Result<Vec<u8>> {
    xs.check("quantize_nchw_to_nhwc", "input", x.len())?;
    if let Some((index, value)) = qtensor::quantize::first_non_finite(x) {
        return Err(KernelError::Param {
            op: "quantize_nchw_to_nhwc",
            detail: format!("input[{index}] = {value} is not finite; clean the input before quantizing"),
        });
    }
    let inv = 1.0 / q.scale;
    let plane = xs.h * xs.w;
    let mut y = vec![0u8; xs.len()];
    y.par_chunks_mut(xs.w * xs.c).enumerate().for_each(|(row, out)| {
        let (n, h) = (row / xs.h, row % xs.h);
        for c in 0..xs.c {
            let src = &x[(n * xs.c + c) * plane + h * xs.w..][..xs.w];
            for (w, &v) in src.iter().enumerate() {
                out[w * xs.c + c] = quantize_one(v, inv, q.zero_point, 0, 255, Overflow::Saturate) as u8;
            }
        }
    });
    Ok(y)
}

/// Dequantizes an NHWC `u8` tensor into NCHW `f32` of shape `(xs.n, xs.c, xs.h, xs.w)`.
pub fn nhwc_u8_to_nchw_f32(x: &[u8], xs: NhwcShape, q: ActQuant) -> Result<Vec<f32>> {
    xs.check("dequantize_nhwc_to_nchw", "input", x.len())?;
    let plane = xs.h * xs.w;
    let mut y = vec![0f32; xs.len()];
    y.par_chunks_mut(plane).enumerate().for_each(|(nc, out)| {
        let (n, c) = (nc / xs.c, nc % xs.c);
        for (p, o) in out.iter_mut().enumerate() {
            *o = dequantize_one(x[(n * plane + p) * xs.c + c] as i32, q.scale, q.zero_point);
        }
    });
    Ok(y)
}
