//! `GraphBuilder`: define models in Rust, sequentially or functionally (residuals,
//! concatenation, several inputs and outputs). Node names are PyTorch module paths and prefix
//! the parameter names (`layer1.0.conv1` owns `layer1.0.conv1.weight`). Errors (duplicate names,
//! shape mismatches) surface from [`GraphBuilder::build`], naming the node.

use crate::graph::{default_params, Graph, Node, NodeId};
use crate::op::{
    AttentionAttrs, BatchNormAttrs, Conv2dAttrs, ConvTranspose2dAttrs, FusedActivation, GeluApprox, LayerNormAttrs,
    LinearAttrs, Op, Pool2dAttrs, RnnAttrs, UpsampleMode,
};
use crate::value::ValueType;
use crate::Result;

/// Builds a [`Graph`] node by node; every method returns the id of the node's output.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
}

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Adds a node running `op` on `inputs`.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> NodeId {
        self.nodes.push(Node {
            name: name.to_string(),
            params: default_params(&op),
            op,
            inputs: inputs.to_vec(),
            qconfig: None,
        });
        NodeId(self.nodes.len() - 1)
    }

    /// An f32 graph input with an example shape (sizes may change between runs).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> NodeId {
        let op = Op::Input {
            shape: shape.to_vec(),
            ty: ValueType::F32,
        };
        self.node(name, op, &[])
    }

    /// An i64 token-id graph input.
    pub fn input_ids(&mut self, name: &str, shape: &[usize]) -> NodeId {
        let op = Op::Input {
            shape: shape.to_vec(),
            ty: ValueType::I64,
        };
        self.node(name, op, &[])
    }

    /// Chains `layers` after `x`, returning the last output.
    pub fn sequential(&mut self, x: NodeId, layers: Vec<(&str, Op)>) -> NodeId {
        layers
            .into_iter()
            .fold(x, |prev, (name, op)| self.node(name, op, &[prev]))
    }

    /// Marks `x` as a graph output (in call order).
    pub fn output(&mut self, x: NodeId) {
        self.outputs.push(x);
    }

    /// Validates and returns the graph.
    pub fn build(self) -> Result<Graph> {
        Graph::from_nodes(self.nodes, self.outputs)
    }

    pub fn linear(&mut self, name: &str, x: NodeId, in_features: usize, out_features: usize) -> NodeId {
        let op = Op::Linear(LinearAttrs {
            in_features,
            out_features,
            bias: true,
            activation: FusedActivation::None,
        });
        self.node(name, op, &[x])
    }

    pub fn conv2d(&mut self, name: &str, x: NodeId, attrs: Conv2dAttrs) -> NodeId {
        self.node(name, Op::Conv2d(attrs), &[x])
    }

    pub fn conv_transpose2d(&mut self, name: &str, x: NodeId, attrs: ConvTranspose2dAttrs) -> NodeId {
        self.node(name, Op::ConvTranspose2d(attrs), &[x])
    }

    /// BatchNorm1d with PyTorch's default eps 1e-5.
    pub fn batch_norm1d(&mut self, name: &str, x: NodeId, num_features: usize) -> NodeId {
        self.batch_norm(name, x, num_features, 1)
    }

    /// BatchNorm2d with PyTorch's default eps 1e-5.
    pub fn batch_norm2d(&mut self, name: &str, x: NodeId, num_features: usize) -> NodeId {
        self.batch_norm(name, x, num_features, 2)
    }

    fn batch_norm(&mut self, name: &str, x: NodeId, num_features: usize, dims: u8) -> NodeId {
        let op = Op::BatchNorm(BatchNormAttrs {
            num_features,
            eps: 1e-5,
            dims,
            activation: FusedActivation::None,
        });
        self.node(name, op, &[x])
    }

    pub fn layer_norm(&mut self, name: &str, x: NodeId, normalized_shape: &[usize], eps: f32) -> NodeId {
        let op = Op::LayerNorm(LayerNormAttrs {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            affine: true,
        });
        self.node(name, op, &[x])
    }

    pub fn embedding(&mut self, name: &str, ids: NodeId, num_embeddings: usize, embedding_dim: usize) -> NodeId {
        let op = Op::Embedding {
            num_embeddings,
            embedding_dim,
        };
        self.node(name, op, &[ids])
    }

    pub fn relu(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Relu, &[x])
    }

    pub fn relu6(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Relu6, &[x])
    }

    pub fn gelu(&mut self, name: &str, x: NodeId, approx: GeluApprox) -> NodeId {
        self.node(name, Op::Gelu(approx), &[x])
    }

    pub fn silu(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Silu, &[x])
    }

    pub fn hardswish(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Hardswish, &[x])
    }

    pub fn sigmoid(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Sigmoid, &[x])
    }

    pub fn tanh(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::Tanh, &[x])
    }

    pub fn softmax(&mut self, name: &str, x: NodeId, dim: isize) -> NodeId {
        self.node(name, Op::Softmax { dim }, &[x])
    }

    pub fn max_pool2d(&mut self, name: &str, x: NodeId, attrs: Pool2dAttrs) -> NodeId {
        self.node(name, Op::MaxPool2d(attrs), &[x])
    }

    pub fn avg_pool2d(&mut self, name: &str, x: NodeId, attrs: Pool2dAttrs) -> NodeId {
        self.node(name, Op::AvgPool2d(attrs), &[x])
    }

    pub fn adaptive_avg_pool2d(&mut self, name: &str, x: NodeId, output: [usize; 2]) -> NodeId {
        self.node(name, Op::AdaptiveAvgPool2d { output }, &[x])
    }

    pub fn upsample(&mut self, name: &str, x: NodeId, scale: usize, mode: UpsampleMode) -> NodeId {
        let op = Op::Upsample {
            scale: [scale; 2],
            mode,
        };
        self.node(name, op, &[x])
    }

    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        self.node(name, Op::Add, &[a, b])
    }

    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        self.node(name, Op::Mul, &[a, b])
    }

    pub fn cat(&mut self, name: &str, xs: &[NodeId], dim: isize) -> NodeId {
        self.node(name, Op::Cat { dim }, xs)
    }

    pub fn flatten(&mut self, name: &str, x: NodeId, start_dim: isize) -> NodeId {
        self.node(name, Op::Flatten { start_dim, end_dim: -1 }, &[x])
    }

    pub fn reshape(&mut self, name: &str, x: NodeId, shape: &[isize]) -> NodeId {
        self.node(name, Op::Reshape { shape: shape.to_vec() }, &[x])
    }

    pub fn permute(&mut self, name: &str, x: NodeId, dims: &[usize]) -> NodeId {
        self.node(name, Op::Permute { dims: dims.to_vec() }, &[x])
    }

    pub fn matmul(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        self.node(name, Op::MatMul, &[a, b])
    }

    pub fn dropout(&mut self, name: &str, x: NodeId, p: f32) -> NodeId {
        self.node(name, Op::Dropout { p }, &[x])
    }

    pub fn lstm(&mut self, name: &str, x: NodeId, attrs: RnnAttrs) -> NodeId {
        self.node(name, Op::Lstm(attrs), &[x])
    }

    pub fn gru(&mut self, name: &str, x: NodeId, attrs: RnnAttrs) -> NodeId {
        self.node(name, Op::Gru(attrs), &[x])
    }

    /// Multi-head attention of `q`, `k`, `v` (`[B, S, hidden]`) under `mask` (`[B, S]`).
    pub fn attention(&mut self, name: &str, qkv_mask: [NodeId; 4], num_heads: usize, hidden_size: usize) -> NodeId {
        let op = Op::Attention(AttentionAttrs { num_heads, hidden_size });
        self.node(name, op, &qkv_mask)
    }

    /// Position ids `0..S` (i64) for an `[.., S]` input.
    pub fn position_ids(&mut self, name: &str, x: NodeId) -> NodeId {
        self.node(name, Op::PositionIds, &[x])
    }
}
