//! `gemm_f32_dynamic` (range scan and quantization split over threads, then the GEMM) against
//! the serial composition it replaces — `finite_min_max`, `choose_dynamic_qparams`,
//! `quantize_into` (per tensor or per row), then the reference GEMM on one thread — bit for
//! bit on every path and for 1, 2 and 3 threads, including inputs long enough to be split.

use proptest::prelude::*;
use qkernels::gemm::{
    available_paths, finite_min_max, gemm_f32_dynamic, gemm_f32_dynamic_vec, gemm_u8s8, quantize_dynamic_per_tensor,
    ActivationQuant, Dequantize, DynamicGranularity, DynamicScratch, Epilogue, GemmConfig, GemmOutput, KernelPath,
    PackedWeights, WeightQuant,
};
use qkernels::KernelError;
use qtensor::quantize::{quantize_into, Affine};
use qtensor::DType;

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<i8>,
    w_zp: Vec<i32>,
    w_scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    relu: bool,
    reduce_range: bool,
    per_row: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![1usize..6, 6usize..80],
        prop_oneof![1usize..70, 400usize..1100],
        1usize..60,
        any::<u64>(),
    )
        .prop_map(|(m, k, n, seed)| {
            let mut s = seed | 1;
            let mut next = move || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33) as u32
            };
            // Sometimes one sign only (the range then includes zero), sometimes constant rows.
            let shape = next() % 4;
            let x = (0..m * k)
                .map(|i| match shape {
                    0 => (next() % 1000) as f32 * 0.01,
                    1 if i % k == 0 => 0.0,
                    1 => 1.5,
                    _ => (next() % 20001) as f32 * 1e-3 - 10.0,
                })
                .collect();
            let per_channel = next().is_multiple_of(2);
            let channels = if per_channel { n } else { 1 };
            Case {
                m,
                k,
                n,
                x,
                w: (0..n * k).map(|_| next() as i8).collect(),
                w_zp: (0..channels)
                    .map(|_| {
                        if next().is_multiple_of(2) {
                            0
                        } else {
                            (next() % 21) as i32 - 10
                        }
                    })
                    .collect(),
                w_scale: (0..channels).map(|_| 1e-3 * (1 + next() % 100) as f32).collect(),
                bias: next()
                    .is_multiple_of(3)
                    .then(|| (0..n).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect()),
                relu: next().is_multiple_of(2),
                reduce_range: next().is_multiple_of(2),
                per_row: next().is_multiple_of(2),
            }
        })
}

fn pack(c: &Case) -> PackedWeights {
    let quant = if c.w_scale.len() == c.n && c.n > 1 {
        WeightQuant::PerChannel {
            scales: c.w_scale.clone(),
            zero_points: c.w_zp.clone(),
        }
    } else {
        WeightQuant::PerTensor {
            scale: c.w_scale[0],
            zero_point: c.w_zp[0],
        }
    };
    PackedWeights::new(&c.w, c.n, c.k, quant).unwrap()
}

/// The serial composition, on the reference path and one thread.
fn expected(c: &Case, packed: &PackedWeights) -> Vec<u32> {
    let mut xq = vec![0u8; c.x.len()];
    let (mut scales, mut zps) = (Vec::new(), Vec::new());
    let act = if c.per_row {
        for (row, qrow) in c.x.chunks(c.k).zip(xq.chunks_mut(c.k)) {
            let (lo, hi) = finite_min_max(row).unwrap();
            let (s, z) = qtensor::choose_dynamic_qparams(lo, hi, 0, 255, c.reduce_range).unwrap();
            quantize_into(row, qrow, &Affine::new(s, z, DType::QUInt8).unwrap()).unwrap();
            scales.push(s);
            zps.push(z);
        }
        ActivationQuant::PerRow {
            scales: &scales,
            zero_points: &zps,
        }
    } else {
        let (scale, zero_point) = quantize_dynamic_per_tensor(&c.x, &mut xq, c.reduce_range).unwrap();
        ActivationQuant::PerTensor { scale, zero_point }
    };
    let epi = Epilogue::Dequantize(Dequantize {
        bias: c.bias.as_deref(),
        relu: c.relu,
    });
    let mut out = vec![0f32; c.m * c.n];
    let config = GemmConfig {
        path: Some(KernelPath::Reference),
        threads: Some(1),
    };
    gemm_u8s8(&xq, c.m, &act, packed, &epi, GemmOutput::F32(&mut out), &config).unwrap();
    out.iter().map(|v| v.to_bits()).collect()
}

fn run(c: &Case, packed: &PackedWeights, path: KernelPath, threads: usize, scratch: &mut DynamicScratch) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let granularity = if c.per_row {
        DynamicGranularity::PerRow
    } else {
        DynamicGranularity::PerTensor
    };
    let epi = Dequantize {
        bias: c.bias.as_deref(),
        relu: c.relu,
    };
    // A stale value in every output element: the call must overwrite all of them.
    let mut out = vec![f32::NAN; c.m * c.n];
    let config = GemmConfig {
        path: Some(path),
        threads: Some(threads),
    };
    let fresh = pool.install(|| {
        gemm_f32_dynamic(
            &c.x,
            c.m,
            granularity,
            c.reduce_range,
            packed,
            &epi,
            &mut out,
            scratch,
            &config,
        )
        .unwrap();
        gemm_f32_dynamic_vec(&c.x, c.m, granularity, c.reduce_range, packed, &epi, scratch, &config)
            .unwrap()
            .0
    });
    let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
    // The vector returned without zeroing holds the same values as the overwritten buffer.
    assert_eq!(fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits);
    bits
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn fused_dynamic_matches_serial_composition(c in case()) {
        let packed = pack(&c);
        let want = expected(&c, &packed);
        // One scratch across calls of different paths and thread counts, as a caller keeps it.
        let mut scratch = DynamicScratch::new();
        for path in available_paths() {
            for threads in [1, 2, 3] {
                let got = run(&c, &packed, path, threads, &mut scratch);
                prop_assert!(got == want, "path {} threads {} differs for {}x{}x{}", path, threads, c.m, c.k, c.n);
            }
        }
    }
}

#[test]
fn long_inputs_split_over_threads_agree() {
    // 200 x 700 = 140000 values: split into several tasks for the range scan and quantization.
    let (m, k, n) = (200, 700, 50);
    let mut s = 11u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    for per_row in [false, true] {
        let c = Case {
            m,
            k,
            n,
            x: (0..m * k).map(|_| (next() % 40001) as f32 * 1e-3 - 17.0).collect(),
            w: (0..n * k).map(|_| next() as i8).collect(),
            w_zp: vec![0],
            w_scale: vec![0.004],
            bias: Some((0..n).map(|j| j as f32 * 0.1).collect()),
            relu: false,
            reduce_range: true,
            per_row,
        };
        let packed = pack(&c);
        let want = expected(&c, &packed);
        let mut scratch = DynamicScratch::new();
        for path in available_paths() {
            for threads in [1, 2, 3] {
                assert!(
                    run(&c, &packed, path, threads, &mut scratch) == want,
                    "path {path} threads {threads} per_row {per_row}"
                );
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (m, k, n) = (40, 1000, 3);
    let packed = PackedWeights::new(
        &vec![1i8; n * k],
        n,
        k,
        WeightQuant::PerTensor {
            scale: 0.1,
            zero_point: 0,
        },
    )
    .unwrap();
    let epi = Dequantize {
        bias: None,
        relu: false,
    };
    let mut out = vec![0f32; m * n];
    let mut scratch = DynamicScratch::new();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for granularity in [DynamicGranularity::PerTensor, DynamicGranularity::PerRow] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; m * k];
            x[31_234] = bad;
            x[35_000] = bad;
            let e = pool.install(|| {
                gemm_f32_dynamic(
                    &x,
                    m,
                    granularity,
                    true,
                    &packed,
                    &epi,
                    &mut out,
                    &mut scratch,
                    &GemmConfig::default(),
                )
            });
            match e {
                Err(KernelError::Quant(qtensor::QError::NonFinite { index, .. })) => assert_eq!(index, 31_234),
                other => panic!("{granularity:?} with {bad}: {other:?}"),
            }
        }
        let x = vec![0.5f32; m * k];
        let e = gemm_f32_dynamic(
            &x[1..],
            m,
            granularity,
            true,
            &packed,
            &epi,
            &mut out,
            &mut scratch,
            &GemmConfig::default(),
        );
        assert!(matches!(e, Err(KernelError::Shape { .. })));
        let e = gemm_f32_dynamic(
            &[],
            0,
            granularity,
            true,
            &packed,
            &epi,
            &mut out,
            &mut scratch,
            &GemmConfig::default(),
        );
        assert!(matches!(e, Err(KernelError::Shape { .. })));
        let e = gemm_f32_dynamic(
            &x,
            m,
            granularity,
            true,
            &packed,
            &epi,
            &mut out[1..],
            &mut scratch,
            &GemmConfig::default(),
        );
        assert!(matches!(e, Err(KernelError::Shape { .. })));
    }
}
