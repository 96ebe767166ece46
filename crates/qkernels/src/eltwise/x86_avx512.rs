//! AVX-512 (F/BW/VL + FMA) element-wise kernels: 16 f32 lanes per vector. Each function takes
//! the same parameters as the reference in its op's module and evaluates the same f32
//! operations in the same order (see the module docs of `add_mul` and `cat`).
//!
//! Safety contract of every function here: the CPU has AVX-512 F/BW/VL and FMA (callers check
//! `EltwisePath::Avx512` first), and the slice lengths stated on each function hold.

use std::arch::x86_64::*;

use super::add_mul::{AddParams, MulParams};
use super::cat::RequantParams;

/// Widens 16 bytes at `p` to f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn load16(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) }))
}

/// `clamp(zp + round_half_even(t), 0, 255)` on 16 lanes, with `lo = -zp`, `hi = 255 - zp`
/// (or a raised `lo`), written as 16 bytes at `p`. `max(t, lo)` returns `lo` for a NaN `t`
/// (the second operand wins), as the reference does.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn store16(p: *mut u8, t: __m512, lo: __m512, hi: __m512, zp: __m512i) {
    let t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
    let q = _mm512_add_epi32(_mm512_cvtps_epi32(t), zp);
    // SAFETY: the caller guarantees 16 writable bytes at `p`; `q` is in [0, 255].
    unsafe { _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi32_epi8(q)) }
}

/// Quantized add of the first `len / 16 * 16` elements; returns how many it wrote.
/// `a`, `b` and `y` have the same length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) unsafe fn add(a: &[u8], b: &[u8], y: &mut [u8], p: &AddParams) -> usize {
    let n = a.len().min(b.len()).min(y.len()) / 16 * 16;
    // SAFETY: `n` elements are readable at `a`, `b` and writable at `y` (distinct slices).
    unsafe { add_raw(a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), n, p) }
}

/// [`add`] in place: `y[i] = add(y[i], other[i])` (or `add(other[i], y[i])` when `y_first` is
/// false) for the first `len / 16 * 16` elements; returns how many it wrote. Equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) unsafe fn add_in_place(y: &mut [u8], other: &[u8], y_first: bool, p: &AddParams) -> usize {
    let n = y.len().min(other.len()) / 16 * 16;
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

/// The add loop on `n` (a multiple of 16) elements at raw pointers. `y` may equal `a` or `b`:
/// each step loads its 16 elements of both inputs before it stores the same 16 outputs, and
/// no step reads an element another step stores.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn add_raw(a: *const u8, b: *const u8, y: *mut u8, n: usize, p: &AddParams) -> usize {
    match (p.rule, p.relu) {
        (super::FloatRule::Vectorized, false) => unsafe { add_impl::<true, false>(a, b, y, n, p) },
        (super::FloatRule::Vectorized, true) => unsafe { add_impl::<true, true>(a, b, y, n, p) },
        (super::FloatRule::Scalar, false) => unsafe { add_impl::<false, false>(a, b, y, n, p) },
        (super::FloatRule::Scalar, true) => unsafe { add_impl::<false, true>(a, b, y, n, p) },
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn add_impl<const FUSED_DEQUANTIZE: bool, const RELU: bool>(
    pa_ptr: *const u8,
    pb_ptr: *const u8,
    py_ptr: *mut u8,
    n: usize,
    p: &AddParams,
) -> usize {
    let (sa, sb) = (_mm512_set1_ps(p.a_scale), _mm512_set1_ps(p.b_scale));
    let (pa, pb) = (_mm512_set1_ps(p.a_premul), _mm512_set1_ps(p.b_premul));
    let (za, zb) = (
        _mm512_set1_ps(p.a_zero_point as f32),
        _mm512_set1_ps(p.b_zero_point as f32),
    );
    let inv = _mm512_set1_ps(p.inv_scale);
    let lo = _mm512_set1_ps(-p.y_zero_point as f32);
    let hi = _mm512_set1_ps((255 - p.y_zero_point) as f32);
    let zp = _mm512_set1_epi32(p.y_zero_point);
    let zero = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= n, and the caller guarantees `n` elements at each pointer.
        unsafe {
            let (qa, qb) = (load16(pa_ptr.add(i)), load16(pb_ptr.add(i)));
            let (da, db) = if FUSED_DEQUANTIZE {
                (_mm512_fmadd_ps(sa, qa, pa), _mm512_fmadd_ps(sb, qb, pb))
            } else {
                (
                    _mm512_mul_ps(_mm512_sub_ps(qa, za), sa),
                    _mm512_mul_ps(_mm512_sub_ps(qb, zb), sb),
                )
            };
            let mut c = _mm512_add_ps(da, db);
            if RELU {
                c = _mm512_max_ps(c, zero);
            }
            store16(py_ptr.add(i), _mm512_mul_ps(c, inv), lo, hi, zp);
        }
        i += 16;
    }
    n
}

/// Quantized mul of the first `len / 16 * 16` elements; returns how many it wrote. Equal
/// lengths; `p.multiplier` is finite. The products of two differences of bytes are below 2^24,
/// so the f32 product is the exact integer product.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) unsafe fn mul(a: &[u8], b: &[u8], y: &mut [u8], p: &MulParams) -> usize {
    let n = a.len().min(b.len()).min(y.len()) / 16 * 16;
    let (za, zb) = (
        _mm512_set1_ps(p.a_zero_point as f32),
        _mm512_set1_ps(p.b_zero_point as f32),
    );
    let m = _mm512_set1_ps(p.multiplier);
    let lo = _mm512_set1_ps((p.lo - p.y_zero_point) as f32);
    let hi = _mm512_set1_ps((255 - p.y_zero_point) as f32);
    let zp = _mm512_set1_epi32(p.y_zero_point);
    let (pa_ptr, pb_ptr, py_ptr) = (a.as_ptr(), b.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= n <= every length.
        unsafe {
            let da = _mm512_sub_ps(load16(pa_ptr.add(i)), za);
            let db = _mm512_sub_ps(load16(pb_ptr.add(i)), zb);
            store16(py_ptr.add(i), _mm512_mul_ps(_mm512_mul_ps(da, db), m), lo, hi, zp);
        }
        i += 16;
    }
    n
}

/// Writes `src.len() / width` rows of `width` bytes to `dst` every `stride` bytes, copied
/// (`map = None`) or requantized. `dst.len() >= (rows - 1) * stride + width`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
            // The low `width % 64` bytes (none when the row is whole vectors).
            let tail: __mmask64 = (1u64 << (width % 64)) - 1;
            for r in 0..rows {
                // SAFETY: row `r` spans `src[r * width..][..width]` and `dst[r * stride..][..width]`
                // (checked above); masked accesses touch only the selected bytes.
                unsafe {
                    let (s, d) = (s.add(r * width), d.add(r * stride));
                    let mut c = 0;
                    while c + 64 <= width {
                        _mm512_storeu_si512(d.add(c) as *mut _, _mm512_loadu_si512(s.add(c) as *const _));
                        c += 64;
                    }
                    if tail != 0 {
                        _mm512_mask_storeu_epi8(
                            d.add(c) as *mut _,
                            tail,
                            _mm512_maskz_loadu_epi8(tail, s.add(c) as *const _),
                        );
                    }
                }
            }
        }
        Some(m) => {
            let zin = _mm512_set1_ps(m.in_zero_point as f32);
            let scale = _mm512_set1_ps(m.in_scale);
            let inv = _mm512_set1_ps(m.inv_scale);
            let lo = _mm512_set1_ps(-m.out_zero_point as f32);
            let hi = _mm512_set1_ps((255 - m.out_zero_point) as f32);
            let zp = _mm512_set1_epi32(m.out_zero_point);
            let tail: __mmask16 = ((1u32 << (width % 16)) - 1) as u16;
            for r in 0..rows {
                // SAFETY: as above.
                unsafe {
                    let (s, d) = (s.add(r * width), d.add(r * stride));
                    let mut c = 0;
                    while c + 16 <= width {
                        let x = _mm512_mul_ps(_mm512_sub_ps(load16(s.add(c)), zin), scale);
                        store16(d.add(c), _mm512_mul_ps(x, inv), lo, hi, zp);
                        c += 16;
                    }
                    if tail != 0 {
                        let q =
                            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(tail, s.add(c) as *const _)));
                        let x = _mm512_mul_ps(_mm512_sub_ps(q, zin), scale);
                        let t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, inv), lo), hi);
                        let v = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(t), zp));
                        _mm_mask_storeu_epi8(d.add(c) as *mut _, tail, v);
                    }
                }
            }
        }
    }
}
