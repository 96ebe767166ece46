//! Times `DynamicLinear::forward` (per-row activation quantization, int8 GEMM, f32 epilogue) at
//! MiniLM's Linear shapes on one thread, best and median of many calls:
//! `cargo run --release -p qapi --example bench_dynamic_linear [reps]`.

use std::time::Instant;

use qapi::benchmark::normal;
use qapi::dynamic::{DynamicConfig, DynamicLinear};
use qtensor::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for (m, k, n) in [(128, 384, 1152), (128, 384, 384), (128, 384, 1536), (128, 1536, 384)] {
        let w = Tensor::new([n, k], normal(n * k, 1).iter().map(|v| v * 0.05).collect())?;
        let b = Tensor::new([n], normal(n, 2))?;
        let x = Tensor::new([m, k], normal(m * k, 3))?;
        let linear = DynamicLinear::new(&w, Some(&b), DynamicConfig::qforge())?;
        let mut times = pool.install(|| -> Result<Vec<f64>, qapi::ApiError> {
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(linear.forward(&x)?);
                    Ok(t.elapsed().as_secs_f64() * 1e3)
                })
                .collect()
        })?;
        times.sort_by(f64::total_cmp);
        println!(
            "dynamic linear {m}x{k}x{n}: best {:.3} ms, median {:.3} ms",
            times[0],
            times[reps / 2]
        );
    }
    Ok(())
}
