//! The fp32 matrix multiply behind Linear, MatMul, Conv2d (im2col) and the recurrent cells.
//!
//! Two paths, [`SgemmPath`]:
//! - `Avx512` (CPUs with AVX-512F, the default there): the panel kernel of
//!   `gemm_avx512`. Linear and the recurrent projections call [`sgemm_weight`], which
//!   packs the weight `[N, K]` into column panels of `W^T` once and keeps them with the weight
//!   tensor ([`Tensor::derived`], dropped whenever the weight is mutated), so a call only computes;
//!   products whose `b` is row-major (MatMul, Conv2d's im2col columns) read `b`'s panels in place.
//!   Measured single-threaded on the reference machine (fast state, best of 30): 150-164 GF/s on
//!   the MiniLM shapes `128 x 384 x {384, 1152, 1536}` and `128 x 1536 x 384` (matrixmultiply:
//!   122-137), 136-147 when each call meets a weight last used long ago (in L3, as in a model
//!   run), 162 on `64 x 128 x 96` (112), 156 on `4 x 384 x 384` (19), 61 on `1 x 384 x 384` (5);
//!   one core's FMA peak is ~179 GF/s. End to end, fp32 MiniLM (batch 1, seq 128, one thread)
//!   went from 29-43 ms to 23-28 ms (best 23.0 against 29.2, per-round ratio median 1.29 over 12
//!   alternating rounds; PyTorch fp32 28.8-36.0 ms in the same session, 1.23x our time). The
//!   kept panels are a second copy of each weight (padded to 16 columns), the price of packing
//!   once.
//! - `Portable`: `matrixmultiply` (BLIS-style packing, AVX/FMA kernels chosen at run time;
//!   114-137 GF/s on those shapes, against 70-75 for the `gemm` crate on stable Rust), and for
//!   one or two rows of `x W^T` contiguous dot products against the weight rows (a gemv). Also
//!   the `Avx512` path's fallback for layouts its kernel does not read (transposed `a`, strided
//!   `b` that is not a kept weight): packing such a `W^T` per call cost more than it saved.
//!
//! `QFORGE_KERNEL=reference` selects the portable path, as for the int8 kernels.

use std::sync::OnceLock;

use qtensor::Tensor;

/// A row-major or strided view of a matrix: element (r, c) is at `r * row_stride + c * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a dense row-major `cols x rows` matrix (e.g. a Linear weight `[N, K]`
    /// read as `K x N`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// The implementations behind [`sgemm`] and [`sgemm_weight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgemmPath {
    /// `matrixmultiply` and dot products, on every CPU.
    Portable,
    /// The AVX-512 panel kernel with kept packed weights.
    Avx512,
}

impl SgemmPath {
    /// Whether this CPU runs the path.
    pub fn is_available(self) -> bool {
        match self {
            SgemmPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SgemmPath::Avx512 => super::gemm_avx512::available(),
            #[cfg(not(target_arch = "x86_64"))]
            SgemmPath::Avx512 => false,
        }
    }

    /// The fastest available path, or `Portable` when `QFORGE_KERNEL=reference` (read once).
    pub fn best() -> SgemmPath {
        static BEST: OnceLock<SgemmPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            if !qkernels::forced_reference() && SgemmPath::Avx512.is_available() {
                SgemmPath::Avx512
            } else {
                SgemmPath::Portable
            }
        })
    }
}

/// Multiply-adds (`m * k * n`) from which a row-major `b` takes the AVX-512 kernel on that path.
#[cfg(target_arch = "x86_64")]
const AVX512_MIN_WORK: usize = 1 << 15;

/// `c = a * b + (accumulate ? c : 0)`, `c` dense row-major `a.rows x b.cols`, on
/// [`SgemmPath::best`].
///
/// Panics if the views do not fit their slices or the dimensions disagree (callers check shapes
/// and report errors before calling).
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) {
    sgemm_on(SgemmPath::best(), a, b, c, accumulate)
}

/// [`sgemm`] on `path` (an unavailable path runs the portable one). The paths agree within fp32
/// rounding; each is deterministic for any thread count.
pub fn sgemm_on(path: SgemmPath, a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(a.fits() && b.fits() && c.len() >= m * n, "matrix view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Row-major `b` (MatMul, im2col columns): the AVX-512 kernel reads its panels in place.
    #[cfg(target_arch = "x86_64")]
    if path == SgemmPath::Avx512 && a.col_stride == 1 && b.col_stride == 1 && m * n * k >= AVX512_MIN_WORK {
        use super::gemm_avx512::{sgemm_panels, Panels};
        let a_rows = &a.data[..(m - 1) * a.row_stride + k];
        let panels = Panels::RowMajor {
            data: &b.data[..(k - 1) * b.row_stride + n],
            ldb: b.row_stride,
            n,
        };
        if sgemm_panels(a_rows, a.row_stride, m, k, panels, c, accumulate) {
            return;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    // Rows of `a` against contiguous columns of `b` (b = W^T with W row-major): dot products.
    if m <= 2 && a.col_stride == 1 && b.row_stride == 1 {
        for i in 0..m {
            let x = &a.data[i * a.row_stride..i * a.row_stride + k];
            for j in 0..n {
                let w = &b.data[j * b.col_stride..j * b.col_stride + k];
                let d = dot(x, w);
                let out = &mut c[i * n + j];
                *out = if accumulate { *out + d } else { d };
            }
        }
        return;
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: `fits()` checked above that every element (r, c) of both views, at
    // r * row_stride + c * col_stride, lies inside its slice; `c` holds m * n elements written
    // with row stride n and column stride 1. The slices outlive the call and `c` is not aliased
    // by `a` or `b` (it is a unique borrow).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `c = a * b`, `c` dense row-major `a.rows x n`, where row `p` of `b` is
/// `data[offsets[p]..offsets[p] + n]` (a stride-1 convolution's shifted input rows): on the
/// AVX-512 path only, which reads those rows in place. Returns `false`, writing nothing, when
/// [`SgemmPath::best`] is another path or `a`'s rows are not contiguous (the caller then
/// builds the columns itself).
///
/// Panics if `a` does not fit its slice, `offsets` is not one per column of `a`, a row ends
/// past `data`, or `c` is short.
pub fn sgemm_shifted(a: MatRef<'_>, data: &[f32], offsets: &[usize], n: usize, c: &mut [f32]) -> bool {
    let (m, k) = (a.rows, a.cols);
    assert!(
        a.fits() && offsets.len() == k && c.len() >= m * n,
        "matrix view out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if SgemmPath::best() == SgemmPath::Avx512 && a.col_stride == 1 {
        if m == 0 || n == 0 {
            return true;
        }
        use super::gemm_avx512::{sgemm_panels, Panels};
        let a_rows = &a.data[..(m - 1) * a.row_stride + k];
        return sgemm_panels(
            a_rows,
            a.row_stride,
            m,
            k,
            Panels::Shifted { data, offsets, n },
            c,
            false,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
    false
}

/// `c = x W^T + (accumulate ? c : 0)` for the weight tensor `w` (`[n, k]` row-major, as
/// `torch.nn.Linear` stores it) and `x` `[m, k]` row-major, `c` `[m, n]`, on [`SgemmPath::best`].
/// On the AVX-512 path the weight's packed panels are built on first use and kept with the
/// tensor ([`Tensor::derived`], dropped whenever the weight is mutated), so later calls only
/// compute.
///
/// Panics if `w` does not hold `n * k` elements or a slice is too short.
pub fn sgemm_weight(x: &[f32], m: usize, w: &Tensor, n: usize, k: usize, c: &mut [f32], accumulate: bool) {
    sgemm_weight_on(SgemmPath::best(), x, m, w, n, k, c, accumulate)
}

/// [`sgemm_weight`] on `path` (an unavailable path runs the portable one).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_weight_on(
    path: SgemmPath,
    x: &[f32],
    m: usize,
    w: &Tensor,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(w.numel(), n * k, "weight is not [n, k]");
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    #[cfg(target_arch = "x86_64")]
    if path == SgemmPath::Avx512 && m > 0 && n > 0 && k > 0 && path.is_available() {
        use super::gemm_avx512::{sgemm_panels, PackedPanels, Panels};
        let packed = w.derived(|w| PackedPanels::from_transposed(w.data(), n, k, k));
        // A tensor read with another shape, or carrying another derived form, packs per call.
        let fresh;
        let panels = if packed.n() == n && packed.k() == k {
            &*packed
        } else {
            fresh = PackedPanels::from_transposed(w.data(), n, k, k);
            &fresh
        };
        if sgemm_panels(x, k, m, k, Panels::Packed(panels), c, accumulate) {
            return;
        }
    }
    sgemm_on(
        SgemmPath::Portable,
        MatRef::row_major(x, m, k),
        MatRef::transposed(w.data(), k, n),
        c,
        accumulate,
    );
}

/// Dot product with 16 independent partial sums (vectorizes without fast-math).
pub fn dot(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let xs = x.chunks_exact(16);
    let ws = w.chunks_exact(16);
    let tail: f32 = xs.remainder().iter().zip(ws.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in xs.zip(ws) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
