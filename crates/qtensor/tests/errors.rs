//! Bad input gets a clear error, never a panic.

use qtensor::quantize::{quantize_into, Affine};
use qtensor::{choose_dynamic_qparams, DType, QError, QParams, QTensor, QuantSpec, Scheme, Tensor};

#[test]
fn invalid_scales_and_zero_points() {
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            QParams::per_tensor(scale, 0, DType::QInt8),
            Err(QError::InvalidScale { .. })
        ));
        assert!(Affine::new(scale, 0, DType::QUInt8).is_err());
    }
    assert!(matches!(
        QParams::per_tensor(1.0, 128, DType::QInt8),
        Err(QError::ZeroPointOutOfRange { .. })
    ));
    assert!(matches!(
        QParams::per_tensor(1.0, -1, DType::QUInt8),
        Err(QError::ZeroPointOutOfRange { .. })
    ));
    assert!(matches!(
        QParams::per_channel(0, vec![1.0, 1.0], vec![0], DType::QInt8),
        Err(QError::LengthMismatch { .. })
    ));
    assert!(matches!(
        QParams::per_channel(0, vec![], vec![], DType::QInt8),
        Err(QError::Empty { .. })
    ));
}

#[test]
fn shape_axis_and_length_errors() {
    assert!(matches!(
        Tensor::new([2, 3], vec![0.0; 5]),
        Err(QError::ShapeMismatch { .. })
    ));
    let x = Tensor::zeros([2, 3]);
    let qp = QParams::per_channel(2, vec![1.0; 3], vec![0; 3], DType::QInt8).unwrap();
    assert!(matches!(
        QTensor::quantize(&x, DType::QInt8, qp),
        Err(QError::AxisOutOfRange { .. })
    ));
    let qp = QParams::per_channel(0, vec![1.0; 3], vec![0; 3], DType::QInt8).unwrap();
    assert!(matches!(
        QTensor::quantize(&x, DType::QInt8, qp),
        Err(QError::LengthMismatch { .. })
    ));
    let p = Affine::new(1.0, 0, DType::QInt8).unwrap();
    let mut out = vec![0i8; 2];
    assert!(matches!(
        quantize_into(&[1.0, 2.0, 3.0], &mut out, &p),
        Err(QError::LengthMismatch { .. })
    ));
    let qp = QParams::per_tensor(1.0, 0, DType::QInt8).unwrap();
    assert!(QTensor::from_int_repr([2], DType::QInt8, qp.clone(), &[1, 300]).is_err());
    assert!(QTensor::from_int_repr([3], DType::QInt8, qp, &[1, 2]).is_err());
}

#[test]
fn non_finite_input_is_rejected() {
    let x = Tensor::new([3], vec![1.0, f32::NAN, 2.0]).unwrap();
    let qp = QParams::per_tensor(0.1, 0, DType::QInt8).unwrap();
    match QTensor::quantize(&x, DType::QInt8, qp) {
        Err(QError::NonFinite { index, .. }) => assert_eq!(index, 1),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let spec = QuantSpec::activation_default();
    assert!(matches!(
        spec.qparams_from_range(f32::NEG_INFINITY, 1.0),
        Err(QError::NonFinite { .. })
    ));
    assert!(matches!(
        spec.qparams_from_range(2.0, 1.0),
        Err(QError::InvalidRange { .. })
    ));
    assert!(choose_dynamic_qparams(f32::NAN, 1.0, 0, 255, false).is_err());
    assert!(matches!(
        Tensor::new([0], vec![]).unwrap().min_max(),
        Err(QError::Empty { .. })
    ));
}

#[test]
fn invalid_quant_ranges() {
    let spec = QuantSpec::new(DType::QInt8, Scheme::Affine).with_custom_range(-200, 100);
    assert!(matches!(spec.quant_range(), Err(QError::InvalidQuantRange { .. })));
    let spec = QuantSpec::new(DType::QUInt8, Scheme::Affine).with_custom_range(5, 100);
    assert!(spec.quant_range().is_err());
    // quint8 symmetric with reduce_range puts the zero point (128) outside [0, 127].
    let spec = QuantSpec::new(DType::QUInt8, Scheme::Symmetric).with_reduce_range(true);
    assert!(spec.qparams_from_range(-1.0, 1.0).is_err());
}

/// Every non-finite value is found, wherever it sits (the vector scan's full blocks or its
/// tail, the first or the last value), with its index; large finite values and -0.0 are not.
#[test]
fn first_non_finite_finds_each_position() {
    use qtensor::quantize::{first_non_finite_with, ElementPath};
    for path in ElementPath::available() {
        let first_non_finite = |x: &[f32]| first_non_finite_with(path, x);
        for len in [1usize, 7, 8, 15, 16, 63, 64, 65, 200, 1031] {
            let clean: Vec<f32> = (0..len).map(|i| [3e38, -3e38, -0.0, 1.5][i % 4]).collect();
            assert_eq!(first_non_finite(&clean), None);
            for at in [0, len / 2, len - 1] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut x = clean.clone();
                    x[at] = bad;
                    if at + 1 < len {
                        x[len - 1] = f32::NAN;
                    }
                    let (index, value) = first_non_finite(&x).expect("a non-finite value");
                    assert_eq!(index, at, "length {len} on {path:?}");
                    assert_eq!(value.to_bits(), bad.to_bits());
                }
            }
        }
    }
}
