//! Observer throughput (values per second) on one 64x128x28x28 activation (6.4M values), the
//! case `small_ops_torch.py` measures for PyTorch: HistogramObserver observe and qparams,
//! MinMax and per-channel MinMax (axis 1) for scale.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qgraph::observers::{HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver};
use qgraph::Observer;
use qtensor::{QuantSpec, Tensor};

fn activation() -> Tensor {
    let shape = [64usize, 128, 28, 28];
    let n: usize = shape.iter().product();
    // A cheap deterministic bell-shaped sample (sum of uniforms), like torch.randn.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let data = (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7)
        .collect();
    Tensor::new(shape, data).unwrap()
}

fn observers(c: &mut Criterion) {
    let x = activation();
    let mut group = c.benchmark_group("observe_64x128x28x28");
    group.sample_size(10);
    group.throughput(Throughput::Elements(x.numel() as u64));
    let spec = QuantSpec::activation_default().with_reduce_range(true);
    group.bench_function("HistogramObserver", |b| {
        let mut o = HistogramObserver::new(spec);
        b.iter(|| o.observe(&x).unwrap())
    });
    group.bench_function("MinMaxObserver", |b| {
        let mut o = MinMaxObserver::new(spec);
        b.iter(|| o.observe(&x).unwrap())
    });
    group.bench_function("PerChannelMinMaxObserver_axis1", |b| {
        let mut o = PerChannelMinMaxObserver::new(QuantSpec::weight_default(), 1);
        b.iter(|| o.observe(&x).unwrap())
    });
    group.finish();
    let mut o = HistogramObserver::new(spec);
    o.observe(&x).unwrap();
    c.bench_function("HistogramObserver_calculate_qparams", |b| {
        b.iter(|| o.qparams().unwrap())
    });
}

criterion_group!(benches, observers);
criterion_main!(benches);
