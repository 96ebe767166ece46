//! A model built with the builder, loaded from a safetensors file the test writes, run in fp32
//! and compared with a hand computation; then fused (conv+bn+relu) with unchanged outputs.

use std::collections::HashMap;

use qgraph::{Conv2dAttrs, Graph, GraphBuilder, GraphError, OpKind, Value};
use qtensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};

/// conv1(1->2, k2) -> bn1 -> relu1 -> flatten -> fc(8->2); out1 = fc + skip; out2 = cat(fc, skip).
fn model() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 1, 3, 3]);
    let skip = b.input("skip", &[1, 2]);
    let h = b.conv2d("conv1", x, Conv2dAttrs::new(1, 2, 2));
    let h = b.batch_norm2d("bn1", h, 2);
    let h = b.relu("relu1", h);
    let h = b.flatten("flatten", h, 1);
    let fc = b.linear("fc", h, 8, 2);
    let out1 = b.add("residual", fc, skip);
    let out2 = b.cat("concat", &[fc, skip], 1);
    b.output(out1);
    b.output(out2);
    b.build().unwrap()
}

fn weights() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    vec![
        (
            "conv1.weight",
            vec![2, 1, 2, 2],
            vec![0.5, -1.0, 0.25, 2.0, -0.5, 1.5, 1.0, -0.75],
        ),
        ("conv1.bias", vec![2], vec![0.1, -0.2]),
        ("bn1.weight", vec![2], vec![1.5, 0.8]),
        ("bn1.bias", vec![2], vec![0.3, -0.1]),
        ("bn1.running_mean", vec![2], vec![0.2, -0.4]),
        ("bn1.running_var", vec![2], vec![2.0, 0.5]),
        (
            "fc.weight",
            vec![2, 8],
            (0..16).map(|i| (i as f32 - 7.5) * 0.1).collect(),
        ),
        ("fc.bias", vec![2], vec![0.05, -0.05]),
    ]
}

/// An extra tensor for the file: (name, dtype, shape, raw bytes).
type Extra<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

fn write_file(extra: &[Extra], skip: Option<&str>, path: &std::path::Path) {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = weights()
        .into_iter()
        .filter(|(n, _, _)| Some(*n) != skip)
        .map(|(n, s, d)| (n.to_string(), s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    for (n, dt, s, d) in extra {
        views.push((n.to_string(), TensorView::new(*dt, s.clone(), d).unwrap()));
    }
    safetensors::serialize_to_file(views, &None::<HashMap<String, String>>, path).unwrap();
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("qgraph-{}-{name}.safetensors", std::process::id()))
}

/// The same model, written out by hand.
fn hand(x: &[f32; 9], skip: [f32; 2]) -> ([f32; 2], [f32; 4]) {
    let w = weights();
    let get = |name: &str| w.iter().find(|(n, _, _)| *n == name).unwrap().2.clone();
    let (cw, cb) = (get("conv1.weight"), get("conv1.bias"));
    let (g, beta, mean, var) = (
        get("bn1.weight"),
        get("bn1.bias"),
        get("bn1.running_mean"),
        get("bn1.running_var"),
    );
    let mut flat = [0.0f32; 8];
    for o in 0..2 {
        for oy in 0..2 {
            for ox in 0..2 {
                let mut s = cb[o];
                for i in 0..2 {
                    for j in 0..2 {
                        s += cw[o * 4 + i * 2 + j] * x[(oy + i) * 3 + ox + j];
                    }
                }
                let bn = (s - mean[o]) / (var[o] + 1e-5).sqrt() * g[o] + beta[o];
                flat[o * 4 + oy * 2 + ox] = bn.max(0.0);
            }
        }
    }
    let (fw, fb) = (get("fc.weight"), get("fc.bias"));
    let fc: Vec<f32> = (0..2)
        .map(|n| fb[n] + (0..8).map(|k| fw[n * 8 + k] * flat[k]).sum::<f32>())
        .collect();
    ([fc[0] + skip[0], fc[1] + skip[1]], [fc[0], fc[1], skip[0], skip[1]])
}

fn run(g: &Graph, x: &[f32; 9], skip: [f32; 2]) -> (Vec<f32>, Vec<f32>) {
    let out = g
        .run(vec![
            Value::F32(Tensor::new([1, 1, 3, 3], x.to_vec()).unwrap()),
            Value::F32(Tensor::new([1, 2], skip.to_vec()).unwrap()),
        ])
        .unwrap();
    assert_eq!(out[0].shape(), &[1, 2]);
    assert_eq!(out[1].shape(), &[1, 4]);
    (
        out[0].as_f32().unwrap().data().to_vec(),
        out[1].as_f32().unwrap().data().to_vec(),
    )
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn loads_runs_and_fuses() {
    let path = temp("model");
    // PyTorch saves num_batches_tracked as int64; loading must accept and ignore it.
    let tracked = (
        "bn1.num_batches_tracked",
        Dtype::I64,
        vec![],
        7i64.to_le_bytes().to_vec(),
    );
    write_file(&[tracked], None, &path);
    let mut g = model();
    g.load_safetensors_file(&path, true).unwrap();
    std::fs::remove_file(&path).ok();

    let inputs = [
        ([0.1, -0.3, 0.7, 1.2, 0.0, -0.8, 0.4, 0.9, -1.1], [0.5, -0.25]),
        ([1.0, 2.0, -1.0, 0.5, -0.5, 0.25, 3.0, -2.0, 0.75], [0.0, 1.0]),
    ];
    let before: Vec<_> = inputs.iter().map(|(x, s)| run(&g, x, *s)).collect();
    for ((x, s), (o1, o2)) in inputs.iter().zip(&before) {
        let (h1, h2) = hand(x, *s);
        close(o1, &h1);
        close(o2, &h2);
    }

    let report = g.fuse_auto().unwrap();
    assert_eq!(report.groups.len(), 1, "{report}");
    assert_eq!(report.groups[0].nodes, ["conv1", "bn1", "relu1"]);
    assert_eq!(report.groups[0].fused_as, "ConvReLU2d");
    let kinds: Vec<OpKind> = g.nodes().iter().map(|n| n.op.kind()).collect();
    assert!(
        !kinds.contains(&OpKind::BatchNorm2d) && !kinds.contains(&OpKind::Relu),
        "{kinds:?}"
    );
    assert_eq!(g.nodes().len(), 7);
    for ((x, s), (o1, o2)) in inputs.iter().zip(&before) {
        let (f1, f2) = run(&g, x, *s);
        close(&f1, o1);
        close(&f2, o2);
    }

    // Saving and loading back round-trips the fused parameters by name.
    let bytes = g.save_safetensors().unwrap();
    let mut again = g.clone();
    again.load_safetensors(&bytes, true).unwrap();
    assert_eq!(again.state_dict(), g.state_dict());
}

#[test]
fn manual_fusion_list_and_consumer_rule() {
    let mut g = model();
    let report = g.fuse(&[&["conv1", "bn1"]]).unwrap();
    assert_eq!(report.groups[0].fused_as, "Conv2d");
    assert!(g.find("bn1").is_none() && g.find("relu1").is_some());

    // fc feeds both the residual add and the concat: it cannot absorb a following op.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 4]);
    let fc = b.linear("fc", x, 4, 4);
    let r = b.relu("relu", fc);
    let other = b.add("add", fc, r);
    b.output(other);
    let mut g = b.build().unwrap();
    assert!(g.fuse_auto().unwrap().groups.is_empty());
    match g.fuse(&[&["fc", "relu"]]) {
        Err(GraphError::Fusion { nodes, reason }) => {
            assert_eq!(nodes, ["fc", "relu"]);
            assert!(reason.contains("other readers"), "{reason}");
        }
        other => panic!("expected a fusion error, got {other:?}"),
    }
    assert!(matches!(g.fuse(&[&["fc", "add"]]), Err(GraphError::Fusion { .. })));
}

#[test]
fn weight_errors_name_the_parameter() {
    let cases: Vec<(&str, Vec<Extra>, Option<&str>, &str)> = vec![
        ("missing", vec![], Some("fc.bias"), "fc.bias"),
        (
            "extra",
            vec![("head.weight", Dtype::F32, vec![1], 1f32.to_le_bytes().to_vec())],
            None,
            "head.weight",
        ),
    ];
    for (tag, extra, skip, name) in cases {
        let path = temp(tag);
        write_file(&extra, skip, &path);
        let err = model().load_safetensors_file(&path, true).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(err.to_string().contains(name), "{tag}: {err}");
    }
    // Mis-shaped and wrong-dtype tensors: rewrite fc.bias.
    let mut g = model();
    let shaped = {
        let mut w = weights();
        w.retain(|(n, _, _)| *n != "fc.bias");
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = w
            .into_iter()
            .map(|(n, s, d)| (n.to_string(), s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .chain([("fc.bias".to_string(), vec![3], vec![0u8; 12])])
            .collect();
        let views: Vec<(String, TensorView)> = raw
            .iter()
            .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
            .collect();
        safetensors::serialize(views, &None).unwrap()
    };
    match g.load_safetensors(&shaped, true) {
        Err(GraphError::ParameterShape { name, expected, got }) => {
            assert_eq!((name.as_str(), expected, got), ("fc.bias", vec![2], vec![3]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let path = temp("dtype");
    write_file(
        &[("fc.bias", Dtype::F64, vec![2], vec![0u8; 16])],
        Some("fc.bias"),
        &path,
    );
    let err = g.load_safetensors_file(&path, true).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(
        matches!(&err, GraphError::ParameterDType { name, .. } if name == "fc.bias"),
        "{err}"
    );
    assert!(matches!(
        g.load_safetensors(b"not a safetensors file", true),
        Err(GraphError::Safetensors(_))
    ));
}
