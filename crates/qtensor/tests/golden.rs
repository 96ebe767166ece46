//! PyTorch reference vectors (`tests/golden/quantize.*`, and the MinMax cases of
//! `observers.*`) reproduced bit for bit.

use std::collections::HashMap;

use qtensor::quantize::{dequantize_into_with, quantize_into_with, Affine, ElementPath, Overflow};
use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

struct Suite {
    cases: Vec<Value>,
    bytes: Vec<u8>,
}

impl Suite {
    fn load(name: &str) -> Suite {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(format!("{dir}{name}.json")).unwrap()).unwrap();
        let bytes = std::fs::read(format!("{dir}{name}.safetensors")).unwrap();
        Suite {
            cases: json["cases"].as_array().unwrap().clone(),
            bytes,
        }
    }

    /// A case's tensor as (shape, values widened to f64).
    fn tensor(&self, case: &Value, role: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(case["tensors"][role].as_str().unwrap()).unwrap();
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytemuck_f32(data).into_iter().map(f64::from).collect(),
            Dtype::U8 => data.iter().map(|&b| b as f64).collect(),
            Dtype::I8 => data.iter().map(|&b| b as i8 as f64).collect(),
            Dtype::I32 => data
                .chunks(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => data
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unexpected dtype {other:?}"),
        };
        (view.shape().to_vec(), values)
    }

    fn f32s(&self, case: &Value, role: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, v) = self.tensor(case, role);
        (shape, v.into_iter().map(|x| x as f32).collect())
    }

    fn ints(&self, case: &Value, role: &str) -> Vec<i32> {
        self.tensor(case, role).1.into_iter().map(|x| x as i32).collect()
    }
}

fn bytemuck_f32(data: &[u8]) -> Vec<f32> {
    data.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn dtype_of(case: &Value) -> DType {
    DType::from_name(case["dtype"].as_str().unwrap()).unwrap()
}

fn quantize_path(path: ElementPath, x: &[f32], p: &Affine, dtype: DType) -> Vec<i32> {
    match dtype {
        DType::QUInt8 => {
            let mut out = vec![0u8; x.len()];
            quantize_into_with(path, x, &mut out, p).unwrap();
            out.into_iter().map(i32::from).collect()
        }
        DType::QInt8 => {
            let mut out = vec![0i8; x.len()];
            quantize_into_with(path, x, &mut out, p).unwrap();
            out.into_iter().map(i32::from).collect()
        }
        _ => {
            let mut out = vec![0i32; x.len()];
            quantize_into_with(path, x, &mut out, p).unwrap();
            out
        }
    }
}

#[test]
fn per_tensor_matches_pytorch_on_every_path() {
    let suite = Suite::load("quantize");
    let mut checked = 0;
    for case in suite.cases.iter().filter(|c| c["op"] == "quantize_per_tensor") {
        let dtype = dtype_of(case);
        let scale = case["scale"].as_f64().unwrap() as f32;
        let zp = case["zero_point"].as_i64().unwrap() as i32;
        let (_, x) = suite.f32s(case, "x");
        let expected = suite.ints(case, "q");
        let (_, expected_dequant) = suite.f32s(case, "dequant");
        let parity = Affine::new(scale, zp, dtype).unwrap().with_overflow(Overflow::Fbgemm);
        let saturating = Affine::new(scale, zp, dtype).unwrap();
        for path in ElementPath::available() {
            // Parity mode: every integer, the wrapped +-1e30 ones included.
            assert_eq!(quantize_path(path, &x, &parity, dtype), expected, "{path:?} {case}");

            // Default mode: identical except where fbgemm wraps around; there it saturates.
            let got = quantize_path(path, &x, &saturating, dtype);
            for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                if x[i].abs() >= 1e20 {
                    let want = if x[i] > 0.0 { dtype.qmax() } else { dtype.qmin() };
                    assert_eq!(g, want, "saturation of {} ({path:?})", x[i]);
                } else {
                    assert_eq!(g, e, "element {i} ({}) of {case} on {path:?}", x[i]);
                }
            }

            // Dequantize: (q - zp) * scale in f32, bit for bit.
            let mut back = vec![0f32; x.len()];
            match dtype {
                DType::QUInt8 => {
                    let q: Vec<u8> = expected.iter().map(|&v| v as u8).collect();
                    dequantize_into_with(path, &q, &mut back, scale, zp).unwrap();
                }
                DType::QInt8 => {
                    let q: Vec<i8> = expected.iter().map(|&v| v as i8).collect();
                    dequantize_into_with(path, &q, &mut back, scale, zp).unwrap();
                }
                _ => dequantize_into_with(path, &expected, &mut back, scale, zp).unwrap(),
            }
            assert_eq!(bits(&back), bits(&expected_dequant), "dequantize {case} on {path:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 12);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn per_channel_matches_pytorch() {
    let suite = Suite::load("quantize");
    let mut checked = 0;
    for case in suite.cases.iter().filter(|c| c["op"] == "quantize_per_channel") {
        let dtype = dtype_of(case);
        let axis = case["axis"].as_u64().unwrap() as usize;
        let (shape, x) = suite.f32s(case, "x");
        let (_, scales) = suite.f32s(case, "scales");
        let zero_points = suite.ints(case, "zero_points");
        let qparams = QParams::per_channel(axis, scales, zero_points, dtype).unwrap();
        let q = QTensor::quantize(&Tensor::new(shape, x).unwrap(), dtype, qparams).unwrap();
        assert_eq!(q.int_repr(), suite.ints(case, "q"), "{case}");

        // PyTorch keeps per-channel scales in f64 and dequantizes with them; the file stores them
        // rounded to f32, so our f32 product may differ from PyTorch's by one unit in the last place.
        let (_, expected) = suite.f32s(case, "dequant");
        let back = q.dequantize().unwrap();
        for (g, e) in back.data().iter().zip(&expected) {
            assert!((g.to_bits() as i64 - e.to_bits() as i64).abs() <= 1, "{g} vs {e}");
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn minmax_observer_qparams_match_pytorch() {
    let suite = Suite::load("observers");
    let mut checked = 0;
    for case in suite.cases.iter().filter(|c| c["op"] == "MinMaxObserver") {
        let scheme = match case["qscheme"].as_str().unwrap() {
            "per_tensor_affine" => Scheme::Affine,
            "per_tensor_symmetric" => Scheme::Symmetric,
            other => panic!("unexpected scheme {other}"),
        };
        let spec = QuantSpec::new(dtype_of(case), scheme).with_reduce_range(case["reduce_range"].as_bool().unwrap());
        let tensors: HashMap<String, Value> = serde_json::from_value(case["tensors"].clone()).unwrap();
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for role in tensors.keys() {
            let (_, x) = suite.f32s(case, role);
            let (a, b) = qtensor::min_max(&x);
            lo = lo.min(a);
            hi = hi.max(b);
        }
        let (scale, zp) = spec.qparams_from_range(lo, hi).unwrap();
        assert_eq!(scale, case["scale"].as_f64().unwrap() as f32, "{case}");
        assert_eq!(zp as i64, case["zero_point"].as_i64().unwrap(), "{case}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} MinMax cases");
}

#[test]
fn fake_quantize_matches_pytorch() {
    use qtensor::fake_quant::{fake_quantize_per_channel, straight_through, FakeQuant};
    let suite = Suite::load("fake_quant");
    let mut checked = 0;
    for case in &suite.cases {
        let qmin = case["quant_min"].as_i64().unwrap() as i32;
        let qmax = case["quant_max"].as_i64().unwrap() as i32;
        let (shape, x) = suite.f32s(case, "x");
        let (_, expected) = suite.f32s(case, "y");
        let mut y = vec![0f32; x.len()];
        let mut mask = vec![false; x.len()];
        if case["op"] == "fake_quantize_per_tensor_affine" {
            let scale = case["scale"].as_f64().unwrap() as f32;
            let fq = FakeQuant::new(scale, case["zero_point"].as_i64().unwrap() as i32, qmin, qmax).unwrap();
            fq.forward(&x, &mut y, &mut mask).unwrap();
            // The reference gradient is d(sum y)/dx: ones through the mask.
            let (_, grad) = suite.f32s(case, "grad_x");
            assert_eq!(straight_through(&vec![1.0; x.len()], &mask), grad, "{case}");
            assert!(mask.iter().any(|m| !m), "the case should exercise the clamp");
        } else {
            let (_, scales) = suite.f32s(case, "scales");
            let zps = suite.ints(case, "zero_points");
            let params: Vec<FakeQuant> = scales
                .iter()
                .zip(&zps)
                .map(|(&s, &z)| FakeQuant::new(s, z, qmin, qmax).unwrap())
                .collect();
            let axis = case["axis"].as_u64().unwrap() as usize;
            fake_quantize_per_channel(&x, &shape, axis, &params, &mut y, &mut mask).unwrap();
        }
        assert_eq!(bits(&y), bits(&expected), "{case}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
