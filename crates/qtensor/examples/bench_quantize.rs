//! Quantize/dequantize throughput (elements per second), per path and thread count.
//! Run through `cargo xtask bench quantize [--json FILE]`; prints a table and, with `--json`,
//! writes one JSON object per line.

use std::io::Write;
use std::time::Instant;

use qtensor::quantize::{dequantize_into_with, quantize_into_with, Affine, ElementPath};
use qtensor::DType;

fn median_ns(mut f: impl FnMut(), reps: usize) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1));
    let mut json = json_path.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open --json file")
    });
    println!(
        "{:<14} {:>10} {:>7} {:>8} {:>10} {:>12}",
        "name", "n", "threads", "path", "G elem/s", "median_ns"
    );
    for n in [1usize << 20, 1 << 24] {
        // Deterministic pseudo-normal-ish data spread over the quantized range.
        let x: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2654435761) % 1000) as f32 - 500.0) * 0.01)
            .collect();
        let p = Affine::new(0.02, 128, DType::QUInt8).unwrap();
        let mut q = vec![0u8; n];
        let mut back = vec![0f32; n];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for path in ElementPath::available() {
                let reps = if n > 1 << 22 { 11 } else { 31 };
                let tq = pool.install(|| median_ns(|| quantize_into_with(path, &x, &mut q, &p).unwrap(), reps));
                let td =
                    pool.install(|| median_ns(|| dequantize_into_with(path, &q, &mut back, 0.02, 128).unwrap(), reps));
                for (name, t) in [("quantize_u8", tq), ("dequantize_u8", td)] {
                    let rate = n as f64 / t;
                    println!(
                        "{name:<14} {n:>10} {threads:>7} {:>8} {rate:>10.2} {t:>12.0}",
                        format!("{path:?}").to_lowercase()
                    );
                    if let Some(f) = json.as_mut() {
                        writeln!(
                            f,
                            "{{\"suite\":\"quantize\",\"name\":\"{name}\",\"n\":{n},\"threads\":{threads},\"path\":\"{}\",\"gelems\":{rate:.4},\"median_ns\":{t:.0}}}",
                            format!("{path:?}").to_lowercase()
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}
