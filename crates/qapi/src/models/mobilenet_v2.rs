//! MobileNetV2 (Sandler et al. 2018) with torchvision's structure and parameter names
//! (`features.0.0.weight`, `features.1.conv.0.0.weight`, ..., `classifier.1.weight`): width
//! multiplier with channels rounded by `_make_divisible` to multiples of 8, inverted residual
//! blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when the shape is kept),
//! ReLU6, global average pooling, dropout and a Linear classifier. Input size, number of
//! classes, first stride and the block table are configurable (small variants for 32x32).

use qgraph::op::Conv2dAttrs;
use qgraph::{Graph, GraphBuilder, NodeId};

use crate::Result;

/// MobileNetV2 hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV2Config {
    pub width_mult: f32,
    pub num_classes: usize,
    /// Batch and spatial size of the declared input `[batch, 3, h, w]`.
    pub batch: usize,
    pub input_size: [usize; 2],
    /// Inverted residual table: (expansion t, channels c, repeats n, first stride s).
    pub blocks: Vec<(usize, usize, usize, usize)>,
    /// Stride of the first 3x3 convolution (2 in torchvision; 1 suits 32x32 inputs).
    pub first_stride: usize,
    pub last_channel: usize,
    pub dropout: f32,
    pub seed: u64,
}

impl MobileNetV2Config {
    /// torchvision's `mobilenet_v2()`: width 1.0, 1000 classes, 224x224.
    pub fn torchvision() -> MobileNetV2Config {
        MobileNetV2Config {
            width_mult: 1.0,
            num_classes: 1000,
            batch: 1,
            input_size: [224, 224],
            blocks: vec![
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ],
            first_stride: 2,
            last_channel: 1280,
            dropout: 0.2,
            seed: 0,
        }
    }
}

/// torchvision `_make_divisible(v, 8)`: nearest multiple of 8, at least 8, and not below 90%
/// of `v`.
pub fn make_divisible(v: f32, divisor: usize) -> usize {
    let d = divisor as f32;
    let mut new_v = (divisor).max(((v + d / 2.0) as usize) / divisor * divisor);
    if (new_v as f32) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// `Conv2dNormActivation`: conv (no bias), BatchNorm, ReLU6 at `prefix.0/1/2`.
fn conv_bn_relu6(b: &mut GraphBuilder, prefix: &str, x: NodeId, attrs: Conv2dAttrs) -> NodeId {
    let out = attrs.out_channels;
    let c = b.conv2d(&format!("{prefix}.0"), x, attrs.bias(false));
    let n = b.batch_norm2d(&format!("{prefix}.1"), c, out);
    b.relu6(&format!("{prefix}.2"), n)
}

/// Builds MobileNetV2 with seeded random weights (see [`super::init`]).
pub fn mobilenet_v2(config: &MobileNetV2Config) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.input_size;
    let x = b.input("x", &[config.batch, 3, h, w]);
    let mut input_channel = make_divisible(32.0 * config.width_mult, 8);
    let last_channel = make_divisible(config.last_channel as f32 * config.width_mult.max(1.0), 8);
    let mut y = conv_bn_relu6(
        &mut b,
        "features.0",
        x,
        Conv2dAttrs::new(3, input_channel, 3)
            .stride(config.first_stride)
            .padding(1),
    );
    let mut index = 1;
    for &(t, c, n, s) in &config.blocks {
        let output_channel = make_divisible(c as f32 * config.width_mult, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{index}.conv");
            let hidden = input_channel * t;
            let mut z = y;
            let mut j = 0;
            if t != 1 {
                z = conv_bn_relu6(&mut b, &format!("{p}.0"), z, Conv2dAttrs::new(input_channel, hidden, 1));
                j = 1;
            }
            let dw = Conv2dAttrs::new(hidden, hidden, 3)
                .stride(stride)
                .padding(1)
                .groups(hidden);
            z = conv_bn_relu6(&mut b, &format!("{p}.{j}"), z, dw);
            z = b.conv2d(
                &format!("{p}.{}", j + 1),
                z,
                Conv2dAttrs::new(hidden, output_channel, 1).bias(false),
            );
            z = b.batch_norm2d(&format!("{p}.{}", j + 2), z, output_channel);
            if stride == 1 && input_channel == output_channel {
                z = b.add(&format!("features.{index}.add"), z, y);
            }
            y = z;
            input_channel = output_channel;
            index += 1;
        }
    }
    y = conv_bn_relu6(
        &mut b,
        &format!("features.{index}"),
        y,
        Conv2dAttrs::new(input_channel, last_channel, 1),
    );
    let p = b.adaptive_avg_pool2d("avgpool", y, [1, 1]);
    let f = b.flatten("flatten", p, 1);
    let d = b.dropout("classifier.0", f, config.dropout);
    let out = b.linear("classifier.1", d, last_channel, config.num_classes);
    b.output(out);
    let mut graph = b.build()?;
    super::init_weights(&mut graph, config.seed, Some(0.01));
    Ok(graph)
}
