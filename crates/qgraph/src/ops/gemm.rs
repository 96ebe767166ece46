//! The fp32 matrix multiply behind Linear, MatMul, Conv2d (im2col) and the recurrent cells.
//!
//! Large products go to `matrixmultiply` (BLIS-style packing, AVX/FMA kernels chosen at run
//! time): measured on the reference machine it reached 114-127 GF/s single-threaded on the
//! anchor shapes, against 70-75 GF/s for the `gemm` crate on stable Rust. For one or two rows
//! the packing does not pay off, so those use contiguous dot products against the `[N, K]`
//! weight rows, which stay bandwidth-bound like a BLAS gemv. On CPUs with AVX-512, large
//! products in Linear's layout (`x W^T`, both with contiguous rows) use the zmm kernel of
//! [`super::gemm_avx512`] instead (on the MiniLM shapes it measured 120-135 GF/s against
//! 115-130 for matrixmultiply; its kernel alone reaches ~168 GF/s with the weights in L1, so
//! the rest goes to streaming the weights and the transposed scratch).

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

/// Multiply-adds (`m * k * n`) from which a product without a cached weight takes the AVX-512
/// kernel (below, the dot products or matrixmultiply do as well).
#[cfg(target_arch = "x86_64")]
const AVX512_MIN_WORK: usize = 1 << 15;

/// `c = a * b + (accumulate ? c : 0)`, `c` dense row-major `a.rows x b.cols`.
///
/// Panics if the views do not fit their slices or the dimensions disagree (callers check shapes
/// and report errors before calling).
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) {
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
    #[cfg(target_arch = "x86_64")]
    if a.col_stride == 1 && b.col_stride == 1 && m * n * k >= AVX512_MIN_WORK && super::gemm_avx512::available() {
        use super::gemm_avx512::{sgemm_panels, Panels};
        let a_rows = &a.data[..(m - 1) * a.row_stride + k];
        {
            // Row-major `b` (MatMul, im2col columns): its panels are read in place.
            let data = &b.data[..(k - 1) * b.row_stride + n];
            let panels = Panels::RowMajor {
                data,
                ldb: b.row_stride,
                n,
            };
            if sgemm_panels(a_rows, a.row_stride, m, k, panels, c, accumulate) {
                return;
            }
        }
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

/// `c = x W^T + (accumulate ? c : 0)` for the weight tensor `w` (`[n, k]` row-major, as
/// `torch.nn.Linear` stores it) and `x` `[m, k]` row-major, `c` `[m, n]`. On CPUs with AVX-512 the
/// weight's packed panels are built on first use and kept with the tensor ([`Tensor::derived`],
/// dropped whenever the weight is mutated), so later calls only compute.
///
/// Panics if `w` does not hold `n * k` elements or a slice is too short.
pub fn sgemm_weight(x: &[f32], m: usize, w: &Tensor, n: usize, k: usize, c: &mut [f32], accumulate: bool) {
    assert_eq!(w.numel(), n * k, "weight is not [n, k]");
    #[cfg(target_arch = "x86_64")]
    if m > 0 && n > 0 && k > 0 && super::gemm_avx512::available() {
        use super::gemm_avx512::{sgemm_panels, PackedPanels, Panels};
        let packed = w.derived(|w| PackedPanels::from_transposed(w.data(), n, k, k));
        if packed.n() == n && packed.k() == k && sgemm_panels(x, k, m, k, Panels::Packed(&packed), c, accumulate) {
            return;
        }
    }
    sgemm(
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
