//! Times the fp32 transformer pieces at MiniLM's shape (batch 1, sequence 128, hidden 384,
//! 12 heads, intermediate 1536) on one thread: attention core from a packed QKV projection,
//! its per-head steps, and GELU. `cargo run --release -p qgraph --example bench_attention [reps]`.

use std::time::Instant;

use qgraph::ops::attention::{attention, QkvViews};
use qgraph::ops::vmath::gelu_erf_inplace;
use qgraph::AttentionAttrs;
use qtensor::Tensor;

fn best_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[reps / 2])
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let (s, hidden, heads) = (128, 384, 12);
    let qkv: Vec<f32> = (0..s * 3 * hidden)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let qkv = Tensor::new([1, s, 3 * hidden], qkv).expect("shape");
    let attrs = AttentionAttrs {
        num_heads: heads,
        hidden_size: hidden,
    };
    let bias = vec![0.0f32; s];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    parts();
    pool.install(|| {
        let (best, median) = best_ms(reps, || {
            std::hint::black_box(attention(&attrs, 1, s, QkvViews::packed(&qkv), &bias));
        });
        println!("attention 1x{s}x{hidden}/{heads}: best {best:.3} ms, median {median:.3} ms");
        let mut x: Vec<f32> = (0..s * 1536).map(|i| ((i * 31) % 1000) as f32 / 200.0 - 2.5).collect();
        let (best, median) = best_ms(reps, || gelu_erf_inplace(std::hint::black_box(&mut x)));
        println!("gelu {}: best {best:.3} ms, median {median:.3} ms", s * 1536);
    });
}

/// The three steps of one head, on their own.
fn parts() {
    use qgraph::ops::small_matmul::{matmul, RowMajor};
    let s = 128;
    let q: Vec<f32> = (0..s * 32).map(|i| (i % 17) as f32 * 0.1).collect();
    let kt: Vec<f32> = (0..s * 32).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut sc = vec![0.0f32; s * s];
    let (b, m) = best_ms(2000, || {
        matmul(
            RowMajor {
                data: &q,
                rows: s,
                cols: 32,
                stride: 32,
            },
            RowMajor {
                data: &kt,
                rows: 32,
                cols: s,
                stride: s,
            },
            &mut sc,
        )
    });
    println!("qk 128x32x128: best {b:.4} median {m:.4}");
    let mut out = vec![0.0f32; s * 32];
    let (b, m) = best_ms(2000, || {
        matmul(
            RowMajor {
                data: &sc,
                rows: s,
                cols: s,
                stride: s,
            },
            RowMajor {
                data: &q,
                rows: s,
                cols: 32,
                stride: 32,
            },
            &mut out,
        )
    });
    println!("pv 128x128x32: best {b:.4} median {m:.4}");
    let bias = vec![0.0f32; s];
    let (b, m) = best_ms(2000, || qgraph::ops::vmath::scaled_softmax_rows(&mut sc, s, 0.1, &bias));
    println!("softmax 128x128: best {b:.4} median {m:.4}");
}
