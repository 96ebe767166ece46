//! Per-call activation quantization for dynamic Linear, as PyTorch's fbgemm dynamic Linear
//! does it: min and max over the whole f32 input, fbgemm `ChooseQuantizationParams` (qmin 0,
//! qmax 255, optional reduce_range), then the qtensor quantize rule
//! `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)`.

use crate::{KernelError, Result};
use qtensor::quantize::{quantize_into, Affine};
use qtensor::DType;

const LANES: usize = 16;

/// `(min, max)` of `x`, or an error naming the first non-finite value. Written in 16 lanes so
/// the compiler vectorizes it (a plain fold over `f32::min` does not, because of NaN rules).
pub fn finite_min_max(x: &[f32]) -> Result<(f32, f32)> {
    if x.is_empty() {
        return Err(KernelError::Shape {
            op: "finite_min_max",
            detail: "the input is empty; at least one value is needed for a range".into(),
        });
    }
    let (min, max, all_finite) = lanes_min_max_dispatch(x);
    if !all_finite {
        let (index, value) = x
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .map(|(i, &v)| (i, v))
            .unwrap();
        return Err(KernelError::Quant(qtensor::QError::NonFinite {
            what: "dynamic activations",
            index,
            value,
        }));
    }
    Ok((min, max))
}

/// The 16-lane min/max loop, compiled for AVX-512 or AVX2 when the CPU has them (the same
/// comparisons in every build, so the same result).
fn lanes_min_max_dispatch(x: &[f32]) -> (f32, f32, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(x: &[f32]) -> (f32, f32, bool) {
            lanes_min_max(x)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32]) -> (f32, f32, bool) {
            lanes_min_max(x)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present (checked above); the function has no other precondition.
            return unsafe { avx512(x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above); the function has no other precondition.
            return unsafe { avx2(x) };
        }
    }
    lanes_min_max(x)
}

#[inline(always)]
fn lanes_min_max(x: &[f32]) -> (f32, f32, bool) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut all_finite = true;
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            let v = chunk[l];
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
            all_finite &= v.is_finite();
        }
    }
    for &v in rest {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        all_finite &= v.is_finite();
    }
    let min = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let max = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    (min, max, all_finite)
}

/// Quantizes `x` to u8 with per-tensor parameters chosen from its range, as PyTorch's dynamic
/// Linear does (`reduce_range = true` for PyTorch parity on x86). Returns `(scale, zero_point)`.
pub fn quantize_dynamic_per_tensor(x: &[f32], out: &mut [u8], reduce_range: bool) -> Result<(f32, i32)> {
    let (min, max) = finite_min_max(x)?;
    let (scale, zero_point) = qtensor::choose_dynamic_qparams(min, max, 0, 255, reduce_range)?;
    quantize_into(x, out, &Affine::new(scale, zero_point, DType::QUInt8)?)?;
    Ok((scale, zero_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_matches_a_fold_and_rejects_nan() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 1000) as f32 - 500.5).collect();
        assert_eq!(finite_min_max(&x).unwrap(), qtensor::min_max(&x));
        let mut y = x.clone();
        y[1001] = f32::NAN;
        assert!(matches!(finite_min_max(&y), Err(KernelError::Quant(_))));
        assert!(finite_min_max(&[]).is_err());
    }
}
