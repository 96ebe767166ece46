//! Static conversion fuses `add` + `relu` into one `add_relu` node (PyTorch
//! `quantized::add_relu`): the output parameters come from observing after the ReLU, and the
//! node computes `quantize(max(dq(a) + dq(b), 0))` with them.

use std::collections::HashMap;

use qapi::{prepare, NodeStatus, QConfigMap};
use qgraph::{Conv2dAttrs, GraphBuilder, Value};
use qkernels::conv::ActQuant;
use qkernels::eltwise::{self, FloatRule};
use qtensor::{QData, QParams, Tensor};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bytes_and_params(v: &Value) -> (Vec<u8>, ActQuant) {
    let Value::Quant(q) = v else {
        panic!("expected a quantized value")
    };
    let QData::U8(d) = q.data() else {
        panic!("expected quint8")
    };
    let QParams::PerTensor { scale, zero_point } = q.qparams() else {
        panic!("per tensor")
    };
    (d.clone(), ActQuant::new(*scale, *zero_point).unwrap())
}

#[test]
fn add_then_relu_becomes_add_relu_with_post_relu_parameters() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 4, 6, 6]);
    let left = b.conv2d("left", x, Conv2dAttrs::new(4, 8, 3).padding(1));
    let right = b.conv2d("right", x, Conv2dAttrs::new(4, 8, 1));
    let sum = b.add("add", left, right);
    let r = b.relu("relu", sum);
    let head = b.conv2d("head", r, Conv2dAttrs::new(8, 2, 1));
    b.output(head);
    let mut g = b.build().unwrap();
    for i in 0..g.nodes().len() {
        let node = g.node_mut(qgraph::NodeId(i));
        for (k, t) in node.params.iter_mut() {
            let data = values(t.numel(), 7 + i as u64 + k.len() as u64);
            t.data_mut().copy_from_slice(&data);
        }
    }
    let batch = |seed| vec![Value::F32(Tensor::new([1, 4, 6, 6], values(144, seed)).unwrap())];
    let mut p = prepare(&g, &QConfigMap::qforge()).unwrap();
    p.calibrate((0..3).map(batch)).unwrap();
    // The add's observer watched the ReLU's output: the range starts at 0.
    let acts = p.activation_qparams().unwrap();
    let QParams::PerTensor { zero_point, .. } = acts["add"] else {
        panic!()
    };
    assert_eq!(zero_point, 0, "{acts:?}");
    assert!(!acts.contains_key("relu"));
    // The separate add_relu node (not fused into the convolution that feeds it).
    let (q, report) = p.fuse_residual_adds(false).convert().unwrap();

    let kinds: Vec<(String, String)> = q
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.op.display_name()))
        .collect();
    assert!(!kinds.iter().any(|(_, k)| k == "QuantizedReLU"), "{kinds:?}");
    assert!(kinds.contains(&("relu".into(), "QuantizedAddReLU".into())), "{kinds:?}");
    assert!(
        matches!(&report.node("relu").unwrap().status, NodeStatus::Quantized { detail } if detail.contains("add_relu"))
    );

    // The fused node's bytes are the add_relu kernel's (with the zero point at 0 the clamp is
    // the u8 range itself; the kernel's ReLU at other zero points is checked in qkernels).
    let mut seen: HashMap<String, Value> = HashMap::new();
    q.run_with(batch(42), |node, v| {
        seen.insert(node.name.clone(), v.clone());
        Ok(())
    })
    .unwrap();
    let (a, aq) = bytes_and_params(&seen["left"]);
    let (bb, bq) = bytes_and_params(&seen["right"]);
    let (y, yq) = bytes_and_params(&seen["relu"]);
    let mut fused = vec![0u8; a.len()];
    eltwise::add(&a, aq, &bb, bq, yq, true, FloatRule::Vectorized, &mut fused).unwrap();
    assert_eq!(y, fused);
}
