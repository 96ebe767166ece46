//! Observers against PyTorch's reference vectors (tests/golden/observers.*): MinMax, moving
//! average and per-channel qparams bit-exact; Histogram zero points exact and scales within
//! 1e-6 relative; the zeros / constant / outlier edge cases exact.

use qgraph::observers::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver, DEFAULT_AVERAGING_CONSTANT,
};
use qgraph::Observer;
use qtensor::{DType, QParams, QuantSpec, Scheme, Tensor};
use safetensors::SafeTensors;
use serde_json::Value as Json;

const JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/golden/observers.json"
));
const TENSORS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/golden/observers.safetensors"
));

fn f32_tensor(st: &SafeTensors, name: &str) -> Tensor {
    let v = st.tensor(name).unwrap();
    let data = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::new(v.shape().to_vec(), data).unwrap()
}

fn i64_values(st: &SafeTensors, name: &str) -> Vec<i64> {
    let v = st.tensor(name).unwrap();
    v.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn spec_of(case: &Json) -> QuantSpec {
    let dtype = DType::from_name(case["dtype"].as_str().unwrap()).unwrap();
    let scheme = if case["qscheme"].as_str().unwrap().ends_with("symmetric") {
        Scheme::Symmetric
    } else {
        Scheme::Affine
    };
    QuantSpec::new(dtype, scheme).with_reduce_range(case["reduce_range"].as_bool().unwrap_or(false))
}

fn batches(st: &SafeTensors, case: &Json) -> Vec<Tensor> {
    (0..case["batches"].as_u64().unwrap())
        .map(|i| f32_tensor(st, case["tensors"][format!("x{i}")].as_str().unwrap()))
        .collect()
}

fn observer_for(case: &Json) -> Box<dyn Observer> {
    let spec = spec_of(case);
    match case["op"].as_str().unwrap() {
        "MinMaxObserver" => Box::new(MinMaxObserver::new(spec)),
        "MovingAverageMinMaxObserver" => Box::new(MovingAverageMinMaxObserver::new(spec, DEFAULT_AVERAGING_CONSTANT)),
        "HistogramObserver" => Box::new(HistogramObserver::new(spec)),
        "PerChannelMinMaxObserver" => Box::new(PerChannelMinMaxObserver::new(spec, 0)),
        "MovingAveragePerChannelMinMaxObserver" => Box::new(MovingAveragePerChannelMinMaxObserver::new(
            spec,
            0,
            DEFAULT_AVERAGING_CONSTANT,
        )),
        other => panic!("unknown observer {other}"),
    }
}

#[test]
fn observers_match_pytorch() {
    let cases: Json = serde_json::from_str(JSON).unwrap();
    let st = SafeTensors::deserialize(TENSORS).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let op = case["op"].as_str().unwrap();
        let mut obs = observer_for(case);
        for x in batches(&st, case) {
            obs.observe(&x).unwrap();
        }
        let label = format!(
            "{op} {} {} rr={} {}",
            case["dtype"], case["qscheme"], case["reduce_range"], case["label"]
        );
        match obs.qparams().unwrap() {
            QParams::PerTensor { scale, zero_point } => {
                let want_scale = case["scale"].as_f64().unwrap() as f32;
                let want_zp = case["zero_point"].as_i64().unwrap() as i32;
                let histogram = op == "HistogramObserver" && case.get("label").is_none();
                let scale_ok = if histogram {
                    ((scale - want_scale) / want_scale).abs() <= 1e-6
                } else {
                    scale.to_bits() == want_scale.to_bits()
                };
                if !scale_ok || zero_point != want_zp {
                    failures.push(format!(
                        "{label}: got ({scale:e}, {zero_point}), want ({want_scale:e}, {want_zp})"
                    ));
                }
            }
            QParams::PerChannel {
                scales, zero_points, ..
            } => {
                let want_scales = f32_tensor(&st, case["tensors"]["scales"].as_str().unwrap());
                let want_zps = i64_values(&st, case["tensors"]["zero_points"].as_str().unwrap());
                let exact = scales
                    .iter()
                    .zip(want_scales.data())
                    .all(|(a, b)| a.to_bits() == b.to_bits())
                    && zero_points.iter().zip(&want_zps).all(|(&a, &b)| a as i64 == b)
                    && scales.len() == want_zps.len();
                if !exact {
                    failures.push(format!(
                        "{label}: got {scales:?} {zero_points:?}, want {:?} {want_zps:?}",
                        want_scales.data()
                    ));
                }
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 34);
}
