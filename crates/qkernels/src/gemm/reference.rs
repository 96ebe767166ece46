//! The portable reference GEMM, written for clarity: the oracle every vector path must match
//! bit for bit. `acc[i][j] = sum_k a[i][k] * w[j][k]` in wrapping i32, then the shared
//! epilogue element by element.

use super::epilogue::EpiloguePlan;
use super::pack::PackedWeights;

/// Computes every output element of the `m x N` product.
pub(crate) fn gemm(plan: &EpiloguePlan, a: &[u8], m: usize, w: &PackedWeights) {
    let (n, k) = (w.n(), w.k());
    let mut row = vec![0i32; n];
    for i in 0..m {
        let a_row = &a[i * k..(i + 1) * k];
        for (j, acc) in row.iter_mut().enumerate() {
            *acc = a_row
                .iter()
                .enumerate()
                .fold(0i32, |s, (kk, &x)| s.wrapping_add(x as i32 * w.get(j, kk) as i32));
        }
        // SAFETY: i < m and the row has exactly N elements; this path runs on one thread.
        unsafe { plan.finish_row(i, 0, &row) };
    }
}
