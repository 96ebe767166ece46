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
//! gather where available, the scalar rule otherwise). Up to 8 channels (RGB images in, a
//! segmentation head's classes out), AVX-512 VBMI byte permutes move 16 pixels of every channel
//! at once in both directions. Tiles run on rayon threads; every output value depends on one input value, so the thread
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
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if byte_permute_available() && (2..=MAX_PERMUTE_CHANNELS).contains(&c) {
        // SAFETY: AVX-512 VBMI is present, `2 <= c <= 8`, `planar` holds `c` planes of `len`
        // bytes and `out` `len * c` bytes (the caller's tile).
        done = unsafe { interleave_avx512(planar, len, c, out) };
    }
    if done == len {
        return;
    }
    if c == 3 {
        let (r, rest) = planar.split_at(len);
        let (g, b) = rest.split_at(len);
        let pixels = out[done * 3..].chunks_exact_mut(3);
        for (((o, &r), &g), &b) in pixels.zip(&r[done..]).zip(&g[done..]).zip(&b[done..len]) {
            o.copy_from_slice(&[r, g, b]);
        }
        return;
    }
    for (ch, src) in planar.chunks_exact(len).enumerate() {
        for (o, &v) in out[done * c + ch..].iter_mut().step_by(c).zip(&src[done..]) {
            *o = v;
        }
    }
}

/// Most channels the byte-permute conversions handle: 16 pixels of up to 8 channels are the
/// 128 bytes one two-table permute reads.
const MAX_PERMUTE_CHANNELS: usize = 8;

fn byte_permute_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512bw")
            && !crate::conv::forced_reference()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Byte `j` of 16 interleaved pixels of `c` channels is byte `(j % c) * 16 + j / c` of the
/// 16-byte channel chunks laid end to end (`offset` added to `j`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_index(c: usize, offset: usize) -> std::arch::x86_64::__m512i {
    let idx: [u8; 64] = std::array::from_fn(|j| {
        let j = (j + offset).min(16 * c - 1);
        ((j % c) * 16 + j / c) as u8
    });
    // SAFETY: reads the 64 bytes of `idx`.
    unsafe { std::arch::x86_64::_mm512_loadu_si512(idx.as_ptr().cast()) }
}

/// [`interleave`] 16 pixels at a time with two-table byte permutes: the channels' 16-byte
/// chunks fill two vectors (four 128-bit lanes each), and each 64 output bytes are one
/// permute of them. Returns the pixels written (a multiple of 16).
/// Safety: the CPU has AVX-512 F/BW/VBMI; `2 <= c <= 8`; `planar.len() >= c * len`,
/// `out.len() >= len * c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn interleave_avx512(planar: &[u8], len: usize, c: usize, out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    debug_assert!((2..=MAX_PERMUTE_CHANNELS).contains(&c) && planar.len() >= c * len && out.len() >= len * c);
    let bytes = 16 * c;
    // SAFETY (both): plain vector setup.
    let (lo_idx, hi_idx) = unsafe { (interleave_index(c, 0), interleave_index(c, 64)) };
    let (lo_mask, hi_mask) = (low_bytes(bytes), low_bytes(bytes.saturating_sub(64)));
    let mut p = 0;
    while p + 16 <= len {
        // SAFETY: chunk `ch` is `planar[ch * len + p..][..16]`, in bounds as `p + 16 <= len`;
        // the masked stores write `out[p * c..][..16 * c]`, in bounds for the same reason.
        unsafe {
            // Chunks go straight into their 128-bit lanes (no stack round trip, which would
            // stall on store forwarding); channels past `c` leave their lane zero.
            let chunk = |ch: usize| _mm_loadu_si128(planar.as_ptr().add(ch * len + p).cast());
            let mut a = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(chunk(0)), chunk(1));
            if c > 2 {
                a = _mm512_inserti32x4::<2>(a, chunk(2));
            }
            if c > 3 {
                a = _mm512_inserti32x4::<3>(a, chunk(3));
            }
            let mut b = _mm512_setzero_si512();
            if c > 4 {
                b = _mm512_inserti32x4::<0>(b, chunk(4));
            }
            if c > 5 {
                b = _mm512_inserti32x4::<1>(b, chunk(5));
            }
            if c > 6 {
                b = _mm512_inserti32x4::<2>(b, chunk(6));
            }
            if c > 7 {
                b = _mm512_inserti32x4::<3>(b, chunk(7));
            }
            let dst = out.as_mut_ptr().add(p * c);
            _mm512_mask_storeu_epi8(dst.cast(), lo_mask, _mm512_permutex2var_epi8(a, lo_idx, b));
            if bytes > 64 {
                _mm512_mask_storeu_epi8(dst.add(64).cast(), hi_mask, _mm512_permutex2var_epi8(a, hi_idx, b));
            }
        }
        p += 16;
    }
    p
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
    if byte_permute_available() && (2..=MAX_PERMUTE_CHANNELS).contains(&c) {
        // Tiles of pixels, each writing its range of every channel plane.
        let tile = tile_pixels(c);
        let mut tasks = Vec::new();
        for (image, out) in x.chunks_exact(plane * c).zip(y.chunks_exact_mut(plane * c)) {
            let mut planes: Vec<_> = out.chunks_exact_mut(plane).map(|p| p.chunks_mut(tile)).collect();
            for t in 0..plane.div_ceil(tile) {
                let slices: Vec<&mut [f32]> = planes.iter_mut().filter_map(|p| p.next()).collect();
                tasks.push((&image[t * tile * c..((t + 1) * tile).min(plane) * c], slices));
            }
        }
        tasks.into_par_iter().for_each(|(src, mut planes)| {
            // SAFETY: AVX-512 VBMI is present, `2 <= c <= 8`, `src` holds the tile's pixels
            // and each of the `c` planes one value per pixel.
            #[cfg(target_arch = "x86_64")]
            let done = unsafe { deinterleave_dequantize_avx512(src, c, &mut planes, q) };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for (p, pixel) in src.chunks_exact(c).enumerate().skip(done) {
                for (plane, &v) in planes.iter_mut().zip(pixel) {
                    plane[p] = dequantize_one(v as i32, q.scale, q.zero_point);
                }
            }
        });
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

/// `planes[ch][p] = (src[p * c + ch] - zp) as f32 * scale`, 16 pixels at a time: the 16 * c
/// bytes are two vectors, one two-table byte permute per channel gathers its 16 bytes, which
/// widen to f32. Returns the pixels written (a multiple of 16). The difference of two bytes is
/// exact in f32, so this is qtensor's `dequantize_one`.
/// Safety: the CPU has AVX-512 F/BW/VBMI; `2 <= c <= 8`; `src` holds whole pixels and every
/// plane at least `src.len() / c` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn deinterleave_dequantize_avx512(src: &[u8], c: usize, planes: &mut [&mut [f32]], q: ActQuant) -> usize {
    use std::arch::x86_64::*;
    let pixels = src.len() / c;
    debug_assert!((2..=MAX_PERMUTE_CHANNELS).contains(&c) && planes.len() == c);
    debug_assert!(planes.iter().all(|p| p.len() >= pixels));
    let bytes = 16 * c;
    let (lo_mask, hi_mask) = (low_bytes(bytes), low_bytes(bytes.saturating_sub(64)));
    // Channel `ch`'s 16 bytes are bytes `ch, ch + c, ...` of the pixels.
    let index: [__m512i; MAX_PERMUTE_CHANNELS] = std::array::from_fn(|ch| {
        let idx: [u8; 64] = std::array::from_fn(|j| ((j % 16) * c + ch) as u8);
        // SAFETY: reads the 64 bytes of `idx`.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    });
    let (zp, scale) = (_mm512_set1_ps(q.zero_point as f32), _mm512_set1_ps(q.scale));
    let mut p = 0;
    while p + 16 <= pixels {
        // SAFETY: the masked loads read `src[p * c..][..16 * c]`, in bounds as
        // `p + 16 <= pixels`; each plane has room for pixels `p..p + 16`.
        unsafe {
            let at = src.as_ptr().add(p * c);
            let a = _mm512_maskz_loadu_epi8(lo_mask, at.cast());
            let b = _mm512_maskz_loadu_epi8(hi_mask, at.add(64).cast());
            for (ch, plane) in planes.iter_mut().enumerate() {
                let v = _mm512_permutex2var_epi8(a, index[ch], b);
                let wide = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(v));
                let f = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(wide), zp), scale);
                _mm512_storeu_ps(plane.as_mut_ptr().add(p), f);
            }
        }
        p += 16;
    }
    p
}

/// The mask of the low `n` bytes of a 64-byte vector.
#[cfg(target_arch = "x86_64")]
fn low_bytes(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}
