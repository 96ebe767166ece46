//! Element-wise quantize and dequantize: the rounding rule, its portable form, and SIMD forms
//! chosen at run time that produce the same integers.
//!
//! The rule (PyTorch fbgemm, `Quantize<T, LEGACY=false>`):
//! `q = clamp(zero_point + round_half_even(x * (1 / scale)), qmin, qmax)`, where `1 / scale` is
//! the f32 reciprocal computed once, and the product is an f32 multiply (never a division: for
//! scale = 0.00214854861 and x = 0.273939937 the product is exactly 127.5 while the quotient is
//! 127.499992, so the two round differently).
//!
//! Dequantize: `x = (q - zero_point) as f32 * scale`.
//!
//! Two behaviours exist for values whose scaled magnitude leaves the i32 range; they agree on
//! every other input:
//! - [`Overflow::Saturate`] (the default): huge values clamp to qmin/qmax, as arithmetic says.
//! - [`Overflow::Fbgemm`] (PyTorch parity): reproduces fbgemm's 8-bit vector code, which caps the
//!   scaled value at 2147483520.0, converts with `cvtps2dq` (out-of-range and NaN give i32::MIN),
//!   adds the zero point with 32-bit wrap-around, then clamps. So +1e30 with a zero point above
//!   127 wraps to qmin, and -1e30 with a negative zero point wraps to qmax. For qint32 it
//!   reproduces fbgemm's scalar code: f32 sum of zero point and rounded value, saturated.

use rayon::prelude::*;

use crate::{DType, QError, Result};

/// How out-of-range scaled values are mapped to integers. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overflow {
    /// Clamp to [qmin, qmax]: +huge -> qmax, -huge -> qmin. NaN maps to qmin.
    #[default]
    Saturate,
    /// Bit-for-bit PyTorch/fbgemm behaviour, including its 32-bit wrap-around for huge values.
    Fbgemm,
}

/// The largest f32 below 2^31: fbgemm caps scaled values here before `cvtps2dq`.
const FBGEMM_CAP: f32 = 2_147_483_520.0;

/// Above this many elements, quantize/dequantize split the work across rayon threads.
pub const PARALLEL_THRESHOLD: usize = 1 << 18;

/// A SIMD implementation of the element-wise kernels. All give identical integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementPath {
    Portable,
    Avx2,
    Avx512,
}

impl ElementPath {
    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<ElementPath> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut paths = vec![ElementPath::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::simd::has_avx2() {
                paths.push(ElementPath::Avx2);
            }
            if crate::simd::has_avx512() {
                paths.push(ElementPath::Avx512);
            }
        }
        paths
    }

    /// The fastest path this CPU can run.
    pub fn best() -> ElementPath {
        [ElementPath::Avx512, ElementPath::Avx2]
            .into_iter()
            .find(|p| p.is_available())
            .unwrap_or(ElementPath::Portable)
    }

    /// Whether this CPU can run the path (without building the list of [`Self::available`]:
    /// per-row quantization asks on every row).
    pub fn is_available(self) -> bool {
        match self {
            ElementPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            ElementPath::Avx2 => crate::simd::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            ElementPath::Avx512 => crate::simd::has_avx512(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Quantizes one value with a precomputed reciprocal `inv_scale = 1.0 / scale`.
#[inline]
pub fn quantize_one(x: f32, inv_scale: f32, zero_point: i32, qmin: i32, qmax: i32, overflow: Overflow) -> i32 {
    let t = x * inv_scale;
    match overflow {
        Overflow::Saturate => {
            let lo = qmin as i64 - zero_point as i64;
            let hi = qmax as i64 - zero_point as i64;
            let r = if t.is_nan() {
                lo
            } else {
                (t.round_ties_even() as i64).clamp(lo, hi)
            };
            (r + zero_point as i64) as i32
        }
        Overflow::Fbgemm if (qmax as i64 - qmin as i64) <= 255 => {
            let capped = if t.is_nan() || t > FBGEMM_CAP { FBGEMM_CAP } else { t };
            let r = if capped < -2_147_483_648.0 {
                i32::MIN
            } else {
                capped.round_ties_even() as i32
            };
            r.wrapping_add(zero_point).clamp(qmin, qmax)
        }
        Overflow::Fbgemm => {
            let v = zero_point as f32 + t.round_ties_even();
            (v as f64).clamp(qmin as f64, qmax as f64) as i32
        }
    }
}

/// Dequantizes one value: `(q - zero_point) as f32 * scale`.
#[inline]
pub fn dequantize_one(q: i32, scale: f32, zero_point: i32) -> f32 {
    (q as i64 - zero_point as i64) as f32 * scale
}

/// Integer storage element of a quantized tensor.
pub trait QStorage: Copy + Send + Sync + bytemuck::Pod + 'static {
    fn from_i32(v: i32) -> Self;
    fn to_i32(self) -> i32;
}

impl QStorage for u8 {
    #[inline]
    fn from_i32(v: i32) -> Self {
        v as u8
    }
    #[inline]
    fn to_i32(self) -> i32 {
        self as i32
    }
}
impl QStorage for i8 {
    #[inline]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline]
    fn to_i32(self) -> i32 {
        self as i32
    }
}
impl QStorage for i32 {
    #[inline]
    fn from_i32(v: i32) -> Self {
        v
    }
    #[inline]
    fn to_i32(self) -> i32 {
        self
    }
}

/// Per-tensor parameters of one quantize call, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
    pub overflow: Overflow,
}

impl Affine {
    /// Checks the scale, the zero point and that [qmin, qmax] fits `dtype`.
    pub fn new(scale: f32, zero_point: i32, dtype: DType) -> Result<Affine> {
        crate::qparams::check_scale(scale)?;
        crate::qparams::check_zero_point(zero_point, dtype)?;
        Ok(Affine {
            scale,
            zero_point,
            qmin: dtype.qmin(),
            qmax: dtype.qmax(),
            overflow: Overflow::Saturate,
        })
    }

    /// Restricts the integer range (e.g. quint8 [0, 127]); must lie inside the dtype's.
    pub fn with_range(mut self, qmin: i32, qmax: i32) -> Affine {
        self.qmin = qmin.max(self.qmin);
        self.qmax = qmax.min(self.qmax);
        self
    }

    pub fn with_overflow(mut self, overflow: Overflow) -> Affine {
        self.overflow = overflow;
        self
    }

    /// The reciprocal the rule multiplies by.
    #[inline]
    pub fn inv_scale(&self) -> f32 {
        1.0 / self.scale
    }
}

/// Quantizes `src` into `dst` with the best path for this CPU, threaded for large inputs.
pub fn quantize_into<T: QStorage>(src: &[f32], dst: &mut [T], p: &Affine) -> Result<()> {
    quantize_into_with(ElementPath::best(), src, dst, p)
}

/// [`quantize_into`] on a chosen path (tests force each path the CPU supports).
pub fn quantize_into_with<T: QStorage>(path: ElementPath, src: &[f32], dst: &mut [T], p: &Affine) -> Result<()> {
    check_len("quantize output", src.len(), dst.len())?;
    check_path(path)?;
    if src.len() >= PARALLEL_THRESHOLD {
        let chunk = chunk_len(src.len());
        src.par_chunks(chunk)
            .zip(dst.par_chunks_mut(chunk))
            .for_each(|(s, d)| quantize_chunk(path, s, d, p));
    } else {
        quantize_chunk(path, src, dst, p);
    }
    Ok(())
}

/// Dequantizes `src` into `dst` with the best path for this CPU, threaded for large inputs.
pub fn dequantize_into<T: QStorage>(src: &[T], dst: &mut [f32], scale: f32, zero_point: i32) -> Result<()> {
    dequantize_into_with(ElementPath::best(), src, dst, scale, zero_point)
}

/// [`dequantize_into`] on a chosen path.
pub fn dequantize_into_with<T: QStorage>(
    path: ElementPath,
    src: &[T],
    dst: &mut [f32],
    scale: f32,
    zero_point: i32,
) -> Result<()> {
    check_len("dequantize output", src.len(), dst.len())?;
    check_path(path)?;
    crate::qparams::check_scale(scale)?;
    if src.len() >= PARALLEL_THRESHOLD {
        let chunk = chunk_len(src.len());
        src.par_chunks(chunk)
            .zip(dst.par_chunks_mut(chunk))
            .for_each(|(s, d)| dequantize_chunk(path, s, d, scale, zero_point));
    } else {
        dequantize_chunk(path, src, dst, scale, zero_point);
    }
    Ok(())
}

fn chunk_len(len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // Multiple of 64 so every chunk but the last runs whole vectors.
    len.div_ceil(threads * 4).next_multiple_of(64)
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(QError::LengthMismatch { what, expected, got })
    }
}

fn check_path(path: ElementPath) -> Result<()> {
    if path.is_available() {
        Ok(())
    } else {
        Err(QError::Unsupported(format!(
            "{path:?} is not supported by this CPU; use ElementPath::available()"
        )))
    }
}

fn quantize_chunk<T: QStorage>(path: ElementPath, src: &[f32], dst: &mut [T], p: &Affine) {
    #[cfg(target_arch = "x86_64")]
    {
        if path != ElementPath::Portable && crate::simd::quantize(path, src, dst, p) {
            return;
        }
    }
    let _ = path;
    quantize_portable(src, dst, p);
}

fn dequantize_chunk<T: QStorage>(path: ElementPath, src: &[T], dst: &mut [f32], scale: f32, zero_point: i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if path != ElementPath::Portable && crate::simd::dequantize(path, src, dst, scale, zero_point) {
            return;
        }
    }
    let _ = path;
    dequantize_portable(src, dst, scale, zero_point);
}

/// The portable reference: one value at a time with [`quantize_one`].
pub fn quantize_portable<T: QStorage>(src: &[f32], dst: &mut [T], p: &Affine) {
    let inv = p.inv_scale();
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = T::from_i32(quantize_one(x, inv, p.zero_point, p.qmin, p.qmax, p.overflow));
    }
}

/// The portable reference: one value at a time with [`dequantize_one`].
pub fn dequantize_portable<T: QStorage>(src: &[T], dst: &mut [f32], scale: f32, zero_point: i32) {
    for (d, &q) in dst.iter_mut().zip(src) {
        *d = dequantize_one(q.to_i32(), scale, zero_point);
    }
}

/// Whether any value is NaN or infinite (no early exit, so the compiler vectorizes it).
#[inline(always)]
pub(crate) fn any_non_finite_portable(values: &[f32]) -> bool {
    values.iter().fold(false, |bad, v| bad | !v.is_finite())
}

/// Returns the index and value of the first non-finite element, if any.
pub fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    first_non_finite_with(ElementPath::best(), values)
}

/// [`first_non_finite`] with the scan compiled for `path` (the same comparisons on more lanes
/// at once; tests force each path the CPU has). A path the CPU lacks scans portably.
pub fn first_non_finite_with(path: ElementPath, values: &[f32]) -> Option<(usize, f32)> {
    // A sum-free scan that the compiler vectorises; the slow search runs only on failure.
    let any = match path {
        // SAFETY: `is_available` confirmed the CPU features.
        #[cfg(target_arch = "x86_64")]
        ElementPath::Avx512 if path.is_available() => unsafe { crate::simd::any_non_finite_avx512(values) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        ElementPath::Avx2 if path.is_available() => unsafe { crate::simd::any_non_finite_avx2(values) },
        _ => any_non_finite_portable(values),
    };
    if any {
        values.iter().copied().enumerate().find(|(_, v)| !v.is_finite())
    } else {
        None
    }
}
