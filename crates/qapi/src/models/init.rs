//! Seeded random initialisation as torchvision initialises its CNNs, so benchmarks and demos
//! run without downloading weights: Conv2d and ConvTranspose2d weights Kaiming-normal with
//! `fan_out` (`std = sqrt(2 / fan_out)`, `fan_out = size(0) * kh * kw` as PyTorch computes it),
//! conv biases zero, BatchNorm weight 1 and bias 0 with fresh running statistics, Linear
//! weight and bias uniform in `+-1 / sqrt(in_features)` (PyTorch's default) or normal with
//! `linear_std` when given (torchvision MobileNetV2 uses 0.01 and zero bias).

use qgraph::train::Rng;
use qgraph::{Graph, NodeId, Op};
use qtensor::Tensor;

/// Re-initialises every parameter of `graph` from `seed`.
pub fn init_weights(graph: &mut Graph, seed: u64, linear_std: Option<f32>) {
    let mut rng = Rng::new(seed);
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(NodeId(i));
        let op = node.op.clone();
        for (name, t) in node.params.iter_mut() {
            let shape = t.shape().to_vec();
            let n = t.numel();
            let data: Vec<f32> = match (&op, name.as_str()) {
                (Op::Conv2d(_) | Op::ConvTranspose2d(_), "weight") => {
                    let fan_out = shape[0] * shape[2] * shape[3];
                    let std = (2.0 / fan_out as f32).sqrt();
                    (0..n).map(|_| rng.normal() * std).collect()
                }
                (Op::Linear(a), _) => match linear_std {
                    Some(std) if name == "weight" => (0..n).map(|_| rng.normal() * std).collect(),
                    Some(_) => vec![0.0; n],
                    None => {
                        let bound = 1.0 / (a.in_features as f32).sqrt();
                        (0..n).map(|_| rng.range(-bound, bound)).collect()
                    }
                },
                (Op::BatchNorm(_), "weight" | "running_var") => vec![1.0; n],
                _ => vec![0.0; n],
            };
            *t = Tensor::new(shape, data).expect("same element count");
        }
    }
}
