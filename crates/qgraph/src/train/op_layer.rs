//! [`OpLayer`]: a graph node as a trainable layer. The forward pass is the graph's own fp32
//! forward (`crate::ops`), except in training mode for BatchNorm (batch statistics, running
//! statistics updated) and Dropout (a seeded random mask scaled by `1 / (1 - p)`); the backward
//! passes live in [`super::grad`].

use std::any::Any;
use std::collections::BTreeMap;

use qtensor::Tensor;

use super::grad::{activation, conv, layout, linear, norm, pool};
use super::layer::{take_saved, ForwardCtx, Layer, ParamRef};
use crate::graph::Node;
use crate::op::{FusedActivation, Op};
use crate::{ops, GraphError, Result};

/// What one training-mode forward keeps for backward.
#[derive(Debug, Clone, Default)]
struct Saved {
    inputs: Vec<Tensor>,
    input_shapes: Vec<Vec<usize>>,
    output: Option<Tensor>,
    bn: Option<norm::BatchNormSaved>,
    mask: Option<Vec<f32>>,
}

/// A built-in graph op with gradient accumulators for its trainable parameters.
#[derive(Debug, Clone)]
pub struct OpLayer {
    node: Node,
    grads: BTreeMap<String, Tensor>,
    saved: Option<Saved>,
}

/// Whether the training engine can differentiate `op`.
pub fn trainable(op: &Op) -> bool {
    matches!(
        op,
        Op::Linear(_)
            | Op::Conv2d(_)
            | Op::BatchNorm(_)
            | Op::Relu
            | Op::Relu6
            | Op::Hardswish
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Add
            | Op::Cat { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Dropout { .. }
            | Op::Identity
    )
}

/// Local names of the parameters an op trains (BatchNorm's running statistics are buffers).
fn trainable_names(op: &Op) -> Vec<String> {
    match op {
        Op::Linear(_) | Op::Conv2d(_) | Op::BatchNorm(_) => op
            .param_shapes()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n == "weight" || n == "bias")
            .collect(),
        _ => Vec::new(),
    }
}

impl OpLayer {
    /// Wraps `node`; an error for ops without a backward pass.
    pub fn new(node: Node) -> Result<OpLayer> {
        if node.op.activation() == Some(FusedActivation::Relu6) {
            return Err(GraphError::Unsupported {
                node: node.name.clone(),
                what: "training a fused ReLU6 (fuse_relu6 is for static quantization; train the unfused graph)".into(),
            });
        }
        if !trainable(&node.op) {
            return Err(GraphError::Unsupported {
                node: node.name.clone(),
                what: format!("training through {} (no backward pass)", node.op.display_name()),
            });
        }
        let mut grads = BTreeMap::new();
        for name in trainable_names(&node.op) {
            let shape = node.param(&name)?.shape().to_vec();
            grads.insert(name, Tensor::zeros(shape));
        }
        Ok(OpLayer {
            node,
            grads,
            saved: None,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn into_node(self) -> Node {
        self.node
    }

    fn grad_mut(&mut self, name: &str) -> &mut [f32] {
        self.grads.get_mut(name).expect("accumulator made in new").data_mut()
    }

    fn train_forward(&mut self, x: &[&Tensor], out_shape: Vec<usize>, ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let mut s = Saved {
            input_shapes: x.iter().map(|t| t.shape().to_vec()).collect(),
            ..Saved::default()
        };
        let y = match &self.node.op {
            Op::BatchNorm(a) => {
                let a = a.clone();
                let c = a.num_features;
                let inner: usize = x[0].shape()[2..].iter().product();
                let gamma = self.node.param("weight")?.data().to_vec();
                let beta = self.node.param("bias")?.data().to_vec();
                let mut rm = self.node.param("running_mean")?.clone();
                let mut rv = self.node.param("running_var")?.clone();
                let (mut y, bn) = norm::batch_norm_train(
                    x[0].data(),
                    c,
                    inner,
                    &gamma,
                    &beta,
                    a.eps,
                    norm::BN_MOMENTUM,
                    rm.data_mut(),
                    rv.data_mut(),
                );
                self.node.params.insert("running_mean".into(), rm);
                self.node.params.insert("running_var".into(), rv);
                if a.activation == FusedActivation::Relu {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                s.bn = Some(bn);
                Tensor::new(out_shape, y)?
            }
            Op::Dropout { p } => {
                let p = *p;
                let keep = if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) };
                let mask: Vec<f32> = (0..x[0].numel())
                    .map(|_| if ctx.rng.uniform() >= p { keep } else { 0.0 })
                    .collect();
                let y = x[0].data().iter().zip(&mask).map(|(v, m)| v * m).collect();
                s.mask = Some(mask);
                Tensor::new(out_shape, y)?
            }
            _ => {
                let args: Vec<crate::Value> = x.iter().map(|t| crate::Value::F32((*t).clone())).collect();
                let refs: Vec<&crate::Value> = args.iter().collect();
                let y = ops::forward(&self.node, &refs)?
                    .into_f32()
                    .expect("fp32 ops return f32");
                if matches!(
                    self.node.op,
                    Op::Linear(_) | Op::Conv2d(_) | Op::Relu | Op::Relu6 | Op::Hardswish | Op::MaxPool2d(_)
                ) {
                    s.inputs = args.into_iter().map(|v| v.into_f32().expect("built as f32")).collect();
                }
                y
            }
        };
        if matches!(&self.node.op, Op::Linear(a) if a.activation == FusedActivation::Relu)
            || matches!(&self.node.op, Op::Conv2d(a) if a.activation == FusedActivation::Relu)
            || matches!(&self.node.op, Op::BatchNorm(a) if a.activation == FusedActivation::Relu)
        {
            s.output = Some(y.clone());
        }
        self.saved = Some(s);
        Ok(y)
    }
}

impl Layer for OpLayer {
    fn kind_name(&self) -> String {
        self.node.op.display_name()
    }

    fn forward(&mut self, inputs: &[&Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let out_shape = ops::infer_shape(&self.node, &shapes)?;
        if ctx.training() {
            return self.train_forward(inputs, out_shape, ctx);
        }
        self.saved = None;
        if let Op::Dropout { .. } = self.node.op {
            return Ok(inputs[0].clone());
        }
        let args: Vec<crate::Value> = inputs.iter().map(|t| crate::Value::F32((*t).clone())).collect();
        let refs: Vec<&crate::Value> = args.iter().collect();
        Ok(ops::forward(&self.node, &refs)?
            .into_f32()
            .expect("fp32 ops return f32"))
    }

    fn backward(&mut self, grad_out: &Tensor) -> Result<Vec<Tensor>> {
        let s = take_saved(&mut self.saved, &self.node.name)?;
        let mut dy = grad_out.data().to_vec();
        if let Some(y) = &s.output {
            activation::mask_by_output(y.data(), &mut dy);
        }
        let x_shape = s.input_shapes[0].clone();
        let dx: Vec<Vec<f32>> = match self.node.op.clone() {
            Op::Linear(a) => {
                let w = self.node.param("weight")?.data().to_vec();
                let mut dw = self.grads.remove("weight").expect("weight accumulator made in new");
                let mut db = self.grads.remove("bias");
                let dx = linear::linear_backward(
                    s.inputs[0].data(),
                    &w,
                    &dy,
                    a.in_features,
                    a.out_features,
                    dw.data_mut(),
                    db.as_mut().map(|t| t.data_mut()),
                );
                self.grads.insert("weight".into(), dw);
                if let Some(db) = db {
                    self.grads.insert("bias".into(), db);
                }
                vec![dx]
            }
            Op::Conv2d(a) => {
                let w = self.node.param("weight")?.data().to_vec();
                let mut dw = self.grads.remove("weight").expect("weight accumulator made in new");
                let mut db = self.grads.remove("bias");
                let dx = conv::conv2d_backward(
                    &a,
                    s.inputs[0].data(),
                    &x_shape,
                    &w,
                    &dy,
                    grad_out.shape(),
                    dw.data_mut(),
                    db.as_mut().map(|t| t.data_mut()),
                    true,
                )
                .expect("dx requested");
                self.grads.insert("weight".into(), dw);
                if let Some(db) = db {
                    self.grads.insert("bias".into(), db);
                }
                vec![dx]
            }
            Op::BatchNorm(a) => {
                let bn = s.bn.as_ref().expect("batch norm saves its statistics");
                let gamma = self.node.param("weight")?.data().to_vec();
                let inner: usize = x_shape[2..].iter().product();
                let mut dgamma = self.grad_mut("weight").to_vec();
                let mut dbeta = self.grad_mut("bias").to_vec();
                let dx =
                    norm::batch_norm_train_backward(bn, &dy, a.num_features, inner, &gamma, &mut dgamma, &mut dbeta);
                self.grad_mut("weight").copy_from_slice(&dgamma);
                self.grad_mut("bias").copy_from_slice(&dbeta);
                vec![dx]
            }
            Op::Relu => vec![activation::chain(s.inputs[0].data(), &dy, activation::relu_grad)],
            Op::Relu6 => vec![activation::chain(s.inputs[0].data(), &dy, activation::relu6_grad)],
            Op::Hardswish => vec![activation::chain(s.inputs[0].data(), &dy, activation::hardswish_grad)],
            Op::MaxPool2d(a) => vec![pool::max_pool2d_backward(
                &a,
                s.inputs[0].data(),
                &x_shape,
                &dy,
                grad_out.shape(),
            )],
            Op::AvgPool2d(a) => vec![pool::avg_pool2d_backward(&a, &x_shape, &dy, grad_out.shape())],
            Op::AdaptiveAvgPool2d { .. } => vec![pool::adaptive_avg_pool2d_backward(&x_shape, &dy, grad_out.shape())],
            Op::Add => s
                .input_shapes
                .iter()
                .map(|shape| layout::sum_to_shape(&dy, grad_out.shape(), shape))
                .collect(),
            Op::Cat { dim } => {
                let d = ops::layout::normalize_dim(&self.node.name, dim, grad_out.rank())?;
                let shapes: Vec<&[usize]> = s.input_shapes.iter().map(Vec::as_slice).collect();
                layout::cat_backward(&dy, grad_out.shape(), d, &shapes)
            }
            Op::Dropout { .. } => {
                let mask = s.mask.as_ref().expect("dropout saves its mask");
                vec![dy.iter().zip(mask).map(|(g, m)| g * m).collect()]
            }
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity => vec![dy],
            other => {
                return Err(GraphError::Unsupported {
                    node: self.node.name.clone(),
                    what: format!("backward of {:?}", other.kind()),
                })
            }
        };
        dx.into_iter()
            .zip(&s.input_shapes)
            .map(|(g, shape)| Ok(Tensor::new(shape.clone(), g)?))
            .collect()
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamRef<'_>)) {
        for (name, grad) in self.grads.iter_mut() {
            let value = self
                .node
                .params
                .get_mut(name)
                .expect("trainable parameters exist on the node");
            f(ParamRef { name, value, grad });
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
