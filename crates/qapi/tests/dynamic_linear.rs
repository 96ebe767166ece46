//! Dynamic Linear: PyTorch parity with the `pytorch_fbgemm` preset, and the accuracy of the
//! default preset.

mod common;

use common::Golden;
use qapi::dynamic::{DynamicConfig, DynamicLinear, WeightGranularity};
use qtensor::{DType, QParams, QTensor, Tensor};

#[test]
fn pytorch_fbgemm_preset_matches_golden() {
    let g = Golden::load("dynamic_linear");
    assert_eq!(g.cases.len(), 6);
    for case in &g.cases {
        let (xs, x) = g.f32s(case, "x");
        let (ws, w) = g.ints(case, "w_q");
        let (_, scales) = g.f32s(case, "w_scales");
        let (_, bias) = g.f32s(case, "bias");
        let (_, expected) = g.f32s(case, "y");
        let qparams = if case["per_channel"].as_bool().unwrap() {
            QParams::per_channel(0, scales.clone(), vec![0; scales.len()], DType::QInt8).unwrap()
        } else {
            QParams::per_tensor(scales[0], 0, DType::QInt8).unwrap()
        };
        let wq = QTensor::from_int_repr(ws, DType::QInt8, qparams, &w).unwrap();
        let linear = DynamicLinear::from_quantized(wq, Some(bias), DynamicConfig::pytorch_fbgemm()).unwrap();
        let y = linear.forward(&Tensor::new(xs, x).unwrap()).unwrap();
        for (i, (&a, &b)) in y.data().iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "output {i}: {a} vs {b} in {case}"
            );
        }
    }
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn sqnr_db(reference: &[f32], approx: &[f32]) -> f32 {
    let signal: f32 = reference.iter().map(|v| v * v).sum();
    let noise: f32 = reference.iter().zip(approx).map(|(a, b)| (a - b) * (a - b)).sum();
    10.0 * (signal / noise).log10()
}

#[test]
fn default_preset_is_more_accurate_than_pytorch_preset() {
    // Rows of very different magnitude: per-row activations keep each row's resolution.
    let (m, k, n) = (16, 64, 24);
    let mut seed = 7;
    let x: Vec<f32> = (0..m * k)
        .map(|i| lcg(&mut seed) * if i / k % 4 == 0 { 20.0 } else { 0.5 })
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| lcg(&mut seed) * if i / k % 3 == 0 { 1.0 } else { 0.05 })
        .collect();
    let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let (x, w, b) = (
        Tensor::new([m, k], x).unwrap(),
        Tensor::new([n, k], w).unwrap(),
        Tensor::new([n], b).unwrap(),
    );
    let mut exact = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            exact[i * n + j] = (0..k)
                .map(|kk| x.data()[i * k + kk] * w.data()[j * k + kk])
                .sum::<f32>()
                + b.data()[j];
        }
    }
    let ours = DynamicLinear::new(&w, Some(&b), DynamicConfig::qforge())
        .unwrap()
        .forward(&x)
        .unwrap();
    let torch = DynamicLinear::new(&w, Some(&b), DynamicConfig::pytorch_fbgemm())
        .unwrap()
        .forward(&x)
        .unwrap();
    let (ours, torch) = (sqnr_db(&exact, ours.data()), sqnr_db(&exact, torch.data()));
    assert!(
        ours > torch + 6.0,
        "qforge {ours:.1} dB vs pytorch preset {torch:.1} dB"
    );
    let half = DynamicLinear::new(&w, Some(&b), DynamicConfig::float16())
        .unwrap()
        .forward(&x)
        .unwrap();
    assert!(sqnr_db(&exact, half.data()) > 60.0);
}

#[test]
fn batched_input_and_errors() {
    let w = Tensor::new([2, 3], vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]).unwrap();
    let linear = DynamicLinear::new(&w, None, DynamicConfig::qforge()).unwrap();
    let y = linear
        .forward(&Tensor::new([2, 1, 3], vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0]).unwrap())
        .unwrap();
    assert_eq!(y.shape(), &[2, 1, 2]);
    assert!(
        (y.data()[0] - -2.0).abs() < 0.05 && (y.data()[1] - 3.0).abs() < 0.05,
        "{:?}",
        y.data()
    );
    assert!(linear.forward(&Tensor::new([2, 2], vec![0.0; 4]).unwrap()).is_err());
    assert!(linear
        .forward(&Tensor::new([1, 3], vec![0.0, f32::NAN, 1.0]).unwrap())
        .is_err());
    let bad_bias = Tensor::new([3], vec![0.0; 3]).unwrap();
    assert!(DynamicLinear::new(&w, Some(&bad_bias), DynamicConfig::qforge()).is_err());
    assert!(DynamicLinear::new(&Tensor::new([6], vec![0.0; 6]).unwrap(), None, DynamicConfig::qforge()).is_err());
    let q = qapi::dynamic::quantize_weight(&w, WeightGranularity::PerChannel).unwrap();
    assert_eq!(q.int_repr(), vec![127, 0, -127, 127, 127, 127]);
}
