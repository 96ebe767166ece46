//! Linear backward: for `y = x W^T + b` with `x` as `[M, K]`, `W` `[N, K]`:
//! `dx = dy W`, `dW = dy^T x`, `db = sum over rows of dy`.

use crate::ops::gemm::{sgemm, MatRef};

/// Gradients of Linear. `dw` and `db` are accumulated into (they must hold `N*K` and `N`).
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    k: usize,
    n: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Vec<f32> {
    let m = dy.len() / n.max(1);
    let mut dx = vec![0.0f32; m * k];
    sgemm(MatRef::row_major(dy, m, n), MatRef::row_major(w, n, k), &mut dx, false);
    sgemm(MatRef::transposed(dy, n, m), MatRef::row_major(x, m, k), dw, true);
    if let Some(db) = db {
        for row in dy.chunks_exact(n) {
            for (b, g) in db.iter_mut().zip(row) {
                *b += g;
            }
        }
    }
    dx
}
