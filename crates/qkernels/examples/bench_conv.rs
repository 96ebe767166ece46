//! Convolution benchmark suite: every distinct conv layer of MobileNetV2 (224x224), ResNet18
//! (224x224) and a 3-level UNet with 32 base channels and ConvTranspose upsampling (256x256),
//! at batch 1, on 1 and 2 threads, through the default path of each layer.
//!
//! `cargo xtask bench conv [--json FILE]` (or `cargo run --release -p qkernels --example
//! bench_conv -- [--json FILE] [--threads 1,2] [--filter NAME]`). Prints a table; with
//! `--json FILE` appends one JSON line per measurement:
//! `{"suite":"conv","name":..,"n":..,"c_in":..,"h":..,"w":..,"c_out":..,"kh":..,"kw":..,"stride":..,"groups":..,"threads":..,"path":..,"gops":..,"median_ns":..,"chain_gops":..}`.
//! `chain_gops` is the rate of a bare `vpdpbusd` stream on one core, measured right after each
//! layer ([`qkernels::gemm::vnni_chain_gops`]); the `chain` column is the layer's share of that
//! rate times its thread count: of what the cores it ran on can reach at that moment.

use std::io::Write;
use std::time::{Duration, Instant};

use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvTranspose2dGeometry, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d,
    PackedConvTranspose2d, ResidualAdd,
};
use qkernels::eltwise::{self, AddOperand, FloatRule};

/// One timed call of a layer, writing its output.
type RunLayer = dyn Fn(&mut [u8]) + Send + Sync;

#[derive(Clone, Copy)]
struct Layer {
    name: &'static str,
    c_in: usize,
    hw: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    groups: usize,
    transposed: bool,
}

fn conv(name: &'static str, c_in: usize, hw: usize, c_out: usize, k: usize, stride: usize, groups: usize) -> Layer {
    Layer {
        name,
        c_in,
        hw,
        c_out,
        k,
        stride,
        groups,
        transposed: false,
    }
}

fn layers() -> Vec<Layer> {
    let mut v = vec![
        conv("resnet18.conv1", 3, 224, 64, 7, 2, 1),
        conv("resnet18.layer1.conv", 64, 56, 64, 3, 1, 1),
        conv("resnet18.layer2.0.conv1", 64, 56, 128, 3, 2, 1),
        conv("resnet18.layer2.conv", 128, 28, 128, 3, 1, 1),
        conv("resnet18.layer2.0.downsample", 64, 56, 128, 1, 2, 1),
        conv("resnet18.layer3.0.conv1", 128, 28, 256, 3, 2, 1),
        conv("resnet18.layer3.conv", 256, 14, 256, 3, 1, 1),
        conv("resnet18.layer3.0.downsample", 128, 28, 256, 1, 2, 1),
        conv("resnet18.layer4.0.conv1", 256, 14, 512, 3, 2, 1),
        conv("resnet18.layer4.conv", 512, 7, 512, 3, 1, 1),
        conv("resnet18.layer4.0.downsample", 256, 14, 512, 1, 2, 1),
    ];
    // MobileNetV2: (expansion, channels, repeats, stride) per stage.
    v.push(conv("mobilenet_v2.features.0", 3, 224, 32, 3, 2, 1));
    let names: &[&str] = &["mobilenet_v2.expand", "mobilenet_v2.dw", "mobilenet_v2.project"];
    let mut seen = std::collections::HashSet::new();
    let (mut c_in, mut hw) = (32usize, 112usize);
    for (t, c, n, s) in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ] {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = c_in * t;
            let mut block = Vec::new();
            if t != 1 {
                block.push(conv(names[0], c_in, hw, hidden, 1, 1, 1));
            }
            block.push(conv(names[1], hidden, hw, hidden, 3, stride, hidden));
            hw /= stride;
            block.push(conv(names[2], hidden, hw, c, 1, 1, 1));
            for l in block {
                if seen.insert((l.c_in, l.hw, l.c_out, l.k, l.stride, l.groups)) {
                    v.push(l);
                }
            }
            c_in = c;
        }
    }
    v.push(conv("mobilenet_v2.features.18", 320, 7, 1280, 1, 1, 1));
    let up = |name, c_in, hw, c_out| Layer {
        name,
        c_in,
        hw,
        c_out,
        k: 2,
        stride: 2,
        groups: 1,
        transposed: true,
    };
    v.extend([
        conv("unet32.e1.0", 3, 256, 32, 3, 1, 1),
        conv("unet32.e1.3", 32, 256, 32, 3, 1, 1),
        conv("unet32.e2.0", 32, 128, 64, 3, 1, 1),
        conv("unet32.e2.3", 64, 128, 64, 3, 1, 1),
        conv("unet32.e3.0", 64, 64, 128, 3, 1, 1),
        conv("unet32.e3.3", 128, 64, 128, 3, 1, 1),
        up("unet32.u2", 128, 64, 64),
        conv("unet32.d2.0", 128, 128, 64, 3, 1, 1),
        conv("unet32.d2.3", 64, 128, 64, 3, 1, 1),
        up("unet32.u1", 64, 128, 32),
        conv("unet32.d1.0", 64, 256, 32, 3, 1, 1),
        conv("unet32.d1.3", 32, 256, 32, 3, 1, 1),
        conv("unet32.out", 32, 256, 5, 1, 1, 1),
    ]);
    v
}

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Median (or with `best` the fastest) wall-clock time of `f`; the fastest run is the steadier
/// figure on a loaded machine, where other processes preempt some runs.
/// With `flush`, an untimed pass over a buffer larger than L2 precedes every run, so weights
/// and inputs start out in L3 as they do inside a network.
fn median_ns(best: bool, flush: bool, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut times = Vec::new();
    let mut evict = vec![0u8; if flush { 8 << 20 } else { 0 }];
    let start = Instant::now();
    let (min_runs, max_runs) = if best { (20, 200) } else { (5, 30) };
    while times.len() < min_runs || (times.len() < max_runs && start.elapsed() < Duration::from_millis(300)) {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&mut evict);
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_nanos() as f64);
    }
    if best {
        return times.iter().copied().fold(f64::INFINITY, f64::min);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads: Vec<usize> = arg("--threads")
        .unwrap_or_else(|| "1,2".into())
        .split(',')
        .map(|t| t.parse().expect("--threads takes a comma-separated list"))
        .collect();
    let filter = arg("--filter");
    let best = args.iter().any(|a| a == "--best");
    let flush = args.iter().any(|a| a == "--flush");
    let dequantized = args.iter().any(|a| a == "--dequantized");
    let concat = args.iter().any(|a| a == "--concat");
    let add = args.iter().any(|a| a == "--add");
    let add_separate = args.iter().any(|a| a == "--add-separate");
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("bench_conv [--threads 1,2] [--filter NAME] [--json FILE] [--layer C_IN,HW,C_OUT,K,STRIDE[,GROUPS]] [--best (report the fastest run instead of the median)] [--flush (evict L2 before every run)] [--dequantized (convolutions time forward_dequantized: NCHW f32 out, allocation included)] [--concat (convolutions with an even c_in time run_concat of two halves with their own parameters, as UNet's decoder convs read a cat)] [--add (convolutions time forward_add: a residual add_relu fused, allocation included)] [--add-separate (forward then a separate eltwise add_relu, allocations included)]");
        return;
    }
    let mut json = arg("--json").map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("cannot open {p}: {e}"))
    });
    let x_q = ActQuant::new(0.02, 3).unwrap();
    let y_q = ActQuant::new(0.05, 7).unwrap();
    println!(
        "{:<32} {:>5} {:>4} {:>5} {:>3} {:>2} {:>5} {:>3} {:<18} {:>10} {:>8} {:>7}",
        "layer", "c_in", "hw", "c_out", "k", "s", "g", "thr", "path", "ms", "GOP/s", "chain"
    );
    // `--layer C_IN,HW,C_OUT,K,STRIDE[,GROUPS]` times one custom layer instead of the suite.
    let custom = arg("--layer").map(|spec| {
        let v: Vec<usize> = spec
            .split(',')
            .map(|t| t.parse().expect("--layer takes C_IN,HW,C_OUT,K,STRIDE[,GROUPS]"))
            .collect();
        assert!(v.len() >= 5, "--layer takes C_IN,HW,C_OUT,K,STRIDE[,GROUPS]");
        conv("custom", v[0], v[1], v[2], v[3], v[4], v.get(5).copied().unwrap_or(1))
    });
    let suite = custom.map_or_else(layers, |l| vec![l]);
    for l in suite {
        if filter.as_deref().is_some_and(|f| !l.name.contains(f)) {
            continue;
        }
        let xs = NhwcShape::new(1, l.hw, l.hw, l.c_in);
        // Activations use 7 bits, as PyTorch's x86 qconfig does (reduce_range).
        let x: Vec<u8> = bytes(xs.len(), 1).into_iter().map(|b| b >> 1).collect();
        let w_bytes = bytes(l.c_in * l.c_out / l.groups * l.k * l.k, 2);
        let w: Vec<i8> = w_bytes.iter().map(|&b| b as i8).collect();
        let wq = ConvWeightQuant::per_channel(vec![0.003; l.c_out], vec![0; l.c_out]).unwrap();
        let bias = Some((0..l.c_out).map(|i| i as f32 * 0.01 - 0.3).collect::<Vec<f32>>());
        let (ys, macs, path, run): (NhwcShape, f64, String, Box<RunLayer>) = if l.transposed {
            let g = ConvTranspose2dGeometry::new(l.c_in, l.c_out, (l.k, l.k)).with_stride(l.stride, l.stride);
            let t = PackedConvTranspose2d::new(g, &w, wq, bias).unwrap();
            let ys = t.output_shape(xs).unwrap();
            let macs = (xs.n * xs.h * xs.w * l.c_in * l.c_out * l.k * l.k) as f64;
            let path = t.path_name().to_string();
            (
                ys,
                macs,
                path,
                Box::new(move |y| t.run(&x, xs, x_q, y_q, FusedActivation::Relu, y).unwrap()),
            )
        } else {
            let g = Conv2dGeometry::new(l.c_in, l.c_out, (l.k, l.k))
                .with_stride(l.stride, l.stride)
                .with_padding(l.k / 2, l.k / 2)
                .with_groups(l.groups);
            let c = PackedConv2d::new(g, &w, wq, bias).unwrap();
            let ys = c.output_shape(xs).unwrap();
            let macs = (ys.len() * (l.c_in / l.groups) * l.k * l.k) as f64;
            if dequantized {
                let path = if c.dequantizes_in_kernel() {
                    "f32 (in kernel)".to_string()
                } else {
                    "f32 (separate)".to_string()
                };
                let run = move |_: &mut [u8]| {
                    let out = c.forward_dequantized(&x, xs, x_q, y_q, FusedActivation::Relu).unwrap();
                    std::hint::black_box(out);
                };
                (ys, macs, path, Box::new(run))
            } else if add || add_separate {
                let skip = bytes(ys.len(), 3);
                let (skip_q, out_q) = (ActQuant::new(0.04, 9).unwrap(), ActQuant::new(0.06, 0).unwrap());
                let path = if add_separate {
                    format!("{:?}, add apart", c.default_path())
                } else if c.adds_in_rows() {
                    format!("{:?}+add in rows", c.default_path())
                } else {
                    format!("{:?}+add after", c.default_path())
                };
                let run = move |_: &mut [u8]| {
                    let out = if add_separate {
                        let (conv_out, _) = c.forward(&x, xs, x_q, y_q, FusedActivation::None).unwrap();
                        let mut out = vec![0u8; conv_out.len()];
                        eltwise::add(
                            &conv_out,
                            y_q,
                            &skip,
                            skip_q,
                            out_q,
                            true,
                            FloatRule::Vectorized,
                            &mut out,
                        )
                        .unwrap();
                        out
                    } else {
                        let residual = ResidualAdd {
                            skip: &skip,
                            skip_shape: ys,
                            skip_q,
                            conv_operand: AddOperand::First,
                            y_q: out_q,
                            relu: true,
                            rule: FloatRule::Vectorized,
                        };
                        c.forward_add(&x, xs, x_q, y_q, FusedActivation::None, &residual)
                            .unwrap()
                            .0
                    };
                    std::hint::black_box(out);
                };
                (ys, macs, path, Box::new(run))
            } else if concat && l.groups == 1 && l.c_in % 2 == 0 {
                let path = format!("{:?}+cat", c.default_path());
                let hs = NhwcShape::new(1, l.hw, l.hw, l.c_in / 2);
                let (a, b): (Vec<u8>, Vec<u8>) = (
                    x.chunks_exact(l.c_in).flat_map(|p| p[..l.c_in / 2].to_vec()).collect(),
                    x.chunks_exact(l.c_in).flat_map(|p| p[l.c_in / 2..].to_vec()).collect(),
                );
                let (aq, bq) = (ActQuant::new(0.021, 5).unwrap(), ActQuant::new(0.019, 2).unwrap());
                let run = move |y: &mut [u8]| {
                    let inputs = [(a.as_slice(), hs, aq), (b.as_slice(), hs, bq)];
                    c.run_concat(&inputs, x_q, y_q, FusedActivation::Relu, y).unwrap()
                };
                (ys, macs, path, Box::new(run))
            } else {
                let path = format!("{:?}", c.default_path());
                (
                    ys,
                    macs,
                    path,
                    Box::new(move |y| c.run(&x, xs, x_q, y_q, FusedActivation::Relu, y).unwrap()),
                )
            }
        };
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let mut y = vec![0u8; ys.len()];
            let ns = pool.install(|| median_ns(best, flush, || run(&mut y)));
            let gops = 2.0 * macs / ns;
            // The bare `vpdpbusd` rate of one core right after the layer, at the same clock; the
            // layer's share is of `t` such cores.
            let chain = qkernels::gemm::vnni_chain_gops();
            let share = chain.map_or("-".to_string(), |c| format!("{:.0} %", 100.0 * gops / (c * t as f64)));
            println!(
                "{:<32} {:>5} {:>4} {:>5} {:>3} {:>2} {:>5} {:>3} {:<18} {:>10.3} {:>8.1} {:>7}",
                l.name,
                l.c_in,
                l.hw,
                l.c_out,
                l.k,
                l.stride,
                l.groups,
                t,
                path,
                ns / 1e6,
                gops,
                share
            );
            if let Some(f) = json.as_mut() {
                writeln!(
                    f,
                    r#"{{"suite":"conv","name":"{}","n":1,"c_in":{},"h":{},"w":{},"c_out":{},"kh":{},"kw":{},"stride":{},"groups":{},"threads":{},"path":"{}","gops":{:.3},"median_ns":{:.0},"chain_gops":{}}}"#,
                    l.name,
                    l.c_in,
                    l.hw,
                    l.hw,
                    l.c_out,
                    l.k,
                    l.k,
                    l.stride,
                    l.groups,
                    t,
                    path,
                    gops,
                    ns,
                    chain.map_or("null".to_string(), |c| format!("{c:.1}"))
                )
                .unwrap();
            }
        }
    }
}
