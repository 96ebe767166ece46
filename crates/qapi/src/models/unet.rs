//! The UNet of the benchmark anchors (`UNet` in the peers' `cnn_torch.py`): three levels with
//! `c = 32` base channels; each block is two (3x3 conv without bias, BatchNorm, ReLU); 2x2 max
//! pooling down; 2x2 stride-2 ConvTranspose2d up; skip connections concatenated on channels
//! (upsampled first); a 1x1 conv to 5 output channels. Parameter names follow the PyTorch
//! module (`e1.0.weight`, `e1.1.running_mean`, `u2.weight`, `d2.3.weight`, `out.bias`).

use qgraph::op::{Conv2dAttrs, ConvTranspose2dAttrs, Pool2dAttrs};
use qgraph::{Graph, GraphBuilder, NodeId};

use crate::Result;

/// UNet options.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub base_channels: usize,
    pub out_channels: usize,
    pub batch: usize,
    /// Height and width; both must be divisible by 4.
    pub input_size: [usize; 2],
    pub seed: u64,
}

impl Default for UNetConfig {
    /// The anchor's `UNet(c=32)` on 256x256 inputs.
    fn default() -> UNetConfig {
        UNetConfig {
            base_channels: 32,
            out_channels: 5,
            batch: 1,
            input_size: [256, 256],
            seed: 0,
        }
    }
}

fn block(b: &mut GraphBuilder, p: &str, x: NodeId, cin: usize, cout: usize) -> NodeId {
    let y = b.conv2d(
        &format!("{p}.0"),
        x,
        Conv2dAttrs::new(cin, cout, 3).padding(1).bias(false),
    );
    let y = b.batch_norm2d(&format!("{p}.1"), y, cout);
    let y = b.relu(&format!("{p}.2"), y);
    let y = b.conv2d(
        &format!("{p}.3"),
        y,
        Conv2dAttrs::new(cout, cout, 3).padding(1).bias(false),
    );
    let y = b.batch_norm2d(&format!("{p}.4"), y, cout);
    b.relu(&format!("{p}.5"), y)
}

/// Builds the UNet with seeded random weights (see [`super::init`]).
pub fn unet(config: &UNetConfig) -> Result<Graph> {
    let c = config.base_channels;
    let mut b = GraphBuilder::new();
    let [h, w] = config.input_size;
    let x = b.input("x", &[config.batch, 3, h, w]);
    let a = block(&mut b, "e1", x, 3, c);
    let p1 = b.max_pool2d("pool", a, Pool2dAttrs::new(2, 2, 0));
    let bb = block(&mut b, "e2", p1, c, 2 * c);
    let p2 = b.max_pool2d("pool_2", bb, Pool2dAttrs::new(2, 2, 0));
    let cc = block(&mut b, "e3", p2, 2 * c, 4 * c);
    let u2 = b.conv_transpose2d("u2", cc, ConvTranspose2dAttrs::new(4 * c, 2 * c, 2).stride(2));
    let k2 = b.cat("cat", &[u2, bb], 1);
    let d = block(&mut b, "d2", k2, 4 * c, 2 * c);
    let u1 = b.conv_transpose2d("u1", d, ConvTranspose2dAttrs::new(2 * c, c, 2).stride(2));
    let k1 = b.cat("cat_2", &[u1, a], 1);
    let e = block(&mut b, "d1", k1, 2 * c, c);
    let out = b.conv2d("out", e, Conv2dAttrs::new(c, config.out_channels, 1));
    b.output(out);
    let mut graph = b.build()?;
    super::init_weights(&mut graph, config.seed, None);
    Ok(graph)
}
