//! Every available GEMM path against the reference, bit for bit, for 1, 2 and 3 threads:
//! random shapes (M = 1, K not a multiple of 4/16/64, odd N), zero points, per-tensor and
//! per-channel weights, and each epilogue.

use proptest::prelude::*;
use qkernels::gemm::{
    available_paths, gemm_s8s8, gemm_u8s8, ActivationQuant, Dequantize, Epilogue, GemmConfig, GemmOutput, KernelPath,
    PackedWeights, Requantize, WeightQuant, MAX_K,
};
use qkernels::KernelError;

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    w: Vec<i8>,
    a_zp: Vec<i32>,
    a_scale: Vec<f32>,
    per_row: bool,
    w_zp: Vec<i32>,
    w_scale: Vec<f32>,
    per_channel: bool,
    bias: Option<Vec<f32>>,
    out_scale: f32,
    out_zp: i32,
    relu: bool,
    clamp: Option<(i32, i32)>,
    kind: u8,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..24,
        prop_oneof![1usize..80, 60usize..300, 500usize..1100],
        1usize..70,
        any::<u64>(),
        0u8..5,
    )
        .prop_map(|(m, k, n, seed, kind)| {
            // A small LCG keeps generation cheap for large matrices.
            let mut s = seed | 1;
            let mut next = move || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33) as u32
            };
            let extreme = next().is_multiple_of(4);
            let a = (0..m * k).map(|_| if extreme { 255 } else { next() as u8 }).collect();
            let w = (0..n * k).map(|_| if extreme { -128 } else { next() as i8 }).collect();
            let per_channel = next().is_multiple_of(2);
            let per_row = next().is_multiple_of(3);
            let wz = |v: u32| if v.is_multiple_of(3) { 0 } else { (v % 256) as i32 - 128 };
            let w_zp = if per_channel {
                (0..n).map(|_| wz(next())).collect()
            } else {
                vec![wz(next())]
            };
            let w_scale = (0..if per_channel { n } else { 1 })
                .map(|_| 1e-3 * (1 + next() % 100) as f32)
                .collect();
            let rows = if per_row { m } else { 1 };
            let a_zp = (0..rows)
                .map(|_| {
                    if next().is_multiple_of(4) {
                        0
                    } else {
                        (next() % 256) as i32
                    }
                })
                .collect();
            let a_scale = (0..rows).map(|_| 1e-3 * (1 + next() % 200) as f32).collect();
            let bias =
                (!next().is_multiple_of(3)).then(|| (0..n).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect());
            let out_scale = 1e-3 * (1 + next() % 500) as f32;
            let out_zp = (next() % 256) as i32;
            let relu = next().is_multiple_of(2);
            let clamp = next().is_multiple_of(4).then_some((10, 200));
            Case {
                m,
                k,
                n,
                a,
                w,
                a_zp,
                a_scale,
                per_row,
                w_zp,
                w_scale,
                per_channel,
                bias,
                out_scale,
                out_zp,
                relu,
                clamp,
                kind,
            }
        })
}

#[derive(Debug, PartialEq)]
enum Out {
    U8(Vec<u8>),
    I8(Vec<i8>),
    F32Bits(Vec<u32>),
    I32(Vec<i32>),
}

fn run(c: &Case, packed: &PackedWeights, path: KernelPath, threads: usize) -> Out {
    let act = if c.per_row {
        ActivationQuant::PerRow {
            scales: &c.a_scale,
            zero_points: &c.a_zp,
        }
    } else {
        ActivationQuant::PerTensor {
            scale: c.a_scale[0],
            zero_point: c.a_zp[0],
        }
    };
    let config = GemmConfig {
        path: Some(path),
        threads: Some(threads),
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let len = c.m * c.n;
    let requant = |relu| {
        Epilogue::Requantize(Requantize {
            bias: c.bias.as_deref(),
            out_scale: c.out_scale,
            out_zero_point: c.out_zp,
            relu,
            clamp: c.clamp,
        })
    };
    pool.install(|| match c.kind {
        0 => {
            let mut o = vec![0i32; len];
            gemm_u8s8(
                &c.a,
                c.m,
                &act,
                packed,
                &Epilogue::I32,
                GemmOutput::I32(&mut o),
                &config,
            )
            .unwrap();
            Out::I32(o)
        }
        1 | 2 if !c.per_row => {
            let mut o = vec![0u8; len];
            gemm_u8s8(
                &c.a,
                c.m,
                &act,
                packed,
                &requant(c.relu),
                GemmOutput::U8(&mut o),
                &config,
            )
            .unwrap();
            Out::U8(o)
        }
        1 | 2 => {
            // Per-row activations cannot requantize: exercise the error, then the f32 output.
            let mut o = vec![0u8; len];
            let e = gemm_u8s8(
                &c.a,
                c.m,
                &act,
                packed,
                &requant(false),
                GemmOutput::U8(&mut o),
                &config,
            );
            assert!(matches!(e, Err(KernelError::Param { .. })));
            let mut f = vec![0f32; len];
            let epi = Epilogue::Dequantize(Dequantize {
                bias: c.bias.as_deref(),
                relu: c.relu,
            });
            gemm_u8s8(&c.a, c.m, &act, packed, &epi, GemmOutput::F32(&mut f), &config).unwrap();
            Out::F32Bits(f.iter().map(|v| v.to_bits()).collect())
        }
        3 => {
            let mut f = vec![0f32; len];
            let epi = Epilogue::Dequantize(Dequantize {
                bias: c.bias.as_deref(),
                relu: c.relu,
            });
            gemm_u8s8(&c.a, c.m, &act, packed, &epi, GemmOutput::F32(&mut f), &config).unwrap();
            Out::F32Bits(f.iter().map(|v| v.to_bits()).collect())
        }
        _ => {
            // s8 activations through the +128 shift, requantized to i8.
            let a8: Vec<i8> = c.a.iter().map(|&v| v as i8).collect();
            let act8 = ActivationQuant::PerTensor {
                scale: c.a_scale[0],
                zero_point: c.a_zp[0] - 128,
            };
            let epi = Epilogue::Requantize(Requantize {
                bias: c.bias.as_deref(),
                out_scale: c.out_scale,
                out_zero_point: c.out_zp - 128,
                relu: c.relu,
                clamp: None,
            });
            let mut o = vec![0i8; len];
            gemm_s8s8(&a8, c.m, &act8, packed, &epi, GemmOutput::I8(&mut o), &config).unwrap();
            Out::I8(o)
        }
    })
}

fn pack(c: &Case) -> PackedWeights {
    let quant = if c.per_channel {
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

/// The exact integer sums, computed independently of the library.
fn exact_i32(c: &Case) -> Vec<i32> {
    let mut out = vec![0; c.m * c.n];
    for i in 0..c.m {
        let azp = c.a_zp[if c.per_row { i } else { 0 }];
        for j in 0..c.n {
            let wzp = c.w_zp[if c.per_channel { j } else { 0 }];
            out[i * c.n + j] = (0..c.k)
                .map(|kk| (c.a[i * c.k + kk] as i32 - azp) * (c.w[j * c.k + kk] as i32 - wzp))
                .sum();
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_path_matches_reference_bit_for_bit(c in case()) {
        let packed = pack(&c);
        let expected = run(&c, &packed, KernelPath::Reference, 1);
        if c.kind == 0 {
            prop_assert_eq!(&expected, &Out::I32(exact_i32(&c)));
        }
        for path in available_paths() {
            for threads in [1, 2, 3] {
                let got = run(&c, &packed, path, threads);
                prop_assert!(got == expected, "path {} threads {} differs for {:?}x{:?}x{:?}", path, threads, c.m, c.k, c.n);
            }
        }
    }
}

#[test]
fn large_k_full_range_does_not_saturate() {
    // K = 8199 (not a multiple of 4, 16 or 64; more K groups than one cache block holds, so
    // partial sums are stored and reloaded), all products at the extreme 255 x -128.
    let (m, k, n) = (9, 8199, 37);
    let c = Case {
        m,
        k,
        n,
        a: vec![255; m * k],
        w: (0..n * k).map(|i| if i % 7 == 0 { 127 } else { -128 }).collect(),
        a_zp: vec![0],
        a_scale: vec![0.01],
        per_row: false,
        w_zp: vec![0],
        w_scale: vec![0.01],
        per_channel: false,
        bias: None,
        out_scale: 1.0,
        out_zp: 0,
        relu: false,
        clamp: None,
        kind: 0,
    };
    let packed = pack(&c);
    let expected = Out::I32(exact_i32(&c));
    for path in available_paths() {
        for threads in [1, 2] {
            assert_eq!(run(&c, &packed, path, threads), expected, "path {path}");
        }
    }
}

#[test]
fn large_shape_blocks_and_threads_agree() {
    // Big enough for several column blocks and row blocks on every path.
    let (m, k, n) = (70, 3001, 400);
    let mut s = 7u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let c = Case {
        m,
        k,
        n,
        a: (0..m * k).map(|_| next() as u8).collect(),
        w: (0..n * k).map(|_| next() as i8).collect(),
        a_zp: vec![3],
        a_scale: vec![0.02],
        per_row: false,
        w_zp: (0..n).map(|j| (j % 5) as i32 - 2).collect(),
        w_scale: (0..n).map(|j| 1e-3 * (1 + j % 9) as f32).collect(),
        per_channel: true,
        bias: Some((0..n).map(|j| j as f32 * 0.01 - 2.0).collect()),
        out_scale: 0.5,
        out_zp: 100,
        relu: true,
        clamp: None,
        kind: 1,
    };
    let packed = pack(&c);
    let expected = run(&c, &packed, KernelPath::Reference, 1);
    for path in available_paths() {
        for threads in [1, 2, 3] {
            assert!(
                run(&c, &packed, path, threads) == expected,
                "path {path} threads {threads}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let w = vec![1i8; 6];
    let packed = PackedWeights::new(
        &w,
        2,
        3,
        WeightQuant::PerTensor {
            scale: 0.1,
            zero_point: 0,
        },
    )
    .unwrap();
    let act = ActivationQuant::PerTensor {
        scale: 0.1,
        zero_point: 0,
    };
    let cfg = GemmConfig::default();
    let mut o = vec![0i32; 4];
    // Wrong activation length.
    let e = gemm_u8s8(
        &[1, 2, 3],
        2,
        &act,
        &packed,
        &Epilogue::I32,
        GemmOutput::I32(&mut o),
        &cfg,
    );
    assert!(matches!(e, Err(KernelError::Shape { .. })));
    // Wrong output length.
    let mut short = vec![0i32; 3];
    let e = gemm_u8s8(
        &[1; 6],
        2,
        &act,
        &packed,
        &Epilogue::I32,
        GemmOutput::I32(&mut short),
        &cfg,
    );
    assert!(matches!(e, Err(KernelError::Shape { .. })));
    // Epilogue and output type disagree.
    let mut f = vec![0f32; 4];
    let e = gemm_u8s8(&[1; 6], 2, &act, &packed, &Epilogue::I32, GemmOutput::F32(&mut f), &cfg);
    assert!(matches!(e, Err(KernelError::Param { .. })));
    // NaN bias.
    let bias = [f32::NAN, 0.0];
    let epi = Epilogue::Dequantize(Dequantize {
        bias: Some(&bias),
        relu: false,
    });
    let e = gemm_u8s8(&[1; 6], 2, &act, &packed, &epi, GemmOutput::F32(&mut f), &cfg);
    assert!(matches!(e, Err(KernelError::Param { .. })));
    // Activation zero point outside u8.
    let bad = ActivationQuant::PerTensor {
        scale: 0.1,
        zero_point: 300,
    };
    let e = gemm_u8s8(&[1; 6], 2, &bad, &packed, &Epilogue::I32, GemmOutput::I32(&mut o), &cfg);
    assert!(matches!(e, Err(KernelError::Quant(_))));
    // K beyond the overflow bound.
    let k = MAX_K + 1;
    let e = PackedWeights::new(
        &vec![0i8; k],
        1,
        k,
        WeightQuant::PerTensor {
            scale: 1.0,
            zero_point: 0,
        },
    );
    assert!(matches!(e, Err(KernelError::AccumulatorOverflow { max: MAX_K, .. })));
    assert_eq!(MAX_K, 33025);
}
