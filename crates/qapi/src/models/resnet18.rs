//! ResNet-18 (He et al. 2016) with torchvision's structure and parameter names (`conv1.weight`,
//! `bn1.*`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ..., `fc.weight`): 7x7
//! stride-2 stem, 3x3 max pool, four stages of two BasicBlocks (3x3 conv, BN, ReLU, 3x3 conv,
//! BN, add the shortcut, ReLU; 1x1 stride-2 projection when the shape changes), global
//! average pooling and a Linear classifier.

use qgraph::op::{Conv2dAttrs, Pool2dAttrs};
use qgraph::{Graph, GraphBuilder, NodeId};

use crate::Result;

/// ResNet-18 options.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNet18Config {
    pub num_classes: usize,
    pub batch: usize,
    pub input_size: [usize; 2],
    pub seed: u64,
}

impl Default for ResNet18Config {
    /// torchvision's `resnet18()`: 1000 classes, 224x224.
    fn default() -> ResNet18Config {
        ResNet18Config {
            num_classes: 1000,
            batch: 1,
            input_size: [224, 224],
            seed: 0,
        }
    }
}

fn basic_block(b: &mut GraphBuilder, p: &str, x: NodeId, cin: usize, cout: usize, stride: usize) -> NodeId {
    let c = b.conv2d(
        &format!("{p}.conv1"),
        x,
        Conv2dAttrs::new(cin, cout, 3).stride(stride).padding(1).bias(false),
    );
    let c = b.batch_norm2d(&format!("{p}.bn1"), c, cout);
    let c = b.relu(&format!("{p}.relu"), c);
    let c = b.conv2d(
        &format!("{p}.conv2"),
        c,
        Conv2dAttrs::new(cout, cout, 3).padding(1).bias(false),
    );
    let c = b.batch_norm2d(&format!("{p}.bn2"), c, cout);
    let shortcut = if stride != 1 || cin != cout {
        let d = b.conv2d(
            &format!("{p}.downsample.0"),
            x,
            Conv2dAttrs::new(cin, cout, 1).stride(stride).bias(false),
        );
        b.batch_norm2d(&format!("{p}.downsample.1"), d, cout)
    } else {
        x
    };
    let s = b.add(&format!("{p}.add"), c, shortcut);
    b.relu(&format!("{p}.relu_out"), s)
}

/// Builds ResNet-18 with seeded random weights (see [`super::init`]).
pub fn resnet18(config: &ResNet18Config) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.input_size;
    let x = b.input("x", &[config.batch, 3, h, w]);
    let c = b.conv2d("conv1", x, Conv2dAttrs::new(3, 64, 7).stride(2).padding(3).bias(false));
    let c = b.batch_norm2d("bn1", c, 64);
    let c = b.relu("relu", c);
    let mut y = b.max_pool2d("maxpool", c, Pool2dAttrs::new(3, 2, 1));
    let mut cin = 64;
    for (stage, cout) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            y = basic_block(&mut b, &format!("layer{}.{block}", stage + 1), y, cin, cout, stride);
            cin = cout;
        }
    }
    let p = b.adaptive_avg_pool2d("avgpool", y, [1, 1]);
    let f = b.flatten("flatten", p, 1);
    let out = b.linear("fc", f, 512, config.num_classes);
    b.output(out);
    let mut graph = b.build()?;
    super::init_weights(&mut graph, config.seed, None);
    Ok(graph)
}
