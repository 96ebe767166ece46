//! Properties of the quantization rule: round trips, every SIMD path equal to the portable one,
//! threading invariance, and the requantization forms.

use proptest::prelude::*;
use qtensor::quantize::{quantize_into_with, quantize_portable, Affine, ElementPath, Overflow, PARALLEL_THRESHOLD};
use qtensor::requant::{rounding_divide_by_pot, saturating_rounding_doubling_high_mul};
use qtensor::{DType, FixedPointRequant, FloatRequant, QParams, QTensor, Tensor};

fn byte_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::QUInt8), Just(DType::QInt8)]
}

/// Values that stress the rule: ordinary, exact ties, huge, and non-finite.
fn value(scale: f32) -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => (-300.0f32..300.0).prop_map(move |v| v * scale),
        4 => (-300i32..300).prop_map(move |k| (k as f32 + 0.5) * scale),
        1 => prop_oneof![Just(1e30f32), Just(-1e30), Just(3e9), Just(-3e9), Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
    ]
}

fn case() -> impl Strategy<Value = (DType, f32, i32, Vec<f32>, Overflow, bool)> {
    (byte_dtype(), -4.0f32..1.0, any::<bool>(), any::<bool>()).prop_flat_map(|(dtype, log_scale, fbgemm, reduce)| {
        let scale = 10f32.powf(log_scale);
        let overflow = if fbgemm { Overflow::Fbgemm } else { Overflow::Saturate };
        (
            Just(dtype),
            Just(scale),
            dtype.qmin()..=dtype.qmax(),
            prop::collection::vec(value(scale), 0..200),
            Just(overflow),
            Just(reduce),
        )
    })
}

fn run<T: qtensor::quantize::QStorage + Default>(path: ElementPath, x: &[f32], p: &Affine) -> Vec<i32> {
    let mut out = vec![T::default(); x.len()];
    quantize_into_with(path, x, &mut out, p).unwrap();
    out.into_iter().map(|v| v.to_i32()).collect()
}

fn quantized(dtype: DType, path: ElementPath, x: &[f32], p: &Affine) -> Vec<i32> {
    match dtype {
        DType::QUInt8 => run::<u8>(path, x, p),
        DType::QInt8 => run::<i8>(path, x, p),
        _ => run::<i32>(path, x, p),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_path_equals_portable((dtype, scale, zp, x, overflow, reduce) in case()) {
        let mut p = Affine::new(scale, zp, dtype).unwrap().with_overflow(overflow);
        if reduce {
            p = p.with_range(dtype.qmin() / 2, dtype.qmax() / 2);
        }
        let reference = quantized(dtype, ElementPath::Portable, &x, &p);
        for path in ElementPath::available() {
            prop_assert_eq!(&quantized(dtype, path, &x, &p), &reference, "{:?}", path);
        }
    }

    #[test]
    fn quantize_of_dequantize_is_identity(dtype in byte_dtype(), log_scale in -6.0f32..3.0, raw in prop::collection::vec(any::<u8>(), 1..100), zp_seed in any::<u8>()) {
        let scale = 10f32.powf(log_scale);
        let zp = dtype.qmin() + zp_seed as i32;
        let ints: Vec<i32> = raw.iter().map(|&b| dtype.qmin() + b as i32).collect();
        let q = QTensor::from_int_repr([ints.len()], dtype, QParams::per_tensor(scale, zp, dtype).unwrap(), &ints).unwrap();
        let again = QTensor::quantize(&q.dequantize().unwrap(), dtype, q.qparams().clone()).unwrap();
        prop_assert_eq!(again.int_repr(), ints);
    }

    #[test]
    fn fixed_point_requant_is_within_one_of_exact(log_m in -12.0f64..2.0, acc in -(1i32 << 24)..(1i32 << 24)) {
        let real = 2f64.powf(log_m);
        let r = FixedPointRequant::new(real, 0, i32::MIN, i32::MAX).unwrap();
        let exact = (acc as f64 * real).round();
        prop_assert!((r.apply(acc) as f64 - exact).abs() <= 1.0, "{} vs {}", r.apply(acc), exact);
    }
}

#[test]
fn threaded_quantize_matches_single_threaded() {
    let n = PARALLEL_THRESHOLD * 3 + 17;
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 10007) as f32 * 0.013 - 60.0).collect();
    let p = Affine::new(0.37, 7, DType::QInt8).unwrap();
    let mut single = vec![0i8; n];
    quantize_portable(&x, &mut single, &p);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for path in ElementPath::available() {
            let mut out = vec![0i8; n];
            pool.install(|| quantize_into_with(path, &x, &mut out, &p)).unwrap();
            assert_eq!(out, single, "{threads} threads, {path:?}");
        }
    }
}

#[test]
fn ties_round_to_even_and_multiply_by_reciprocal() {
    // 127.5 exactly after multiplying by the reciprocal; the quotient would be 127.49999.
    let scale = 0.002_148_548_6f32;
    let x = 0.273_939_94f32;
    assert_eq!(x * (1.0 / scale), 127.5);
    let p = Affine::new(scale, 0, DType::QUInt8).unwrap();
    assert_eq!(quantized(DType::QUInt8, ElementPath::Portable, &[x], &p), vec![128]);
    let p = Affine::new(1.0, 10, DType::QInt8).unwrap();
    assert_eq!(
        quantized(DType::QInt8, ElementPath::Portable, &[0.5, 1.5, 2.5, -0.5, -1.5], &p),
        vec![10, 12, 12, 10, 8]
    );
}

#[test]
fn saturate_and_fbgemm_differ_only_on_overflow() {
    let x = [1e30f32, -1e30, 5.0, f32::NAN];
    let sat = Affine::new(0.1, 200, DType::QUInt8).unwrap();
    assert_eq!(
        quantized(DType::QUInt8, ElementPath::Portable, &x, &sat),
        vec![255, 0, 250, 0]
    );
    let fb = sat.with_overflow(Overflow::Fbgemm);
    // +1e30 caps at 2147483520; + 200 wraps negative, so fbgemm clamps it to 0. NaN behaves like +huge.
    assert_eq!(
        quantized(DType::QUInt8, ElementPath::Portable, &x, &fb),
        vec![0, 0, 250, 0]
    );
}

#[test]
fn per_channel_on_last_axis_and_requantize() {
    let x = Tensor::new([2, 3], vec![0.1, -0.2, 0.3, 1.0, 2.0, -3.0]).unwrap();
    let qp = QParams::per_channel(1, vec![0.01, 0.02, 0.03], vec![0, 1, -1], DType::QInt8).unwrap();
    let q = QTensor::quantize(&x, DType::QInt8, qp).unwrap();
    assert_eq!(q.int_repr(), vec![10, -9, 9, 100, 101, -101]);
    let same = q.requantize(DType::QInt8, q.qparams().clone()).unwrap();
    assert_eq!(same.int_repr(), q.int_repr());
    let coarse = q
        .requantize(DType::QInt8, QParams::per_tensor(0.05, 0, DType::QInt8).unwrap())
        .unwrap();
    assert_eq!(coarse.int_repr(), vec![2, -4, 6, 20, 40, -60]);
}

#[test]
fn four_bit_round_trip() {
    let x = Tensor::new([5], vec![0.0, 0.5, 1.0, 7.5, 100.0]).unwrap();
    let qp = QParams::per_tensor(0.5, 0, DType::QUInt4x2).unwrap();
    let q = QTensor::quantize(&x, DType::QUInt4x2, qp).unwrap();
    assert_eq!(q.int_repr(), vec![0, 1, 2, 15, 15]);
    assert_eq!(q.storage_bytes(), 3);
    assert_eq!(q.dequantize().unwrap().data(), &[0.0, 0.5, 1.0, 7.5, 7.5]);
}

#[test]
fn float_requant_matches_fbgemm_formula() {
    let r = FloatRequant::from_scales(0.05, 0.002, 0.1, 128, 0, 255).unwrap();
    assert_eq!(r.multiplier, 0.05f32 * 0.002 / 0.1);
    // 1000 * 0.001 = 1.0 -> 129; ties go to even.
    assert_eq!(r.apply(1000.0), 129);
    assert_eq!(r.apply(500.0), 128);
    assert_eq!(r.apply(1500.0), 130);
    assert_eq!(r.apply(-1e9), 0);
}

#[test]
fn fixed_point_primitives() {
    assert_eq!(saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
    assert_eq!(saturating_rounding_doubling_high_mul(1 << 30, 1 << 30), 1 << 29);
    // -1.25 rounds to -1 (a floor-based shift gave -2).
    assert_eq!(saturating_rounding_doubling_high_mul(-5, 1 << 29), -1);
    assert_eq!(saturating_rounding_doubling_high_mul(-7, 1 << 29), -2);
    assert_eq!(rounding_divide_by_pot(5, 1), 3);
    assert_eq!(rounding_divide_by_pot(-5, 1), -3);
    assert_eq!(rounding_divide_by_pot(4, 1), 2);
    assert!(FixedPointRequant::new(0.0, 0, 0, 255).is_err());
    assert!(FixedPointRequant::new(f64::NAN, 0, 0, 255).is_err());
}

proptest! {
    /// The vectorized slice form of fake quantization equals the per-value definition, ties,
    /// out-of-range values, infinities and NaN included.
    #[test]
    fn fake_quant_slice_equals_per_value(
        scale in 1e-4f32..2.0,
        zp in -128i32..=127,
        values in proptest::collection::vec(-1e6f32..1e6, 1..64),
        ties in proptest::collection::vec(-300i32..300, 1..16),
    ) {
        use qtensor::fake_quant::FakeQuant;
        let f = FakeQuant::new(scale, zp, -128, 127).unwrap();
        let mut x = values;
        x.extend(ties.iter().map(|&t| (t as f32 + 0.5) * scale));
        x.extend(ties.iter().map(|&t| t as f32 * scale * 0.01));
        x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 0.0]);
        let mut y = vec![0.0; x.len()];
        let mut mask = vec![false; x.len()];
        f.forward(&x, &mut y, &mut mask).unwrap();
        let inv = 1.0 / scale;
        for (i, &v) in x.iter().enumerate() {
            let (want, m) = f.apply(v, inv);
            prop_assert_eq!(y[i].to_bits(), want.to_bits(), "x = {}", v);
            prop_assert_eq!(mask[i], m, "x = {}", v);
        }
    }
}
