//! Element-wise benchmark: the non-conv int8 ops of the CNN models at their real sizes (ResNet18
//! residual add, UNet channel cat with requantization, activation tables, max pools, the
//! boundary conversions), on one thread, through every path this CPU offers.
//!
//! `cargo run --release -p qkernels --example bench_eltwise [FILTER]`. Prints the median time
//! per call and the rate in elements per second, of the cases whose name contains `FILTER`.

use std::time::Instant;

use qkernels::conv::{nchw_f32_to_nhwc_u8, nhwc_u8_to_nchw_f32, ActQuant, NhwcShape};
use qkernels::eltwise::{self, EltwisePath, FloatRule, Pool2d};

/// Whether the case `name` runs (its name contains the command line's filter, if any).
fn wanted(name: &str) -> bool {
    std::env::args().nth(1).is_none_or(|f| name.contains(&f))
}

fn median_us(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn report(name: &str, path: &str, elements: usize, us: f64) {
    println!(
        "{name:<34} {path:<9} {us:9.1} us  {:6.2} G elem/s",
        elements as f64 / us / 1e3
    );
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(run);
}

fn run() {
    let bytes = |n: usize| (0..n).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>();
    let (aq, bq, yq) = (
        ActQuant::new(0.031, 131).unwrap(),
        ActQuant::new(0.017, 7).unwrap(),
        ActQuant::new(0.04, 0).unwrap(),
    );
    for path in EltwisePath::available() {
        let p = format!("{path:?}");
        let n = 56 * 56 * 64;
        let (a, b) = (bytes(n), bytes(n + 3)[3..].to_vec());
        let mut y = vec![0u8; n];
        if wanted("add_relu 56x56x64") {
            let us =
                median_us(|| eltwise::add_on(path, &a, aq, &b, bq, yq, true, FloatRule::Vectorized, &mut y).unwrap());
            report("add_relu 56x56x64", &p, n, us);
        }
        if wanted("mul 56x56x64") {
            let us = median_us(|| eltwise::mul_on(path, &a, aq, &b, bq, yq, false, &mut y).unwrap());
            report("mul 56x56x64", &p, n, us);
        }

        let xs = NhwcShape::new(1, 256, 256, 32);
        let (u, s) = (bytes(xs.len()), bytes(xs.len() + 1)[1..].to_vec());
        let inputs = [(u.as_slice(), xs, aq), (s.as_slice(), xs, bq)];
        if wanted("cat 2x 256x256x32 requantized") {
            let us = median_us(|| {
                eltwise::cat_channels_on(path, &inputs, yq).unwrap();
            });
            report("cat 2x 256x256x32 requantized", &p, 2 * xs.len(), us);
        }
        let same = [(u.as_slice(), xs, yq), (s.as_slice(), xs, yq)];
        if wanted("cat 2x 256x256x32 copied") {
            let us = median_us(|| {
                eltwise::cat_channels_on(path, &same, yq).unwrap();
            });
            report("cat 2x 256x256x32 copied", &p, 2 * xs.len(), us);
        }
        for c in [3, 8, 16, 24, 48, 96] {
            let cs = NhwcShape::new(1, 64, 64, c);
            let (a, b) = (bytes(cs.len()), bytes(cs.len() + 5)[5..].to_vec());
            let inputs = [(a.as_slice(), cs, aq), (b.as_slice(), cs, bq)];
            if wanted(&format!("cat 2x 64x64x{c} requantized")) {
                let us = median_us(|| {
                    eltwise::cat_channels_on(path, &inputs, yq).unwrap();
                });
                report(&format!("cat 2x 64x64x{c} requantized"), &p, 2 * cs.len(), us);
            }
        }
        let lut = eltwise::ActivationLut::hardswish(aq, yq, FloatRule::Vectorized).unwrap();
        let mut v = vec![0u8; xs.len()];
        if wanted("activation table 256x256x32") {
            let us = median_us(|| lut.apply_on(path, &u, &mut v).unwrap());
            report("activation table 256x256x32", &p, xs.len(), us);
        }
        if wanted("max_pool 2x2 256x256x32") {
            let us = median_us(|| {
                eltwise::max_pool2d_on(path, &u, xs, &Pool2d::new(2, 2)).unwrap();
            });
            report("max_pool 2x2 256x256x32", &p, xs.len(), us);
        }
        let hs = NhwcShape::new(1, 128, 128, 64);
        let hx = bytes(hs.len());
        if wanted("max_pool 2x2 128x128x64") {
            let us = median_us(|| {
                eltwise::max_pool2d_on(path, &hx, hs, &Pool2d::new(2, 2)).unwrap();
            });
            report("max_pool 2x2 128x128x64", &p, hs.len(), us);
        }
        let rs = NhwcShape::new(1, 112, 112, 64);
        let r = bytes(rs.len());
        let k3 = Pool2d::new(3, 3).with_stride(2, 2).with_padding(1, 1);
        if wanted("max_pool 3x3s2 112x112x64") {
            let us = median_us(|| {
                eltwise::max_pool2d_on(path, &r, rs, &k3).unwrap();
            });
            report("max_pool 3x3s2 112x112x64", &p, rs.len(), us);
        }
    }
    if wanted("alloc zeroed 4 MiB") {
        let us = median_us(|| {
            std::hint::black_box(vec![0u8; 256 * 256 * 64]);
        });
        report("alloc zeroed 4 MiB", "-", 256 * 256 * 64, us);
    }
    let xs = NhwcShape::new(1, 224, 224, 3);
    let x: Vec<f32> = (0..xs.len()).map(|i| (i % 1000) as f32 * 0.003 - 1.5).collect();
    let q = ActQuant::new(0.02, 128).unwrap();
    if wanted("quantize NCHW->NHWC 3x224x224") {
        let us = median_us(|| {
            nchw_f32_to_nhwc_u8(&x, xs, q).unwrap();
        });
        report("quantize NCHW->NHWC 3x224x224", "best", xs.len(), us);
    }
    let os = NhwcShape::new(1, 256, 256, 5);
    let o = bytes(os.len());
    if wanted("dequantize NHWC->NCHW 5x256x256") {
        let us = median_us(|| {
            nhwc_u8_to_nchw_f32(&o, os, q).unwrap();
        });
        report("dequantize NHWC->NCHW 5x256x256", "best", os.len(), us);
    }
}
