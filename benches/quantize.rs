//! Criterion bench: quantize/dequantize of 1M and 16M elements on the best path, one thread.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qtensor::quantize::{dequantize_into, quantize_into, Affine};
use qtensor::DType;

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut group = c.benchmark_group("quantize");
    group.sample_size(20);
    for n in [1usize << 20, 1 << 24] {
        let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 0.01).collect();
        let p = Affine::new(0.02, 128, DType::QUInt8).unwrap();
        let mut q = vec![0u8; n];
        let mut back = vec![0f32; n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("quantize_u8/{n}"), |b| {
            b.iter(|| pool.install(|| quantize_into(&x, &mut q, &p).unwrap()))
        });
        group.bench_function(format!("dequantize_u8/{n}"), |b| {
            b.iter(|| pool.install(|| dequantize_into(&q, &mut back, 0.02, 128).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
