//! Finite-difference checks of every backward pass: for a graph `g` and a random projection `r`,
//! the analytic gradients of `L = sum(g(x) * r)` with respect to the inputs and parameters
//! must match central differences `(L(v + e) - L(v - e)) / 2e` (losses summed in f64) within a
//! relative error of 1e-2 over the checked elements. Inputs keep away from the kinks of ReLU,
//! ReLU6, Hardswish and from ties in max pooling, so the differences are well defined.

use qgraph::op::{Conv2dAttrs, FusedActivation, Op, Pool2dAttrs};
use qgraph::train::{cross_entropy, mse, Layer, Mode, Rng, TrainModel, TrainNode};
use qgraph::{Graph, GraphBuilder};
use qtensor::Tensor;

const EPS: f32 = 1e-3;
const TOL: f64 = 1e-2;

fn random(shape: &[usize], rng: &mut Rng, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n).map(|_| rng.normal() * scale).collect()).unwrap()
}

/// Values with |x| in [0.2, 2] (away from the ReLU kink).
fn away_from_zero(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let m = rng.range(0.2, 2.0);
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

/// Random parameters for every node (BatchNorm running variance kept positive).
fn randomize(graph: &mut Graph, rng: &mut Rng) {
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(qgraph::NodeId(i));
        for (name, value) in node.params.iter_mut() {
            let shape = value.shape().to_vec();
            *value = match name.as_str() {
                "running_var" => {
                    Tensor::new(shape.clone(), (0..value.numel()).map(|_| rng.range(0.5, 2.0)).collect()).unwrap()
                }
                "weight" if matches!(node.op, Op::BatchNorm(_)) => {
                    Tensor::new(shape.clone(), (0..value.numel()).map(|_| rng.range(0.5, 1.5)).collect()).unwrap()
                }
                _ => random(&shape, rng, 0.5),
            };
        }
    }
}

fn objective(model: &mut TrainModel, inputs: &[Tensor], r: &[Tensor]) -> f64 {
    model.reseed(7);
    let out = model.forward(inputs).unwrap();
    out.iter()
        .zip(r)
        .map(|(y, r)| {
            y.data()
                .iter()
                .zip(r.data())
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        })
        .sum()
}

fn rel_err(a: &[f64], n: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(n).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let scale = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(n.iter().map(|x| x * x).sum::<f64>().sqrt());
    // A floor for gradients that are zero up to rounding (a conv bias before BatchNorm).
    diff / scale.max(1e-3)
}

/// Indices to check: all of them for small tensors, a seeded sample otherwise.
fn sample(n: usize, rng: &mut Rng) -> Vec<usize> {
    if n <= 48 {
        (0..n).collect()
    } else {
        (0..48).map(|_| rng.below(n)).collect()
    }
}

fn set_param(model: &mut TrainModel, name: &str, index: usize, value: f32) {
    model.visit_params(&mut |full, p| {
        if full == name {
            p.value.data_mut()[index] = value;
        }
    });
}

/// Checks input and parameter gradients of `model`.
fn check_model(mut model: TrainModel, inputs: Vec<Tensor>, what: &str) {
    let mut rng = Rng::new(11);
    model.set_mode(Mode::Train);
    model.reseed(7);
    let out = model.forward(&inputs).unwrap();
    let r: Vec<Tensor> = out.iter().map(|y| random(y.shape(), &mut rng, 1.0)).collect();
    model.zero_grad();
    let dx = model.backward(&r).unwrap();
    let mut checked = 0;
    for (k, g) in dx.iter().enumerate() {
        let g = g.as_ref().expect("every input reaches the output");
        let idx = sample(inputs[k].numel(), &mut rng);
        let (mut a, mut n) = (Vec::new(), Vec::new());
        for &i in &idx {
            let mut plus = inputs.clone();
            plus[k].data_mut()[i] += EPS;
            let mut minus = inputs.clone();
            minus[k].data_mut()[i] -= EPS;
            let d = (objective(&mut model, &plus, &r) - objective(&mut model, &minus, &r)) / (2.0 * EPS as f64);
            a.push(g.data()[i] as f64);
            n.push(d);
        }
        let e = rel_err(&a, &n);
        assert!(
            e < TOL,
            "{what}: input {k} gradient relative error {e:.2e}\nanalytic {a:?}\nnumeric {n:?}"
        );
        checked += 1;
    }
    let mut params = Vec::new();
    model.visit_params(&mut |name, p| params.push((name.to_string(), p.value.clone(), p.grad.clone())));
    for (name, value, grad) in params {
        let idx = sample(value.numel(), &mut rng);
        let (mut a, mut n) = (Vec::new(), Vec::new());
        for &i in &idx {
            let v = value.data()[i];
            set_param(&mut model, &name, i, v + EPS);
            let lp = objective(&mut model, &inputs, &r);
            set_param(&mut model, &name, i, v - EPS);
            let lm = objective(&mut model, &inputs, &r);
            set_param(&mut model, &name, i, v);
            a.push(grad.data()[i] as f64);
            n.push((lp - lm) / (2.0 * EPS as f64));
        }
        let e = rel_err(&a, &n);
        assert!(
            e < TOL,
            "{what}: `{name}` gradient relative error {e:.2e}\nanalytic {a:?}\nnumeric {n:?}"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

fn check_graph(mut graph: Graph, inputs: Vec<Tensor>, what: &str) {
    randomize(&mut graph, &mut Rng::new(3));
    check_model(TrainModel::from_graph(&graph, 0).unwrap(), inputs, what);
}

/// `x -> op -> out` with the given input shape.
fn single(op: Op, shape: &[usize]) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", shape);
    let y = b.node("op", op, &[x]);
    b.output(y);
    b.build().unwrap()
}

#[test]
fn linear_gradients() {
    let mut rng = Rng::new(1);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 5]);
    let y = b.linear("fc", x, 5, 4);
    b.output(y);
    check_graph(b.build().unwrap(), vec![random(&[2, 3, 5], &mut rng, 1.0)], "linear");
}

#[test]
fn conv2d_gradients() {
    let cases: Vec<(&str, Conv2dAttrs, [usize; 4])> = vec![
        ("3x3 pad 1", Conv2dAttrs::new(3, 4, 3).padding(1), [2, 3, 5, 5]),
        ("stride 2", Conv2dAttrs::new(2, 3, 3).stride(2).padding(1), [1, 2, 7, 6]),
        (
            "dilation 2",
            Conv2dAttrs::new(2, 2, 3).dilation(2).padding(2),
            [1, 2, 6, 6],
        ),
        (
            "groups 2",
            Conv2dAttrs::new(4, 6, 3).groups(2).padding(1).bias(false),
            [2, 4, 4, 4],
        ),
        (
            "depthwise",
            Conv2dAttrs::new(3, 3, 3).groups(3).padding(1),
            [2, 3, 5, 5],
        ),
        (
            "depthwise stride 2",
            Conv2dAttrs::new(4, 4, 3).groups(4).stride(2).padding(1),
            [1, 4, 6, 7],
        ),
        (
            "depthwise dilation 2",
            Conv2dAttrs::new(2, 2, 3).groups(2).dilation(2).padding(1),
            [1, 2, 6, 6],
        ),
        ("pointwise", Conv2dAttrs::new(3, 5, 1), [2, 3, 3, 4]),
        (
            "5x3 kernel",
            Conv2dAttrs {
                kernel: [3, 2],
                padding: [1, 0],
                ..Conv2dAttrs::new(2, 3, 3)
            },
            [1, 2, 4, 5],
        ),
    ];
    for (what, attrs, shape) in cases {
        let mut rng = Rng::new(2);
        check_graph(
            single(Op::Conv2d(attrs), &shape),
            vec![random(&shape, &mut rng, 1.0)],
            what,
        );
    }
}

#[test]
fn conv2d_fused_relu_gradients() {
    // Large bias offsets keep the pre-activations away from 0.
    let mut rng = Rng::new(4);
    let mut attrs = Conv2dAttrs::new(2, 3, 1);
    attrs.activation = FusedActivation::Relu;
    let mut graph = single(Op::Conv2d(attrs), &[1, 2, 3, 3]);
    randomize(&mut graph, &mut Rng::new(3));
    let id = graph.find("op").unwrap();
    graph
        .node_mut(id)
        .params
        .insert("bias".into(), Tensor::new([3], vec![3.0, -3.0, 3.0]).unwrap());
    let model = TrainModel::from_graph(&graph, 0).unwrap();
    check_model(model, vec![random(&[1, 2, 3, 3], &mut rng, 0.3)], "conv relu");
}

#[test]
fn batch_norm_training_gradients() {
    let mut rng = Rng::new(5);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 2, 3, 3]);
    let y = b.batch_norm2d("bn", x, 2);
    b.output(y);
    check_graph(
        b.build().unwrap(),
        vec![random(&[3, 2, 3, 3], &mut rng, 1.0)],
        "batchnorm2d",
    );
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[5, 3]);
    let y = b.batch_norm1d("bn", x, 3);
    b.output(y);
    check_graph(b.build().unwrap(), vec![random(&[5, 3], &mut rng, 1.0)], "batchnorm1d");
}

#[test]
fn activation_gradients() {
    let mut rng = Rng::new(6);
    let shape = [2, 3, 4];
    check_graph(single(Op::Relu, &shape), vec![away_from_zero(&shape, &mut rng)], "relu");
    // ReLU6: values in (-2, -0.2) u (0.2, 5.8) u (6.2, 8).
    let x: Vec<f32> = (0..24)
        .map(|i| match i % 3 {
            0 => rng.range(-2.0, -0.2),
            1 => rng.range(0.2, 5.8),
            _ => rng.range(6.2, 8.0),
        })
        .collect();
    check_graph(single(Op::Relu6, &shape), vec![Tensor::new(shape, x).unwrap()], "relu6");
    // Hardswish: away from its kinks at -3 and 3.
    let x: Vec<f32> = (0..24)
        .map(|i| match i % 3 {
            0 => rng.range(-5.0, -3.2),
            1 => rng.range(-2.8, 2.8),
            _ => rng.range(3.2, 5.0),
        })
        .collect();
    check_graph(
        single(Op::Hardswish, &shape),
        vec![Tensor::new(shape, x).unwrap()],
        "hardswish",
    );
}

#[test]
fn pooling_gradients() {
    let mut rng = Rng::new(7);
    let shape = [2, 2, 5, 6];
    // Distinct values 0.05 apart: no ties in any max-pool window.
    let mut values: Vec<f32> = (0..120).map(|i| i as f32 * 0.05 - 3.0).collect();
    rng.shuffle(&mut values);
    let x = Tensor::new(shape, values).unwrap();
    check_graph(
        single(Op::MaxPool2d(Pool2dAttrs::new(3, 2, 1)), &shape),
        vec![x.clone()],
        "maxpool 3/2/1",
    );
    check_graph(
        single(Op::MaxPool2d(Pool2dAttrs::new(2, 2, 0)), &shape),
        vec![x],
        "maxpool 2/2",
    );
    let x = random(&shape, &mut rng, 1.0);
    check_graph(
        single(Op::AvgPool2d(Pool2dAttrs::new(3, 2, 1)), &shape),
        vec![x.clone()],
        "avgpool",
    );
    let mut exclude = Pool2dAttrs::new(3, 2, 1);
    exclude.count_include_pad = false;
    check_graph(
        single(Op::AvgPool2d(exclude), &shape),
        vec![x.clone()],
        "avgpool exclude pad",
    );
    check_graph(
        single(Op::AdaptiveAvgPool2d { output: [2, 4] }, &shape),
        vec![x.clone()],
        "adaptive 2x4",
    );
    check_graph(
        single(Op::AdaptiveAvgPool2d { output: [1, 1] }, &shape),
        vec![x],
        "adaptive 1x1",
    );
}

#[test]
fn add_cat_flatten_dropout_gradients() {
    let mut rng = Rng::new(8);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 2, 2]);
    let y = b.input("y", &[1, 3, 1, 1]);
    let s = b.add("add", x, y);
    b.output(s);
    let inputs = vec![
        random(&[2, 3, 2, 2], &mut rng, 1.0),
        random(&[1, 3, 1, 1], &mut rng, 1.0),
    ];
    check_graph(b.build().unwrap(), inputs, "broadcast add");

    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 2, 2]);
    let y = b.input("y", &[2, 1, 2, 2]);
    let c = b.cat("cat", &[x, y], 1);
    let f = b.flatten("flatten", c, 1);
    let d = b.dropout("drop", f, 0.3);
    b.output(d);
    let inputs = vec![
        random(&[2, 3, 2, 2], &mut rng, 1.0),
        random(&[2, 1, 2, 2], &mut rng, 1.0),
    ];
    check_graph(b.build().unwrap(), inputs, "cat flatten dropout");
}

#[test]
fn small_network_gradients() {
    // A residual block with a value read twice: gradients from both readers must add up.
    let mut rng = Rng::new(9);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 2, 4, 4]);
    let c1 = b.conv2d("c1", x, Conv2dAttrs::new(2, 2, 3).padding(1));
    let bn = b.batch_norm2d("bn", c1, 2);
    let s = b.add("add", bn, x);
    let p = b.adaptive_avg_pool2d("pool", s, [1, 1]);
    let f = b.flatten("flat", p, 1);
    let y = b.linear("fc", f, 2, 3);
    b.output(y);
    check_graph(
        b.build().unwrap(),
        vec![random(&[2, 2, 4, 4], &mut rng, 1.0)],
        "residual net",
    );
}

#[test]
fn dropout_is_seeded_and_scaled() {
    let graph = single(Op::Dropout { p: 0.5 }, &[1, 1000]);
    let mut model = TrainModel::from_graph(&graph, 42).unwrap();
    let x = Tensor::full([1, 1000], 1.0);
    let a = model.forward(std::slice::from_ref(&x)).unwrap();
    let kept = a[0].data().iter().filter(|&&v| v == 2.0).count();
    assert!(a[0].data().iter().all(|&v| v == 0.0 || v == 2.0));
    assert!((400..600).contains(&kept), "kept {kept} of 1000 at p = 0.5");
    let mut again = TrainModel::from_graph(&graph, 42).unwrap();
    assert_eq!(
        again.forward(std::slice::from_ref(&x)).unwrap(),
        a,
        "same seed, same mask"
    );
    model.set_mode(Mode::Eval);
    assert_eq!(
        model.forward(std::slice::from_ref(&x)).unwrap()[0],
        x,
        "identity in eval mode"
    );
}

#[test]
fn batch_norm_updates_running_statistics_like_pytorch() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 1]);
    let y = b.batch_norm1d("bn", x, 1);
    b.output(y);
    let mut graph = b.build().unwrap();
    let mut model = TrainModel::from_graph(&graph, 0).unwrap();
    let x = Tensor::new([4, 1], vec![1.0, 2.0, 3.0, 6.0]).unwrap();
    model.forward(std::slice::from_ref(&x)).unwrap();
    model.write_back(&mut graph).unwrap();
    let bn = graph.node(graph.find("bn").unwrap());
    // mean 3, unbiased variance 14 / 3; momentum 0.1 from (0, 1).
    assert!((bn.params["running_mean"].data()[0] - 0.3).abs() < 1e-6);
    assert!((bn.params["running_var"].data()[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6);
}

#[test]
fn loss_gradients() {
    let mut rng = Rng::new(10);
    let logits = random(&[4, 5], &mut rng, 2.0);
    let targets = [0, 3, 4, 1];
    let (_, g) = cross_entropy(&logits, &targets).unwrap();
    let target = random(&[4, 5], &mut rng, 1.0);
    let (_, gm) = mse(&logits, &target).unwrap();
    let (mut a, mut n, mut am, mut nm) = (vec![], vec![], vec![], vec![]);
    for i in 0..20 {
        let mut p = logits.clone();
        p.data_mut()[i] += EPS;
        let mut m = logits.clone();
        m.data_mut()[i] -= EPS;
        let d = (cross_entropy(&p, &targets).unwrap().0 as f64 - cross_entropy(&m, &targets).unwrap().0 as f64)
            / (2.0 * EPS as f64);
        a.push(g.data()[i] as f64);
        n.push(d);
        let d = (mse(&p, &target).unwrap().0 as f64 - mse(&m, &target).unwrap().0 as f64) / (2.0 * EPS as f64);
        am.push(gm.data()[i] as f64);
        nm.push(d);
    }
    assert!(rel_err(&a, &n) < TOL, "cross-entropy {a:?} vs {n:?}");
    assert!(rel_err(&am, &nm) < TOL, "mse {am:?} vs {nm:?}");
    // PyTorch: cross_entropy([[0, 0]], [0]) = ln 2.
    let two = Tensor::new([1, 2], vec![0.0, 0.0]).unwrap();
    assert!((cross_entropy(&two, &[0]).unwrap().0 - std::f32::consts::LN_2).abs() < 1e-6);
}

#[test]
fn unsupported_ops_are_reported() {
    let graph = single(Op::Softmax { dim: -1 }, &[2, 3]);
    let err = TrainModel::from_graph(&graph, 0).unwrap_err().to_string();
    assert!(err.contains("no backward"), "{err}");
    // Backward before a training forward is an error, not garbage.
    let graph = single(Op::Relu, &[2, 3]);
    let mut model = TrainModel::from_graph(&graph, 0).unwrap();
    let layer: &mut Box<dyn Layer> = model.layer_mut("op").unwrap();
    assert!(layer.backward(&Tensor::zeros([2, 3])).is_err());
    let _ = TrainNode {
        name: "unused".into(),
        inputs: vec![],
        layer: None,
    };
}

#[test]
fn conv2d_forward_and_backward_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(21);
    for attrs in [
        Conv2dAttrs::new(6, 8, 3).padding(1).stride(2),
        Conv2dAttrs::new(8, 8, 3).padding(1).groups(8),
        Conv2dAttrs::new(8, 4, 1),
    ] {
        let graph = single(Op::Conv2d(attrs.clone()), &[5, attrs.in_channels, 9, 9]);
        let mut graph = graph;
        randomize(&mut graph, &mut rng);
        let x = random(&[5, attrs.in_channels, 9, 9], &mut rng, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut model = TrainModel::from_graph(&graph, 0).unwrap();
                let y = model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
                let r = Tensor::new(y.shape().to_vec(), y.data().iter().map(|v| v.sin()).collect()).unwrap();
                let dx = model.backward(&[r]).unwrap().remove(0).unwrap();
                let mut grads = Vec::new();
                model.visit_params(&mut |_, p| grads.extend(p.grad.data().iter().map(|v| v.to_bits())));
                let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(&y), bits(&dx), grads)
            })
        };
        assert_eq!(run(1), run(3), "{attrs:?}");
    }
}
