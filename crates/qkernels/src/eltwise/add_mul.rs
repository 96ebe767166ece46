//! Quantized `add` (optionally fused with ReLU) and `mul` with requantization to given output
//! parameters (PyTorch `quantized::add`, `quantized::add_relu`, `quantized::mul`, x86 kernels in
//! `QuantizedOpKernels.cpp`).
//!
//! add: `a' = dq(a)`, `b' = dq(b)` under the [`FloatRule`], `c = a' + b'` (f32), ReLU
//! `c = max(c, 0)`, `y = clamp(zp_y + round_half_even(c * (1 / s_y)), 0, 255)` with the f32
//! reciprocal. mul: integer product `p = (a - zp_a) * (b - zp_b)`, `m = s_a * s_b * (1 / s_y)`
//! (f32, left to right), `y = clamp(zp_y + round_half_even(p as f32 * m), 0, 255)`, ReLU raising
//! the lower bound to `zp_y`; the mul has one rule only (PyTorch's two loops agree).
//! Inputs are split into 64 KiB chunks across rayon threads; each element is independent, so
//! the thread count never changes a result.

use rayon::prelude::*;

use super::{check_same_len, quantize_u8, FloatRule};
use crate::conv::ActQuant;
use crate::Result;

const CHUNK: usize = 1 << 16;

/// `y = quantize(dq(a) + dq(b))`, with an optional fused ReLU. See the module docs.
#[allow(clippy::too_many_arguments)]
pub fn add(
    a: &[u8],
    a_q: ActQuant,
    b: &[u8],
    b_q: ActQuant,
    y_q: ActQuant,
    relu: bool,
    rule: FloatRule,
    y: &mut [u8],
) -> Result<()> {
    check_same_len("add", a.len(), b.len())?;
    check_same_len("add", a.len(), y.len())?;
    let inv = 1.0 / y_q.scale;
    let one = |qa: u8, qb: u8| {
        let c = rule.dequantize(qa as i32, a_q.scale, a_q.zero_point)
            + rule.dequantize(qb as i32, b_q.scale, b_q.zero_point);
        let c = if relu { c.max(0.0) } else { c };
        quantize_u8(c, inv, y_q.zero_point)
    };
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let (a, b) = (&a[i * CHUNK..][..out.len()], &b[i * CHUNK..][..out.len()]);
        run_binary(a, b, out, &one);
    });
    Ok(())
}

/// `y = requantize((a - zp_a) * (b - zp_b))`, with an optional fused ReLU. See the module docs.
pub fn mul(a: &[u8], a_q: ActQuant, b: &[u8], b_q: ActQuant, y_q: ActQuant, relu: bool, y: &mut [u8]) -> Result<()> {
    check_same_len("mul", a.len(), b.len())?;
    check_same_len("mul", a.len(), y.len())?;
    let multiplier = a_q.scale * b_q.scale * (1.0 / y_q.scale);
    let lo = if relu { y_q.zero_point as i64 } else { 0 };
    let one = |qa: u8, qb: u8| {
        let p = (qa as i32 - a_q.zero_point) * (qb as i32 - b_q.zero_point);
        let r = (p as f32 * multiplier).round_ties_even() as i64 + y_q.zero_point as i64;
        r.clamp(lo, 255) as u8
    };
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let (a, b) = (&a[i * CHUNK..][..out.len()], &b[i * CHUNK..][..out.len()]);
        run_binary(a, b, out, &one);
    });
    Ok(())
}

/// Runs `f` element by element; on x86-64 with AVX-512 or AVX2+FMA the same loop is compiled
/// for those features (identical operations, vectorized by the compiler; `mul_add` is a single
/// rounding on every path).
fn run_binary(a: &[u8], b: &[u8], y: &mut [u8], f: &(impl Fn(u8, u8) -> u8 + Sync)) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            // SAFETY: the features are present.
            return unsafe { binary_avx512(a, b, y, f) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features are present.
            return unsafe { binary_avx2(a, b, y, f) };
        }
    }
    binary_loop(a, b, y, f)
}

#[inline(always)]
fn binary_loop(a: &[u8], b: &[u8], y: &mut [u8], f: &impl Fn(u8, u8) -> u8) {
    for ((o, &qa), &qb) in y.iter_mut().zip(a).zip(b) {
        *o = f(qa, qb);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn binary_avx512(a: &[u8], b: &[u8], y: &mut [u8], f: &impl Fn(u8, u8) -> u8) {
    binary_loop(a, b, y, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn binary_avx2(a: &[u8], b: &[u8], y: &mut [u8], f: &impl Fn(u8, u8) -> u8) {
    binary_loop(a, b, y, f)
}
