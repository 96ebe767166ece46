//! Boundary conversions between the user's layout and the quantized region's: NCHW `f32` ->
//! quantize -> NHWC `u8` on the way in, NHWC `u8` -> dequantize -> NCHW `f32` on the way out.
//! They run once per quantized region, never per op. The rounding is qtensor's
//! (PyTorch fbgemm `Quantize`): `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)`;
//! dequantize is `(q - zp) as f32 * scale`.

use rayon::prelude::*;

use qtensor::quantize::{dequantize_into, quantize_into, Affine};
use qtensor::DType;

use super::{ActQuant, NhwcShape};
use crate::{KernelError, Result};

/// Quantizes an NCHW `f32` tensor of shape `(xs.n, xs.c, xs.h, xs.w)` into NHWC `u8`.
/// NaN or infinite inputs are rejected. Quantizes in the input's order with qtensor's
/// vectorized rule, then transposes the bytes (a quarter of the data) into channels-last.
pub fn nchw_f32_to_nhwc_u8(x: &[f32], xs: NhwcShape, q: ActQuant) -> Result<Vec<u8>> {
    xs.check("quantize_nchw_to_nhwc", "input", x.len())?;
    if let Some((index, value)) = qtensor::quantize::first_non_finite(x) {
        return Err(KernelError::Param {
            op: "quantize_nchw_to_nhwc",
            detail: format!("input[{index}] = {value} is not finite; clean the input before quantizing"),
        });
    }
    let affine = Affine::new(q.scale, q.zero_point, DType::QUInt8)?;
    let mut planar = vec![0u8; xs.len()];
    quantize_into(x, &mut planar, &affine)?;
    let plane = xs.h * xs.w;
    let mut y = vec![0u8; xs.len()];
    y.par_chunks_mut(plane * xs.c)
        .zip(planar.par_chunks(plane * xs.c))
        .for_each(|(out, src)| {
            for (c, channel) in src.chunks(plane).enumerate() {
                for (p, &v) in channel.iter().enumerate() {
                    out[p * xs.c + c] = v;
                }
            }
        });
    Ok(y)
}

/// Dequantizes an NHWC `u8` tensor into NCHW `f32` of shape `(xs.n, xs.c, xs.h, xs.w)`:
/// transposes the bytes to NCHW, then dequantizes with qtensor's vectorized rule.
pub fn nhwc_u8_to_nchw_f32(x: &[u8], xs: NhwcShape, q: ActQuant) -> Result<Vec<f32>> {
    xs.check("dequantize_nhwc_to_nchw", "input", x.len())?;
    let plane = xs.h * xs.w;
    let mut planar = vec![0u8; xs.len()];
    planar
        .par_chunks_mut(plane * xs.c)
        .zip(x.par_chunks(plane * xs.c))
        .for_each(|(out, src)| {
            for (p, pixel) in src.chunks(xs.c).enumerate() {
                for (c, &v) in pixel.iter().enumerate() {
                    out[c * plane + p] = v;
                }
            }
        });
    let mut y = vec![0f32; xs.len()];
    dequantize_into(&planar, &mut y, q.scale, q.zero_point)?;
    Ok(y)
}
