//! Graph-level dynamic quantization: Linear (with and without fused ReLU), LSTM and GRU nodes
//! replaced by dynamic int8 / float16 implementations, outputs close to fp32, the report, errors.

use qapi::dynamic::{DynamicConfig, DynamicLinear};
use qapi::{quantize_dynamic, DynamicLinearOp, DynamicRnnOp, FloatReason, NodeStatus, RnnCell};
use qgraph::{FusedActivation, Graph, GraphBuilder, Op, OpKind, RnnAttrs, Value};
use qtensor::Tensor;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn randomize(graph: &mut Graph, seed: u64, scale: f32) {
    let mut s = seed;
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(qgraph::NodeId(i));
        for t in node.params.values_mut() {
            t.data_mut().iter_mut().for_each(|v| *v = lcg(&mut s) * scale);
        }
    }
}

fn sqnr_db(reference: &[f32], approx: &[f32]) -> f32 {
    let signal: f64 = reference.iter().map(|&v| (v as f64).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(approx)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    (10.0 * (signal / noise.max(1e-30)).log10()) as f32
}

fn input(shape: &[usize], seed: u64) -> Value {
    let mut s = seed;
    let n = shape.iter().product();
    Value::F32(Tensor::new(shape.to_vec(), (0..n).map(|_| lcg(&mut s)).collect()).unwrap())
}

fn mlp() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 32]);
    let h = b.linear("fc1", x, 32, 64);
    let r = b.relu("relu", h);
    let y = b.linear("fc2", r, 64, 16);
    b.output(y);
    let mut g = b.build().unwrap();
    randomize(&mut g, 1, 0.2);
    g
}

fn run(g: &Graph, x: &Value) -> Vec<f32> {
    g.run(vec![x.clone()]).unwrap()[0].as_f32().unwrap().data().to_vec()
}

#[test]
fn linear_graph_is_close_to_fp32_and_reported() {
    let g = mlp();
    let x = input(&[4, 32], 9);
    let want = run(&g, &x);
    for config in [
        DynamicConfig::qforge(),
        DynamicConfig::pytorch_fbgemm(),
        DynamicConfig::float16(),
    ] {
        let (q, report) = quantize_dynamic(&g, &[OpKind::Linear], config).unwrap();
        let got = run(&q, &x);
        let db = sqnr_db(&want, &got);
        assert!(db > 30.0, "{config:?}: SQNR {db} dB");
        assert_eq!(report.quantized(), vec!["fc1", "fc2"]);
        assert_eq!(report.node("x").unwrap().status, NodeStatus::NotApplicable);
        assert_eq!(
            report.node("relu").unwrap().status,
            NodeStatus::Float {
                reason: FloatReason::NoKernel
            }
        );
        assert_eq!(report.node("fc1").unwrap().op, "DynamicQuantizedLinear");
        assert!(q.state_dict().is_empty(), "quantized nodes own their weights");
    }
    let (_, report) = quantize_dynamic(&g, &[OpKind::Linear], DynamicConfig::qforge()).unwrap();
    let NodeStatus::Quantized { detail } = &report.node("fc2").unwrap().status else {
        panic!("fc2 not quantized")
    };
    assert_eq!(
        detail,
        "qint8 per-channel weights, quint8 per-row activations (dynamic)"
    );
    assert!(report.to_string().contains("2 quantized"));
}

#[test]
fn pytorch_preset_nodes_equal_dynamic_linear() {
    let g = mlp();
    let x = input(&[4, 32], 3);
    let config = DynamicConfig::pytorch_fbgemm();
    let (q, _) = quantize_dynamic(&g, &[OpKind::Linear], config).unwrap();
    let got = run(&q, &x);
    // The same computation by hand with DynamicLinear.
    let node = |name: &str| g.node(g.find(name).unwrap());
    let fc1 = DynamicLinear::new(
        node("fc1").param("weight").unwrap(),
        Some(node("fc1").param("bias").unwrap()),
        config,
    )
    .unwrap();
    let fc2 = DynamicLinear::new(
        node("fc2").param("weight").unwrap(),
        Some(node("fc2").param("bias").unwrap()),
        config,
    )
    .unwrap();
    let mut h = fc1.forward(x.as_f32().unwrap()).unwrap();
    h.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
    let want = fc2.forward(&h).unwrap();
    assert_eq!(got, want.data());
    // The custom op exposes its parts and can be rebuilt from them.
    let id = q.find("fc2").unwrap();
    let Op::Custom(c) = &q.node(id).op else {
        panic!("fc2 not replaced")
    };
    let op = c.as_any().downcast_ref::<DynamicLinearOp>().unwrap();
    let w = op.linear().quantized_weight().unwrap().clone();
    let rebuilt =
        DynamicLinear::from_quantized(w, op.linear().bias().map(<[f32]>::to_vec), *op.linear().config()).unwrap();
    assert_eq!(rebuilt.forward(&h).unwrap(), want);
    assert!(DynamicLinearOp::new(op.attrs().clone(), fc1).is_err());
}

#[test]
fn fused_relu_is_applied() {
    let mut g = mlp();
    g.fuse_auto().unwrap();
    let fused = g.node(g.find("fc1").unwrap());
    assert!(matches!(&fused.op, Op::Linear(a) if a.activation == FusedActivation::Relu));
    let x = input(&[4, 32], 5);
    let want = run(&g, &x);
    let (q, report) = quantize_dynamic(&g, &[OpKind::Linear], DynamicConfig::qforge()).unwrap();
    assert_eq!(report.node("fc1").unwrap().op, "DynamicQuantizedLinearReLU");
    let mut seen = false;
    q.run_with(vec![x.clone()], |node, value| {
        if node.name == "fc1" {
            seen = true;
            assert!(value.as_f32().unwrap().data().iter().all(|&v| v >= 0.0));
        }
        Ok(())
    })
    .unwrap();
    assert!(seen);
    assert!(sqnr_db(&want, &run(&q, &x)) > 30.0);
}

fn rnn_graph(lstm: bool) -> Graph {
    let attrs = RnnAttrs {
        input_size: 8,
        hidden_size: 16,
        num_layers: 2,
        bias: true,
        batch_first: true,
    };
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 6, 8]);
    let y = if lstm {
        b.lstm("rnn", x, attrs)
    } else {
        b.gru("rnn", x, attrs)
    };
    let z = b.linear("head", y, 16, 4);
    b.output(z);
    let mut g = b.build().unwrap();
    randomize(&mut g, 11, 0.3);
    g
}

#[test]
fn lstm_and_gru_are_close_to_fp32() {
    for lstm in [true, false] {
        let g = rnn_graph(lstm);
        let x = input(&[3, 6, 8], 21);
        let want = run(&g, &x);
        for config in [
            DynamicConfig::qforge(),
            DynamicConfig::pytorch_fbgemm(),
            DynamicConfig::float16(),
        ] {
            let kinds = [OpKind::Linear, OpKind::Lstm, OpKind::Gru];
            let (q, report) = quantize_dynamic(&g, &kinds, config).unwrap();
            let db = sqnr_db(&want, &run(&q, &x));
            assert!(db > 30.0, "lstm {lstm} {config:?}: {db} dB");
            assert_eq!(report.quantized(), vec!["rnn", "head"]);
            let Op::Custom(c) = &q.node(q.find("rnn").unwrap()).op else {
                panic!()
            };
            let op = c.as_any().downcast_ref::<DynamicRnnOp>().unwrap();
            assert_eq!(op.cell(), if lstm { RnnCell::Lstm } else { RnnCell::Gru });
            assert_eq!(op.layers().len(), 2);
            let rebuilt = DynamicRnnOp::new(op.cell(), op.attrs().clone(), op.layers().to_vec()).unwrap();
            assert_eq!(rebuilt.layers()[1].hidden_hidden.in_features(), 16);
        }
        // Linear only: the recurrent layer stays f32, reported as not selected.
        let (q, report) = quantize_dynamic(&g, &[OpKind::Linear], DynamicConfig::qforge()).unwrap();
        assert!(matches!(q.node(q.find("rnn").unwrap()).op, Op::Lstm(_) | Op::Gru(_)));
        assert_eq!(report.kept_float(), vec![("rnn", &FloatReason::NotSelected)]);
    }
}

#[test]
fn errors() {
    let g = mlp();
    let err = quantize_dynamic(&g, &[], DynamicConfig::qforge())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no op kinds"), "{err}");
    let err = quantize_dynamic(&g, &[OpKind::Conv2d], DynamicConfig::qforge())
        .unwrap_err()
        .to_string();
    assert!(err.contains("Conv2d") && err.contains("static"), "{err}");
    // Non-finite weights are rejected, naming the problem.
    let mut bad = mlp();
    let id = bad.find("fc2").unwrap();
    bad.node_mut(id).params.get_mut("weight").unwrap().data_mut()[3] = f32::NAN;
    assert!(quantize_dynamic(&bad, &[OpKind::Linear], DynamicConfig::qforge()).is_err());
    // Non-finite activations at run time are an error, not garbage.
    let (q, _) = quantize_dynamic(&g, &[OpKind::Linear], DynamicConfig::qforge()).unwrap();
    let mut x = input(&[4, 32], 1).as_f32().unwrap().clone();
    x.data_mut()[40] = f32::INFINITY;
    let err = q.run(vec![Value::F32(x)]).unwrap_err().to_string();
    assert!(err.contains("non-finite") || err.contains("inf"), "{err}");
}
