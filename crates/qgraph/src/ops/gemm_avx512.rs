//! The AVX-512 fp32 product behind Linear: `c = x w^T (+ c)` with `x` `[m, k]` (rows contiguous)
//! and `w` `[n, k]` (rows contiguous), the layout `torch.nn.Linear` stores its weight in.
//!
//! The product is formed transposed, `c^T = w x^T`, so the weight never needs packing: a block
//! of `x^T` (32 rows of `x` by up to [`KC`] columns, interleaved so each inner step reads 32
//! consecutive floats) is packed per call, and a register tile of [`R`] weight rows by 32 rows of
//! `x` (24 accumulators) broadcasts weight values straight from their rows. The inner dimension
//! is blocked by [`KC`] so the packed `x^T` block and the weight rows in use stay in cache; the
//! partial sums of each block are kept in a transposed scratch and finally added to `c`.
//!
//! Numerics: every element is `c_old + s` (or `s`) where `s = fma(w[j][k-1], x[i][k-1], ..
//! fma(w[j][0], x[i][0], 0))`, one fused multiply-add per term in increasing inner index, so the
//! result depends on neither the tiling nor the thread count.

use std::arch::x86_64::*;
use std::cell::RefCell;

/// Weight rows (output columns) per register tile: with [`V`] = 4 the tile holds 24 accumulators
/// and each inner step loads 4 vectors and broadcasts 6 values for 24 fused multiply-adds.
const R: usize = 6;
/// Rows of `x` per packed panel: [`V`] 16-lane vectors.
const P: usize = 16 * V;
/// Vectors of 16 lanes per panel.
const V: usize = 4;
/// Inner-dimension block: a packed panel block is `P * KC * 4` = 32 KiB, inside L1 with the
/// weight rows it meets.
const KC: usize = 128;

thread_local! {
    /// Per-thread scratch reused across calls (packed `x^T` block, transposed partial sums).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether this CPU runs [`sgemm_xwt`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
}

/// `c[i][j] = (accumulate ? c[i][j] : 0) + sum_p x[i * ldx + p] * w[j * ldw + p]`, `c` dense
/// `[m, n]`, sums as described in the module doc. Returns `false` (and leaves `c` untouched) when
/// the CPU lacks AVX-512F or FMA.
///
/// Panics if a dimension is zero or a slice is too short for its shape.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm_xwt(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    if !available() {
        return false;
    }
    assert!(m > 0 && k > 0 && n > 0, "empty product");
    assert!(x.len() >= (m - 1) * ldx + k, "x is shorter than its shape");
    assert!(w.len() >= (n - 1) * ldw + k, "w is shorter than its shape");
    assert!(c.len() >= m * n, "output too small");
    let panels = m.div_ceil(P);
    let mp = panels * P;
    SCRATCH.with(|s| {
        let (xt, ct) = &mut *s.borrow_mut();
        if xt.len() < panels * P * KC {
            xt.resize(panels * P * KC, 0.0);
        }
        if ct.len() < n * mp {
            ct.resize(n * mp, 0.0);
        }
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            pack_xt(x, ldx, m, p0, kc, &mut xt[..panels * P * KC]);
            let mut j = 0;
            while j < n {
                let rows = if j + R <= n {
                    R
                } else if j + 2 <= n {
                    2
                } else {
                    1
                };
                for panel in 0..panels {
                    let block = &xt[panel * P * KC..][..P * kc];
                    // SAFETY: weight rows `j..j + rows` (`rows <= n - j`) hold columns
                    // `p0..p0 + kc` (`p0 + kc <= k`) inside `w` (asserted above); `block` holds
                    // `kc` steps of `P` floats; `ct` rows `j..j + rows` have `mp` floats each and
                    // the tile writes columns `panel * P..(panel + 1) * P <= mp`. The CPU has
                    // AVX-512F and FMA (`available()` above).
                    unsafe {
                        let wp = w.as_ptr().add(j * ldw + p0);
                        let cp = ct.as_mut_ptr().add(j * mp + panel * P);
                        let first = p0 == 0;
                        match rows {
                            R => tile::<R>(wp, ldw, block.as_ptr(), kc, cp, mp, first),
                            2 => tile::<2>(wp, ldw, block.as_ptr(), kc, cp, mp, first),
                            _ => tile::<1>(wp, ldw, block.as_ptr(), kc, cp, mp, first),
                        }
                    }
                }
                j += rows;
            }
            p0 += kc;
        }
        unpack_add(&ct[..n * mp], mp, m, n, c, accumulate);
    });
    true
}

/// Packs columns `p0..p0 + kc` of `x` as panels of `P` rows: panel `q`, step `p`, lane `l` holds
/// `x[q * P + l][p0 + p]`, zero for rows past `m`.
fn pack_xt(x: &[f32], ldx: usize, m: usize, p0: usize, kc: usize, xt: &mut [f32]) {
    for (q, panel) in xt.chunks_exact_mut(P * KC).enumerate() {
        for l in 0..P {
            let i = q * P + l;
            if i < m {
                let row = &x[i * ldx + p0..][..kc];
                for (p, &v) in row.iter().enumerate() {
                    panel[p * P + l] = v;
                }
            } else {
                for p in 0..kc {
                    panel[p * P + l] = 0.0;
                }
            }
        }
    }
}

/// `c[i][j] = (accumulate ? c[i][j] : 0) + ct[j][i]`, in 16 x 16 blocks so both sides stay in
/// cache lines already loaded.
fn unpack_add(ct: &[f32], mp: usize, m: usize, n: usize, c: &mut [f32], accumulate: bool) {
    const B: usize = 16;
    for i0 in (0..m).step_by(B) {
        for j0 in (0..n).step_by(B) {
            for i in i0..(i0 + B).min(m) {
                let out = &mut c[i * n + j0..i * n + (j0 + B).min(n)];
                for (dj, o) in out.iter_mut().enumerate() {
                    let s = ct[(j0 + dj) * mp + i];
                    *o = if accumulate { *o + s } else { s };
                }
            }
        }
    }
}

/// `ct[r][0..P] (= or +=) sum_p w[r][p] * xt[p][0..P]` for `RR` weight rows, fused multiply-adds
/// in increasing `p`; `first` starts the sums at zero instead of loading them.
///
/// # Safety
/// `w` addresses `RR` rows of `kc` floats `ldw` apart; `xt` `kc * P` floats; `ct` `RR` rows of
/// `P` floats `ldc` apart; the CPU has AVX-512F and FMA.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile<const RR: usize>(
    w: *const f32,
    ldw: usize,
    xt: *const f32,
    kc: usize,
    ct: *mut f32,
    ldc: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; RR];
    if !first {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(ct.add(r * ldc + 16 * v));
            }
        }
    }
    for p in 0..kc {
        let mut b = [_mm512_setzero_ps(); V];
        for (v, y) in b.iter_mut().enumerate() {
            *y = _mm512_loadu_ps(xt.add(p * P + 16 * v));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_set1_ps(*w.add(r * ldw + p));
            for (a, &y) in acc.iter_mut().zip(&b) {
                *a = _mm512_fmadd_ps(s, y, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(ct.add(r * ldc + 16 * v), a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 2001) as f32 / 613.0 - 1.6)
            .collect()
    }

    /// Odd shapes, padded row strides, accumulate on and off: every element within the fp32
    /// rounding bound of an f64 product, `|got - exact| <= (k + 2) eps (|c_old| + sum |x w|)`.
    #[test]
    fn matches_an_f64_product_on_odd_shapes() {
        if !available() {
            return;
        }
        let eps = f32::EPSILON as f64 / 2.0;
        for m in 1..=20 {
            for &(k, n) in &[(1, 1), (7, 33), (45, 17), (259, 70), (300, 12), (531, 45)] {
                let (ldx, ldw) = (k + (m % 3), k + 5);
                let x = pseudo((m - 1) * ldx + k, m as u32);
                let w = pseudo((n - 1) * ldw + k, 7 + k as u32);
                for accumulate in [false, true] {
                    let c0 = pseudo(m * n, 99);
                    let mut c = c0.clone();
                    assert!(sgemm_xwt(&x, ldx, &w, ldw, m, k, n, &mut c, accumulate));
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|p| x[i * ldx + p] as f64 * w[j * ldw + p] as f64);
                            let exact: f64 = terms.clone().sum();
                            let mut size: f64 = terms.map(f64::abs).sum();
                            let mut want = exact;
                            if accumulate {
                                want += c0[i * n + j] as f64;
                                size += (c0[i * n + j] as f64).abs();
                            }
                            let err = (c[i * n + j] as f64 - want).abs();
                            assert!(
                                err <= (k + 2) as f64 * eps * size,
                                "m {m} k {k} n {n} acc {accumulate} at ({i}, {j}): {} vs {want}",
                                c[i * n + j]
                            );
                        }
                    }
                }
            }
        }
    }

    /// The sum of each element is one fma chain in increasing inner index, whatever the tiling.
    #[test]
    fn each_element_is_one_ordered_fma_chain() {
        if !available() {
            return;
        }
        let (m, k, n) = (37, 600, 29);
        let x = pseudo(m * k, 3);
        let w = pseudo(n * k, 4);
        let mut c = vec![0.0; m * n];
        assert!(sgemm_xwt(&x, k, &w, k, m, k, n, &mut c, false));
        for i in 0..m {
            for j in 0..n {
                let want = (0..k).fold(0.0f32, |s, p| w[j * k + p].mul_add(x[i * k + p], s));
                assert_eq!(c[i * n + j].to_bits(), want.to_bits(), "({i}, {j})");
            }
        }
    }
}
