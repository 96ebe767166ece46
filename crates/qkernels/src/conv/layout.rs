//! Boundary conversions between the user's layout and the quantized region's: NCHW `f32` ->
//! quantize -> NHWC `u8` on the way in, NHWC `u8` -> dequantize -> NCHW `f32` on the way out.
//! They run once per quantized region, never per op. The rounding is qtensor's
//! (PyTorch fbgemm `Quantize`): `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)`;
//! dequantize is `(q - zp) as f32 * scale`.
//!
//! Both work on cache-sized tiles of pixels: the values of one tile are (de)quantized plane by
//! plane with qtensor's vector code (identical to its scalar rule on every path), and the
//! bytes are transposed between the tile buffer and the channels-last data while both are in
//! L1. Tiles run on rayon threads; every output value depends on one input value, so the thread
//! count never changes a result.

use rayon::prelude::*;

use qtensor::quantize::{dequantize_into_with, quantize_into_with, Affine, ElementPath};
use qtensor::DType;

use super::{ActQuant, NhwcShape};
use crate::{KernelError, Result};

/// Bytes of one tile (pixels x channels), sized to stay in L1 with its source.
const TILE_BYTES: usize = 8 << 10;

/// Pixels per tile for `c` channels (a multiple of 64 so vector loops run whole).
fn tile_pixels(c: usize) -> usize {
    (TILE_BYTES / c.max(1)).next_multiple_of(64)
}

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
    let affine = Affine::new(q.scale, q.zero_point, DType::QUInt8)?;
    let path = ElementPath::best();
    let mut y = vec![0u8; xs.len()];
    let (plane, c) = (xs.h * xs.w, xs.c);
    if xs.len() == 0 {
        return Ok(y);
    }
    if c == 1 || plane == 1 {
        // Both layouts hold the same order.
        quantize_into_with(path, x, &mut y, &affine)?;
        return Ok(y);
    }
    let tile = tile_pixels(c);
    y.par_chunks_mut(plane * c)
        .zip(x.par_chunks(plane * c))
        .try_for_each(|(image_out, image)| {
            image_out
                .par_chunks_mut(tile * c)
                .enumerate()
                .try_for_each(|(t, out)| -> Result<()> {
                    let (p0, len) = (t * tile, out.len() / c);
                    let mut planar = vec![0u8; len * c];
                    for (ch, dst) in planar.chunks_exact_mut(len).enumerate() {
                        quantize_into_with(path, &image[ch * plane + p0..][..len], dst, &affine)?;
                    }
                    interleave(&planar, len, c, out);
                    Ok(())
                })
        })?;
    Ok(y)
}

/// `out[p * c + ch] = planar[ch * len + p]`.
fn interleave(planar: &[u8], len: usize, c: usize, out: &mut [u8]) {
    if c == 3 {
        let (r, rest) = planar.split_at(len);
        let (g, b) = rest.split_at(len);
        for (((o, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
            o.copy_from_slice(&[r, g, b]);
        }
        return;
    }
    for (ch, src) in planar.chunks_exact(len).enumerate() {
        for (o, &v) in out[ch..].iter_mut().step_by(c).zip(src) {
            *o = v;
        }
    }
}

/// Dequantizes an NHWC `u8` tensor into NCHW `f32` of shape `(xs.n, xs.c, xs.h, xs.w)`.
pub fn nhwc_u8_to_nchw_f32(x: &[u8], xs: NhwcShape, q: ActQuant) -> Result<Vec<f32>> {
    xs.check("dequantize_nhwc_to_nchw", "input", x.len())?;
    qtensor::qparams::check_scale(q.scale)?;
    let path = ElementPath::best();
    let mut y = vec![0f32; xs.len()];
    let (plane, c) = (xs.h * xs.w, xs.c);
    if xs.len() == 0 {
        return Ok(y);
    }
    if c == 1 || plane == 1 {
        dequantize_into_with(path, x, &mut y, q.scale, q.zero_point)?;
        return Ok(y);
    }
    let tile = tile_pixels(1);
    y.par_chunks_mut(plane).enumerate().try_for_each(|(index, out_plane)| {
        let (n, ch) = (index / c, index % c);
        let image = &x[n * plane * c..(n + 1) * plane * c];
        out_plane
            .par_chunks_mut(tile)
            .enumerate()
            .try_for_each(|(t, out)| -> Result<()> {
                let p0 = t * tile;
                let gathered: Vec<u8> = image[p0 * c + ch..]
                    .iter()
                    .step_by(c)
                    .take(out.len())
                    .copied()
                    .collect();
                dequantize_into_with(path, &gathered, out, q.scale, q.zero_point)?;
                Ok(())
            })
    })?;
    Ok(y)
}
