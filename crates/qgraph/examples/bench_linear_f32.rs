//! fp32 Linear throughput on the anchor GEMM shapes (M x K x N), one thread (`--threads T` for
//! more), median of repeated runs, in GF/s (2 M K N per second). Compare with `gemm_torch.py` fp32
//! in the same run. `--json FILE` appends one JSON line per shape.

use std::io::Write;
use std::time::Instant;

use qgraph::{GraphBuilder, Value};
use qtensor::Tensor;

const SHAPES: [(usize, usize, usize); 6] = [
    (1, 768, 768),
    (16, 768, 768),
    (128, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (512, 1024, 1024),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let threads: usize = match args.iter().position(|a| a == "--threads") {
        Some(i) => args[i + 1].parse().expect("--threads T"),
        None => 1,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let lines = pool.install(measure);
    if let Some(path) = json {
        write_json(path, lines);
    }
}

/// One JSON line per shape, after printing its rate.
fn measure() -> Vec<String> {
    let mut lines = Vec::new();
    for (m, k, n) in SHAPES {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[m, k]);
        let y = b.linear("fc", x, k, n);
        b.output(y);
        let mut g = b.build().expect("valid graph");
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
        g.node_mut(y)
            .params
            .insert("weight".into(), Tensor::new([n, k], w).unwrap());
        let input = Tensor::new([m, k], (0..m * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect()).unwrap();
        let ops = 2.0 * (m * k * n) as f64;
        let reps = ((2e9 / ops) as usize).clamp(10, 500);
        let mut times = Vec::with_capacity(reps);
        for i in 0..reps + 5 {
            let t = Instant::now();
            let out = g.run(vec![Value::F32(input.clone())]).expect("runs");
            std::hint::black_box(out);
            if i >= 5 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let gfs = ops / times[times.len() / 2] / 1e9;
        println!("linear_f32 M={m:4} K={k:4} N={n:4}: {gfs:7.1} GF/s");
        lines.push(format!(
            "{{\"suite\":\"linear_f32\",\"m\":{m},\"k\":{k},\"n\":{n},\"gflops\":{gfs:.2}}}"
        ));
    }
    lines
}

fn write_json(path: String, lines: Vec<String>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open json file");
    for l in lines {
        writeln!(f, "{l}").expect("write json");
    }
}
