//! The range -> (scale, zero point) rules on hand-checked values.

use qtensor::{choose_dynamic_qparams, DType, QuantSpec, Scheme};

#[test]
fn observer_rule_affine_and_symmetric() {
    let affine = QuantSpec::new(DType::QUInt8, Scheme::Affine);
    // Range widened to include zero: [0.5, 2] behaves as [0, 2].
    assert_eq!(affine.qparams_from_range(0.5, 2.0).unwrap(), (2.0 / 255.0, 0));
    let (scale, zp) = affine.qparams_from_range(-1.0, 1.0).unwrap();
    assert_eq!(scale, 2.0f32 / 255.0);
    // -1 / (2/255 in f32) is -127.49999..., so the zero point is 127 (PyTorch gives 127 too).
    assert_eq!(zp, 127);
    // Zero range: the eps floor keeps the scale positive.
    assert_eq!(affine.qparams_from_range(0.0, 0.0).unwrap(), (f32::EPSILON, 0));

    let reduced = affine.with_reduce_range(true);
    assert_eq!(reduced.quant_range().unwrap(), (0, 127));
    assert_eq!(reduced.qparams_from_range(0.0, 1.27).unwrap().0, 1.27f32 / 127.0);

    let sym = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    assert_eq!(sym.qparams_from_range(-3.0, 1.0).unwrap(), (3.0f32 / 127.5, 0));
    let sym_u8 = QuantSpec::new(DType::QUInt8, Scheme::Symmetric);
    assert_eq!(sym_u8.qparams_from_range(-3.0, 1.0).unwrap().1, 128);
    let custom = QuantSpec::new(DType::QUInt8, Scheme::Symmetric).with_custom_range(0, 100);
    assert_eq!(custom.qparams_from_range(-3.0, 1.0).unwrap(), (3.0f32 / 50.0, 50));
    let custom_i8 = QuantSpec::new(DType::QInt8, Scheme::Affine)
        .with_custom_range(-127, 127)
        .with_reduce_range(true);
    assert_eq!(custom_i8.quant_range().unwrap(), (-64, 63));
}

#[test]
fn dynamic_rule() {
    // Symmetric range over 8 bits: zero point from the smaller-error side, ties to even.
    let (scale, zp) = choose_dynamic_qparams(-1.0, 1.0, 0, 255, false).unwrap();
    assert_eq!(scale, (2.0f64 / 255.0) as f32);
    assert_eq!(zp, 128);
    // reduce_range halves the integer range.
    let (scale, zp) = choose_dynamic_qparams(0.0, 12.7, 0, 255, true).unwrap();
    assert_eq!(scale, (12.7f32 as f64 / 127.0) as f32);
    assert_eq!(zp, 0);
    // Degenerate range: the scale becomes 0.1.
    assert_eq!(choose_dynamic_qparams(0.0, 0.0, 0, 255, false).unwrap(), (0.1, 0));
    // Tiny ranges are stretched to the minimum scale.
    let (scale, zp) = choose_dynamic_qparams(-1e-4, 1e-4, 0, 255, false).unwrap();
    assert_eq!(scale, 6.1e-5);
    assert_eq!(zp, 128);
}
