//! Vectorized f32 `exp` and erf-GELU for the transformer hot loops (softmax, GELU), written so
//! the compiler turns each loop into SIMD code: no branches, no library calls, integer tricks for
//! `2^n`. Polynomials are evaluated with fused multiply-adds (`f32::mul_add`, one rounding per
//! step): the AVX-512 and AVX2 builds use the FMA instruction, a baseline build the correctly
//! rounded library `fma`, so every path gives identical bits.
//!
//! `exp(x)`: 0 below -87, otherwise `x` is clamped to `[-87, 88]` (so `2^n` stays normal), split as
//! `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `exp(r)` by the degree-7 minimax polynomial of
//! Cephes `expf` (relative error about 1e-7), and `2^n` built in the exponent bits.
//!
//! `erf(x)`: piecewise polynomial, degree 5 on each of 16 intervals of width 1/4 covering
//! `|x| < 4` (1 beyond, where erf rounds to 1 in f32), absolute error below 1e-7 against f64
//! (about one unit in the last place near 1; Abramowitz and Stegun 7.1.26, PyTorch's vectorized
//! CPU `erf`, is 1.5e-7 and needs a division and an `exp`). The 16 coefficients of each degree
//! fill one AVX-512 register, so the vector kernel looks them up with one permute per degree.
//! GELU is `0.5 x (1 + erf(x / sqrt 2))` as `torch.nn.GELU()`.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer held in the low bits.
const ROUND: f32 = 12_582_912.0;

/// `exp(x)` (see the module docs for the error bound and the clamp); exactly 0 below -87, so
/// masked softmax entries never leave subnormal values for the next matrix multiply (which would
/// slow it down many times over on x86).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let z = x * LOG2E + ROUND;
    let n = z - ROUND;
    let ni = (z.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r + 1.0);
    let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
    if underflow {
        0.0
    } else {
        e * pow2
    }
}

/// Largest float below 4: `|x|` is clamped here (erf(4) = 1 - 1.5e-8 rounds to 1 in f32).
const ERF_LIMIT: f32 = 3.999_999_8;

/// `ERF_COEFFS[d][k]`: coefficient of `t^d` on `|x|` in `[k / 4, (k + 1) / 4)`, `t = |x| - k / 4`
/// (a least-squares fit at 400 Chebyshev nodes of each interval, in f64, rounded to f32; the
/// first interval has no constant term, so erf(0) = 0 and tiny `x` keep their relative accuracy).
const ERF_COEFFS: [[f32; 16]; 6] = [
    [
        0.0, 0.2763264, 0.5204999, 0.71115565, 0.8427008, 0.92290014, 0.96610516, 0.9866717, 0.9953223, 0.9985373,
        0.999593, 0.9998994, 0.9999779, 0.9999957, 0.9999993, 0.9999999,
    ],
    [
        1.1283786,
        1.0600125,
        0.87878114,
        0.6429307,
        0.415108,
        0.23652188,
        0.1189308,
        0.052775152,
        0.02066693,
        0.0071422127,
        0.0021782052,
        0.00058623636,
        0.0001392366,
        2.9183626e-05,
        5.3979497e-06,
        8.810909e-07,
    ],
    [
        2.6990914e-05,
        -0.26492506,
        -0.43932295,
        -0.48217812,
        -0.41513017,
        -0.29568687,
        -0.17841963,
        -0.092363834,
        -0.0413315,
        -0.01606525,
        -0.0054419874,
        -0.0016103277,
        -0.00041697666,
        -9.460662e-05,
        -1.8827268e-05,
        -3.2889727e-06,
    ],
    [
        -0.37659022,
        -0.31049973,
        -0.14764586,
        0.026419945,
        0.13874203,
        0.1681414,
        0.13917269,
        0.090293676,
        0.04818368,
        0.021639822,
        0.008285691,
        0.0027266466,
        0.0007753649,
        0.00019126057,
        4.10406e-05,
        7.677236e-06,
    ],
    [
        0.0033094403,
        0.13708496,
        0.19239059,
        0.15384603,
        0.06649812,
        -0.010830577,
        -0.047941733,
        -0.04924307,
        -0.03418056,
        -0.018431308,
        -0.008114697,
        -0.0029883555,
        -0.0009333864,
        -0.00024945533,
        -5.7390916e-05,
        -1.1415479e-05,
    ],
    [
        0.103766374,
        0.04532615,
        -0.027035048,
        -0.06670918,
        -0.061061196,
        -0.030643916,
        -0.002303252,
        0.011328022,
        0.012444212,
        0.008360579,
        0.004236414,
        0.0017277073,
        0.000584262,
        0.0001665798,
        4.0459603e-05,
        8.430444e-06,
    ],
];

/// `erf(x)`: a degree-5 polynomial in `t = |x| - k / 4` on each of 16 intervals `[k / 4, (k + 1) / 4)`
/// of `|x|` up to 4, at most 1 at the top, with the sign of `x` (see the module docs for the
/// error).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    // Written as the vector `min` (NaN stays NaN, and then `k` is 0).
    let a = if ERF_LIMIT < a { ERF_LIMIT } else { a };
    let k = (a * 4.0) as i32;
    // Exact: `a` and `k / 4` are within a factor two of each other (or `k` is 0).
    let t = (k as f32).mul_add(-0.25, a);
    let k = (k & 15) as usize;
    let mut p = ERF_COEFFS[5][k];
    p = p.mul_add(t, ERF_COEFFS[4][k]);
    p = p.mul_add(t, ERF_COEFFS[3][k]);
    p = p.mul_add(t, ERF_COEFFS[2][k]);
    p = p.mul_add(t, ERF_COEFFS[1][k]);
    p = p.mul_add(t, ERF_COEFFS[0][k]);
    let p = if 1.0 < p { 1.0 } else { p };
    p.copysign(x)
}

/// `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Runs `f` compiled for AVX-512 or AVX2 (each with FMA) when the CPU has them, or as built
/// otherwise: `f` is inlined into a copy of this function built for that instruction set, so
/// callers mark the closure `#[inline(always)]`. The compiler never fuses a separate multiply
/// and add on its own, so code without `mul_add` gives the same bits on every path too.
#[inline(always)]
pub(crate) fn with_simd<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn run_avx512<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run_avx2<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        let fma = std::arch::is_x86_feature_detected!("fma");
        if fma && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F and FMA (checked just above); the function only
            // enables those instructions, it has no other precondition.
            return unsafe { run_avx512(f) };
        }
        if fma && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above, for AVX2 and FMA.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

/// Applies `f` to every element, in a loop compiled for AVX-512 or AVX2 when the CPU has them.
#[inline(always)]
fn map_inplace<F: Fn(f32) -> f32 + Copy>(x: &mut [f32], f: F) {
    with_simd(
        #[inline(always)]
        || x.iter_mut().for_each(|v| *v = f(*v)),
    );
}

/// `x[i] = exp(x[i])` for every element.
pub fn exp_inplace(x: &mut [f32]) {
    map_inplace(x, exp);
}

/// `x[i] = gelu(x[i])` (erf form) for every element; an AVX-512 kernel with the same bits when
/// the CPU has it.
pub fn gelu_erf_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX-512F and FMA (checked just above), the kernel's only
        // precondition.
        unsafe { avx512::gelu_erf_inplace(x) };
        return;
    }
    map_inplace(x, gelu_erf);
}

/// Softmax of one contiguous row in place: `exp(x - max) / sum`, as PyTorch's CPU kernel
/// (subtract the max, exponentiate, multiply by the reciprocal of the sum).
pub fn softmax_row(row: &mut [f32]) {
    with_simd(
        #[inline(always)]
        || softmax_row_body(row),
    );
}

/// Attention probabilities: each `n`-wide row of `scores` becomes
/// `softmax(x * scale + bias)` (`bias` one value per column, the key mask), as
/// [`softmax_row`] after that affine step.
///
/// Rows go eight at a time through each step in turn (affine step and maximum, then
/// exponentials and sum, then scaling): each row's arithmetic is that of [`softmax_row`], but the
/// serial folds of one row (lane maxima, lane sums) are followed by the independent work of the
/// next row instead of by work waiting on them, so the CPU overlaps them. Rows whose length is a
/// multiple of 16 take an AVX-512 kernel when the CPU has it, with the same bits.
pub fn scaled_softmax_rows(scores: &mut [f32], n: usize, scale: f32, bias: &[f32]) {
    assert_eq!(bias.len(), n, "one bias per column");
    if n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(LANES)
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has AVX-512F and FMA (checked just above), the kernel's only
        // precondition besides `n` being a multiple of 16 (checked too).
        unsafe { avx512::scaled_softmax_rows(scores, n, scale, bias) };
        return;
    }
    with_simd(
        #[inline(always)]
        || scaled_softmax_rows_portable(scores, n, scale, bias),
    );
}

/// Rows of [`scaled_softmax_rows`] per block.
const SOFTMAX_ROWS: usize = 8;

/// [`scaled_softmax_rows`] in plain Rust, the twin of its AVX-512 kernel.
#[inline(always)]
fn scaled_softmax_rows_portable(scores: &mut [f32], n: usize, scale: f32, bias: &[f32]) {
    for block in scores.chunks_mut(SOFTMAX_ROWS * n) {
        let mut max = [0.0f32; SOFTMAX_ROWS];
        for (row, max) in block.chunks_exact_mut(n).zip(&mut max) {
            for (x, &b) in row.iter_mut().zip(bias) {
                *x = *x * scale + b;
            }
            *max = row_max(row);
        }
        let mut inv = [0.0f32; SOFTMAX_ROWS];
        for ((row, inv), &max) in block.chunks_exact_mut(n).zip(&mut inv).zip(&max) {
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            *inv = 1.0 / row_sum(row);
        }
        for (row, &inv) in block.chunks_exact_mut(n).zip(&inv) {
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

const LANES: usize = 16;

/// The largest value of `row` (16 lane maxima, the tail into lane 0 first, then folded).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    for &v in chunks.remainder() {
        m[0] = if v > m[0] { v } else { m[0] };
    }
    for c in chunks {
        for l in 0..LANES {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// The sum of `row`: 16 lane sums, folded by halves ([`fold_lanes`]), then the tail's sum.
#[inline(always)]
fn row_sum(row: &[f32]) -> f32 {
    let mut s = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            s[l] += c[l];
        }
    }
    fold_lanes(s) + tail
}

/// `s[0] + .. + s[15]` as a vector register folds: lane `l` plus lane `l + 8`, then `l + 4`,
/// `l + 2`, `l + 1` (four dependent additions where a lane-order sum takes fifteen).
#[inline(always)]
fn fold_lanes(mut s: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            s[l] += s[l + half];
        }
        half /= 2;
    }
    s[0]
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let max = row_max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / row_sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// AVX-512 twins of [`exp`] and [`scaled_softmax_rows_portable`]: the same operations in the
/// same order on 16 lanes, so the same bits (the compiler's own vectorization of the portable
/// code keeps the lanes of [`exp`] in general-purpose form and runs about half as fast).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{ERF_COEFFS, ERF_LIMIT, LANES, LN2_HI, LN2_LO, LOG2E, SOFTMAX_ROWS};

    /// [`super::gelu_erf`] of every element: [`super::erf`]'s interval index picks each
    /// coefficient out of a register holding all 16 (`vpermps`), then the same operations in the
    /// same order; the tail goes through the same code under a lane mask.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn gelu_erf_inplace(x: &mut [f32]) {
        let mut table = [_mm512_setzero_ps(); 6];
        for (t, c) in table.iter_mut().zip(&ERF_COEFFS) {
            *t = _mm512_loadu_ps(c.as_ptr());
        }
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            _mm512_storeu_ps(c.as_mut_ptr(), gelu16(_mm512_loadu_ps(c.as_ptr()), &table));
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            // The lanes past the tail are neither read nor written.
            let mask: __mmask16 = (1u16 << tail.len()) - 1;
            let v = gelu16(_mm512_maskz_loadu_ps(mask, tail.as_ptr()), &table);
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, v);
        }
    }

    /// [`super::gelu_erf`] of 16 lanes, `table[d]` holding `ERF_COEFFS[d]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn gelu16(x: __m512, table: &[__m512; 6]) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        let u = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(u)));
        let a = _mm512_min_ps(_mm512_set1_ps(ERF_LIMIT), a);
        let k = _mm512_cvttps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(4.0)));
        let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(-0.25), a);
        let mut p = _mm512_permutexvar_ps(k, table[5]);
        for d in (0..5).rev() {
            p = _mm512_fmadd_ps(p, t, _mm512_permutexvar_ps(k, table[d]));
        }
        let p = _mm512_min_ps(_mm512_set1_ps(1.0), p);
        // copysign(p, u): the magnitude bits of `p`, the sign bit of `u`.
        let erf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xCA>(
            sign,
            _mm512_castps_si512(u),
            _mm512_castps_si512(p),
        ));
        _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(0.5), x),
            _mm512_add_ps(_mm512_set1_ps(1.0), erf),
        )
    }

    /// [`super::exp`] of 16 lanes: the same clamp (NaN passes through, as `f32::clamp`), the
    /// same split `x = n ln 2 + r`, polynomial and exponent, and 0 below -87.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[cfg(test)]
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn exp16(x: __m512) -> __m512 {
        // `min_ps(c, x)` returns `x` when it is NaN, as `clamp` does.
        exp16_up_to_88(_mm512_min_ps(_mm512_set1_ps(88.0), x))
    }

    /// [`super::exp`] of 16 lanes that are at most 88 (or NaN), as the softmax's `x - max`.
    /// Lanes below -87 come out 0 through the mask, so they need no clamp (whatever the
    /// arithmetic makes of them is discarded); `round(x log2 e)` is `(x log2 e + ROUND) - ROUND`
    /// in one instruction, and `vscalefps` multiplies by `2^n` exactly as the exponent bits do.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn exp16_up_to_88(x: __m512) -> __m512 {
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_maskz_scalef_ps(keep, e, n)
    }

    /// [`super::fold_lanes`] of a register.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fold_lanes(s: __m512) -> f32 {
        let s8 = _mm512_castps512_ps256(_mm512_add_ps(s, _mm512_shuffle_f32x4::<0b11_10_11_10>(s, s)));
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    /// [`super::scaled_softmax_rows`] for rows of a multiple of 16 values.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; `n` is a multiple of 16 and `bias` holds `n` values.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn scaled_softmax_rows(scores: &mut [f32], n: usize, scale: f32, bias: &[f32]) {
        debug_assert!(n.is_multiple_of(LANES) && bias.len() == n);
        let scale = _mm512_set1_ps(scale);
        for block in scores.chunks_mut(SOFTMAX_ROWS * n) {
            let mut max = [0.0f32; SOFTMAX_ROWS];
            for (row, max) in block.chunks_exact_mut(n).zip(&mut max) {
                // Lane maxima as `row_max`: `max_ps(v, m)` is `if v > m { v } else { m }`.
                let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
                for (x, b) in row.chunks_exact_mut(LANES).zip(bias.chunks_exact(LANES)) {
                    let v = _mm512_add_ps(
                        _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), scale),
                        _mm512_loadu_ps(b.as_ptr()),
                    );
                    _mm512_storeu_ps(x.as_mut_ptr(), v);
                    m = _mm512_max_ps(v, m);
                }
                // The lane maxima are never NaN (a NaN never wins `v > m`), so any order of
                // folding them gives the largest.
                *max = _mm512_reduce_max_ps(m);
            }
            let mut inv = [0.0f32; SOFTMAX_ROWS];
            for ((row, inv), &max) in block.chunks_exact_mut(n).zip(&mut inv).zip(&max) {
                let max = _mm512_set1_ps(max);
                let mut sum = _mm512_setzero_ps();
                for x in row.chunks_exact_mut(LANES) {
                    let e = exp16_up_to_88(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr()), max));
                    _mm512_storeu_ps(x.as_mut_ptr(), e);
                    sum = _mm512_add_ps(sum, e);
                }
                // As `row_sum`, whose tail is empty here (adding its zero changes no sum of
                // exponentials).
                *inv = 1.0 / fold_lanes(sum);
            }
            for (row, &inv) in block.chunks_exact_mut(n).zip(&inv) {
                let inv = _mm512_set1_ps(inv);
                for x in row.chunks_exact_mut(LANES) {
                    _mm512_storeu_ps(x.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), inv));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let want = libm::erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 1e-7, "erf({x})");
            let g = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((gelu_erf(x) as f64 - g).abs() < 1e-6 * (1.0 + g.abs()), "gelu({x})");
        }
    }

    #[test]
    fn erf_edges() {
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf(1e-30), 1e-30 * 1.128_378_6);
        assert_eq!((erf(f32::INFINITY), erf(f32::NEG_INFINITY)), (1.0, -1.0));
        assert_eq!((erf(3.999_999_8), erf(4.0), erf(1e30)), (1.0, 1.0, 1.0));
        assert!(erf(f32::NAN).is_nan() && gelu_erf(f32::NAN).is_nan());
        // Continuity across the interval edges.
        for k in 1..16 {
            let edge = k as f32 / 4.0;
            let below = f32::from_bits(edge.to_bits() - 1);
            assert!((erf(edge) - erf(below)).abs() <= 2.4e-7, "edge {edge}");
        }
    }

    #[test]
    fn simd_and_scalar_paths_agree() {
        let mut v: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 4.1e-4).collect();
        v.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            5.656_854,
            -5.656_854,
            5.7,
            -5.7,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let scalar: Vec<f32> = v.iter().map(|&x| gelu_erf(x)).collect();
        // Every tail length of the vector kernel.
        for len in [v.len(), v.len() - 1, 15, 7, 1] {
            let mut got = v[..len].to_vec();
            gelu_erf_inplace(&mut got);
            assert_eq!(bits(&got), bits(&scalar[..len]), "{len} values");
        }
        // The fallback for CPUs without AVX-512: the portable code, compiled for the vector
        // instruction set at hand.
        let mut portable = v.clone();
        map_inplace(&mut portable, gelu_erf);
        assert_eq!(bits(&portable), bits(&scalar));
    }

    #[test]
    fn scaled_softmax_matches_the_portable_path() {
        let n = 37;
        let scores: Vec<f32> = (0..13 * n).map(|i| ((i * 7919) % 1000) as f32 / 60.0 - 8.0).collect();
        let bias: Vec<f32> = (0..n).map(|j| if j % 5 == 4 { f32::MIN } else { 0.0 }).collect();
        let mut want = scores.clone();
        for row in want.chunks_exact_mut(n) {
            for (x, &b) in row.iter_mut().zip(&bias) {
                *x = *x * 0.17 + b;
            }
            softmax_row_body(row);
        }
        let mut got = scores;
        scaled_softmax_rows(&mut got, n, 0.17, &bias);
        assert_eq!(got, want);
        assert!(got
            .chunks_exact(n)
            .all(|r| r[4] == 0.0 && (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }

    #[test]
    fn vector_exp_matches_the_scalar_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            let mut xs: Vec<f32> = (-9000..=9000).map(|i| i as f32 * 0.0101).collect();
            xs.extend([
                -87.0,
                -87.000_01,
                88.0,
                88.5,
                f32::MIN,
                f32::MAX,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                1e-30,
            ]);
            xs.resize(xs.len().div_ceil(16) * 16, 0.5);
            for x in xs.chunks_exact(16) {
                let mut got = [0.0f32; 16];
                // SAFETY: the CPU has AVX-512F and FMA (checked above); `x` and `got` hold 16 values.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm512_storeu_ps(got.as_mut_ptr(), avx512::exp16(_mm512_loadu_ps(x.as_ptr())));
                }
                for (&g, &x) in got.iter().zip(x) {
                    assert_eq!(g.to_bits(), exp(x).to_bits(), "exp({x})");
                }
            }
            let mut nan = [f32::NAN; 16];
            // SAFETY: as above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(nan.as_mut_ptr(), avx512::exp16(_mm512_loadu_ps(nan.as_ptr())));
            }
            assert!(nan.iter().all(|v| v.is_nan()) && exp(f32::NAN).is_nan());
        }
    }

    #[test]
    fn scaled_softmax_kernel_matches_the_portable_path() {
        for &(rows, n) in &[(128, 128), (13, 48), (8, 16)] {
            let scores: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 7919) % 1000) as f32 / 40.0 - 12.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| if j % 7 == 6 { f32::MIN } else { 0.0 }).collect();
            let mut want = scores.clone();
            scaled_softmax_rows_portable(&mut want, n, 0.17, &bias);
            let mut got = scores;
            scaled_softmax_rows(&mut got, n, 0.17, &bias);
            assert_eq!(got, want, "{rows}x{n}");
            assert!(got
                .chunks_exact(n)
                .all(|r| r[6] == 0.0 && (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
        }
    }

    #[test]
    fn softmax_row_sums_to_one() {
        let mut r: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).sin() * 4.0).collect();
        let want: Vec<f64> = {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_row(&mut r);
        for (a, b) in r.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
    }
}
