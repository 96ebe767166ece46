//! The weight-carrying modules of quantization-aware training, PyTorch `torch.ao.nn.qat` /
//! `torch.ao.nn.intrinsic.qat`: Linear and Conv2d whose weight passes through a
//! [`FakeQuantize`] before use (optionally with a fused ReLU), and Conv2d+BatchNorm2d that keeps
//! the BatchNorm trainable while quantizing the weight as it will be after folding.
//!
//! ConvBn follows PyTorch's `_ConvBnNd._forward_approximate`: with
//! `sf = gamma / sqrt(running_var + eps)`, the weight `fq(w * sf)` (per output channel) is
//! convolved without bias, the result is divided by `sf` (and the conv bias added), then the
//! BatchNorm runs in training mode (batch statistics, running statistics updated with momentum
//! 0.1) or, once `freeze_bn_stats` is called or in eval mode, with the running statistics.
//! Gradients reach `gamma` both through the BatchNorm and through `sf`.

use std::any::Any;
use std::collections::BTreeMap;

use qtensor::{QParams, Tensor};

use super::fake_quantize::FakeQuantize;
use super::grad::{activation, conv, linear, norm};
use super::layer::{take_saved, ForwardCtx, Layer, Param, ParamRef};
use crate::graph::Node;
use crate::op::{BatchNormAttrs, Conv2dAttrs, FusedActivation, LinearAttrs, Op};
use crate::{ops, GraphError, Result};

/// Runs a graph op on `x` with the given parameters.
fn run_op(name: &str, op: Op, params: BTreeMap<String, Tensor>, x: &Tensor) -> Result<Tensor> {
    let node = Node {
        name: name.to_string(),
        op,
        inputs: Vec::new(),
        params,
        qconfig: None,
    };
    let arg = crate::Value::F32(x.clone());
    Ok(ops::forward(&node, &[&arg])?.into_f32().expect("fp32 ops return f32"))
}

/// BatchNorm state inside a ConvBn module.
#[derive(Debug, Clone)]
pub struct BnState {
    pub gamma: Param,
    pub beta: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f32,
    pub momentum: f32,
    /// Set by `freeze_bn_stats`: use and keep the running statistics.
    pub frozen: bool,
}

#[derive(Debug, Clone)]
struct ConvSaved {
    x: Tensor,
    wq: Vec<f32>,
    out_shape: Vec<usize>,
    /// ConvBn: the conv output before the division by `sf`, `sf`, and the BatchNorm state.
    conv: Vec<f32>,
    sf: Vec<f32>,
    /// `1 / sqrt(running_var + eps)` as the forward saw it (the training BatchNorm updates the
    /// running variance afterwards), for `d sf / d gamma`.
    running_invstd: Vec<f32>,
    bn: Option<norm::BatchNormSaved>,
    /// Eval-form BatchNorm: its input, for the gamma gradient.
    bn_input: Vec<f32>,
    y: Vec<f32>,
}

/// Conv2d (optionally with BatchNorm and ReLU) with a fake-quantized weight.
#[derive(Debug)]
pub struct QatConv2d {
    pub name: String,
    /// Convolution attributes; `activation` is the fused ReLU.
    pub attrs: Conv2dAttrs,
    pub weight: Param,
    pub bias: Option<Param>,
    pub bn: Option<BnState>,
    pub weight_fake_quant: FakeQuantize,
    saved: Option<ConvSaved>,
}

impl QatConv2d {
    /// From a graph Conv2d node, an optional BatchNorm2d node after it, and whether a ReLU
    /// follows.
    pub fn new(
        conv_node: &Node,
        bn_node: Option<&Node>,
        relu: bool,
        weight_fake_quant: FakeQuantize,
    ) -> Result<QatConv2d> {
        let Op::Conv2d(attrs) = &conv_node.op else {
            return Err(GraphError::Unsupported {
                node: conv_node.name.clone(),
                what: format!("{} as a QAT Conv2d", conv_node.op.display_name()),
            });
        };
        let mut attrs = attrs.clone();
        if relu {
            attrs.activation = FusedActivation::Relu;
        }
        let bn = match bn_node {
            None => None,
            Some(n) => {
                let Op::BatchNorm(BatchNormAttrs { num_features, eps, .. }) = &n.op else {
                    return Err(GraphError::Unsupported {
                        node: n.name.clone(),
                        what: "a non-BatchNorm node after a QAT ConvBn".into(),
                    });
                };
                if *num_features != attrs.out_channels {
                    return Err(GraphError::Fusion {
                        nodes: vec![conv_node.name.clone(), n.name.clone()],
                        reason: format!(
                            "BatchNorm has {num_features} features, the conv {} outputs",
                            attrs.out_channels
                        ),
                    });
                }
                Some(BnState {
                    gamma: Param::new(n.param("weight")?.clone()),
                    beta: Param::new(n.param("bias")?.clone()),
                    running_mean: n.param("running_mean")?.data().to_vec(),
                    running_var: n.param("running_var")?.data().to_vec(),
                    eps: *eps,
                    momentum: norm::BN_MOMENTUM,
                    frozen: false,
                })
            }
        };
        Ok(QatConv2d {
            name: conv_node.name.clone(),
            weight: Param::new(conv_node.param("weight")?.clone()),
            bias: if attrs.bias {
                Some(Param::new(conv_node.param("bias")?.clone()))
            } else {
                None
            },
            attrs,
            bn,
            weight_fake_quant,
            saved: None,
        })
    }

    /// PyTorch `freeze_bn_stats`: stop updating the running statistics and normalize with them.
    pub fn freeze_bn_stats(&mut self) {
        if let Some(bn) = &mut self.bn {
            bn.frozen = true;
        }
    }

    /// `gamma / sqrt(running_var + eps)` per output channel (ones without BatchNorm).
    fn scale_factor(&self) -> Vec<f32> {
        match &self.bn {
            Some(bn) => bn
                .gamma
                .value
                .data()
                .iter()
                .zip(&bn.running_var)
                .map(|(g, v)| g / (v + bn.eps).sqrt())
                .collect(),
            None => vec![1.0; self.attrs.out_channels],
        }
    }

    /// The float Conv2d node this module becomes: BatchNorm folded with the running statistics
    /// (PyTorch `fuse_conv_bn_weights`), fused ReLU kept.
    pub fn to_float_node(&self) -> Result<Node> {
        let mut params = BTreeMap::new();
        params.insert("weight".to_string(), self.weight.value.clone());
        if let Some(b) = &self.bias {
            params.insert("bias".to_string(), b.value.clone());
        }
        let mut attrs = self.attrs.clone();
        attrs.activation = FusedActivation::None;
        let mut node = Node {
            name: self.name.clone(),
            op: Op::Conv2d(attrs),
            inputs: Vec::new(),
            params,
            qconfig: None,
        };
        if let Some(bn) = &self.bn {
            let bn_attrs = BatchNormAttrs {
                num_features: self.attrs.out_channels,
                eps: bn.eps,
                dims: 2,
                activation: FusedActivation::None,
            };
            let c = self.attrs.out_channels;
            let mut bn_params = BTreeMap::new();
            bn_params.insert("weight".to_string(), bn.gamma.value.clone());
            bn_params.insert("bias".to_string(), bn.beta.value.clone());
            bn_params.insert("running_mean".to_string(), Tensor::new([c], bn.running_mean.clone())?);
            bn_params.insert("running_var".to_string(), Tensor::new([c], bn.running_var.clone())?);
            let bn_node = Node {
                name: format!("{}.bn", self.name),
                op: Op::BatchNorm(bn_attrs.clone()),
                inputs: Vec::new(),
                params: bn_params,
                qconfig: None,
            };
            crate::fuse::fold_batch_norm(&mut node, &bn_node, &bn_attrs)?;
        }
        if let Op::Conv2d(a) = &mut node.op {
            a.activation = self.attrs.activation;
        }
        Ok(node)
    }

    /// The weight qparams the fake-quant module ended with.
    pub fn weight_qparams(&self) -> Result<QParams> {
        self.weight_fake_quant.qparams()
    }

    pub fn kind(&self) -> &'static str {
        match (self.bn.is_some(), self.attrs.activation == FusedActivation::Relu) {
            (true, true) => "ConvBnReLU2d",
            (true, false) => "ConvBn2d",
            (false, true) => "ConvReLU2d",
            (false, false) => "Conv2d",
        }
    }
}

impl Layer for QatConv2d {
    fn kind_name(&self) -> String {
        format!("Qat{}", self.kind())
    }

    fn forward(&mut self, inputs: &[&Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let x = inputs[0];
        let o = self.attrs.out_channels;
        let sf = self.scale_factor();
        let running_invstd: Vec<f32> = match &self.bn {
            Some(bn) => bn.running_var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect(),
            None => vec![1.0; o],
        };
        let per = self.weight.value.numel() / o;
        let scaled: Vec<f32> = self
            .weight
            .value
            .data()
            .iter()
            .enumerate()
            .map(|(i, w)| w * sf[i / per])
            .collect();
        let scaled = Tensor::new(self.weight.value.shape().to_vec(), scaled)?;
        let wq = self.weight_fake_quant.forward(&[&scaled], ctx)?;
        let mut attrs = self.attrs.clone();
        attrs.activation = FusedActivation::None;
        attrs.bias = false;
        let mut params = BTreeMap::new();
        params.insert("weight".to_string(), wq.clone());
        let conv_out = run_op(&self.name, Op::Conv2d(attrs), params, x)?;
        let out_shape = conv_out.shape().to_vec();
        let inner = out_shape[2] * out_shape[3];
        let bias = self.bias.as_ref().map(|b| b.value.data().to_vec());
        // Divide by sf, add the conv bias: the float conv output BatchNorm expects.
        let mut pre: Vec<f32> = conv_out.data().to_vec();
        if self.bn.is_some() || bias.is_some() {
            for (i, plane) in pre.chunks_exact_mut(inner.max(1)).enumerate() {
                let c = i % o;
                let b = bias.as_ref().map_or(0.0, |b| b[c]);
                for v in plane {
                    *v = *v / sf[c] + b;
                }
            }
        }
        let mut bn_saved = None;
        let mut bn_input = Vec::new();
        let mut y = match &mut self.bn {
            None => pre,
            Some(bn) if ctx.training() && !bn.frozen => {
                let (y, s) = norm::batch_norm_train(
                    &pre,
                    o,
                    inner,
                    bn.gamma.value.data(),
                    bn.beta.value.data(),
                    bn.eps,
                    bn.momentum,
                    &mut bn.running_mean,
                    &mut bn.running_var,
                );
                bn_saved = Some(s);
                y
            }
            Some(bn) => {
                let mut y = pre.clone();
                for (i, plane) in y.chunks_exact_mut(inner.max(1)).enumerate() {
                    let c = i % o;
                    let inv = 1.0 / (bn.running_var[c] + bn.eps).sqrt();
                    let (g, b, m) = (bn.gamma.value.data()[c], bn.beta.value.data()[c], bn.running_mean[c]);
                    for v in plane {
                        *v = (*v - m) * inv * g + b;
                    }
                }
                if ctx.training() {
                    bn_input = pre;
                }
                y
            }
        };
        if self.attrs.activation == FusedActivation::Relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        if ctx.training() {
            self.saved = Some(ConvSaved {
                x: x.clone(),
                wq: wq.into_data(),
                out_shape: out_shape.clone(),
                conv: conv_out.into_data(),
                sf,
                running_invstd,
                bn: bn_saved,
                bn_input,
                y: if self.attrs.activation == FusedActivation::Relu {
                    y.clone()
                } else {
                    Vec::new()
                },
            });
        }
        Ok(Tensor::new(out_shape, y)?)
    }

    fn backward(&mut self, grad_out: &Tensor) -> Result<Vec<Tensor>> {
        let s = take_saved(&mut self.saved, &self.name)?;
        let o = self.attrs.out_channels;
        let inner = s.out_shape[2] * s.out_shape[3];
        let mut dy = grad_out.data().to_vec();
        if self.attrs.activation == FusedActivation::Relu {
            activation::mask_by_output(&s.y, &mut dy);
        }
        // Through the BatchNorm to the gradient of `pre`.
        let mut dsf = vec![0.0f32; o];
        let dpre = match &mut self.bn {
            None => dy,
            Some(bn) => match &s.bn {
                Some(bs) => {
                    let gamma = bn.gamma.value.data().to_vec();
                    norm::batch_norm_train_backward(
                        bs,
                        &dy,
                        o,
                        inner,
                        &gamma,
                        bn.gamma.grad.data_mut(),
                        bn.beta.grad.data_mut(),
                    )
                }
                None => {
                    let mut dpre = dy.clone();
                    for (i, (g, p)) in dpre
                        .chunks_exact_mut(inner.max(1))
                        .zip(s.bn_input.chunks_exact(inner.max(1)))
                        .enumerate()
                    {
                        let c = i % o;
                        let inv = 1.0 / (bn.running_var[c] + bn.eps).sqrt();
                        let gamma = bn.gamma.value.data()[c];
                        let (mut dgamma, mut dbeta) = (0.0f32, 0.0f32);
                        for (gv, &pv) in g.iter_mut().zip(p) {
                            dgamma += *gv * (pv - bn.running_mean[c]) * inv;
                            dbeta += *gv;
                            *gv *= gamma * inv;
                        }
                        bn.gamma.grad.data_mut()[c] += dgamma;
                        bn.beta.grad.data_mut()[c] += dbeta;
                    }
                    dpre
                }
            },
        };
        // Through `pre = conv / sf + b`.
        let mut dconv = dpre.clone();
        if let Some(b) = &mut self.bias {
            for (i, plane) in dpre.chunks_exact(inner.max(1)).enumerate() {
                b.grad.data_mut()[i % o] += plane.iter().sum::<f32>();
            }
        }
        if self.bn.is_some() {
            for (i, (g, cv)) in dconv
                .chunks_exact_mut(inner.max(1))
                .zip(s.conv.chunks_exact(inner.max(1)))
                .enumerate()
            {
                let c = i % o;
                let mut acc = 0.0f32;
                for (gv, &v) in g.iter_mut().zip(cv) {
                    acc += *gv * v;
                    *gv /= s.sf[c];
                }
                dsf[c] -= acc / (s.sf[c] * s.sf[c]);
            }
        }
        // Through the convolution with the fake-quantized weight.
        let mut dwq = vec![0.0f32; s.wq.len()];
        let mut attrs = self.attrs.clone();
        attrs.bias = false;
        let dx = conv::conv2d_backward(
            &attrs,
            s.x.data(),
            s.x.shape(),
            &s.wq,
            &dconv,
            &s.out_shape,
            &mut dwq,
            None,
            true,
        )
        .expect("dx requested");
        // Through the weight fake quantization and the scaling by sf.
        let dwq = Tensor::new(self.weight.value.shape().to_vec(), dwq)?;
        let dscaled = self.weight_fake_quant.backward(&dwq)?.remove(0);
        let per = self.weight.value.numel() / o;
        let w = self.weight.value.data().to_vec();
        for (i, (gw, &g)) in self.weight.grad.data_mut().iter_mut().zip(dscaled.data()).enumerate() {
            let c = i / per;
            *gw += g * s.sf[c];
            dsf[c] += g * w[i];
        }
        if let Some(bn) = &mut self.bn {
            for (c, d) in dsf.iter().enumerate() {
                bn.gamma.grad.data_mut()[c] += d * s.running_invstd[c];
            }
        }
        Ok(vec![Tensor::new(s.x.shape().to_vec(), dx)?])
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamRef<'_>)) {
        f(self.weight.as_ref("weight"));
        if let Some(b) = &mut self.bias {
            f(b.as_ref("bias"));
        }
        if let Some(bn) = &mut self.bn {
            f(bn.gamma.as_ref("bn.weight"));
            f(bn.beta.as_ref("bn.bias"));
        }
        self.weight_fake_quant.visit_params(&mut |p| {
            let name = format!("weight_fake_quant.{}", p.name);
            f(ParamRef {
                name: &name,
                value: p.value,
                grad: p.grad,
            })
        });
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[derive(Debug, Clone)]
struct LinearSaved {
    x: Tensor,
    wq: Vec<f32>,
    y: Vec<f32>,
}

/// Linear (optionally with ReLU) with a fake-quantized weight.
#[derive(Debug)]
pub struct QatLinear {
    pub name: String,
    pub attrs: LinearAttrs,
    pub weight: Param,
    pub bias: Option<Param>,
    pub weight_fake_quant: FakeQuantize,
    saved: Option<LinearSaved>,
}

impl QatLinear {
    pub fn new(node: &Node, relu: bool, weight_fake_quant: FakeQuantize) -> Result<QatLinear> {
        let Op::Linear(attrs) = &node.op else {
            return Err(GraphError::Unsupported {
                node: node.name.clone(),
                what: format!("{} as a QAT Linear", node.op.display_name()),
            });
        };
        let mut attrs = attrs.clone();
        if relu {
            attrs.activation = FusedActivation::Relu;
        }
        Ok(QatLinear {
            name: node.name.clone(),
            weight: Param::new(node.param("weight")?.clone()),
            bias: if attrs.bias {
                Some(Param::new(node.param("bias")?.clone()))
            } else {
                None
            },
            attrs,
            weight_fake_quant,
            saved: None,
        })
    }

    /// The float Linear node this module becomes.
    pub fn to_float_node(&self) -> Node {
        let mut params = BTreeMap::new();
        params.insert("weight".to_string(), self.weight.value.clone());
        if let Some(b) = &self.bias {
            params.insert("bias".to_string(), b.value.clone());
        }
        Node {
            name: self.name.clone(),
            op: Op::Linear(self.attrs.clone()),
            inputs: Vec::new(),
            params,
            qconfig: None,
        }
    }

    pub fn weight_qparams(&self) -> Result<QParams> {
        self.weight_fake_quant.qparams()
    }
}

impl Layer for QatLinear {
    fn kind_name(&self) -> String {
        if self.attrs.activation == FusedActivation::Relu {
            "QatLinearReLU".into()
        } else {
            "QatLinear".into()
        }
    }

    fn forward(&mut self, inputs: &[&Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let x = inputs[0];
        let wq = self.weight_fake_quant.forward(&[&self.weight.value], ctx)?;
        let mut params = BTreeMap::new();
        params.insert("weight".to_string(), wq.clone());
        if let Some(b) = &self.bias {
            params.insert("bias".to_string(), b.value.clone());
        }
        let y = run_op(&self.name, Op::Linear(self.attrs.clone()), params, x)?;
        if ctx.training() {
            self.saved = Some(LinearSaved {
                x: x.clone(),
                wq: wq.into_data(),
                y: y.data().to_vec(),
            });
        }
        Ok(y)
    }

    fn backward(&mut self, grad_out: &Tensor) -> Result<Vec<Tensor>> {
        let s = take_saved(&mut self.saved, &self.name)?;
        let mut dy = grad_out.data().to_vec();
        if self.attrs.activation == FusedActivation::Relu {
            activation::mask_by_output(&s.y, &mut dy);
        }
        let mut dwq = vec![0.0f32; s.wq.len()];
        let dx = linear::linear_backward(
            s.x.data(),
            &s.wq,
            &dy,
            self.attrs.in_features,
            self.attrs.out_features,
            &mut dwq,
            self.bias.as_mut().map(|b| b.grad.data_mut()),
        );
        let dwq = Tensor::new(self.weight.value.shape().to_vec(), dwq)?;
        let dw = self.weight_fake_quant.backward(&dwq)?.remove(0);
        super::layer::accumulate(&mut self.weight.grad, dw.data());
        Ok(vec![Tensor::new(s.x.shape().to_vec(), dx)?])
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamRef<'_>)) {
        f(self.weight.as_ref("weight"));
        if let Some(b) = &mut self.bias {
            f(b.as_ref("bias"));
        }
        self.weight_fake_quant.visit_params(&mut |p| {
            let name = format!("weight_fake_quant.{}", p.name);
            f(ParamRef {
                name: &name,
                value: p.value,
                grad: p.grad,
            })
        });
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
