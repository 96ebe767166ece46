//! prepare_qat / convert on a small CNN with the structures of MobileNetV2 and ResNet (conv +
//! BatchNorm + ReLU, depthwise conv + BatchNorm + ReLU6, residual add, pooling, Linear):
//! where fake quantization goes, that training moves the BatchNorm running statistics, and that
//! the converted graph (BatchNorm folded) run with `dequantize(quantize(.))` at the learned
//! qparams reproduces the fake-quantized model.

use qapi::qat::{convert, convert_int8, prepare_qat, simulate_quantized, SimulatedRanges};
use qapi::{QConfig, QConfigMap};
use qgraph::op::Conv2dAttrs;
use qgraph::train::qat_modules::QatConv2d;
use qgraph::train::{fit, FitConfig, Loss, Mode, Rng, Sgd, Targets};
use qgraph::{Graph, GraphBuilder, NodeId, Op, OpKind};
use qtensor::Tensor;

fn small_cnn() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 3, 8, 8]);
    let c = b.conv2d("stem.0", x, Conv2dAttrs::new(3, 8, 3).padding(1).stride(2).bias(false));
    let c = b.batch_norm2d("stem.1", c, 8);
    let c = b.relu("stem.2", c);
    let d = b.conv2d("dw.0", c, Conv2dAttrs::new(8, 8, 3).padding(1).groups(8).bias(false));
    let d = b.batch_norm2d("dw.1", d, 8);
    let d = b.relu6("dw.2", d);
    let p = b.conv2d("pw.0", d, Conv2dAttrs::new(8, 8, 1).bias(false));
    let p = b.batch_norm2d("pw.1", p, 8);
    let s = b.add("add", p, c);
    let g = b.adaptive_avg_pool2d("pool", s, [1, 1]);
    let f = b.flatten("flatten", g, 1);
    let y = b.linear("fc", f, 8, 4);
    b.output(y);
    let mut graph = b.build().unwrap();
    let mut rng = Rng::new(3);
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(NodeId(i));
        let is_bn = matches!(node.op, Op::BatchNorm(_));
        for (name, t) in node.params.iter_mut() {
            if is_bn && name != "weight" {
                continue;
            }
            let fan: usize = t.shape()[1..].iter().product::<usize>().max(1);
            let std = if is_bn { 0.1 } else { (2.0 / fan as f32).sqrt() };
            let base = if is_bn { 1.0 } else { 0.0 };
            t.data_mut().iter_mut().for_each(|v| *v = base + rng.normal() * std);
        }
    }
    graph
}

fn data(rng: &mut Rng, n: usize) -> (Tensor, Vec<usize>) {
    let x: Vec<f32> = (0..n * 3 * 64).map(|_| rng.normal()).collect();
    let labels = (0..n).map(|_| rng.below(4)).collect();
    (Tensor::new([n, 3, 8, 8], x).unwrap(), labels)
}

#[test]
fn prepare_inserts_fake_quant_and_qat_modules() {
    let graph = small_cnn();
    let qat = prepare_qat(&graph, &QConfigMap::new(Some(QConfig::qat(false)))).unwrap();
    let names: Vec<(String, String)> = qat
        .model
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.layer.as_ref().map_or("Input".into(), |l| l.kind_name()),
            )
        })
        .collect();
    let kind_of = |name: &str| {
        names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.clone())
            .unwrap_or_default()
    };
    assert_eq!(kind_of("stem.0"), "QatConvBnReLU2d");
    assert_eq!(kind_of("dw.0"), "QatConvBn2d");
    assert_eq!(kind_of("pw.0"), "QatConvBn2d");
    assert_eq!(kind_of("fc"), "QatLinear");
    let fq: Vec<&str> = names
        .iter()
        .filter(|(_, k)| k == "FakeQuantize")
        .map(|(n, _)| n.as_str())
        .collect();
    // Not before ReLU6 (it takes over its producer's), not after pooling or Flatten (static
    // conversion runs them with their input's parameters).
    assert_eq!(
        fq,
        [
            "x.activation_post_process",
            "stem.0.activation_post_process",
            "dw.2.activation_post_process",
            "pw.0.activation_post_process",
            "add.activation_post_process",
            "fc.activation_post_process",
        ]
    );
    // Keep some layers in float: no weight or activation fake quantization there.
    let map = QConfigMap::new(Some(QConfig::qat(false))).set_kind(OpKind::Linear, None);
    let qat = prepare_qat(&graph, &map).unwrap();
    let fc = qat.model.nodes.iter().find(|n| n.name == "fc").unwrap();
    assert_eq!(fc.layer.as_ref().unwrap().kind_name(), "Linear");
    assert!(!qat.model.nodes.iter().any(|n| n.name == "fc.activation_post_process"));
}

#[test]
fn qat_trains_and_converts_to_the_simulated_int8_graph() {
    let graph = small_cnn();
    let config = QConfig::qat(false);
    let mut qat = prepare_qat(&graph, &QConfigMap::new(Some(config))).unwrap();
    let mut rng = Rng::new(1);
    let (x, labels) = data(&mut rng, 32);
    let dataset = qgraph::train::Dataset::new(x.clone(), Targets::Classes(labels)).unwrap();
    let mut sgd = Sgd::new(0.05).momentum(0.9);
    let mut cfg = FitConfig::new(3, 8, Loss::CrossEntropy);
    cfg.progress = false;
    let before = {
        let l = qat
            .model
            .layer_mut("stem.0")
            .unwrap()
            .as_any()
            .downcast_ref::<QatConv2d>()
            .unwrap();
        l.bn.as_ref().unwrap().running_mean.clone()
    };
    let history = fit(&mut qat.model, &mut sgd, &dataset, &cfg, |_, _, _| {}).unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|h| h.train.loss.is_finite()));
    let l = qat
        .model
        .layer_mut("stem.0")
        .unwrap()
        .as_any()
        .downcast_ref::<QatConv2d>()
        .unwrap();
    assert_ne!(
        l.bn.as_ref().unwrap().running_mean,
        before,
        "BatchNorm statistics update during QAT"
    );

    // Freeze, then convert.
    qat.freeze_bn_stats();
    qat.disable_observers();
    let (converted, qparams) = convert(&qat).unwrap();
    assert!(
        converted.nodes().iter().all(|n| !matches!(n.op, Op::BatchNorm(_))),
        "BatchNorm folded"
    );
    assert!(qparams["stem.0"].weight.is_some() && qparams["stem.0"].activation.is_some());
    assert!(
        qparams["dw.0"].activation.is_none(),
        "the ReLU6 after it carries the qparams"
    );
    assert!(qparams["dw.2"].activation.is_some());
    assert!(qparams["x"].activation.is_some());

    qat.set_mode(Mode::Eval);
    let (x, _) = data(&mut rng, 8);
    let fake = qat.model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    let ranges = SimulatedRanges::of(&config).unwrap();
    let sim = simulate_quantized(&converted, &qparams, ranges, vec![x.clone()])
        .unwrap()
        .remove(0);
    let step = match qparams["fc"].activation.as_ref().unwrap() {
        qtensor::QParams::PerTensor { scale, .. } => *scale,
        _ => unreachable!("activations are per tensor"),
    };
    // ConvBn divides and multiplies by gamma / std where the folded conv does not: a few
    // values may land one rounding step away, upstream, and move the logits by a step or two.
    let far = fake
        .data()
        .iter()
        .zip(sim.data())
        .filter(|(a, b)| (*a - *b).abs() > 2.5 * step)
        .count();
    assert!(
        far <= fake.numel() / 10,
        "{far} of {} logits differ by more than 2 steps",
        fake.numel()
    );
    let same = fake.data().iter().zip(sim.data()).filter(|(a, b)| a == b).count();
    assert!(
        same * 2 >= fake.numel(),
        "most logits agree exactly: {same} of {}",
        fake.numel()
    );

    // Without fake quantization the eval model is the converted float graph.
    qat.set_fake_quant(false);
    let float = qat.model.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    let out = converted
        .run(vec![qgraph::Value::F32(x)])
        .unwrap()
        .remove(0)
        .into_f32()
        .unwrap();
    for (a, b) in float.data().iter().zip(out.data()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// Trains `graph` briefly under QAT on random data and returns the converted float graph, its
/// qparams and a held-out batch.
fn qat_converted(graph: &Graph, x_shape: [usize; 4], classes: usize) -> (Graph, qapi::qat::GraphQParams, Tensor) {
    let mut qat = prepare_qat(graph, &QConfigMap::new(Some(QConfig::qat(false)))).unwrap();
    let mut rng = Rng::new(7);
    let numel: usize = x_shape.iter().product();
    let batch = |rng: &mut Rng| Tensor::new(x_shape, (0..numel).map(|_| rng.normal()).collect()).unwrap();
    let n = x_shape[0];
    let labels: Vec<usize> = (0..2 * n).map(|_| rng.below(classes)).collect();
    let mut xs = batch(&mut rng).into_data();
    xs.extend(batch(&mut rng).into_data());
    let mut shape = x_shape;
    shape[0] = 2 * n;
    let dataset = qgraph::train::Dataset::new(Tensor::new(shape, xs).unwrap(), Targets::Classes(labels)).unwrap();
    let mut cfg = FitConfig::new(2, n, Loss::CrossEntropy);
    cfg.progress = false;
    fit(
        &mut qat.model,
        &mut Sgd::new(0.01).momentum(0.9),
        &dataset,
        &cfg,
        |_, _, _| {},
    )
    .unwrap();
    qat.freeze_bn_stats();
    qat.disable_observers();
    let (converted, qparams) = convert(&qat).unwrap();
    (converted, qparams, batch(&mut rng))
}

/// The real int8 graph (static conversion with the learned parameters) against the simulation:
/// every logit within one output step (rounding differences upstream, where the simulation
/// accumulates in f32 and the kernels in i32, can move a few), most of them equal.
fn check_int8_agrees(graph: &Graph, x_shape: [usize; 4], classes: usize, logits: &str, what: &str) {
    let config = QConfig::qat(false);
    let (converted, qparams, x) = qat_converted(graph, x_shape, classes);
    let (int8, report) = convert_int8(&converted, &qparams, &QConfigMap::new(Some(config))).unwrap();
    let quantized = report
        .nodes
        .iter()
        .filter(|n| matches!(n.status, qapi::NodeStatus::Quantized { .. }))
        .count();
    assert!(quantized >= 5, "{what}: {quantized} int8 nodes\n{report}");
    let real = int8.run(vec![qgraph::Value::F32(x.clone())]).unwrap().remove(0);
    let real = real.as_f32().unwrap().clone();
    let sim = simulate_quantized(&converted, &qparams, SimulatedRanges::of(&config).unwrap(), vec![x])
        .unwrap()
        .remove(0);
    let step = match qparams[logits].activation.as_ref().unwrap() {
        qtensor::QParams::PerTensor { scale, .. } => *scale,
        _ => unreachable!("activations are per tensor"),
    };
    let steps: Vec<f32> = real
        .data()
        .iter()
        .zip(sim.data())
        .map(|(a, b)| ((a - b) / step).abs().round())
        .collect();
    let same = steps.iter().filter(|&&s| s == 0.0).count();
    let worst = steps.iter().cloned().fold(0.0f32, f32::max);
    eprintln!(
        "{what}: {same} of {} logits identical, worst {worst} steps",
        steps.len()
    );
    assert!(
        worst <= 1.0,
        "{what}: a logit is {worst} output steps from the simulation"
    );
    assert!(
        same * 2 >= steps.len(),
        "{what}: {same} of {} logits identical",
        steps.len()
    );
}

#[test]
fn int8_conversion_of_qat_parameters_agrees_with_the_simulation() {
    check_int8_agrees(&small_cnn(), [8, 3, 8, 8], 4, "fc", "small CNN");
    let demo = qapi::qat_demo::demo_network(0.25, 1).unwrap();
    check_int8_agrees(
        &demo,
        [8, 3, 32, 32],
        qapi::qat_demo::CLASSES,
        "classifier.1",
        "demo MobileNetV2",
    );
}
