//! Single-thread GFLOP/s of the fp32 products in Linear's layout (`x W^T`, weight `[N, K]`):
//! `sgemm_weight` (weight packed once and kept with the tensor, as Linear runs), `sgemm` (no kept
//! weight) and `matrixmultiply` on the same operands; best of repeated runs, MiniLM shapes first.
//!
//! `cargo run --release -p qgraph --example bench_sgemm [-- --shape MxKxN] [--threads T]` (1 thread
//! unless told).

use std::time::Instant;

use qgraph::ops::gemm::{sgemm, sgemm_weight, MatRef};
use qtensor::Tensor;

/// Weights cycled through for the cold-weight rate: 16 MiniLM-sized weights exceed L2 many times.
const COLD_WEIGHTS: usize = 16;

fn best_gflops(flops: f64, mut f: impl FnMut()) -> f64 {
    let reps = ((2e7 / flops) as usize).clamp(1, 200);
    let mut best = f64::INFINITY;
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    flops / best / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut shapes = vec![
        (128, 384, 384),
        (128, 384, 1536),
        (128, 1536, 384),
        (128, 384, 1152),
        (64, 128, 96),
        (1, 384, 384),
        (4, 384, 384),
        (16, 384, 1536),
        (37, 300, 70),
    ];
    if let Some(i) = args.iter().position(|a| a == "--shape") {
        let dims: Vec<usize> = args[i + 1]
            .split('x')
            .map(|d| d.parse().expect("--shape MxKxN"))
            .collect();
        shapes = vec![(dims[0], dims[1], dims[2])];
    }
    let threads: usize = match args.iter().position(|a| a == "--threads") {
        Some(i) => args[i + 1].parse().expect("--threads T"),
        None => 1,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| run(&shapes));
}

fn run(shapes: &[(usize, usize, usize)]) {
    for &(m, k, n) in shapes {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let wt = Tensor::new([n, k], w.clone()).expect("n * k elements");
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let kept = best_gflops(flops, || sgemm_weight(&x, m, &wt, n, k, &mut c, true));
        // As in a model: each call meets a weight last used many calls ago (out of L2, in L3).
        let cold_weights: Vec<Tensor> = (0..COLD_WEIGHTS)
            .map(|s| Tensor::new([n, k], w.iter().map(|v| v * (1.0 + s as f32 * 1e-3)).collect()).unwrap())
            .collect();
        let mut next = 0;
        let cold = best_gflops(flops, || {
            sgemm_weight(&x, m, &cold_weights[next % COLD_WEIGHTS], n, k, &mut c, true);
            next += 1;
        });
        let per_call = best_gflops(flops, || {
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
        // The same product with `b = W^T` stored row-major (`[K, N]`, MatMul's and im2col's layout).
        let b: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let row_major = best_gflops(flops, || {
            sgemm(MatRef::row_major(&x, m, k), MatRef::row_major(&b, k, n), &mut c, true)
        });
        // SAFETY: as above, with b k x n row-major.
        let mm_row_major = best_gflops(flops, || unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                1.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        });
        println!(
            "{m}x{k}x{n}: x W^T: kept weight {kept:.1} GF/s (cold {cold:.1}), sgemm {per_call:.1}, matrixmultiply {mm:.1}; \
             row-major b: sgemm {row_major:.1}, matrixmultiply {mm_row_major:.1}"
        );
    }
}
