//! AVX2 + FMA element-wise kernels: 8 f32 lanes per vector, same operations and order as the
//! reference of each op (see the module docs of `add_mul` and `cat`).
//!
//! Safety contract of every function here: the CPU has AVX2 and FMA (callers check
//! `EltwisePath::Avx2` first), and the slice lengths stated on each function hold.

use std::arch::x86_64::*;

use super::add_mul::{AddParams, MulParams};
use super::cat::RequantParams;

/// Widens 8 bytes at `p` to f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p as *const __m128i) }))
}

/// `clamp(zp + round_half_even(t), 0, 255)` on 8 lanes (`lo = -zp` or raised, `hi = 255 - zp`;
/// a NaN `t` becomes `lo`), written as 8 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store8(p: *mut u8, t: __m256, lo: __m256, hi: __m256, zp: __m256i) {
    let t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
    let q = _mm256_add_epi32(_mm256_cvtps_epi32(t), zp);
    // Values are in [0, 255]: pack to u16 then u8 within each 128-bit lane, then gather the
    // two lanes' low dwords.
    let w = _mm256_packus_epi16(_mm256_packus_epi32(q, q), _mm256_setzero_si256());
    let v = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: the caller guarantees 8 writable bytes at `p`.
    unsafe { _mm_storel_epi64(p as *mut __m128i, _mm256_castsi256_si128(v)) }
}

/// Quantized add of the first `len / 8 * 8` elements; returns how many it wrote.
/// `a`, `b` and `y` have the same length.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn add(a: &[u8], b: &[u8], y: &mut [u8], p: &AddParams) -> usize {
    let n = a.len().min(b.len()).min(y.len()) / 8 * 8;
    // SAFETY: `n` elements are readable at `a`, `b` and writable at `y` (distinct slices).
    unsafe { add_raw(a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), n, p) }
}

/// [`add`] in place: `y[i] = add(y[i], other[i])` (or `add(other[i], y[i])` when `y_first` is
/// false) for the first `len / 8 * 8` elements; returns how many it wrote. Equal lengths.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn add_in_place(y: &mut [u8], other: &[u8], y_first: bool, p: &AddParams) -> usize {
    let n = y.len().min(other.len()) / 8 * 8;
    let (o, y) = (other.as_ptr(), y.as_mut_ptr());
    let (a, b) = if y_first {
        (y.cast_const(), o)
    } else {
        (o, y.cast_const())
    };
    // SAFETY: `n` elements are readable at `other` and readable and writable at `y`; `add_raw`
    // allows its output to be one of its inputs.
    unsafe { add_raw(a, b, y, n, p) }
}

/// The add loop on `n` (a multiple of 8) elements at raw pointers. `y` may equal `a` or `b`:
/// each step loads its 8 elements of both inputs before it stores the same 8 outputs, and
/// no step reads an element another step stores.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_raw(a: *const u8, b: *const u8, y: *mut u8, n: usize, p: &AddParams) -> usize {
    match (p.rule, p.relu) {
        (super::FloatRule::Vectorized, false) => unsafe { add_impl::<true, false>(a, b, y, n, p) },
        (super::FloatRule::Vectorized, true) => unsafe { add_impl::<true, true>(a, b, y, n, p) },
        (super::FloatRule::Scalar, false) => unsafe { add_impl::<false, false>(a, b, y, n, p) },
        (super::FloatRule::Scalar, true) => unsafe { add_impl::<false, true>(a, b, y, n, p) },
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_impl<const FUSED_DEQUANTIZE: bool, const RELU: bool>(
    pa_ptr: *const u8,
    pb_ptr: *const u8,
    py_ptr: *mut u8,
    n: usize,
    p: &AddParams,
) -> usize {
    let (sa, sb) = (_mm256_set1_ps(p.a_scale), _mm256_set1_ps(p.b_scale));
    let (pa, pb) = (_mm256_set1_ps(p.a_premul), _mm256_set1_ps(p.b_premul));
    let (za, zb) = (
        _mm256_set1_ps(p.a_zero_point as f32),
        _mm256_set1_ps(p.b_zero_point as f32),
    );
    let inv = _mm256_set1_ps(p.inv_scale);
    let lo = _mm256_set1_ps(-p.y_zero_point as f32);
    let hi = _mm256_set1_ps((255 - p.y_zero_point) as f32);
    let zp = _mm256_set1_epi32(p.y_zero_point);
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n, and the caller guarantees `n` elements at each pointer.
        unsafe {
            let (qa, qb) = (load8(pa_ptr.add(i)), load8(pb_ptr.add(i)));
            let (da, db) = if FUSED_DEQUANTIZE {
                (_mm256_fmadd_ps(sa, qa, pa), _mm256_fmadd_ps(sb, qb, pb))
            } else {
                (
                    _mm256_mul_ps(_mm256_sub_ps(qa, za), sa),
                    _mm256_mul_ps(_mm256_sub_ps(qb, zb), sb),
                )
            };
            let mut c = _mm256_add_ps(da, db);
            if RELU {
                c = _mm256_max_ps(c, zero);
            }
            store8(py_ptr.add(i), _mm256_mul_ps(c, inv), lo, hi, zp);
        }
        i += 8;
    }
    n
}

/// Quantized mul of the first `len / 8 * 8` elements; returns how many it wrote. Equal lengths;
/// `p.multiplier` is finite (products of byte differences are exact in f32).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn mul(a: &[u8], b: &[u8], y: &mut [u8], p: &MulParams) -> usize {
    let n = a.len().min(b.len()).min(y.len()) / 8 * 8;
    let (za, zb) = (
        _mm256_set1_ps(p.a_zero_point as f32),
        _mm256_set1_ps(p.b_zero_point as f32),
    );
    let m = _mm256_set1_ps(p.multiplier);
    let lo = _mm256_set1_ps((p.lo - p.y_zero_point) as f32);
    let hi = _mm256_set1_ps((255 - p.y_zero_point) as f32);
    let zp = _mm256_set1_epi32(p.y_zero_point);
    let (pa_ptr, pb_ptr, py_ptr) = (a.as_ptr(), b.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= every length.
        unsafe {
            let da = _mm256_sub_ps(load8(pa_ptr.add(i)), za);
            let db = _mm256_sub_ps(load8(pb_ptr.add(i)), zb);
            store8(py_ptr.add(i), _mm256_mul_ps(_mm256_mul_ps(da, db), m), lo, hi, zp);
        }
        i += 8;
    }
    n
}

/// Writes `src.len() / width` rows of `width` bytes to `dst` every `stride` bytes, copied
/// (`map = None`) or requantized; the last `width % 8` (or `% 32` for copies) of a row go
/// through the reference. `dst.len() >= (rows - 1) * stride + width`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn cat_rows(
    src: &[u8],
    width: usize,
    dst: &mut [std::mem::MaybeUninit<u8>],
    stride: usize,
    map: Option<&RequantParams>,
) {
    if width == 0 {
        return;
    }
    let rows = src.len() / width;
    assert!(
        rows == 0 || dst.len() >= (rows - 1) * stride + width,
        "cat_rows: destination too short"
    );
    // Bytes are only written through `d` (the destination may be uninitialized).
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u8);
    match map {
        None => {
            for r in 0..rows {
                // SAFETY: row `r` spans `src[r * width..][..width]` and `dst[r * stride..][..width]`.
                unsafe {
                    let (s, d) = (s.add(r * width), d.add(r * stride));
                    let mut c = 0;
                    while c + 32 <= width {
                        _mm256_storeu_si256(d.add(c) as *mut _, _mm256_loadu_si256(s.add(c) as *const _));
                        c += 32;
                    }
                    while c < width {
                        *d.add(c) = *s.add(c);
                        c += 1;
                    }
                }
            }
        }
        Some(m) => {
            let zin = _mm256_set1_ps(m.in_zero_point as f32);
            let scale = _mm256_set1_ps(m.in_scale);
            let inv = _mm256_set1_ps(m.inv_scale);
            let lo = _mm256_set1_ps(-m.out_zero_point as f32);
            let hi = _mm256_set1_ps((255 - m.out_zero_point) as f32);
            let zp = _mm256_set1_epi32(m.out_zero_point);
            for r in 0..rows {
                // SAFETY: as above.
                unsafe {
                    let (s, d) = (s.add(r * width), d.add(r * stride));
                    let mut c = 0;
                    while c + 8 <= width {
                        let x = _mm256_mul_ps(_mm256_sub_ps(load8(s.add(c)), zin), scale);
                        store8(d.add(c), _mm256_mul_ps(x, inv), lo, hi, zp);
                        c += 8;
                    }
                    while c < width {
                        *d.add(c) = m.one(*s.add(c));
                        c += 1;
                    }
                }
            }
        }
    }
}
