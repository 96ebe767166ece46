//! Static conversion fuses a quantized Add (or add_relu) into the Conv2d that alone feeds one of
//! its operands (ResNet's basic block, MobileNetV2's inverted residual): the graph loses its
//! Add nodes, the report says what was fused, and the outputs are bit for bit those of the
//! unfused graph, on 1, 2 and 3 threads, for small blocks and whole networks, and after a save
//! and load. (`QFORGE_KERNEL=reference` runs the same checks on the portable paths.)

use qapi::models::{mobilenet_v2, resnet18, MobileNetV2Config, ResNet18Config};
use qapi::static_ptq::QConv2d;
use qapi::{prepare, NodeStatus, QConfigMap, QuantReport};
use qgraph::{Conv2dAttrs, Graph, GraphBuilder, NodeId, Op, Value};
use qtensor::Tensor;
use std::collections::HashMap;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Fills every parameter with seeded values (BN variances positive).
fn randomize(graph: &mut Graph, seed: u64) {
    let mut s = seed;
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(NodeId(i));
        for (name, t) in node.params.iter_mut() {
            let fan_in = (t.numel() / t.shape()[0].max(1)).max(1) as f32;
            let vector = t.shape().len() == 1;
            for v in t.data_mut() {
                *v = match name.as_str() {
                    "running_var" => 0.5 + lcg(&mut s).abs(),
                    "weight" if vector => 1.0 + 0.2 * lcg(&mut s),
                    "running_mean" | "bias" => 0.1 * lcg(&mut s),
                    _ => lcg(&mut s) * (3.0 / fan_in).sqrt(),
                };
            }
        }
    }
}

fn image(shape: &[usize], seed: u64) -> Vec<Value> {
    let mut s = seed;
    let n = shape.iter().product();
    vec![Value::F32(
        Tensor::new(shape.to_vec(), (0..n).map(|_| lcg(&mut s) * 2.0).collect()).unwrap(),
    )]
}

/// The graph converted with and without the residual fusion (same calibration).
fn fused_and_unfused(g: &Graph, shape: &[usize], batches: u64) -> ((Graph, QuantReport), Graph) {
    let mut p = prepare(g, &QConfigMap::qforge()).unwrap();
    p.calibrate((0..batches).map(|i| image(shape, 100 + i))).unwrap();
    let fused = p.convert().unwrap();
    let unfused = p.fuse_residual_adds(false).convert().unwrap().0;
    (fused, unfused)
}

fn bits(g: &Graph, x: Vec<Value>, threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let y = pool.install(|| g.run(x)).unwrap();
    y[0].as_f32().unwrap().data().iter().map(|v| v.to_bits()).collect()
}

/// Every value of `fused` whose node name `unfused` also has equals it (the fused nodes carry
/// their Add's name, so each fused output is compared with the separate Add's).
fn same_values(fused: &Graph, unfused: &Graph, x: Vec<Value>) {
    let values = |g: &Graph| {
        let mut seen = HashMap::new();
        g.run_with(x.clone(), |node, v| {
            seen.insert(node.name.clone(), v.clone());
            Ok(())
        })
        .unwrap();
        seen
    };
    let (f, u) = (values(fused), values(unfused));
    let mut compared = 0;
    for node in fused.nodes() {
        let fused_node = node.op.display_name().starts_with("QuantizedConv2dAdd");
        match u.get(&node.name) {
            Some(v) => {
                assert!(&f[&node.name] == v, "`{}` differs", node.name);
                compared += usize::from(fused_node);
            }
            None => assert!(!fused_node, "`{}` has no unfused counterpart", node.name),
        }
    }
    assert!(compared > 0);
}

fn kinds(g: &Graph) -> Vec<String> {
    g.nodes().iter().map(|n| n.op.display_name()).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// The fused node named `name`, as a `QConv2d`.
fn conv_node<'a>(g: &'a Graph, name: &str) -> &'a QConv2d {
    let node = &g.nodes()[g.find(name).unwrap_or_else(|| panic!("no node `{name}`")).0];
    let Op::Custom(op) = &node.op else {
        panic!("`{name}` is not quantized")
    };
    op.as_any().downcast_ref::<QConv2d>().expect("a convolution")
}

/// Two ResNet basic blocks (odd sizes, 20 channels: not a multiple of 16), the second with a
/// stride-2 1x1 downsample: `relu(conv2(x) + identity)` and `relu(conv2(x) + downsample(x))`.
/// Then a MobileNetV2-style inverted residual whose Add has the projection as its *second*
/// operand and no ReLU, and a plain Add of two convolutions where only the second is fusable.
fn blocks() -> Graph {
    let c = 20;
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 13, 11]);
    let stem = b.conv2d("stem", x, Conv2dAttrs::new(3, c, 3).padding(1));
    let stem = b.relu("stem.relu", stem);
    // Block 1: identity shortcut.
    let c1 = b.conv2d("b1.conv1", stem, Conv2dAttrs::new(c, c, 3).padding(1));
    let r1 = b.relu("b1.relu", c1);
    let c2 = b.conv2d("b1.conv2", r1, Conv2dAttrs::new(c, c, 3).padding(1));
    let n2 = b.batch_norm2d("b1.bn2", c2, c);
    let s1 = b.add("b1.add", n2, stem);
    let y1 = b.relu("b1.relu_out", s1);
    // Block 2: stride 2, 36 channels, downsampled shortcut.
    let c3 = b.conv2d("b2.conv1", y1, Conv2dAttrs::new(c, 36, 3).stride(2).padding(1));
    let r3 = b.relu("b2.relu", c3);
    let c4 = b.conv2d("b2.conv2", r3, Conv2dAttrs::new(36, 36, 3).padding(1));
    let d = b.conv2d("b2.downsample", y1, Conv2dAttrs::new(c, 36, 1).stride(2));
    let s2 = b.add("b2.add", c4, d);
    let y2 = b.relu("b2.relu_out", s2);
    // Inverted residual: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 projection; block
    // input first, projection second.
    let e = b.conv2d("ir.expand", y2, Conv2dAttrs::new(36, 108, 1));
    let e = b.relu6("ir.expand.relu6", e);
    let dw = b.conv2d("ir.dw", e, Conv2dAttrs::new(108, 108, 3).padding(1).groups(108));
    let dw = b.relu6("ir.dw.relu6", dw);
    let proj = b.conv2d("ir.project", dw, Conv2dAttrs::new(108, 36, 1));
    let s3 = b.add("ir.add", y2, proj);
    // Two convolutions of the same value, one of which is read twice (not fusable).
    let left = b.conv2d("pair.left", s3, Conv2dAttrs::new(36, 36, 1));
    let right = b.conv2d("pair.right", s3, Conv2dAttrs::new(36, 36, 3).padding(1));
    let s4 = b.add("pair.add", left, right);
    let out = b.add("out", s4, left);
    b.output(out);
    let mut g = b.build().unwrap();
    randomize(&mut g, 5);
    g
}

#[test]
fn residual_blocks_fuse_their_adds_exactly() {
    let g = blocks();
    let shape = [2, 3, 13, 11];
    let ((fused, report), unfused) = fused_and_unfused(&g, &shape, 3);
    let (kf, ku) = (kinds(&fused), kinds(&unfused));
    // Unfused: 2 add_relu + 3 adds. Fused: only `out` stays (both its operands are read twice).
    assert_eq!(count(&ku, "QuantizedAddReLU"), 2, "{ku:?}");
    assert_eq!(count(&ku, "QuantizedAdd"), 3, "{ku:?}");
    assert_eq!(count(&kf, "QuantizedAddReLU"), 0, "{kf:?}");
    assert_eq!(count(&kf, "QuantizedAdd"), 1, "{kf:?}");
    assert_eq!(count(&kf, "QuantizedConv2dAddReLU"), 2, "{kf:?}");
    assert_eq!(count(&kf, "QuantizedConv2dAdd"), 2, "{kf:?}");
    assert_eq!(fused.nodes().len() + 4, unfused.nodes().len());
    same_values(&fused, &unfused, image(&shape, 6));
    // The fused nodes carry the Add's (or its ReLU's) name and record the operand order.
    assert!(conv_node(&fused, "b1.relu_out").residual.unwrap().conv_first);
    assert!(conv_node(&fused, "b2.relu_out").residual.unwrap().conv_first);
    let ir = conv_node(&fused, "ir.add").residual.unwrap();
    assert!(!ir.conv_first && !ir.relu);
    // `pair.left` is also read by `out`, so the add takes `pair.right`, its second operand.
    assert!(!conv_node(&fused, "pair.add").residual.unwrap().conv_first);
    assert!(fused.find("b1.conv2").is_none() && unfused.find("b1.conv2").is_some());
    // The report names the fusion on both sides.
    let detail = |name: &str| match &report.node(name).unwrap().status {
        NodeStatus::Quantized { detail } => detail.clone(),
        other => panic!("{name} should be quantized, got {other:?}"),
    };
    assert!(
        detail("b1.add").contains("fused into `b1.conv2`"),
        "{}",
        detail("b1.add")
    );
    assert!(detail("b1.add").contains("add_relu"), "{}", detail("b1.add"));
    assert!(
        detail("b1.conv2").contains("residual add_relu"),
        "{}",
        detail("b1.conv2")
    );
    assert!(
        detail("ir.project").contains("as second operand"),
        "{}",
        detail("ir.project")
    );
    assert!(detail("ir.add").contains("fused into `ir.project`") && detail("ir.add").contains("(add)"));
    // Bit-identical outputs on 1, 2 and 3 threads.
    for (seed, threads) in [(7, 1), (8, 2), (9, 3)] {
        assert_eq!(
            bits(&fused, image(&shape, seed), threads),
            bits(&unfused, image(&shape, seed), threads),
            "{threads} threads"
        );
    }
    // Saved and loaded, the fused graph keeps the fusion and the bytes.
    let path = std::env::temp_dir().join(format!("qforge-residual-add-{}.qforge", std::process::id()));
    qapi::save_graph_with_report(&fused, &report, &path).unwrap();
    let loaded = qapi::load_graph(&path).unwrap();
    let inspected = qapi::inspect(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(kinds(&loaded), kf);
    assert_eq!(
        conv_node(&loaded, "ir.add").residual,
        conv_node(&fused, "ir.add").residual
    );
    assert_eq!(bits(&loaded, image(&shape, 7), 1), bits(&unfused, image(&shape, 7), 1));
    // `qforge inspect` shows the fused op and the Add's output parameters.
    let node = inspected.iter().find(|n| n.name == "b1.relu_out").unwrap();
    assert_eq!(node.op, "QuantizedConv2dAddReLU");
    let add_q = conv_node(&fused, "b1.relu_out").residual.unwrap().output;
    assert_eq!(
        node.output.as_deref(),
        Some(format!("quint8 scale {:.6e} zero point {}", add_q.scale, add_q.zero_point).as_str())
    );
    assert!(node.params.iter().any(|(k, _, _)| k == "b1.relu_out.weight"));
}

/// A skip tensor of another shape than the convolution's output is a clear error at run time.
#[test]
fn a_mismatched_skip_is_an_error() {
    let g = blocks();
    let shape = [2, 3, 13, 11];
    let ((fused, _), _) = fused_and_unfused(&g, &shape, 1);
    let node = &fused.nodes()[fused.find("b1.relu_out").unwrap().0];
    let Op::Custom(op) = &node.op else { panic!() };
    let q = qtensor::QParams::PerTensor {
        scale: 0.1,
        zero_point: 3,
    };
    let value = |shape: Vec<usize>| {
        let n = shape.iter().product();
        Value::Quant(
            qtensor::QTensor::from_data(shape, qtensor::DType::QUInt8, q.clone(), qtensor::QData::U8(vec![7; n]))
                .unwrap(),
        )
    };
    let (x, skip) = (value(vec![2, 13, 11, 20]), value(vec![2, 13, 10, 20]));
    let err = op.forward(&[&x, &skip]).unwrap_err().to_string();
    assert!(err.contains("residual operand") && err.contains("must match"), "{err}");
    let err = op.forward(&[&x]).unwrap_err().to_string();
    assert!(err.contains("two inputs"), "{err}");
    let err = op.infer_shape(&[&[2, 20, 13, 11], &[2, 20, 13, 10]]).unwrap_err();
    assert!(err.contains("must match"), "{err}");
}

#[test]
fn whole_resnet18_is_identical_with_and_without_the_fusion() {
    let config = ResNet18Config {
        num_classes: 10,
        batch: 1,
        input_size: [64, 64],
        seed: 3,
    };
    let g = resnet18(&config).unwrap();
    let shape = [1, 3, 64, 64];
    let ((fused, _), unfused) = fused_and_unfused(&g, &shape, 2);
    let (kf, ku) = (kinds(&fused), kinds(&unfused));
    assert_eq!(count(&ku, "QuantizedAddReLU"), 8, "{ku:?}");
    assert_eq!(count(&kf, "QuantizedAddReLU"), 0, "{kf:?}");
    assert_eq!(count(&kf, "QuantizedConv2dAddReLU"), 8, "{kf:?}");
    same_values(&fused, &unfused, image(&shape, 10));
    for threads in [1, 2] {
        assert_eq!(
            bits(&fused, image(&shape, 11), threads),
            bits(&unfused, image(&shape, 11), threads)
        );
    }
}

#[test]
fn whole_mobilenet_v2_is_identical_with_and_without_the_fusion() {
    let config = MobileNetV2Config {
        num_classes: 10,
        input_size: [64, 64],
        ..MobileNetV2Config::torchvision()
    };
    let g = mobilenet_v2(&config).unwrap();
    let shape = [1, 3, 64, 64];
    let ((fused, _), unfused) = fused_and_unfused(&g, &shape, 2);
    let (kf, ku) = (kinds(&fused), kinds(&unfused));
    assert_eq!(count(&ku, "QuantizedAdd"), 10, "{ku:?}");
    assert_eq!(count(&kf, "QuantizedAdd"), 0, "{kf:?}");
    assert_eq!(count(&kf, "QuantizedConv2dAdd"), 10, "{kf:?}");
    same_values(&fused, &unfused, image(&shape, 10));
    for threads in [1, 2] {
        assert_eq!(
            bits(&fused, image(&shape, 12), threads),
            bits(&unfused, image(&shape, 12), threads)
        );
    }
}

/// A convolution whose output is also a graph output keeps it: its Add stays separate.
#[test]
fn a_convolution_that_is_a_graph_output_is_not_fused() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 3, 9, 9]);
    let stem = b.conv2d("stem", x, Conv2dAttrs::new(3, 8, 3).padding(1));
    let conv = b.conv2d("conv", stem, Conv2dAttrs::new(8, 8, 3).padding(1));
    let sum = b.add("add", conv, stem);
    b.output(sum);
    b.output(conv);
    let mut g = b.build().unwrap();
    randomize(&mut g, 9);
    let shape = [1, 3, 9, 9];
    let ((fused, _), unfused) = fused_and_unfused(&g, &shape, 1);
    assert_eq!(kinds(&fused), kinds(&unfused));
    assert_eq!(count(&kinds(&fused), "QuantizedAdd"), 1);
    assert_eq!(bits(&fused, image(&shape, 3), 1), bits(&unfused, image(&shape, 3), 1));
}
