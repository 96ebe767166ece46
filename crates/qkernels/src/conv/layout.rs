//! Boundary conversions between the user's layout and the quantized region's: NCHW `f32` ->
//! quantize -> NHWC `u8` on the way in, NHWC `u8` -> dequantize -> NCHW `f32` on the way out.
//! They run once per quantized region, never per op. The rounding is qtensor's
//! (PyTorch fbgemm `Quantize`): `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)`;
//! dequantize is `(q - zp) as f32 * scale`.
//!
//! Both work on cache-sized tiles of pixels. On the way in, the values of one tile are
//! quantized plane by plane with qtensor's vector code (identical to its scalar rule on every
//! path) and the bytes are transposed from the tile buffer into the channels-last data while both
//! are in L1; on the way out, each output plane reads its channel with a stride (an AVX-512
//! gather where available, the scalar rule otherwise). Tiles run on rayon threads; every output value depends on one input value, so the thread
//! count never changes a result.

use rayon::prelude::*;

use qtensor::quantize::{dequantize_into_with, dequantize_one, quantize_into_with, Affine, ElementPath};
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
    if xs.is_empty() {
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
            image_out.par_chunks_mut(tile * c).enumerate().try_for_each_init(
                || vec![0u8; tile * c],
                |planar, (t, out)| -> Result<()> {
                    let (p0, len) = (t * tile, out.len() / c);
                    let planar = &mut planar[..len * c];
                    for (ch, dst) in planar.chunks_exact_mut(len).enumerate() {
                        quantize_into_with(path, &image[ch * plane + p0..][..len], dst, &affine)?;
                    }
                    interleave(planar, len, c, out);
                    Ok(())
                },
            )
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
    if xs.is_empty() {
        return Ok(y);
    }
    if c == 1 || plane == 1 {
        dequantize_into_with(path, x, &mut y, q.scale, q.zero_point)?;
        return Ok(y);
    }
    let tile = tile_pixels(1);
    let gather = gather_available() && plane * c + 4 <= i32::MAX as usize;
    y.par_chunks_mut(plane).enumerate().try_for_each(|(index, out_plane)| {
        let (n, ch) = (index / c, index % c);
        let image = &x[n * plane * c..(n + 1) * plane * c];
        out_plane
            .par_chunks_mut(tile)
            .enumerate()
            .try_for_each(|(t, out)| -> Result<()> {
                let p0 = t * tile;
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if gather {
                    // SAFETY: AVX-512 F is present and the image is shorter than i32::MAX.
                    done = unsafe { dequantize_strided_avx512(image, c, ch, p0, out, q) };
                }
                let strided = image[(p0 + done) * c + ch..].iter().step_by(c);
                for (o, &v) in out[done..].iter_mut().zip(strided) {
                    *o = dequantize_one(v as i32, q.scale, q.zero_point);
                }
                Ok(())
            })
    })?;
    Ok(y)
}

fn gather_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && !crate::conv::forced_reference()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i] = (image[(p0 + i) * c + ch] - zp) as f32 * scale` for the leading pixels whose
/// 4-byte gather stays inside `image`, 16 at a time; returns how many it wrote. The difference
/// of two bytes is exact in f32, so this is qtensor's `dequantize_one`.
/// Safety: the CPU has AVX-512 F and `image.len() < i32::MAX`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dequantize_strided_avx512(
    image: &[u8],
    c: usize,
    ch: usize,
    p0: usize,
    out: &mut [f32],
    q: ActQuant,
) -> usize {
    use std::arch::x86_64::*;
    // Pixels whose last gathered byte `(p0 + i + 15) * c + ch + 3` is inside the image.
    let fit = (image.len().saturating_sub(ch + 4) / c + 1).saturating_sub(p0 + 15);
    let n = out.len().min(fit) / 16 * 16;
    let lanes = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(c as i32),
    );
    let (zp, scale, low) = (
        _mm512_set1_ps(q.zero_point as f32),
        _mm512_set1_ps(q.scale),
        _mm512_set1_epi32(0xff),
    );
    let mut i = 0;
    while i < n {
        let idx = _mm512_add_epi32(lanes, _mm512_set1_epi32(((p0 + i) * c + ch) as i32));
        // SAFETY: every lane reads 4 bytes at `(p0 + i + lane) * c + ch`, inside `image` by the
        // choice of `n`; `out[i..i + 16]` exists.
        unsafe {
            let v = _mm512_and_si512(_mm512_i32gather_epi32::<1>(idx, image.as_ptr() as *const _), low);
            let f = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(v), zp), scale);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), f);
        }
        i += 16;
    }
    n
}
