//! The CNN builders against their PyTorch definitions: the sorted state_dict names (without
//! `num_batches_tracked`) hash to the value computed from torchvision 0.30 / the anchors'
//! UNet, the entry and trainable-parameter counts match, shapes infer and one forward runs.

use qapi::models::{mobilenet_v2, resnet18, unet, MobileNetV2Config, ResNet18Config, UNetConfig};
use qgraph::{Graph, Op, Value};
use qtensor::Tensor;

/// FNV-1a 64 of the sorted parameter names joined by newlines.
fn names_hash(graph: &Graph) -> (usize, u64) {
    let names: Vec<String> = graph.state_dict().into_keys().collect();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in names.join("\n").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (names.len(), h)
}

/// Trainable parameters: everything but BatchNorm running statistics.
fn trainable_count(graph: &Graph) -> usize {
    graph
        .nodes()
        .iter()
        .flat_map(|n| n.params.iter().map(move |(k, v)| (n, k, v)))
        .filter(|(n, k, _)| !(matches!(n.op, Op::BatchNorm(_)) && k.starts_with("running")))
        .map(|(_, _, v)| v.numel())
        .sum()
}

fn run(graph: &Graph, shape: [usize; 4]) -> Vec<usize> {
    let x = Tensor::full(shape, 0.5);
    let out = graph.run(vec![Value::F32(x)]).unwrap().remove(0).into_f32().unwrap();
    assert!(out.data().iter().all(|v| v.is_finite()));
    out.shape().to_vec()
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    let graph = mobilenet_v2(&MobileNetV2Config::torchvision()).unwrap();
    assert_eq!(names_hash(&graph), (262, 0x12cec54bab26494e));
    assert_eq!(trainable_count(&graph), 3_504_872);
    assert_eq!(graph.infer_shapes(None).unwrap().last().unwrap(), &[1, 1000]);
    // Width 0.5, 10 classes: same names, torchvision counts 700,490 parameters.
    let config = MobileNetV2Config {
        width_mult: 0.5,
        num_classes: 10,
        input_size: [64, 64],
        ..MobileNetV2Config::torchvision()
    };
    let graph = mobilenet_v2(&config).unwrap();
    assert_eq!(names_hash(&graph), (262, 0x12cec54bab26494e));
    assert_eq!(trainable_count(&graph), 700_490);
    assert_eq!(run(&graph, [2, 3, 64, 64]), [2, 10]);
}

#[test]
fn resnet18_matches_torchvision() {
    let graph = resnet18(&ResNet18Config::default()).unwrap();
    assert_eq!(names_hash(&graph), (102, 0xf7844c309b06a8ed));
    assert_eq!(trainable_count(&graph), 11_689_512);
    let shapes = graph.infer_shapes(Some(&[vec![1, 3, 64, 64]])).unwrap();
    assert_eq!(shapes.last().unwrap(), &[1, 1000]);
    let small = resnet18(&ResNet18Config {
        num_classes: 10,
        input_size: [32, 32],
        ..ResNet18Config::default()
    })
    .unwrap();
    assert_eq!(run(&small, [1, 3, 32, 32]), [1, 10]);
}

#[test]
fn unet_matches_the_anchor_definition() {
    let graph = unet(&UNetConfig::default()).unwrap();
    assert_eq!(names_hash(&graph), (56, 0x5b72c0b88997f89f));
    assert_eq!(trainable_count(&graph), 467_301);
    let small = unet(&UNetConfig {
        input_size: [32, 32],
        ..UNetConfig::default()
    })
    .unwrap();
    assert_eq!(run(&small, [1, 3, 32, 32]), [1, 5, 32, 32]);
}

#[test]
fn initialisation_is_seeded() {
    let a = resnet18(&ResNet18Config {
        seed: 1,
        ..ResNet18Config::default()
    })
    .unwrap();
    let b = resnet18(&ResNet18Config {
        seed: 1,
        ..ResNet18Config::default()
    })
    .unwrap();
    let c = resnet18(&ResNet18Config {
        seed: 2,
        ..ResNet18Config::default()
    })
    .unwrap();
    let w = |g: &Graph| g.state_dict()["layer1.0.conv1.weight"].data()[..8].to_vec();
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    // Kaiming fan_out: std sqrt(2 / (64 * 9)) ~ 0.059.
    let all = a.state_dict()["layer1.0.conv1.weight"].data().to_vec();
    let std = (all.iter().map(|v| v * v).sum::<f32>() / all.len() as f32).sqrt();
    assert!((std - (2.0f32 / 576.0).sqrt()).abs() < 0.005, "{std}");
}
