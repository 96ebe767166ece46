//! Static quantization on models with residuals, concatenation, float islands and opt-outs:
//! automatic boundaries, the report, save/load, sizes, and error paths.

use qapi::static_ptq::QConv2d;
use qapi::{load_graph, prepare, save_graph, FloatReason, NodeStatus, QConfigMap};
use qgraph::Op;
use qgraph::{Conv2dAttrs, ConvTranspose2dAttrs, Graph, GraphBuilder, OpKind, Pool2dAttrs, UpsampleMode, Value};
use qkernels::conv::{nhwc_u8_to_nchw_f32, ActQuant, NhwcShape};
use qkernels::eltwise::cat_channels;
use qtensor::{QParams, Tensor};
use std::collections::HashMap;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Fills every parameter with seeded values (BN variances positive).
fn randomize(graph: &mut Graph, seed: u64) {
    let mut s = seed;
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(qgraph::NodeId(i));
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

/// conv-bn-relu stem, residual block, maxpool, channel concat, hardswish, transposed conv,
/// upsample, head.
fn cnn(c: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 16, 16]);
    let c1 = b.conv2d("stem.conv", x, Conv2dAttrs::new(3, c, 3).padding(1));
    let n1 = b.batch_norm2d("stem.bn", c1, c);
    let r1 = b.relu("stem.relu", n1);
    let c2 = b.conv2d("block.conv1", r1, Conv2dAttrs::new(c, c, 3).padding(1));
    let r2 = b.relu("block.relu", c2);
    let c3 = b.conv2d("block.dw", r2, Conv2dAttrs::new(c, c, 3).padding(1).groups(c));
    let add = b.add("block.add", c3, r1);
    let p = b.max_pool2d("pool", add, Pool2dAttrs::new(2, 2, 0));
    let side = b.conv2d("side", p, Conv2dAttrs::new(c, c, 1));
    let cat = b.cat("cat", &[p, side], 1);
    let h = b.hardswish("act", cat);
    let up = b.conv_transpose2d("up", h, ConvTranspose2dAttrs::new(2 * c, c, 2).stride(2));
    let u2 = b.upsample("up2", up, 2, UpsampleMode::Nearest);
    let head = b.conv2d("head", u2, Conv2dAttrs::new(c, 4, 1));
    b.output(head);
    let mut g = b.build().unwrap();
    randomize(&mut g, 11);
    g
}

fn input(seed: u64) -> Vec<Value> {
    let mut s = seed;
    vec![Value::F32(
        Tensor::new([2, 3, 16, 16], (0..2 * 3 * 256).map(|_| lcg(&mut s) * 2.0).collect()).unwrap(),
    )]
}

fn run(g: &Graph, x: Vec<Value>) -> Vec<f32> {
    g.run(x).unwrap()[0].as_f32().unwrap().data().to_vec()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The NHWC bytes, shape and parameters of a quantized value.
fn quant_parts(v: &Value) -> (Vec<u8>, NhwcShape, ActQuant) {
    let Value::Quant(t) = v else {
        panic!("expected a quantized value, got {v:?}")
    };
    let [n, h, w, c] = t.shape() else { panic!("not NHWC") };
    let QParams::PerTensor { scale, zero_point } = t.qparams() else {
        panic!("per-tensor expected")
    };
    (
        t.int_repr().iter().map(|&v| v as u8).collect(),
        NhwcShape::new(*n, *h, *w, *c),
        ActQuant::new(*scale, *zero_point).unwrap(),
    )
}

fn sqnr_db(reference: &[f32], approx: &[f32]) -> f32 {
    let signal: f32 = reference.iter().map(|v| v * v).sum();
    let noise: f32 = reference.iter().zip(approx).map(|(a, b)| (a - b) * (a - b)).sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

fn quantized(g: &Graph, config: &QConfigMap) -> (Graph, qapi::QuantReport) {
    let mut p = prepare(g, config).unwrap();
    p.calibrate((0..4).map(input)).unwrap();
    p.convert().unwrap()
}

#[test]
fn whole_cnn_runs_int8_and_stays_close_to_fp32() {
    let g = cnn(8);
    let (q, report) = quantized(&g, &QConfigMap::qforge());
    for name in [
        "stem.conv",
        "block.conv1",
        "block.dw",
        "block.add",
        "pool",
        "cat",
        "act",
        "up",
        "up2",
        "head",
    ] {
        assert!(report.quantized().contains(&name), "{name} not int8:\n{report}");
    }
    // One quantize at the entry; the head convolution hands back f32 itself (its dequantize
    // fused), so there is no boundary node in between or at the exit.
    let kinds: Vec<String> = q.nodes().iter().map(|n| n.op.display_name()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "Quantize").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "Dequantize").count(), 0, "{kinds:?}");
    match &report.node("head").unwrap().status {
        NodeStatus::Quantized { detail } => assert!(detail.contains("output dequantize fused"), "{detail}"),
        other => panic!("head should be quantized, got {other:?}"),
    }
    let x = input(99);
    let db = sqnr_db(&run(&g, x.clone()), &run(&q, x));
    assert!(db > 20.0, "SQNR {db:.1} dB");
}

#[test]
fn opt_outs_and_float_islands_get_boundaries() {
    let g = cnn(8);
    let config = QConfigMap::qforge()
        .set_name("block.dw", None)
        .set_kind(OpKind::ConvTranspose2d, None)
        .set_pattern("^hea", None)
        .unwrap();
    let (q, report) = quantized(&g, &config);
    let reason = |n: &str| match &report.node(n).unwrap().status {
        NodeStatus::Float { reason } => reason.clone(),
        other => panic!("{n} should be f32, got {other:?}"),
    };
    assert!(matches!(reason("block.dw"), FloatReason::OptedOut { rule } if rule.contains("block.dw")));
    assert!(matches!(reason("up"), FloatReason::OptedOut { rule } if rule.contains("ConvTranspose2d")));
    assert!(matches!(reason("head"), FloatReason::OptedOut { rule } if rule.contains("^hea")));
    // up2 follows its float input.
    assert!(matches!(reason("up2"), FloatReason::Other(_)));
    let kinds: Vec<String> = q.nodes().iter().map(|n| n.op.display_name()).collect();
    assert!(kinds.iter().filter(|k| *k == "Quantize").count() >= 2, "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "Dequantize").count() >= 2, "{kinds:?}");
    let x = input(5);
    let db = sqnr_db(&run(&g, x.clone()), &run(&q, x));
    assert!(db > 20.0, "SQNR {db:.1} dB");
    assert!(report.to_string().contains("kept in f32"));
}

#[test]
fn save_load_gives_identical_outputs_and_a_quarter_of_the_size() {
    // Wide enough that weights dominate the file, as in real models.
    let g = cnn(64);
    let (q, _) = quantized(&g, &QConfigMap::fbgemm());
    let dir = std::env::temp_dir().join(format!("qforge-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (fp32_path, int8_path) = (dir.join("fp32.safetensors"), dir.join("int8.safetensors"));
    save_graph(&g, &fp32_path).unwrap();
    save_graph(&q, &int8_path).unwrap();
    let loaded = load_graph(&int8_path).unwrap();
    let x = input(3);
    assert_eq!(run(&q, x.clone()), run(&loaded, x.clone()));
    let reloaded_fp32 = load_graph(&fp32_path).unwrap();
    assert_eq!(run(&g, x.clone()), run(&reloaded_fp32, x));
    let (a, b) = (
        std::fs::metadata(&fp32_path).unwrap().len() as f64,
        std::fs::metadata(&int8_path).unwrap().len() as f64,
    );
    eprintln!("fp32 {a} bytes, int8 {b} bytes, ratio {:.3}", b / a);
    assert!(b / a < 0.30, "int8 file is {:.3} of fp32", b / a);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_clear() {
    let g = cnn(4);
    let p = prepare(&g, &QConfigMap::fbgemm()).unwrap();
    let err = p.convert().unwrap_err().to_string();
    assert!(err.contains("calibrate"), "{err}");

    let mut p = prepare(&g, &QConfigMap::fbgemm()).unwrap();
    let mut bad = input(1);
    if let Value::F32(t) = &mut bad[0] {
        t.data_mut()[7] = f32::NAN;
    }
    let err = p.calibrate([bad]).unwrap_err().to_string();
    assert!(err.contains("non-finite") && err.contains('x'), "{err}");

    assert!(QConfigMap::qforge().set_pattern("(unclosed", None).is_err());
    let mut p = prepare(&g, &QConfigMap::fbgemm()).unwrap();
    assert!(p.calibrate(Vec::<Vec<Value>>::new()).is_ok());
    assert!(p.convert().is_err(), "zero batches must not convert");
    assert!(p.calibrate([vec![]]).is_err(), "wrong input count");
}

#[test]
fn per_layer_comparison_and_accuracy_fallback() {
    use qapi::compare::{compare_graphs, sqnr_db as db};
    use qapi::fallback::quantize_with_fallback;
    let g = cnn(8);
    // Compare against the fused float graph: fusion renames nothing but folds BN and ReLU into
    // the convolutions, so their outputs change meaning.
    let mut p = prepare(&g, &QConfigMap::qforge()).unwrap();
    p.calibrate((0..4).map(input)).unwrap();
    let (q, _) = p.convert().unwrap();
    let layers = compare_graphs(p.graph(), &q, input(7)).unwrap();
    assert!(layers.iter().any(|l| l.name == "head"), "{layers:?}");
    assert!(layers.iter().all(|l| l.cosine > 0.9 && l.sqnr_db > 10.0), "{layers:?}");

    let reference = run(&g, input(42));
    let eval = |m: &Graph| Ok(f64::from(db(&reference, &run(m, input(42))).min(100.0)));
    let full = eval(&q).unwrap();
    let target = full + 6.0; // demand 6 dB more than full int8 gives
    let calibration: Vec<Vec<Value>> = (0..4).map(input).collect();
    let out = quantize_with_fallback(&g, &QConfigMap::qforge(), &calibration, eval, 100.0 - target).unwrap();
    assert!(out.met, "target not met: {:?}", out.trials);
    assert!(out.metric >= target, "{} < {target}", out.metric);
    assert!(
        !out.float_layers.is_empty() && out.float_layers.len() < out.ranking.len(),
        "{:?}",
        out.float_layers
    );
    assert!(out.trials.len() >= 2);
    // Minimal: every trial with fewer float layers missed the target.
    for t in &out.trials {
        if t.float_layers.len() < out.float_layers.len() {
            assert!(t.metric < target, "{t:?} already met the target");
        }
    }
    for name in &out.float_layers {
        assert!(matches!(
            &out.report.node(name).unwrap().status,
            NodeStatus::Float {
                reason: FloatReason::Fallback { .. }
            }
        ));
    }
}

#[test]
fn supported_ops_lists_every_route() {
    let ops = qapi::supported_ops();
    let find = |k: OpKind| ops.iter().find(|o| o.kind == k).unwrap().clone();
    assert!(find(OpKind::Conv2d).static_int8.is_some() && find(OpKind::Conv2d).dynamic.is_none());
    assert!(find(OpKind::Linear).static_int8.is_some() && find(OpKind::Linear).dynamic.is_some());
    assert!(find(OpKind::Lstm).dynamic.is_some());
    assert!(find(OpKind::Softmax).static_int8.is_none() && find(OpKind::Softmax).dynamic.is_none());
}

#[test]
fn inspect_shows_dtypes_qparams_and_reasons() {
    let g = cnn(8);
    let (q, report) = quantized(&g, &QConfigMap::qforge().set_name("head", None));
    let path = std::env::temp_dir().join(format!("qforge-inspect-{}.safetensors", std::process::id()));
    qapi::save_graph_with_report(&q, &report, &path).unwrap();
    let nodes = qapi::inspect(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let stem = nodes.iter().find(|n| n.name == "stem.conv").unwrap();
    assert_eq!(stem.op, "QuantizedConv2d");
    assert!(stem
        .params
        .iter()
        .any(|(k, d, _)| k == "stem.conv.weight" && d.contains("qint8") && d.contains("per-channel")));
    assert!(stem.output.as_ref().unwrap().contains("quint8"));
    let head = nodes.iter().find(|n| n.name == "head").unwrap();
    assert!(matches!(
        &head.status,
        Some(NodeStatus::Float {
            reason: FloatReason::OptedOut { .. }
        })
    ));
    assert!(head.params.iter().any(|(_, d, _)| d.starts_with("f32")));
}

#[test]
fn convert_with_given_parameters_matches_observed_conversion() {
    let g = cnn(8);
    let mut p = prepare(&g, &QConfigMap::qforge()).unwrap();
    p.calibrate((0..2).map(input)).unwrap();
    let (q, _) = p.convert().unwrap();
    let acts = p.activation_qparams().unwrap();
    let (q2, _) = p.convert_with(&acts, &Default::default()).unwrap();
    assert_eq!(run(&q, input(8)), run(&q2, input(8)));
    let mut missing = acts.clone();
    missing.remove("block.add");
    let err = p.convert_with(&missing, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("block.add"), "{err}");
}

/// Two branches with different parameters concatenated into a padded 3x3 convolution: the
/// convolution absorbs the cat, computes exactly what the cat followed by the convolution
/// computes, and keeps doing so after a save and load.
#[test]
fn cat_read_by_a_convolution_is_fused_into_it_exactly() {
    let c = 8;
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 16, 16]);
    let left = b.conv2d("left", x, Conv2dAttrs::new(3, c, 3).padding(1));
    let right = b.conv2d("right", x, Conv2dAttrs::new(3, 2 * c, 1));
    let right = b.relu("right.relu", right);
    let cat = b.cat("cat", &[left, right], 1);
    let fuse = b.conv2d("fuse", cat, Conv2dAttrs::new(3 * c, c, 3).padding(1));
    b.output(fuse);
    let mut g = b.build().unwrap();
    randomize(&mut g, 3);
    let (q, report) = quantized(&g, &QConfigMap::qforge());
    let kinds: Vec<String> = q.nodes().iter().map(|n| n.op.display_name()).collect();
    assert!(!kinds.iter().any(|k| k == "QuantizedCat"), "{kinds:?}");
    match &report.node("cat").unwrap().status {
        NodeStatus::Quantized { detail } => assert!(detail.contains("fused into `fuse`"), "{detail}"),
        other => panic!("cat should be quantized, got {other:?}"),
    }
    // The fused node's output equals the separate cat and convolution on the values it read.
    let mut values: HashMap<String, Value> = HashMap::new();
    q.run_with(input(21), |node, value| {
        values.insert(node.name.clone(), value.clone());
        Ok(())
    })
    .unwrap();
    let node = q.find("fuse").map(|id| &q.nodes()[id.0]).unwrap();
    let Op::Custom(op) = &node.op else {
        panic!("fuse is not quantized")
    };
    let conv = op.as_any().downcast_ref::<QConv2d>().unwrap();
    let concat = conv.concat.expect("the convolution concatenates its inputs");
    let parts: Vec<(Vec<u8>, NhwcShape, ActQuant)> = node
        .inputs
        .iter()
        .map(|id| match &values[&q.nodes()[id.0].name] {
            Value::Quant(t) => {
                let [n, h, w, c] = t.shape() else { panic!("not NHWC") };
                let bytes = t.int_repr().iter().map(|&v| v as u8).collect();
                let QParams::PerTensor { scale, zero_point } = t.qparams() else {
                    panic!("per-tensor expected")
                };
                (
                    bytes,
                    NhwcShape::new(*n, *h, *w, *c),
                    ActQuant::new(*scale, *zero_point).unwrap(),
                )
            }
            other => panic!("expected a quantized input, got {other:?}"),
        })
        .collect();
    assert_eq!(parts.len(), 2);
    assert_ne!(parts[0].2, parts[1].2, "the branches should have different parameters");
    let refs: Vec<(&[u8], NhwcShape, ActQuant)> = parts.iter().map(|(d, s, q)| (d.as_slice(), *s, *q)).collect();
    let (cat_bytes, xs) = cat_channels(&refs, concat).unwrap();
    let (expected, _) = conv
        .conv
        .forward(&cat_bytes, xs, concat, conv.output, conv.activation)
        .unwrap();
    // `fuse` is the graph's output, so its dequantize is fused too: f32 NCHW.
    assert!(conv.dequantize);
    let ys = conv.conv.output_shape(xs).unwrap();
    let expected = bits(&nhwc_u8_to_nchw_f32(&expected, ys, conv.output).unwrap());
    let Value::F32(got) = &values["fuse"] else {
        panic!("fuse output is not f32")
    };
    assert_eq!(bits(got.data()), expected);
    // Saved and loaded, the graph gives the same output.
    let path = std::env::temp_dir().join(format!("qforge-cat-fused-{}.qforge", std::process::id()));
    qapi::save_graph(&q, &path).unwrap();
    let loaded = qapi::load_graph(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(run(&loaded, input(21)), run(&q, input(21)));
}

/// A segmentation head (1x1 convolution to 5 channels) at the graph's exit: convert fuses the
/// exit's dequantize into it, the report says so, its f32 output has the bits of the separate
/// convolution and dequantization on the values it read, and a save and load keeps the fusion
/// and the bits.
#[test]
fn dequantize_after_the_head_convolution_is_fused_into_it_exactly() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 16, 16]);
    let body = b.conv2d("body", x, Conv2dAttrs::new(3, 32, 3).padding(1));
    let body = b.relu("body.relu", body);
    let head = b.conv2d("head", body, Conv2dAttrs::new(32, 5, 1));
    b.output(head);
    let mut g = b.build().unwrap();
    randomize(&mut g, 8);
    let (q, report) = quantized(&g, &QConfigMap::qforge());
    let kinds: Vec<String> = q.nodes().iter().map(|n| n.op.display_name()).collect();
    assert!(!kinds.iter().any(|k| k == "Dequantize"), "{kinds:?}");
    let node = q.find("head").map(|id| &q.nodes()[id.0]).unwrap();
    assert_eq!(q.outputs(), [q.find("head").unwrap()]);
    let Op::Custom(op) = &node.op else {
        panic!("head is not quantized")
    };
    let conv = op.as_any().downcast_ref::<QConv2d>().unwrap();
    assert!(conv.dequantize);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        conv.conv.dequantizes_in_kernel(),
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") && !qkernels::forced_reference()
    );
    match &report.node("head").unwrap().status {
        NodeStatus::Quantized { detail } => {
            assert!(detail.contains("output dequantize fused"), "{detail}");
            assert_eq!(
                detail.contains("straight from the accumulators"),
                conv.conv.dequantizes_in_kernel(),
                "{detail}"
            );
        }
        other => panic!("head should be quantized, got {other:?}"),
    }
    let mut values: HashMap<String, Value> = HashMap::new();
    q.run_with(input(4), |node, value| {
        values.insert(node.name.clone(), value.clone());
        Ok(())
    })
    .unwrap();
    let (x_bytes, xs, x_q) = quant_parts(&values[&q.nodes()[node.inputs[0].0].name]);
    let (y, ys) = conv
        .conv
        .forward(&x_bytes, xs, x_q, conv.output, conv.activation)
        .unwrap();
    let expected = bits(&nhwc_u8_to_nchw_f32(&y, ys, conv.output).unwrap());
    let Value::F32(got) = &values["head"] else {
        panic!("head output is not f32")
    };
    assert_eq!(got.shape(), [2, 5, 16, 16]);
    assert_eq!(bits(got.data()), expected);
    let path = std::env::temp_dir().join(format!("qforge-head-dequantize-{}.qforge", std::process::id()));
    qapi::save_graph(&q, &path).unwrap();
    let loaded = qapi::load_graph(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let loaded_head = &loaded.nodes()[loaded.find("head").unwrap().0];
    let Op::Custom(op) = &loaded_head.op else {
        panic!("loaded head is not quantized")
    };
    assert!(op.as_any().downcast_ref::<QConv2d>().unwrap().dequantize);
    assert_eq!(bits(&run(&loaded, input(4))), expected);
    // A non-finite input is refused at the entry, naming the value.
    let mut bad = input(4);
    if let Value::F32(t) = &mut bad[0] {
        t.data_mut()[5] = f32::INFINITY;
    }
    let err = q.run(bad).unwrap_err().to_string();
    assert!(err.contains("inf") && err.contains("not finite"), "{err}");
}

/// Max pools that alone feed a padded convolution (2x2, and 3x3 stride 2 with padding): convert
/// folds each into its convolution, the report says so, each convolution's output has the bytes
/// of the separate pooling and convolution on the values it read, and a save and load keeps the
/// fusion and the outputs.
#[test]
fn max_pool_read_by_a_convolution_is_fused_into_it_exactly() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 16, 16]);
    let c1 = b.conv2d("c1", x, Conv2dAttrs::new(3, 8, 3).padding(1));
    let r1 = b.relu("c1.relu", c1);
    let p1 = b.max_pool2d("pool1", r1, Pool2dAttrs::new(2, 2, 0));
    let c2 = b.conv2d("c2", p1, Conv2dAttrs::new(8, 16, 3).padding(1));
    let r2 = b.relu("c2.relu", c2);
    let p2 = b.max_pool2d("pool2", r2, Pool2dAttrs::new(3, 2, 1));
    let c3 = b.conv2d("c3", p2, Conv2dAttrs::new(16, 8, 3).padding(1));
    let r3 = b.relu("c3.relu", c3);
    let head = b.conv2d("head", r3, Conv2dAttrs::new(8, 4, 1));
    b.output(head);
    let mut g = b.build().unwrap();
    randomize(&mut g, 5);
    let (q, report) = quantized(&g, &QConfigMap::qforge());
    let kinds: Vec<String> = q.nodes().iter().map(|n| n.op.display_name()).collect();
    assert!(!kinds.iter().any(|k| k == "QuantizedMaxPool2d"), "{kinds:?}");
    let mut values: HashMap<String, Value> = HashMap::new();
    q.run_with(input(6), |node, value| {
        values.insert(node.name.clone(), value.clone());
        Ok(())
    })
    .unwrap();
    for (pool, conv_name) in [("pool1", "c2"), ("pool2", "c3")] {
        match &report.node(pool).unwrap().status {
            NodeStatus::Quantized { detail } => {
                assert!(detail.contains(&format!("fused into `{conv_name}`")), "{detail}")
            }
            other => panic!("{pool} should be quantized, got {other:?}"),
        }
        let node = q.nodes().iter().find(|n| n.name.starts_with(conv_name)).unwrap();
        let Op::Custom(op) = &node.op else {
            panic!("{conv_name} is not quantized")
        };
        let conv = op.as_any().downcast_ref::<QConv2d>().unwrap();
        let window = conv.pool.expect("the convolution pools its input");
        // The node reads the pooling's input; its output is the pooling then the convolution.
        let (x_bytes, xs, x_q) = quant_parts(&values[&q.nodes()[node.inputs[0].0].name]);
        let (p, ps) = qkernels::eltwise::max_pool2d(&x_bytes, xs, &window).unwrap();
        let (y, ys) = conv.conv.forward(&p, ps, x_q, conv.output, conv.activation).unwrap();
        let (got, got_shape, got_q) = quant_parts(&values[&node.name]);
        assert_eq!((got_shape, got_q), (ys, conv.output));
        assert_eq!(got, y, "{conv_name}");
    }
    let path = std::env::temp_dir().join(format!("qforge-pool-fused-{}.qforge", std::process::id()));
    qapi::save_graph(&q, &path).unwrap();
    let loaded = qapi::load_graph(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let fused = |g: &Graph| {
        g.nodes()
            .iter()
            .filter_map(|n| match &n.op {
                Op::Custom(op) => op.as_any().downcast_ref::<QConv2d>().and_then(|c| c.pool),
                _ => None,
            })
            .count()
    };
    assert_eq!((fused(&q), fused(&loaded)), (2, 2));
    assert_eq!(bits(&run(&loaded, input(6))), bits(&run(&q, input(6))));
}
