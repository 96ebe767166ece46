//! Quantization-aware training modules and optimizers against PyTorch: the FakeQuantize module
//! reproduces `fake_quantize_per_tensor_affine` / `_per_channel_affine` bit for bit (forward and
//! straight-through backward, golden vectors), LSQ gradients and SGD/Adam steps equal values
//! computed with torch 2.15, and ConvBn's gradients pass finite differences.

use std::collections::BTreeMap;

use qgraph::observers::DEFAULT_AVERAGING_CONSTANT;
use qgraph::op::{Conv2dAttrs, Op};
use qgraph::train::qat_modules::QatConv2d;
use qgraph::train::{
    Adam, FakeQuantize, FakeQuantizeConfig, ForwardCtx, Layer, Mode, Optimizer, Rng, Sgd, TrainModel, TrainNode,
};
use qgraph::{Node, ObserverConfig, ObserverKind};
use qtensor::{DType, QParams, QuantSpec, Scheme, Tensor};
use safetensors::SafeTensors;
use serde_json::Value as Json;

fn golden() -> (Json, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/");
    let json = std::fs::read_to_string(format!("{dir}fake_quant.json")).unwrap();
    let bytes = std::fs::read(format!("{dir}fake_quant.safetensors")).unwrap();
    (serde_json::from_str(&json).unwrap(), bytes)
}

fn tensor(st: &SafeTensors<'_>, name: &str) -> Tensor {
    let t = st.tensor(name).unwrap();
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::new(t.shape().to_vec(), data).unwrap()
}

fn ints(st: &SafeTensors<'_>, name: &str) -> Vec<i32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as i32)
        .collect()
}

fn train_ctx(rng: &mut Rng) -> ForwardCtx<'_> {
    ForwardCtx { mode: Mode::Train, rng }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn fake_quantize_module_matches_pytorch_golden() {
    let (suite, bytes) = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = Rng::new(0);
    for case in suite["cases"].as_array().unwrap() {
        let names = &case["tensors"];
        let (qmin, qmax) = (
            case["quant_min"].as_i64().unwrap() as i32,
            case["quant_max"].as_i64().unwrap() as i32,
        );
        let x = tensor(&st, names["x"].as_str().unwrap());
        let expected = tensor(&st, names["y"].as_str().unwrap());
        let dtype = if qmin < 0 { DType::QInt8 } else { DType::QUInt8 };
        let (observer, qparams) = if case["op"] == "fake_quantize_per_tensor_affine" {
            let kind = ObserverKind::MovingAverageMinMax {
                averaging_constant: DEFAULT_AVERAGING_CONSTANT,
            };
            let q = QParams::PerTensor {
                scale: case["scale"].as_f64().unwrap() as f32,
                zero_point: case["zero_point"].as_i64().unwrap() as i32,
            };
            (kind, q)
        } else {
            let axis = case["axis"].as_u64().unwrap() as usize;
            let kind = ObserverKind::MovingAveragePerChannelMinMax {
                axis,
                averaging_constant: DEFAULT_AVERAGING_CONSTANT,
            };
            let q = QParams::PerChannel {
                axis,
                scales: tensor(&st, names["scales"].as_str().unwrap()).data().to_vec(),
                zero_points: ints(&st, names["zero_points"].as_str().unwrap()),
            };
            (kind, q)
        };
        let spec = QuantSpec::new(dtype, Scheme::Affine);
        assert_eq!(spec.quant_range().unwrap(), (qmin, qmax));
        let config = FakeQuantizeConfig::new(ObserverConfig::new(observer, spec));
        let mut fq = FakeQuantize::new("fq", config).unwrap().with_qparams(&qparams).unwrap();
        let y = fq.forward(&[&x], &mut train_ctx(&mut rng)).unwrap();
        assert_eq!(bits(&y), bits(&expected), "{case}");
        if let Some(name) = names.get("grad_x") {
            let dx = fq.backward(&Tensor::full(x.shape().to_vec(), 1.0)).unwrap().remove(0);
            assert_eq!(bits(&dx), bits(&tensor(&st, name.as_str().unwrap())), "{case}");
        }
        // Disabled fake quantization is the identity, forward and backward.
        fq.disable_fake_quant();
        assert_eq!(fq.forward(&[&x], &mut train_ctx(&mut rng)).unwrap(), x);
        let g = Tensor::full(x.shape().to_vec(), 0.5);
        assert_eq!(fq.backward(&g).unwrap()[0], g);
    }
}

#[test]
fn fake_quantize_observer_gives_the_observer_qparams_and_can_be_frozen() {
    let spec = QuantSpec::new(DType::QUInt8, Scheme::Affine);
    let cfg = ObserverConfig::new(
        ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01,
        },
        spec,
    );
    let mut fq = FakeQuantize::new("act", FakeQuantizeConfig::new(cfg)).unwrap();
    let mut reference = cfg.build("ref");
    let mut rng = Rng::new(0);
    let batches = [vec![-1.0f32, 0.5, 2.0], vec![-3.0, 0.0, 1.0], vec![0.25, 4.0, -0.5]];
    for b in &batches {
        let x = Tensor::new([3], b.clone()).unwrap();
        fq.forward(&[&x], &mut train_ctx(&mut rng)).unwrap();
        reference.observe(&x).unwrap();
        assert_eq!(fq.qparams().unwrap(), reference.qparams().unwrap());
    }
    let frozen = fq.qparams().unwrap();
    fq.disable_observer();
    fq.forward(
        &[&Tensor::new([2], vec![-100.0, 100.0]).unwrap()],
        &mut train_ctx(&mut rng),
    )
    .unwrap();
    assert_eq!(fq.qparams().unwrap(), frozen, "no observation once disabled");
    // Eval mode does not observe either.
    fq.enable_observer();
    let mut eval = ForwardCtx {
        mode: Mode::Eval,
        rng: &mut rng,
    };
    fq.forward(&[&Tensor::new([2], vec![-100.0, 100.0]).unwrap()], &mut eval)
        .unwrap();
    assert_eq!(fq.qparams().unwrap(), frozen);
}

#[test]
fn learnable_fake_quantize_gradients_match_pytorch() {
    // torch._fake_quantize_learnable_per_tensor_affine(x, [0.02], [100.], 0, 255, 1.0) with
    // upstream gradient g: y, d scale = 54.75000763, d zero_point = -0.04.
    let spec = QuantSpec::new(DType::QUInt8, Scheme::Affine);
    let cfg = ObserverConfig::new(
        ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01,
        },
        spec,
    );
    let mut fq = FakeQuantize::new("lsq", FakeQuantizeConfig::new(cfg).learnable(false))
        .unwrap()
        .with_qparams(&QParams::PerTensor {
            scale: 0.02,
            zero_point: 100,
        })
        .unwrap();
    let x = Tensor::new([7], vec![-3.0, -0.26, 0.0, 0.13, 0.5, 2.0, 4.0]).unwrap();
    let g = Tensor::new([7], vec![1.0, 2.0, -1.0, 0.5, 1.5, -2.0, 1.0]).unwrap();
    let mut rng = Rng::new(0);
    let y = fq.forward(&[&x], &mut train_ctx(&mut rng)).unwrap();
    let expected = [-2.0f32, -0.26, 0.0, 0.12, 0.5, 2.0, 3.1];
    for (a, b) in y.data().iter().zip(expected) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let dx = fq.backward(&g).unwrap().remove(0);
    assert_eq!(dx.data(), &[0.0, 2.0, -1.0, 0.5, 1.5, -2.0, 0.0]);
    let mut grads = BTreeMap::new();
    fq.visit_params(&mut |p| {
        grads.insert(p.name.to_string(), p.grad.data()[0]);
    });
    assert!((grads["scale"] - 54.750008).abs() < 1e-3, "{grads:?}");
    assert!((grads["zero_point"] + 0.04).abs() < 1e-6, "{grads:?}");
}

/// A model of one trainable parameter `p` with loss `sum(p * c * (step + 1)) + sum(p^2)`.
struct Quadratic;

impl Quadratic {
    fn run(mut opt: impl Optimizer) -> Vec<f32> {
        let mut b = qgraph::GraphBuilder::new();
        let x = b.input("x", &[1, 1]);
        let y = b.linear("p", x, 1, 3);
        b.output(y);
        let mut graph = b.build().unwrap();
        let id = graph.find("p").unwrap();
        graph.node_mut(id).params.remove("bias");
        if let Op::Linear(a) = &mut graph.node_mut(id).op {
            a.bias = false;
        }
        graph
            .node_mut(id)
            .params
            .insert("weight".into(), Tensor::new([3, 1], vec![1.0, -2.0, 0.5]).unwrap());
        let mut model = TrainModel::from_graph(&graph, 0).unwrap();
        let c = [0.3f32, -1.0, 2.0];
        for step in 0..3 {
            model.zero_grad();
            model.visit_params(&mut |_, p| {
                for (i, ci) in c.iter().enumerate() {
                    p.grad.data_mut()[i] = ci * (step + 1) as f32 + 2.0 * p.value.data()[i];
                }
            });
            opt.step(&mut model);
        }
        let mut out = Vec::new();
        model.visit_params(&mut |_, p| out = p.value.data().to_vec());
        out
    }
}

#[test]
fn optimizers_follow_pytorch() {
    let cases: [(&str, Vec<f32>, [f32; 3]); 3] = [
        (
            "sgd momentum wd",
            Quadratic::run(Sgd::new(0.1).momentum(0.9).weight_decay(0.01)),
            [-0.19334385, 0.72207177, -1.6478232],
        ),
        (
            "sgd nesterov",
            Quadratic::run(Sgd::new(0.1).momentum(0.9).nesterov(true)),
            [-0.44824475, 1.3496801, -2.320128],
        ),
        (
            "adam wd",
            Quadratic::run(Adam::new(0.1).weight_decay(0.01)),
            [0.6996839, -1.6995622, 0.2032671],
        ),
    ];
    for (what, got, want) in cases {
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{what}: {got:?} vs torch {want:?}");
        }
    }
}

fn random(shape: &[usize], rng: &mut Rng, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n).map(|_| rng.normal() * scale).collect()).unwrap()
}

fn conv_bn(frozen: bool, bias: bool) -> TrainModel {
    let mut rng = Rng::new(1);
    let attrs = Conv2dAttrs::new(2, 3, 3).padding(1).bias(bias);
    let mut conv = Node {
        name: "conv".into(),
        op: Op::Conv2d(attrs.clone()),
        inputs: vec![],
        params: BTreeMap::new(),
        qconfig: None,
    };
    conv.params
        .insert("weight".into(), random(&[3, 2, 3, 3], &mut rng, 0.5));
    if bias {
        conv.params.insert("bias".into(), random(&[3], &mut rng, 0.5));
    }
    let bn_op = Op::BatchNorm(qgraph::BatchNormAttrs {
        num_features: 3,
        eps: 1e-5,
        dims: 2,
        activation: qgraph::FusedActivation::None,
    });
    let mut bn = Node {
        name: "bn".into(),
        op: bn_op,
        inputs: vec![],
        params: BTreeMap::new(),
        qconfig: None,
    };
    bn.params
        .insert("weight".into(), Tensor::new([3], vec![0.8, 1.3, -0.6]).unwrap());
    bn.params
        .insert("bias".into(), Tensor::new([3], vec![0.1, -0.2, 0.3]).unwrap());
    bn.params
        .insert("running_mean".into(), Tensor::new([3], vec![0.2, -0.1, 0.0]).unwrap());
    bn.params
        .insert("running_var".into(), Tensor::new([3], vec![1.5, 0.7, 2.0]).unwrap());
    let spec = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    let wcfg = ObserverConfig::new(
        ObserverKind::MovingAveragePerChannelMinMax {
            axis: 0,
            averaging_constant: 0.01,
        },
        spec,
    );
    let mut wfq = FakeQuantize::new("conv.weight", FakeQuantizeConfig::new(wcfg)).unwrap();
    wfq.disable_fake_quant();
    let mut layer = QatConv2d::new(&conv, Some(&bn), false, wfq).unwrap();
    if frozen {
        layer.freeze_bn_stats();
    }
    let nodes = vec![
        TrainNode {
            name: "x".into(),
            inputs: vec![],
            layer: None,
        },
        TrainNode {
            name: "conv".into(),
            inputs: vec![0],
            layer: Some(Box::new(layer)),
        },
    ];
    TrainModel::new(nodes, vec![1], 0).unwrap()
}

/// Central differences of `sum(y * r)` against the analytic gradients of every parameter and
/// of the input.
fn check(mut model: TrainModel, what: &str) {
    let mut rng = Rng::new(5);
    let x = random(&[2, 2, 4, 4], &mut rng, 1.0);
    let y = model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    let r = random(y.shape(), &mut rng, 1.0);
    model.zero_grad();
    let dx = model.backward(std::slice::from_ref(&r)).unwrap().remove(0).unwrap();
    let objective = |m: &mut TrainModel, x: &Tensor| -> f64 {
        let y = m.forward(std::slice::from_ref(x)).unwrap().remove(0);
        y.data().iter().zip(r.data()).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let eps = 1e-3f32;
    let mut params = Vec::new();
    model.visit_params(&mut |name, p| params.push((name.to_string(), p.value.clone(), p.grad.clone())));
    assert!(
        params.iter().any(|(n, ..)| n == "conv.bn.weight"),
        "{what}: gamma is trainable"
    );
    for (name, value, grad) in params {
        for i in 0..value.numel().min(24) {
            let set = |m: &mut TrainModel, v: f32| {
                m.visit_params(&mut |n, p| {
                    if n == name {
                        p.value.data_mut()[i] = v;
                    }
                })
            };
            let v = value.data()[i];
            set(&mut model, v + eps);
            let lp = objective(&mut model, &x);
            set(&mut model, v - eps);
            let lm = objective(&mut model, &x);
            set(&mut model, v);
            let numeric = (lp - lm) / (2.0 * eps as f64);
            let analytic = grad.data()[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 1e-2 * numeric.abs().max(analytic.abs()).max(0.1),
                "{what}: {name}[{i}] analytic {analytic} numeric {numeric}"
            );
        }
    }
    for i in (0..x.numel()).step_by(3) {
        let mut p = x.clone();
        p.data_mut()[i] += eps;
        let mut m = x.clone();
        m.data_mut()[i] -= eps;
        let numeric = (objective(&mut model, &p) - objective(&mut model, &m)) / (2.0 * eps as f64);
        let analytic = dx.data()[i] as f64;
        assert!(
            (numeric - analytic).abs() <= 1e-2 * numeric.abs().max(analytic.abs()).max(0.1),
            "{what}: dx[{i}] analytic {analytic} numeric {numeric}"
        );
    }
}

#[test]
fn conv_bn_gradients_match_finite_differences() {
    check(conv_bn(false, false), "ConvBn2d training statistics");
    check(conv_bn(false, true), "ConvBn2d with conv bias");
    check(conv_bn(true, false), "ConvBn2d frozen statistics");
}

#[test]
fn conv_bn_folds_like_pytorch_fusion_in_eval() {
    // With fake quantization off, the eval-mode ConvBn equals the folded float conv.
    let mut model = conv_bn(false, true);
    let mut rng = Rng::new(9);
    let x = random(&[2, 2, 4, 4], &mut rng, 1.0);
    model.forward(std::slice::from_ref(&x)).unwrap();
    model.set_mode(Mode::Eval);
    let y = model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    let layer = model
        .layer_mut("conv")
        .unwrap()
        .as_any()
        .downcast_ref::<QatConv2d>()
        .unwrap();
    let folded = layer.to_float_node().unwrap();
    let out = qgraph::ops::forward(&folded, &[&qgraph::Value::F32(x)])
        .unwrap()
        .into_f32()
        .unwrap();
    for (a, b) in y.data().iter().zip(out.data()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
