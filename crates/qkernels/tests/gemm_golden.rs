//! PyTorch (fbgemm engine) golden vectors through the GEMM epilogues, on every available path:
//! static quantized Linear / LinearReLU bit for bit, dynamic Linear within 1e-5 relative (and in
//! fact bit for bit).

use qkernels::gemm::{
    available_paths, gemm_u8s8, ActivationQuant, Dequantize, Epilogue, GemmConfig, GemmOutput, PackedWeights,
    Requantize, WeightQuant,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn load(name: &str) -> (Value, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/");
    let json = std::fs::read_to_string(format!("{dir}{name}.json")).expect("golden json");
    let bytes = std::fs::read(format!("{dir}{name}.safetensors")).expect("golden safetensors");
    (serde_json::from_str(&json).unwrap(), bytes)
}

struct Tensor {
    shape: Vec<usize>,
    dtype: Dtype,
    data: Vec<u8>,
}

fn tensor(st: &SafeTensors, case: &Value, role: &str) -> Tensor {
    let key = case["tensors"][role].as_str().unwrap();
    let t = st.tensor(key).unwrap();
    Tensor {
        shape: t.shape().to_vec(),
        dtype: t.dtype(),
        data: t.data().to_vec(),
    }
}

impl Tensor {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32);
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn u8s(&self) -> Vec<u8> {
        assert_eq!(self.dtype, Dtype::U8);
        self.data.clone()
    }
    fn i8s(&self) -> Vec<i8> {
        assert_eq!(self.dtype, Dtype::I8);
        self.data.iter().map(|&b| b as i8).collect()
    }
}

fn weights(st: &SafeTensors, case: &Value) -> PackedWeights {
    let w = tensor(st, case, "w_q");
    let (n, k) = (w.shape[0], w.shape[1]);
    let scales = tensor(st, case, "w_scales").f32s();
    let quant = if case["per_channel"].as_bool().unwrap() {
        WeightQuant::PerChannel {
            zero_points: vec![0; n],
            scales,
        }
    } else {
        WeightQuant::PerTensor {
            scale: scales[0],
            zero_point: 0,
        }
    };
    PackedWeights::new(&w.i8s(), n, k, quant).unwrap()
}

#[test]
fn static_linear_is_bit_exact() {
    let (json, bytes) = load("linear");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for (index, case) in cases.iter().enumerate() {
        let packed = weights(&st, case);
        let x = tensor(&st, case, "x_q");
        let m = x.shape[0];
        let bias = tensor(&st, case, "bias").f32s();
        let expected = tensor(&st, case, "y_q").u8s();
        let act = ActivationQuant::PerTensor {
            scale: case["x_scale"].as_f64().unwrap() as f32,
            zero_point: case["x_zero_point"].as_i64().unwrap() as i32,
        };
        let epi = Epilogue::Requantize(Requantize {
            bias: Some(&bias),
            out_scale: case["y_scale"].as_f64().unwrap() as f32,
            out_zero_point: case["y_zero_point"].as_i64().unwrap() as i32,
            relu: case["relu"].as_bool().unwrap(),
            clamp: None,
        });
        for path in available_paths() {
            let mut y = vec![0u8; expected.len()];
            let cfg = GemmConfig::with_path(path);
            gemm_u8s8(&x.u8s(), m, &act, &packed, &epi, GemmOutput::U8(&mut y), &cfg).unwrap();
            let diffs = y.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(diffs, 0, "case {index} ({case}) path {path}: {diffs} outputs differ");
        }
    }
}

#[test]
fn dynamic_linear_matches_within_1e5() {
    let (json, bytes) = load("dynamic_linear");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (index, case) in json["cases"].as_array().unwrap().iter().enumerate() {
        let packed = weights(&st, case);
        let x = tensor(&st, case, "x");
        let m = x.shape[0];
        let xs = x.f32s();
        let bias = tensor(&st, case, "bias").f32s();
        let expected = tensor(&st, case, "y").f32s();
        // PyTorch dynamic Linear: fbgemm ChooseQuantizationParams over the whole input, with
        // reduce_range, then the quantize rule.
        let (min, max) = qtensor::min_max(&xs);
        let (scale, zp) = qtensor::choose_dynamic_qparams(min, max, 0, 255, true).unwrap();
        let affine = qtensor::quantize::Affine::new(scale, zp, qtensor::DType::QUInt8).unwrap();
        let mut xq = vec![0u8; xs.len()];
        qtensor::quantize::quantize_into(&xs, &mut xq, &affine).unwrap();
        let act = ActivationQuant::PerTensor { scale, zero_point: zp };
        let epi = Epilogue::Dequantize(Dequantize {
            bias: Some(&bias),
            relu: false,
        });
        for path in available_paths() {
            let mut y = vec![0f32; expected.len()];
            gemm_u8s8(
                &xq,
                m,
                &act,
                &packed,
                &epi,
                GemmOutput::F32(&mut y),
                &GemmConfig::with_path(path),
            )
            .unwrap();
            // The fused multiply-add epilogue reproduces PyTorch exactly; the 1e-5 bound is the
            // contract, bit equality what this build achieves.
            let mut worst = 0f32;
            for (a, b) in y.iter().zip(&expected) {
                worst = worst.max((a - b).abs() / b.abs().max(1e-3));
            }
            assert!(worst <= 1e-5, "case {index} path {path}: worst relative error {worst}");
            let same = y
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            assert_eq!(same, y.len(), "case {index} path {path}: not bit-identical to PyTorch");
        }
    }
}
