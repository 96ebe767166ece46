//! Criterion benchmark of the u8 x s8 GEMM on the best path this CPU has: the requantizing
//! (static Linear) epilogue on the shapes of the `bench_gemm` suite.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qkernels::gemm::{
    best_path, gemm_u8s8, ActivationQuant, Epilogue, GemmConfig, GemmOutput, PackedWeights, Requantize, WeightQuant,
};

const SHAPES: [(usize, usize, usize); 6] = [
    (1, 768, 768),
    (16, 768, 768),
    (128, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (512, 1024, 1024),
];

fn gemm(c: &mut Criterion) {
    let path = best_path();
    let mut group = c.benchmark_group(format!("gemm_u8s8_requant/{path}"));
    group.sample_size(20);
    for (m, k, n) in SHAPES {
        let w: Vec<i8> = (0..n * k).map(|i| (i * 7 % 251) as i8).collect();
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
        let x: Vec<u8> = (0..m * k).map(|i| (i * 13 % 256) as u8).collect();
        let bias = vec![0.5f32; n];
        let mut y = vec![0u8; m * n];
        let act = ActivationQuant::PerTensor {
            scale: 0.05,
            zero_point: 64,
        };
        let epilogue = Epilogue::Requantize(Requantize {
            bias: Some(&bias),
            out_scale: 0.1,
            out_zero_point: 64,
            relu: false,
            clamp: None,
        });
        let config = GemmConfig::with_path(path);
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |b| {
            b.iter(|| gemm_u8s8(&x, m, &act, &packed, &epilogue, GemmOutput::U8(&mut y), &config).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
