//! The whole static flow against PyTorch (`tests/golden/pipeline.*`): the same small CNN built
//! with qgraph from PyTorch's float weights, fused, prepared with the fbgemm preset, calibrated
//! on the same four batches and converted.

mod common;

use common::Golden;
use qapi::{prepare, QConfigMap};
use qgraph::{Conv2dAttrs, Graph, GraphBuilder, Value};
use qtensor::Tensor;

fn pipeline_model(g: &Golden, case: &serde_json::Value) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 3, 12, 12]);
    let c1 = b.conv2d("conv1", x, Conv2dAttrs::new(3, 8, 3).padding(1));
    let b1 = b.batch_norm2d("bn1", c1, 8);
    let r1 = b.relu("relu1", b1);
    let c2 = b.conv2d("conv2", r1, Conv2dAttrs::new(8, 8, 3).padding(1).groups(8));
    let b2 = b.batch_norm2d("bn2", c2, 8);
    let r2 = b.relu("relu2", b2);
    let p = b.adaptive_avg_pool2d("pool", r2, [1, 1]);
    let f = b.flatten("flatten", p, 1);
    let y = b.linear("fc", f, 8, 5);
    b.output(y);
    let mut graph = b.build().unwrap();
    for (role, _) in case["tensors"].as_object().unwrap() {
        let Some(param) = role.strip_prefix("float.") else {
            continue;
        };
        let (node, local) = param.split_once('.').unwrap();
        let (shape, data) = g.f32s(case, role);
        let id = graph.find(node).unwrap();
        graph
            .node_mut(id)
            .params
            .insert(local.to_string(), Tensor::new(shape, data).unwrap());
    }
    graph
}

fn batch(g: &Golden, case: &serde_json::Value, role: &str) -> Vec<Value> {
    let (shape, data) = g.f32s(case, role);
    vec![Value::F32(Tensor::new(shape, data).unwrap())]
}

#[test]
fn fbgemm_preset_reproduces_pytorch() {
    let g = Golden::load("pipeline");
    let case = &g.cases[0];
    let graph = pipeline_model(&g, case);
    let mut prepared = prepare(&graph, &QConfigMap::fbgemm()).unwrap();
    assert_eq!(prepared.fusion().groups.len(), 2, "{:?}", prepared.fusion());
    let n = prepared
        .calibrate((0..4).map(|i| batch(&g, case, &format!("calib{i}"))))
        .unwrap();
    assert_eq!(n, 4);

    // Activation parameters: zero points equal, scales within 1e-6 relative.
    let chosen = prepared.activation_qparams().unwrap();
    let expected = case["quantized_params"].as_object().unwrap();
    for (ours, theirs) in [("x", "quant"), ("conv1", "conv1"), ("conv2", "conv2"), ("fc", "fc")] {
        let (scale, zp) = chosen[ours].get(0);
        let want_scale = expected[&format!("{theirs}.scale")].as_f64().unwrap() as f32;
        let want_zp = expected[&format!("{theirs}.zero_point")].as_i64().unwrap() as i32;
        assert_eq!(zp, want_zp, "{ours} zero point");
        assert!(
            ((scale - want_scale) / want_scale).abs() <= 1e-6,
            "{ours} scale {scale} vs {want_scale}"
        );
    }

    let (converted, report) = prepared.convert().unwrap();
    for name in ["conv1", "conv2", "pool", "flatten", "fc"] {
        assert!(report.quantized().contains(&name), "{name} should be int8:\n{report}");
    }
    let (_, expected_y) = g.f32s(case, "test_y");
    let (test_shape, test_x) = g.f32s(case, "test_x");
    // The test batch has 2 images; the graph was declared with 4, shapes follow the input.
    let y = converted
        .run(vec![Value::F32(Tensor::new(test_shape, test_x).unwrap())])
        .unwrap();
    let y = y[0].as_f32().unwrap();
    let (fc_scale, fc_zp) = chosen["fc"].get(0);
    let torch_scale = expected["fc.scale"].as_f64().unwrap() as f32;
    let mut exact = 0;
    for (a, b) in y.data().iter().zip(&expected_y) {
        assert!((a - b).abs() <= fc_scale * 1.001, "{a} vs {b} (step {fc_scale})");
        // Compare the integers behind the outputs: each side dequantized with its own scale.
        let ours = (a / fc_scale).round() as i32 + fc_zp;
        let theirs = (b / torch_scale).round() as i32 + fc_zp;
        exact += usize::from(ours == theirs);
    }
    eprintln!(
        "pipeline: {exact}/{} output integers equal PyTorch's; fc scale {fc_scale:e} vs {torch_scale:e} (bitwise equal: {})",
        expected_y.len(),
        fc_scale == torch_scale
    );
    assert_eq!(exact, expected_y.len(), "every output integer should equal PyTorch's");
}
