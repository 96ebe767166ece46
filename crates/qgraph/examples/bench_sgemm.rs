//! Single-thread GFLOP/s of `sgemm` in Linear's layout (`x W^T`, weight `[N, K]`) on the MiniLM
//! shapes, against `matrixmultiply` on the same operands; best of repeated runs.
//!
//! `cargo run --release -p qgraph --example bench_sgemm`

use std::time::Instant;

use qgraph::ops::gemm::{sgemm, MatRef};

fn best_gflops(flops: f64, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..5 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / 5.0);
    }
    flops / best / 1e9
}

fn main() {
    for &(m, k, n) in &[
        (64, 128, 96),
        (128, 384, 1152),
        (128, 384, 384),
        (128, 384, 1536),
        (128, 1536, 384),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let ours = best_gflops(flops, || {
            sgemm(MatRef::row_major(&x, m, k), MatRef::transposed(&w, k, n), &mut c, true)
        });
        // SAFETY: x is m x k row-major, w is n x k row-major read as k x n, c is m x n; all
        // slices hold exactly those elements and c is a unique borrow.
        let mm = best_gflops(flops, || unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                1.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        });
        println!("{m}x{k}x{n}: sgemm {ours:.1} GF/s, matrixmultiply {mm:.1} GF/s");
    }
}
