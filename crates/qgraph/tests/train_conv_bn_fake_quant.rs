//! ConvBn and ConvBnReLU with weight fake quantization ON against an analytic straight-through
//! reference. The straight-through estimator treats `fq(w * sf)` as `w * sf + d` with the
//! rounding offset `d = fq(w0 * sf0) - w0 * sf0` held constant, so the reference is the smooth
//! function `y = act(bn(conv(x, w * sf + d) / sf + b))` with `sf = gamma / sqrt(running_var + eps)`;
//! its central differences must equal the module's gradients of the weight, conv bias, gamma,
//! beta and input, with BatchNorm on batch statistics (updating its running statistics) and
//! frozen.

use std::collections::BTreeMap;

use qgraph::op::{Conv2dAttrs, Op};
use qgraph::train::qat_modules::QatConv2d;
use qgraph::train::{FakeQuantize, FakeQuantizeConfig, Rng, TrainModel, TrainNode};
use qgraph::{BatchNormAttrs, FusedActivation, Node, ObserverConfig, ObserverKind};
use qtensor::fake_quant::{fake_quantize_per_channel, FakeQuant};
use qtensor::{DType, QParams, QuantSpec, Scheme, Tensor};

const C_IN: usize = 3;
const C_OUT: usize = 4;
const EPS: f32 = 1e-5;

fn random(shape: &[usize], rng: &mut Rng, scale: f32) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// Parameters of the module and of the reference.
#[derive(Debug, Clone)]
struct State {
    w: Vec<f32>,
    b: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

fn state() -> State {
    let mut rng = Rng::new(11);
    State {
        w: random(&[C_OUT, C_IN, 3, 3], &mut rng, 0.4),
        b: random(&[C_OUT], &mut rng, 0.3),
        gamma: vec![0.9, 1.4, -0.7, 0.5],
        beta: vec![0.1, -0.3, 0.2, 0.05],
        running_mean: vec![0.2, -0.1, 0.05, 0.0],
        running_var: vec![1.5, 0.6, 2.2, 0.9],
    }
}

fn attrs() -> Conv2dAttrs {
    Conv2dAttrs::new(C_IN, C_OUT, 3).padding(1).stride(2).bias(true)
}

fn module(s: &State, relu: bool, frozen: bool) -> TrainModel {
    let mut conv = Node {
        name: "conv".into(),
        op: Op::Conv2d(attrs()),
        inputs: vec![],
        params: BTreeMap::new(),
        qconfig: None,
    };
    conv.params
        .insert("weight".into(), Tensor::new([C_OUT, C_IN, 3, 3], s.w.clone()).unwrap());
    conv.params
        .insert("bias".into(), Tensor::new([C_OUT], s.b.clone()).unwrap());
    let mut bn = Node {
        name: "bn".into(),
        op: Op::BatchNorm(BatchNormAttrs {
            num_features: C_OUT,
            eps: EPS,
            dims: 2,
            activation: FusedActivation::None,
        }),
        inputs: vec![],
        params: BTreeMap::new(),
        qconfig: None,
    };
    for (k, v) in [
        ("weight", &s.gamma),
        ("bias", &s.beta),
        ("running_mean", &s.running_mean),
        ("running_var", &s.running_var),
    ] {
        bn.params.insert(k.into(), Tensor::new([C_OUT], v.clone()).unwrap());
    }
    let spec = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    let wcfg = ObserverConfig::new(ObserverKind::PerChannelMinMax { axis: 0 }, spec);
    let wfq = FakeQuantize::new("conv.weight_fake_quant", FakeQuantizeConfig::new(wcfg)).unwrap();
    let mut layer = QatConv2d::new(&conv, Some(&bn), relu, wfq).unwrap();
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

/// Output plane of the 3x3, stride 2, padding 1 convolution of a 6x6 input.
const INNER: usize = 9;

/// Direct convolution in f64 (no bias), `[N, C_IN, 6, 6]` -> `[N, C_OUT, 3, 3]`.
fn conv_f64(x: &Tensor, w: &[f64]) -> Vec<f64> {
    let n = x.shape()[0];
    let mut y = vec![0.0f64; n * C_OUT * INNER];
    for b in 0..n {
        for o in 0..C_OUT {
            for oy in 0..3 {
                for ox in 0..3 {
                    let mut acc = 0.0;
                    for c in 0..C_IN {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy * 2 + ky) as isize - 1;
                                let ix = (ox * 2 + kx) as isize - 1;
                                if (0..6).contains(&iy) && (0..6).contains(&ix) {
                                    let xv = x.data()[((b * C_IN + c) * 6 + iy as usize) * 6 + ix as usize];
                                    acc += xv as f64 * w[((o * C_IN + c) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                    }
                    y[((b * C_OUT + o) * 3 + oy) * 3 + ox] = acc;
                }
            }
        }
    }
    y
}

/// The straight-through reference (see the module docs), in f64 where it matters.
fn reference(s: &State, d: &[f32], x: &Tensor, relu: bool, frozen: bool) -> Vec<f64> {
    let per = C_IN * 9;
    let sf: Vec<f64> = (0..C_OUT)
        .map(|c| s.gamma[c] as f64 / (s.running_var[c] as f64 + EPS as f64).sqrt())
        .collect();
    let wq: Vec<f64> = (0..s.w.len())
        .map(|i| s.w[i] as f64 * sf[i / per] + d[i] as f64)
        .collect();
    let pre = conv_f64(x, &wq)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / INNER) % C_OUT;
            v / sf[c] + s.b[c] as f64
        })
        .collect::<Vec<f64>>();
    let inner = INNER;
    let (mean, var): (Vec<f64>, Vec<f64>) = if frozen {
        (
            s.running_mean.iter().map(|&m| m as f64).collect(),
            s.running_var.iter().map(|&v| v as f64).collect(),
        )
    } else {
        let count = (pre.len() / C_OUT) as f64;
        let mut mean = vec![0.0; C_OUT];
        let mut sq = vec![0.0; C_OUT];
        for (i, &v) in pre.iter().enumerate() {
            mean[(i / inner) % C_OUT] += v / count;
        }
        for (i, &v) in pre.iter().enumerate() {
            let c = (i / inner) % C_OUT;
            sq[c] += (v - mean[c]).powi(2) / count;
        }
        (mean, sq)
    };
    pre.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner) % C_OUT;
            let y = (v - mean[c]) / (var[c] + EPS as f64).sqrt() * s.gamma[c] as f64 + s.beta[c] as f64;
            if relu {
                y.max(0.0)
            } else {
                y
            }
        })
        .collect()
}

fn check(relu: bool, frozen: bool) {
    let what = format!(
        "ConvBn{} {}",
        if relu { "ReLU" } else { "" },
        if frozen { "frozen" } else { "training statistics" }
    );
    let s = state();
    let mut rng = Rng::new(3);
    let x = Tensor::new([3, C_IN, 6, 6], random(&[3, C_IN, 6, 6], &mut rng, 1.0)).unwrap();
    let mut model = module(&s, relu, frozen);
    let y = model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    let r: Vec<f32> = random(y.shape(), &mut rng, 1.0);
    model.zero_grad();
    let dx = model
        .backward(&[Tensor::new(y.shape().to_vec(), r.clone()).unwrap()])
        .unwrap()
        .remove(0)
        .unwrap();

    // The rounding offset the forward used: fq(w * sf) - w * sf with the module's qparams.
    let layer = model.layer_mut("conv").unwrap();
    let qat = layer.as_any().downcast_ref::<QatConv2d>().unwrap();
    let QParams::PerChannel {
        scales, zero_points, ..
    } = qat.weight_qparams().unwrap()
    else {
        panic!("per-channel weights")
    };
    let per = C_IN * 9;
    let sf: Vec<f32> = (0..C_OUT)
        .map(|c| s.gamma[c] / (s.running_var[c] + EPS).sqrt())
        .collect();
    let scaled: Vec<f32> = (0..s.w.len()).map(|i| s.w[i] * sf[i / per]).collect();
    let params: Vec<FakeQuant> = scales
        .iter()
        .zip(&zero_points)
        .map(|(&sc, &z)| FakeQuant::new(sc, z, -128, 127).unwrap())
        .collect();
    let mut fq = vec![0.0f32; scaled.len()];
    let mut mask = vec![false; scaled.len()];
    fake_quantize_per_channel(&scaled, &[C_OUT, C_IN, 3, 3], 0, &params, &mut fq, &mut mask).unwrap();
    assert!(mask.iter().all(|&m| m), "{what}: min/max weights never clip");
    let d: Vec<f32> = fq.iter().zip(&scaled).map(|(q, v)| q - v).collect();
    assert!(d.iter().any(|v| v.abs() > 1e-4), "{what}: fake quantization is on");

    // The module's forward equals the reference at the starting point.
    let y_ref = reference(&s, &d, &x, relu, frozen);
    for (a, b) in y.data().iter().zip(&y_ref) {
        assert!(
            (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
            "{what}: forward {a} vs reference {b}"
        );
    }

    let mut grads: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    model.visit_params(&mut |name, p| {
        grads.insert(name.to_string(), p.grad.data().to_vec());
    });
    let objective = |s: &State, x: &Tensor| -> f64 {
        reference(s, &d, x, relu, frozen)
            .iter()
            .zip(&r)
            .map(|(a, &b)| a * b as f64)
            .sum()
    };
    let h = 1e-3f32;
    type Field = fn(&mut State) -> &mut Vec<f32>;
    let fields: [(&str, Field); 4] = [
        ("conv.weight", |s| &mut s.w),
        ("conv.bias", |s| &mut s.b),
        ("conv.bn.weight", |s| &mut s.gamma),
        ("conv.bn.bias", |s| &mut s.beta),
    ];
    for (name, field) in fields {
        for (i, &analytic) in grads[name].iter().enumerate() {
            let (mut p, mut m) = (s.clone(), s.clone());
            field(&mut p)[i] += h;
            field(&mut m)[i] -= h;
            let numeric = (objective(&p, &x) - objective(&m, &x)) / (2.0 * h as f64);
            let a = analytic as f64;
            assert!(
                (numeric - a).abs() <= 2e-3 * numeric.abs().max(a.abs()).max(0.5),
                "{what}: {name}[{i}] analytic {a} vs straight-through reference {numeric}"
            );
        }
    }
    for i in 0..x.numel() {
        let (mut p, mut m) = (x.clone(), x.clone());
        p.data_mut()[i] += h;
        m.data_mut()[i] -= h;
        let numeric = (objective(&s, &p) - objective(&s, &m)) / (2.0 * h as f64);
        let a = dx.data()[i] as f64;
        assert!(
            (numeric - a).abs() <= 2e-3 * numeric.abs().max(a.abs()).max(0.5),
            "{what}: dx[{i}] analytic {a} vs reference {numeric}"
        );
    }
}

#[test]
fn conv_bn_with_fake_quant_matches_straight_through_reference() {
    check(false, false);
    check(false, true);
}

#[test]
fn conv_bn_relu_with_fake_quant_matches_straight_through_reference() {
    check(true, false);
    check(true, true);
}
