//! Module fusion, pattern-based on the graph or from a manual list (PyTorch `fuse_modules`):
//! conv+bn, conv+bn+relu, conv+relu, linear+relu, linear+bn1d, bn+relu, convtranspose+bn.
//! A chain is fused only when each intermediate output has exactly one reader and is not a
//! graph output. The fused node keeps the first node's name; the others disappear.
//!
//! BatchNorm folding follows PyTorch's `torch.nn.utils.fusion` in f32, operation for operation:
//! `rsqrt = 1 / sqrt(var + eps)`; conv: `w' = w * (gamma * rsqrt)` per output channel,
//! `b' = (b - mean) * rsqrt * gamma + beta`; linear: `s = gamma * rsqrt`, `w' = w * s`,
//! `b' = (b - mean) * s + beta`.

use std::collections::HashMap;
use std::fmt;

use qtensor::Tensor;

use crate::graph::{Graph, Node, NodeId};
use crate::op::{BatchNormAttrs, FusedActivation, Op, OpKind};
use crate::{GraphError, Result};

/// The chains fusion understands, longest first.
const PATTERNS: &[&[OpKind]] = &[
    &[OpKind::Conv2d, OpKind::BatchNorm2d, OpKind::Relu],
    &[OpKind::Conv2d, OpKind::BatchNorm2d],
    &[OpKind::Conv2d, OpKind::Relu],
    &[OpKind::ConvTranspose2d, OpKind::BatchNorm2d],
    &[OpKind::Linear, OpKind::BatchNorm1d],
    &[OpKind::Linear, OpKind::Relu],
    &[OpKind::BatchNorm2d, OpKind::Relu],
    &[OpKind::BatchNorm1d, OpKind::Relu],
];

/// One fused chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedGroup {
    /// The original node names, in order.
    pub nodes: Vec<String>,
    /// The module the chain became (`ConvReLU2d`, `LinearReLU`, ...).
    pub fused_as: String,
}

/// What fusion did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FusionReport {
    pub groups: Vec<FusedGroup>,
}

impl fmt::Display for FusionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.groups.is_empty() {
            return writeln!(f, "no modules fused");
        }
        for g in &self.groups {
            writeln!(f, "fused [{}] -> {} `{}`", g.nodes.join(", "), g.fused_as, g.nodes[0])?;
        }
        Ok(())
    }
}

impl Graph {
    /// Finds and fuses every supported chain.
    pub fn fuse_auto(&mut self) -> Result<FusionReport> {
        let _span = tracing::info_span!("fuse_auto").entered();
        let mut report = FusionReport::default();
        'scan: loop {
            let readers = self.consumers();
            for i in 0..self.nodes.len() {
                if let Some(chain) = self.match_chain(i, &readers) {
                    report.groups.push(self.apply_chain(&chain)?);
                    continue 'scan;
                }
            }
            return Ok(report);
        }
    }

    /// Fuses the named chains, e.g. `fuse(&[&["conv1", "bn1", "relu1"]])`; an unsupported or
    /// broken chain is an error naming its nodes.
    pub fn fuse(&mut self, groups: &[&[&str]]) -> Result<FusionReport> {
        let mut report = FusionReport::default();
        for group in groups {
            let names: Vec<String> = group.iter().map(|s| s.to_string()).collect();
            let fail = |reason: String| GraphError::Fusion {
                nodes: names.clone(),
                reason,
            };
            let ids = group
                .iter()
                .map(|n| {
                    self.find(n)
                        .map(|id| id.0)
                        .ok_or_else(|| GraphError::UnknownNode { name: n.to_string() })
                })
                .collect::<Result<Vec<_>>>()?;
            let kinds: Vec<OpKind> = ids.iter().map(|&i| self.nodes[i].op.kind()).collect();
            if !PATTERNS.contains(&kinds.as_slice()) {
                return Err(fail(format!(
                    "unsupported pattern {kinds:?}; supported: conv+bn(+relu), conv+relu, linear+relu, linear+bn1d, bn+relu, convtranspose+bn"
                )));
            }
            let readers = self.consumers();
            for w in ids.windows(2) {
                if self.nodes[w[1]].inputs != [NodeId(w[0])] {
                    return Err(fail(format!(
                        "`{}` does not read `{}` as its only input",
                        self.nodes[w[1]].name, self.nodes[w[0]].name
                    )));
                }
                if !self.single_reader(w[0], &readers) {
                    return Err(fail(format!(
                        "`{}` has other readers (or is a graph output), fusing would change them",
                        self.nodes[w[0]].name
                    )));
                }
            }
            if !fusable_head(&self.nodes[ids[0]]) {
                return Err(fail("the first node already carries a fused activation".into()));
            }
            report.groups.push(self.apply_chain(&ids)?);
        }
        Ok(report)
    }

    /// Folds a ReLU6 into the Conv2d before it (when the ReLU6 is the conv's only reader), for
    /// static quantization: the conv's output observer then sees the clamped range and the int8
    /// kernel clamps in its epilogue. Training does not use this form (PyTorch's quantizable
    /// MobileNetV2 swaps ReLU6 for ReLU for the same reason).
    pub fn fuse_relu6(&mut self) -> Result<FusionReport> {
        let mut report = FusionReport::default();
        'scan: loop {
            let readers = self.consumers();
            for i in 0..self.nodes.len() {
                let conv = matches!(&self.nodes[i].op, Op::Conv2d(a) if a.activation == FusedActivation::None);
                if !conv || !self.single_reader(i, &readers) {
                    continue;
                }
                let next = readers[i][0].0;
                if !matches!(self.nodes[next].op, Op::Relu6) || self.nodes[next].inputs.len() != 1 {
                    continue;
                }
                let names = vec![self.nodes[i].name.clone(), self.nodes[next].name.clone()];
                self.nodes[i].op.set_activation(FusedActivation::Relu6);
                let fused_as = self.nodes[i].op.display_name();
                self.remove_nodes(&HashMap::from([(next, i)]))?;
                report.groups.push(FusedGroup { nodes: names, fused_as });
                continue 'scan;
            }
            return Ok(report);
        }
    }

    fn single_reader(&self, i: usize, readers: &[Vec<NodeId>]) -> bool {
        readers[i].len() == 1 && !self.outputs.contains(&NodeId(i))
    }

    /// The longest supported chain starting at node `i`.
    fn match_chain(&self, i: usize, readers: &[Vec<NodeId>]) -> Option<Vec<usize>> {
        if !fusable_head(&self.nodes[i]) {
            return None;
        }
        'patterns: for pattern in PATTERNS {
            if pattern[0] != self.nodes[i].op.kind() {
                continue;
            }
            let mut chain = vec![i];
            for &kind in &pattern[1..] {
                let last = *chain.last().expect("non-empty");
                if !self.single_reader(last, readers) {
                    continue 'patterns;
                }
                let next = readers[last][0].0;
                if self.nodes[next].op.kind() != kind || self.nodes[next].inputs.len() != 1 {
                    continue 'patterns;
                }
                chain.push(next);
            }
            return Some(chain);
        }
        None
    }

    /// Folds the chain into its first node and removes the rest.
    fn apply_chain(&mut self, chain: &[usize]) -> Result<FusedGroup> {
        let names: Vec<String> = chain.iter().map(|&i| self.nodes[i].name.clone()).collect();
        let head = chain[0];
        for &next in &chain[1..] {
            match self.nodes[next].op.clone() {
                Op::BatchNorm(bn) if !matches!(self.nodes[head].op, Op::BatchNorm(_)) => {
                    let bn_node = self.nodes[next].clone();
                    fold_batch_norm(&mut self.nodes[head], &bn_node, &bn)?;
                }
                Op::Relu => {
                    self.nodes[head].op.set_activation(FusedActivation::Relu);
                }
                other => {
                    return Err(GraphError::Fusion {
                        nodes: names,
                        reason: format!("cannot fold {:?}", other.kind()),
                    })
                }
            }
        }
        let fused_as = self.nodes[head].op.display_name();
        let replacement: HashMap<usize, usize> = chain[1..].iter().map(|&i| (i, head)).collect();
        self.remove_nodes(&replacement)?;
        tracing::debug!(nodes = ?names, fused_as, "fused");
        Ok(FusedGroup { nodes: names, fused_as })
    }
}

fn fusable_head(node: &Node) -> bool {
    match &node.op {
        Op::Linear(a) => a.activation == FusedActivation::None,
        Op::Conv2d(a) => a.activation == FusedActivation::None,
        Op::ConvTranspose2d(a) => a.activation == FusedActivation::None,
        Op::BatchNorm(a) => a.activation == FusedActivation::None,
        _ => false,
    }
}

/// PyTorch `fuse_conv_bn_weights` / `fuse_linear_bn_weights`, in f32 with the same order.
pub fn fold_batch_norm(head: &mut Node, bn_node: &Node, bn: &BatchNormAttrs) -> Result<()> {
    let gamma = bn_node.param("weight")?.data().to_vec();
    let beta = bn_node.param("bias")?.data().to_vec();
    let mean = bn_node.param("running_mean")?.data().to_vec();
    let var = bn_node.param("running_var")?.data().to_vec();
    let rsqrt: Vec<f32> = var.iter().map(|&v| 1.0 / (v + bn.eps).sqrt()).collect();
    let scale: Vec<f32> = gamma.iter().zip(&rsqrt).map(|(g, r)| g * r).collect();
    let channels = bn.num_features;
    let weight = head.param("weight")?.clone();
    let wshape = weight.shape().to_vec();
    let per = weight.numel() / channels.max(1);
    let (channel_of, is_linear): (Box<dyn Fn(usize) -> usize>, bool) = match &mut head.op {
        Op::Conv2d(a) => {
            a.bias = true;
            (Box::new(move |i| i / per), false)
        }
        Op::Linear(a) => {
            a.bias = true;
            (Box::new(move |i| i / per), true)
        }
        Op::ConvTranspose2d(a) => {
            a.bias = true;
            let kk = a.kernel[0] * a.kernel[1];
            let og = a.out_channels / a.groups;
            let cin_g = a.in_channels / a.groups;
            (Box::new(move |i| (i / (og * kk)) / cin_g * og + (i / kk) % og), false)
        }
        _ => {
            return Err(GraphError::Fusion {
                nodes: vec![head.name.clone(), bn_node.name.clone()],
                reason: "BatchNorm folds only into Conv2d, ConvTranspose2d or Linear".into(),
            })
        }
    };
    let out_channels = head
        .op
        .param_shapes()
        .iter()
        .find(|(n, _)| n == "bias")
        .map(|(_, s)| s[0]);
    if out_channels != Some(channels) {
        return Err(GraphError::Fusion {
            nodes: vec![head.name.clone(), bn_node.name.clone()],
            reason: format!("BatchNorm has {channels} features but the layer has {out_channels:?} outputs"),
        });
    }
    let w: Vec<f32> = weight
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| v * scale[channel_of(i)])
        .collect();
    let b_old = head
        .params
        .get("bias")
        .map(|t| t.data().to_vec())
        .unwrap_or(vec![0.0; channels]);
    let b: Vec<f32> = (0..channels)
        .map(|c| {
            if is_linear {
                (b_old[c] - mean[c]) * scale[c] + beta[c]
            } else {
                (b_old[c] - mean[c]) * rsqrt[c] * gamma[c] + beta[c]
            }
        })
        .collect();
    head.params.insert("weight".into(), Tensor::new(wshape, w)?);
    head.params.insert("bias".into(), Tensor::new([channels], b)?);
    Ok(())
}
