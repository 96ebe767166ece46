//! x86-64 SIMD forms of quantize/dequantize. Each function computes exactly what the portable
//! rule in `quantize.rs` computes; the loops only change how many values go at once.
//!
//! Float-to-int conversion uses `cvtps2dq` under the default MXCSR rounding mode (round to
//! nearest, ties to even), which is the rule's `round_half_even`. `max_ps(t, lo)` returns `lo`
//! when `t` is NaN, matching the portable "NaN maps to qmin"; `min_ps(t, cap)` returns `cap` for
//! NaN, matching fbgemm.

use std::any::TypeId;
use std::arch::x86_64::*;

use crate::quantize::{dequantize_one, quantize_one, Affine, ElementPath, Overflow, QStorage};

/// Outputs of at least this many floats are written with non-temporal stores.
const STREAM_MIN: usize = 1 << 18;

pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
}

/// [`crate::quantize::any_non_finite_portable`] compiled for AVX-512. Safety: the CPU has
/// AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn any_non_finite_avx512(values: &[f32]) -> bool {
    crate::quantize::any_non_finite_portable(values)
}

/// [`crate::quantize::any_non_finite_portable`] compiled for AVX2. Safety: the CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn any_non_finite_avx2(values: &[f32]) -> bool {
    crate::quantize::any_non_finite_portable(values)
}

/// Byte flavour of an 8-bit storage type, or `None` for wider types (left to the portable code).
fn byte_kind<T: 'static>() -> Option<bool> {
    if TypeId::of::<T>() == TypeId::of::<u8>() {
        Some(false)
    } else if TypeId::of::<T>() == TypeId::of::<i8>() {
        Some(true)
    } else {
        None
    }
}

/// Quantizes with `path`; returns false when this type/path has no SIMD form.
pub fn quantize<T: QStorage>(path: ElementPath, src: &[f32], dst: &mut [T], p: &Affine) -> bool {
    let Some(signed) = byte_kind::<T>() else { return false };
    let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
    debug_assert_eq!(src.len(), dst.len());
    match path {
        // SAFETY: the caller checked `ElementPath::available()`, so the CPU has these features.
        ElementPath::Avx512 => unsafe { quantize_avx512(src, dst, p, signed) },
        ElementPath::Avx2 => unsafe { quantize_avx2(src, dst, p, signed) },
        ElementPath::Portable => return false,
    }
    true
}

/// Dequantizes with `path`; returns false when this type/path has no SIMD form.
pub fn dequantize<T: QStorage>(path: ElementPath, src: &[T], dst: &mut [f32], scale: f32, zero_point: i32) -> bool {
    let Some(signed) = byte_kind::<T>() else { return false };
    let src: &[u8] = bytemuck::cast_slice(src);
    debug_assert_eq!(src.len(), dst.len());
    match path {
        // SAFETY: the caller checked `ElementPath::available()`, so the CPU has these features.
        ElementPath::Avx512 => unsafe { dequantize_avx512(src, dst, scale, zero_point, signed) },
        ElementPath::Avx2 => unsafe { dequantize_avx2(src, dst, scale, zero_point, signed) },
        ElementPath::Portable => return false,
    }
    true
}

/// Scalar tail shared by the SIMD loops, storing through the byte view.
fn quantize_tail(src: &[f32], dst: &mut [u8], p: &Affine) {
    let inv = p.inv_scale();
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = quantize_one(x, inv, p.zero_point, p.qmin, p.qmax, p.overflow) as u8;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn quantize16_avx512(x: __m512, p: &Affine) -> __m512i {
    let t = _mm512_mul_ps(x, _mm512_set1_ps(p.inv_scale()));
    let zp = _mm512_set1_epi32(p.zero_point);
    match p.overflow {
        Overflow::Saturate => {
            let lo = _mm512_set1_ps((p.qmin - p.zero_point) as f32);
            let hi = _mm512_set1_ps((p.qmax - p.zero_point) as f32);
            let t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
            _mm512_add_epi32(_mm512_cvtps_epi32(t), zp)
        }
        Overflow::Fbgemm => {
            let t = _mm512_min_ps(t, _mm512_set1_ps(2_147_483_520.0));
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(t), zp);
            let r = _mm512_max_epi32(r, _mm512_set1_epi32(p.qmin));
            _mm512_min_epi32(r, _mm512_set1_epi32(p.qmax))
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn quantize_avx512(src: &[f32], dst: &mut [u8], p: &Affine, signed: bool) {
    let n = src.len();
    let mut i = 0;
    // After the lane-wise packs, dword `4 * lane + v` holds values `4 * lane..4 * lane + 4` of
    // vector `v`; this gathers them back into source order.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    while i + 64 <= n {
        // SAFETY: i + 64 <= n = src.len() = dst.len(): 64 floats read, 64 bytes written in bounds.
        unsafe {
            let s = src.as_ptr().add(i);
            let a = quantize16_avx512(_mm512_loadu_ps(s), p);
            let b = quantize16_avx512(_mm512_loadu_ps(s.add(16)), p);
            let c = quantize16_avx512(_mm512_loadu_ps(s.add(32)), p);
            let d = quantize16_avx512(_mm512_loadu_ps(s.add(48)), p);
            // Values already lie in [qmin, qmax] inside a byte type, so the saturating packs
            // are exact (two shuffles per 64 values instead of four narrowing stores).
            let ab = _mm512_packs_epi32(a, b);
            let cd = _mm512_packs_epi32(c, d);
            let bytes = if signed {
                _mm512_packs_epi16(ab, cd)
            } else {
                _mm512_packus_epi16(ab, cd)
            };
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(i) as *mut __m512i,
                _mm512_permutexvar_epi32(order, bytes),
            );
        }
        i += 64;
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n = src.len() = dst.len(), so 16 floats are read and 16 bytes written
        // inside the slices; unaligned forms are used.
        unsafe {
            let q = quantize16_avx512(_mm512_loadu_ps(src.as_ptr().add(i)), p);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q));
        }
        i += 16;
    }
    quantize_tail(&src[i..], &mut dst[i..], p);
}

#[target_feature(enable = "avx2,fma")]
fn quantize8_avx2(x: __m256, p: &Affine) -> __m256i {
    let t = _mm256_mul_ps(x, _mm256_set1_ps(p.inv_scale()));
    let zp = _mm256_set1_epi32(p.zero_point);
    match p.overflow {
        Overflow::Saturate => {
            let lo = _mm256_set1_ps((p.qmin - p.zero_point) as f32);
            let hi = _mm256_set1_ps((p.qmax - p.zero_point) as f32);
            let t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            _mm256_add_epi32(_mm256_cvtps_epi32(t), zp)
        }
        Overflow::Fbgemm => {
            let t = _mm256_min_ps(t, _mm256_set1_ps(2_147_483_520.0));
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(t), zp);
            let r = _mm256_max_epi32(r, _mm256_set1_epi32(p.qmin));
            _mm256_min_epi32(r, _mm256_set1_epi32(p.qmax))
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn quantize_avx2(src: &[f32], dst: &mut [u8], p: &Affine, signed: bool) {
    let n = src.len();
    let mut i = 0;
    // Packing restores element order after the lane-wise packs.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    while i + 32 <= n {
        // SAFETY: i + 32 <= n = src.len() = dst.len(): 32 floats read, 32 bytes written in bounds.
        unsafe {
            let s = src.as_ptr().add(i);
            let a = quantize8_avx2(_mm256_loadu_ps(s), p);
            let b = quantize8_avx2(_mm256_loadu_ps(s.add(8)), p);
            let c = quantize8_avx2(_mm256_loadu_ps(s.add(16)), p);
            let d = quantize8_avx2(_mm256_loadu_ps(s.add(24)), p);
            // Values already lie in [qmin, qmax] inside a byte type, so the saturating packs
            // are exact.
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let bytes = if signed {
                _mm256_packs_epi16(ab, cd)
            } else {
                _mm256_packus_epi16(ab, cd)
            };
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
        i += 32;
    }
    quantize_tail(&src[i..], &mut dst[i..], p);
}

fn dequantize_tail(src: &[u8], dst: &mut [f32], scale: f32, zero_point: i32, signed: bool) {
    for (d, &q) in dst.iter_mut().zip(src) {
        let q = if signed { q as i8 as i32 } else { q as i32 };
        *d = dequantize_one(q, scale, zero_point);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn dequantize_avx512(src: &[u8], dst: &mut [f32], scale: f32, zero_point: i32, signed: bool) {
    let n = src.len();
    let mut i = 0;
    let zp = _mm512_set1_epi32(zero_point);
    let s = _mm512_set1_ps(scale);
    // Align the output to 64 bytes so whole cache lines can be streamed past the caches: the
    // output is four times the input and is not read again soon.
    let misaligned = dst.as_ptr().align_offset(64).min(n);
    dequantize_tail(&src[..misaligned], &mut dst[..misaligned], scale, zero_point, signed);
    i += misaligned;
    let stream = n >= STREAM_MIN;
    while i + 64 <= n {
        // SAFETY: i + 64 <= n = src.len() = dst.len(): 64 bytes read, 64 floats written in bounds.
        unsafe {
            let b = _mm512_loadu_si512(src.as_ptr().add(i) as *const _);
            for part in 0..4 {
                let lane = match part {
                    0 => _mm512_extracti32x4_epi32::<0>(b),
                    1 => _mm512_extracti32x4_epi32::<1>(b),
                    2 => _mm512_extracti32x4_epi32::<2>(b),
                    _ => _mm512_extracti32x4_epi32::<3>(b),
                };
                let w = if signed {
                    _mm512_cvtepi8_epi32(lane)
                } else {
                    _mm512_cvtepu8_epi32(lane)
                };
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(w, zp)), s);
                let out = dst.as_mut_ptr().add(i + 16 * part);
                if stream {
                    // `out` is 64-byte aligned: i started at an aligned offset and moves by 64 floats.
                    _mm512_stream_ps(out, f);
                } else {
                    _mm512_storeu_ps(out, f);
                }
            }
        }
        i += 64;
    }
    if stream {
        _mm_sfence();
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n = src.len() = dst.len(): 16 bytes read, 16 floats written in bounds.
        unsafe {
            let b = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            let w = if signed {
                _mm512_cvtepi8_epi32(b)
            } else {
                _mm512_cvtepu8_epi32(b)
            };
            let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(w, zp));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_mul_ps(f, s));
        }
        i += 16;
    }
    dequantize_tail(&src[i..], &mut dst[i..], scale, zero_point, signed);
}

#[target_feature(enable = "avx2,fma")]
fn dequantize_avx2(src: &[u8], dst: &mut [f32], scale: f32, zero_point: i32, signed: bool) {
    let n = src.len();
    let mut i = 0;
    let zp = _mm256_set1_epi32(zero_point);
    let s = _mm256_set1_ps(scale);
    while i + 8 <= n {
        // SAFETY: i + 8 <= n = src.len() = dst.len(): 8 bytes read, 8 floats written in bounds.
        unsafe {
            let b = _mm_loadl_epi64(src.as_ptr().add(i) as *const __m128i);
            let w = if signed {
                _mm256_cvtepi8_epi32(b)
            } else {
                _mm256_cvtepu8_epi32(b)
            };
            let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(w, zp));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(f, s));
        }
        i += 8;
    }
    dequantize_tail(&src[i..], &mut dst[i..], scale, zero_point, signed);
}
