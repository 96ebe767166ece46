//! GEMM benchmark suite: `cargo xtask bench gemm [--json FILE]`.
//!
//! For each M x K x N shape, thread count (1, 2) and available path: the static requantizing
//! GEMM (`u8s8_requant_u8`) and the dynamic one (`u8s8_f32_dynamic`: `gemm_f32_dynamic`, i.e.
//! min/max of the f32 input, per-tensor quantization with reduce_range, GEMM with f32 output,
//! into buffers reused between calls as a caller would). Prints a table and writes
//! one JSON object per line to FILE. The reference path is measured on the small shapes only.
//! `--path NAME` measures a single path, `--shape MxKxN` (repeatable) chosen shapes and
//! `--threads T` one thread count.

use qkernels::gemm::{
    available_paths, best_path, gemm_f32_dynamic, gemm_u8s8, ActivationQuant, Dequantize, DynamicGranularity,
    DynamicScratch, Epilogue, GemmConfig, GemmOutput, KernelPath, PackedWeights, Requantize, WeightQuant,
};
use std::io::Write;
use std::time::{Duration, Instant};

/// The six shapes, then MiniLM's (BERT, hidden 384: QKV, attention out, FFN in / out).
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 768, 768),
    (16, 768, 768),
    (128, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (512, 1024, 1024),
    (128, 384, 1152),
    (128, 384, 384),
    (128, 384, 1536),
    (128, 1536, 384),
];

/// Median time per call over 15 samples of about 20 ms, and the fastest single call seen
/// (on a shared machine the fastest call is the best estimate of the uncontended speed).
fn time_ns(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(100));
    let per_sample = ((Duration::from_millis(20).as_nanos() / once.as_nanos()) as usize).clamp(1, 10_000);
    let mut best = f64::INFINITY;
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_sample {
                let call = Instant::now();
                f();
                best = best.min(call.elapsed().as_nanos() as f64);
            }
            t.elapsed().as_nanos() as f64 / per_sample as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], best)
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.next() as f32 / u32::MAX as f32).sum::<f32>() - 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let mut json = json_path.map(|p| std::fs::File::create(&p).unwrap_or_else(|e| panic!("cannot write {p}: {e}")));
    // `--path NAME` restricts the run to one path (and the reference is skipped unless named).
    let only = args
        .iter()
        .position(|a| a == "--path")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let paths: Vec<KernelPath> = available_paths()
        .into_iter()
        .filter(|p| only.as_deref().is_none_or(|name| p.name() == name))
        .collect();
    println!(
        "gemm: paths {:?}, best {}",
        paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
        best_path()
    );
    println!(
        "{:<18} {:>5} {:>5} {:>5} {:>3} {:<11} {:>12} {:>9} {:>9}",
        "name", "m", "k", "n", "thr", "path", "median_us", "GOP/s", "best"
    );
    let values =
        |flag: &str| -> Vec<String> { args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect() };
    let shapes: Vec<(usize, usize, usize)> = match values("--shape") {
        v if v.is_empty() => SHAPES.to_vec(),
        v => v
            .iter()
            .map(|s| {
                let d: Vec<usize> = s.split('x').map(|x| x.parse().expect("--shape MxKxN")).collect();
                assert_eq!(d.len(), 3, "--shape MxKxN");
                (d[0], d[1], d[2])
            })
            .collect(),
    };
    let thread_counts: Vec<usize> = match values("--threads") {
        v if v.is_empty() => vec![1, 2],
        v => v
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.parse().expect("--threads T[,T...]"))
            .collect(),
    };
    let mut rng = Lcg(42);
    for &threads in &thread_counts {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for &(m, k, n) in &shapes {
            let w: Vec<i8> = (0..n * k).map(|_| rng.next() as i8).collect();
            let packed = PackedWeights::new(
                &w,
                n,
                k,
                WeightQuant::PerTensor {
                    scale: 0.01,
                    zero_point: 0,
                },
            )
            .unwrap();
            let bias: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let xq: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
            let xf: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let mut out_u8 = vec![0u8; m * n];
            let mut out_f32 = vec![0f32; m * n];
            let mut scratch = DynamicScratch::new();
            for &path in &paths {
                if path == KernelPath::Reference && m > 16 {
                    continue;
                }
                let cfg = GemmConfig::with_path(path);
                let requant = Epilogue::Requantize(Requantize {
                    bias: Some(&bias),
                    out_scale: 0.1,
                    out_zero_point: 64,
                    relu: false,
                    clamp: None,
                });
                let act = ActivationQuant::PerTensor {
                    scale: 0.05,
                    zero_point: 64,
                };
                let t_static = pool.install(|| {
                    time_ns(|| {
                        gemm_u8s8(&xq, m, &act, &packed, &requant, GemmOutput::U8(&mut out_u8), &cfg).unwrap();
                    })
                });
                let dynamic = Dequantize {
                    bias: Some(&bias),
                    relu: false,
                };
                // As a caller reusing its buffers: every call scans and quantizes the f32 input.
                let t_dynamic = pool.install(|| {
                    time_ns(|| {
                        gemm_f32_dynamic(
                            &xf,
                            m,
                            DynamicGranularity::PerTensor,
                            true,
                            &packed,
                            &dynamic,
                            &mut out_f32,
                            &mut scratch,
                            &cfg,
                        )
                        .unwrap();
                    })
                });
                for (name, ns) in [("u8s8_requant_u8", t_static), ("u8s8_f32_dynamic", t_dynamic)] {
                    let (ns, best_ns) = ns;
                    let gops = 2.0 * (m * k * n) as f64 / ns;
                    let best = 2.0 * (m * k * n) as f64 / best_ns;
                    println!(
                        "{name:<18} {m:>5} {k:>5} {n:>5} {threads:>3} {:<11} {:>12.1} {gops:>9.1} {best:>9.1}",
                        path.name(),
                        ns / 1e3
                    );
                    if let Some(f) = json.as_mut() {
                        writeln!(
                            f,
                            "{{\"suite\":\"gemm\",\"name\":\"{name}\",\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{threads},\"path\":\"{}\",\"gops\":{gops:.2},\"median_ns\":{ns:.0}}}",
                            path.name()
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}
