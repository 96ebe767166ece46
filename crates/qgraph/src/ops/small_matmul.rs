//! Small dense f32 matrix products for attention heads (`[S, dh] x [dh, S]` and
//! `[S, S] x [S, dh]`), register-blocked so the compiler keeps a tile of `C` in vector registers
//! while it streams rows of `B`.
//!
//! Contract: `c[i][j] = fma(a[i][p-1], b[p-1][j], .. fma(a[i][0], b[0][j], 0))`, one fused
//! multiply-add per term in increasing `p` (the reference is [`matmul_reference`]). Tiling
//! only decides which elements are computed together, never the order of an element's terms,
//! and a fused multiply-add rounds once on every path (the AVX-512 / AVX2 builds use the FMA
//! instruction, the baseline build the correctly rounded library `fma`), so every path gives
//! the same bits.

/// Borrowed row-major matrix: element `(i, j)` at `data[i * stride + j]`.
#[derive(Debug, Clone, Copy)]
pub struct RowMajor<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// `c = a b` with `c` row-major `[a.rows, b.cols]` (dense), `a.cols == b.rows`.
pub fn matmul(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32]) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert!(c.len() >= a.rows * b.cols, "output too small");
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn matmul_avx2(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32]) {
            matmul_tiled(a, b, c);
        }
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA (checked just above), the kernel's only
            // precondition beyond the shapes it asserts itself.
            unsafe { avx512::matmul(a, b, c) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the function only enables
            // those instructions and has no other precondition.
            unsafe { matmul_avx2(a, b, c) };
            return;
        }
    }
    matmul_tiled(a, b, c);
}

/// The element-by-element definition of [`matmul`], the oracle its tiled paths are tested
/// against.
pub fn matmul_reference(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32]) {
    let n = b.cols;
    for i in 0..a.rows {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..a.cols {
                acc = a.data[i * a.stride + p].mul_add(b.data[p * b.stride + j], acc);
            }
            c[i * n + j] = acc;
        }
    }
}

/// Column tiles of 32, then 16, then single columns, eight rows at a time: a tile of `C` fills
/// 16 AVX-512 registers (wider tiles measured slower: with a short inner dimension, as in
/// `q k^T`, the extra loads of `B` per step cost more than the broadcasts of `A` they save).
#[inline(always)]
fn matmul_tiled(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32]) {
    let n = b.cols;
    let mut j = 0;
    while j + 32 <= n {
        rows::<8, 32>(a, b, c, j);
        j += 32;
    }
    while j + 16 <= n {
        rows::<8, 16>(a, b, c, j);
        j += 16;
    }
    while j < n {
        rows::<8, 1>(a, b, c, j);
        j += 1;
    }
}

/// Columns `j0..j0 + NR` of every row of `c`, `MR` rows at a time, the leftover rows one by one.
#[inline(always)]
fn rows<const MR: usize, const NR: usize>(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32], j0: usize) {
    let mut i = 0;
    while i + MR <= a.rows {
        tile::<MR, NR>(a, b, c, i, j0);
        i += MR;
    }
    while i < a.rows {
        tile::<1, NR>(a, b, c, i, j0);
        i += 1;
    }
}

/// `c[i0..i0 + MR][j0..j0 + NR]`, accumulated in registers over the whole inner dimension.
#[inline(always)]
fn tile<const MR: usize, const NR: usize>(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32], i0: usize, j0: usize) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..a.cols {
        let brow: &[f32; NR] = b.data[p * b.stride + j0..][..NR].try_into().expect("NR columns");
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let x = a.data[(i0 + r) * a.stride + p];
            for (o, &y) in acc_row.iter_mut().zip(brow) {
                *o = x.mul_add(y, *o);
            }
        }
    }
    let n = b.cols;
    for (r, acc_row) in acc.iter().enumerate() {
        c[(i0 + r) * n + j0..][..NR].copy_from_slice(acc_row);
    }
}

/// The AVX-512 path: tiles of 8 rows by 32 columns (16 accumulator registers) with `A`
/// broadcast from memory and the inner dimension streamed in order, so each element gets the
/// same chain of fused multiply-adds as [`matmul_reference`]. Columns past the last multiple of
/// 32 go through the same tiles with a lane mask on the last vector.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::RowMajor;

    /// Rows of `A` per tile.
    const MR: usize = 8;

    /// [`super::matmul`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn matmul(a: RowMajor<'_>, b: RowMajor<'_>, c: &mut [f32]) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // Empty sums (and no pointer into `a` or `b`, which may hold nothing).
            c[..m * n].fill(0.0);
            return;
        }
        // The bounds every pointer below stays within: row `m - 1` of `a` reaches column `k`,
        // row `k - 1` of `b` reaches column `n`, `c` holds `m * n` values.
        assert!(
            k == 0 || a.data.len() >= (m - 1) * a.stride + k,
            "a is shorter than its shape"
        );
        assert!(
            k == 0 || b.data.len() >= (k - 1) * b.stride + n,
            "b is shorter than its shape"
        );
        assert!(c.len() >= m * n, "output too small");
        let full = 32 * (n / 32);
        let mut j = 0;
        while j < n {
            let (vectors, width) = if j < full {
                (2, 32)
            } else {
                ((n - j).div_ceil(16), n - j)
            };
            // Lanes of the last vector that hold columns of this tile.
            let last = width - 16 * (vectors - 1);
            let mask: __mmask16 = if last == 16 { 0xffff } else { (1u16 << last) - 1 };
            let mut i = 0;
            while i < m {
                let rows = if i + MR <= m { MR } else { 1 };
                // SAFETY: rows `i..i + rows` of `a` and `c` and columns `j..j + width` of `b`
                // and `c` lie inside the bounds asserted above (`rows <= m - i`,
                // `width <= n - j`); the masked lanes beyond `width` are neither read nor written.
                // The CPU has AVX-512F and FMA (this function's contract).
                unsafe {
                    let ap = a.data.as_ptr().add(i * a.stride);
                    let bp = b.data.as_ptr().add(j);
                    let cp = c.as_mut_ptr().add(i * n + j);
                    match (rows, vectors) {
                        (MR, 2) => tile::<MR, 2>(ap, a.stride, bp, b.stride, k, cp, n, mask),
                        (MR, _) => tile::<MR, 1>(ap, a.stride, bp, b.stride, k, cp, n, mask),
                        (_, 2) => tile::<1, 2>(ap, a.stride, bp, b.stride, k, cp, n, mask),
                        _ => tile::<1, 1>(ap, a.stride, bp, b.stride, k, cp, n, mask),
                    }
                }
                i += rows;
            }
            j += width.min(32);
        }
    }

    /// `c[r][..] = sum_p a[r][p] b[p][..]` for `R` rows and `V` vectors of 16 columns, the last
    /// vector limited to the lanes of `mask`.
    ///
    /// # Safety
    /// `a` addresses `R` rows of `k` values `lda` apart, `b` `k` rows `ldb` apart of
    /// `16 (V - 1)` values plus the lanes of `mask`, `c` `R` such rows `ldc` apart; the CPU has
    /// AVX-512F and FMA.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn tile<const R: usize, const V: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for p in 0..k {
            let row = b.add(p * ldb);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, y) in bv.iter_mut().enumerate() {
                *y = if v + 1 == V {
                    _mm512_maskz_loadu_ps(mask, row.add(16 * v))
                } else {
                    _mm512_loadu_ps(row.add(16 * v))
                };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                for (o, &y) in acc.iter_mut().zip(&bv) {
                    *o = _mm512_fmadd_ps(x, y, *o);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, &o) in acc.iter().enumerate() {
                let at = c.add(r * ldc + 16 * v);
                if v + 1 == V {
                    _mm512_mask_storeu_ps(at, mask, o);
                } else {
                    _mm512_storeu_ps(at, o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 2001) as f32 / 137.0 - 7.3)
            .collect()
    }

    #[test]
    fn tiled_paths_match_the_reference_bit_for_bit() {
        for &(m, k, n) in &[
            (128, 32, 128),
            (128, 128, 32),
            (7, 5, 131),
            (13, 64, 50),
            (1, 1, 1),
            (9, 3, 17),
            (3, 0, 20),
        ] {
            let stride_a = k + 3;
            let a = pseudo(m * stride_a, 1);
            let b = pseudo(k * n, 2);
            let (a, b) = (
                RowMajor {
                    data: &a,
                    rows: m,
                    cols: k,
                    stride: stride_a,
                },
                RowMajor {
                    data: &b,
                    rows: k,
                    cols: n,
                    stride: n,
                },
            );
            let mut want = vec![0.0; m * n];
            matmul_reference(a, b, &mut want);
            let mut got = vec![0.0; m * n];
            matmul(a, b, &mut got);
            assert_eq!(got, want, "dispatched path, {m}x{k}x{n}");
            let mut portable = vec![0.0; m * n];
            matmul_tiled(a, b, &mut portable);
            assert_eq!(portable, want, "portable tiled path, {m}x{k}x{n}");
            // And the products are right.
            let exact: f64 = (0..k).map(|p| a.data[p] as f64 * b.data[p * n + n - 1] as f64).sum();
            assert!((want[n - 1] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()));
        }
    }
}
