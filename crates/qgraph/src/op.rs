//! The op vocabulary of a graph: `Op` (the operation and its attributes), `OpKind` (its name,
//! for matching), the parameters each op owns, and `CustomOp`, the extension point through
//! which later stages replace nodes with quantized implementations.

use std::fmt;
use std::sync::Arc;

use crate::value::{Value, ValueType};
use crate::Result;

/// An activation folded into the op before it (PyTorch's fused modules: `ConvReLU2d`,
/// `LinearReLU`, `BNReLU2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum FusedActivation {
    #[default]
    None,
    Relu,
    /// `min(max(x, 0), 6)`: fused only for static quantization
    /// ([`crate::Graph::fuse_relu6`]), so the output observer sees the clamped range.
    Relu6,
}

impl FusedActivation {
    /// Applies the activation in place.
    pub fn apply(self, y: &mut [f32]) {
        match self {
            FusedActivation::None => {}
            FusedActivation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
            FusedActivation::Relu6 => y.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }
}

/// `torch.nn.Linear`: `y = x W^T + b`, `W` of shape `[out_features, in_features]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearAttrs {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: FusedActivation,
}

/// `torch.nn.Conv2d` (NCHW), weight `[out, in / groups, kh, kw]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2dAttrs {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
    pub activation: FusedActivation,
}

impl Conv2dAttrs {
    /// A square-kernel convolution with stride 1, no padding, dilation 1, one group, bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Conv2dAttrs {
        Conv2dAttrs {
            in_channels,
            out_channels,
            kernel: [kernel; 2],
            stride: [1; 2],
            padding: [0; 2],
            dilation: [1; 2],
            groups: 1,
            bias: true,
            activation: FusedActivation::None,
        }
    }

    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s; 2];
        self
    }

    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p; 2];
        self
    }

    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d; 2];
        self
    }

    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// `torch.nn.ConvTranspose2d` (NCHW), weight `[in, out / groups, kh, kw]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvTranspose2dAttrs {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
    pub activation: FusedActivation,
}

impl ConvTranspose2dAttrs {
    /// A square-kernel transposed convolution with stride 1, no padding, one group, bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> ConvTranspose2dAttrs {
        ConvTranspose2dAttrs {
            in_channels,
            out_channels,
            kernel: [kernel; 2],
            stride: [1; 2],
            padding: [0; 2],
            output_padding: [0; 2],
            dilation: [1; 2],
            groups: 1,
            bias: true,
            activation: FusedActivation::None,
        }
    }

    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s; 2];
        self
    }

    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p; 2];
        self
    }

    pub fn output_padding(mut self, p: usize) -> Self {
        self.output_padding = [p; 2];
        self
    }

    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// `torch.nn.BatchNorm1d` (`spatial_dims` 0 or 1: `[N, C]` or `[N, C, L]`) and `BatchNorm2d`
/// (`[N, C, H, W]`), inference form with running statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNormAttrs {
    pub num_features: usize,
    pub eps: f32,
    /// 1 for BatchNorm1d, 2 for BatchNorm2d.
    pub dims: u8,
    pub activation: FusedActivation,
}

/// `torch.nn.LayerNorm` over the trailing `normalized_shape`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerNormAttrs {
    pub normalized_shape: Vec<usize>,
    pub eps: f32,
    pub affine: bool,
}

/// GELU form (`torch.nn.GELU(approximate=...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GeluApprox {
    /// `0.5 x (1 + erf(x / sqrt 2))`.
    Erf,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    Tanh,
}

/// `torch.nn.MaxPool2d` / `AvgPool2d` window (no ceil mode).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pool2dAttrs {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// AvgPool2d only: count padded zeros in the divisor (PyTorch default true).
    pub count_include_pad: bool,
}

impl Pool2dAttrs {
    /// Square window; stride defaults to the kernel size as in PyTorch.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Pool2dAttrs {
        Pool2dAttrs {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            count_include_pad: true,
        }
    }
}

/// `torch.nn.Upsample` interpolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UpsampleMode {
    Nearest,
    Bilinear { align_corners: bool },
}

/// `torch.nn.LSTM` / `GRU` (unidirectional, zero initial state).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RnnAttrs {
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
}

/// Multi-head scaled dot-product attention over `[B, S, hidden]` query, key and value inputs
/// and a `[B, S]` attention mask (1 = attend, 0 = padding), as HF `BertSelfAttention` after its
/// projections: per head `softmax(q k^T / sqrt(head_dim) + (1 - mask) * f32::MIN) v`, heads
/// concatenated back to `[B, S, hidden]`. The inputs may also be `(qkv, mask)` with query, key
/// and value side by side in one `[B, S, 3 hidden]` tensor (a fused projection's output).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttentionAttrs {
    pub num_heads: usize,
    pub hidden_size: usize,
}

/// A node implementation supplied from outside this crate, e.g. a quantized Linear. It owns
/// whatever it needs (packed weights, qparams) and is shared behind an `Arc`.
pub trait CustomOp: Send + Sync + fmt::Debug {
    /// The name reports show (e.g. `"QuantizedLinear"`).
    fn kind_name(&self) -> &str;
    /// Output shape from input shapes; the message of an error is attached to the node name.
    fn infer_shape(&self, inputs: &[&[usize]]) -> std::result::Result<Vec<usize>, String>;
    /// Runs the op.
    fn forward(&self, inputs: &[&Value]) -> Result<Value>;
    /// The concrete op, so its owner can recover its type (e.g. to save it to a file).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// An operation and its attributes. Parameters (weights) live on the node, by PyTorch name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// A graph input of the given example shape.
    Input {
        shape: Vec<usize>,
        ty: ValueType,
    },
    Linear(LinearAttrs),
    Conv2d(Conv2dAttrs),
    ConvTranspose2d(ConvTranspose2dAttrs),
    BatchNorm(BatchNormAttrs),
    LayerNorm(LayerNormAttrs),
    Embedding {
        num_embeddings: usize,
        embedding_dim: usize,
    },
    Relu,
    Relu6,
    Gelu(GeluApprox),
    Silu,
    Hardswish,
    Sigmoid,
    Tanh,
    /// Softmax along `dim` (negative counts from the end).
    Softmax {
        dim: isize,
    },
    MaxPool2d(Pool2dAttrs),
    AvgPool2d(Pool2dAttrs),
    AdaptiveAvgPool2d {
        output: [usize; 2],
    },
    Upsample {
        scale: [usize; 2],
        mode: UpsampleMode,
    },
    /// Element-wise sum with NumPy broadcasting.
    Add,
    /// Element-wise product with NumPy broadcasting.
    Mul,
    Cat {
        dim: isize,
    },
    Flatten {
        start_dim: isize,
        end_dim: isize,
    },
    /// Reshape; one entry may be -1.
    Reshape {
        shape: Vec<isize>,
    },
    Permute {
        dims: Vec<usize>,
    },
    /// Batched matrix product with broadcast batch dimensions (`torch.matmul` for rank >= 2).
    MatMul,
    /// Identity at inference.
    Dropout {
        p: f32,
    },
    Lstm(RnnAttrs),
    Gru(RnnAttrs),
    Identity,
    /// Inputs `(q, k, v, mask)` or `(qkv, mask)`, see [`AttentionAttrs`].
    Attention(AttentionAttrs),
    /// Position ids `0..S` along the last dimension of its `[.., S]` input, as i64 (the
    /// `position_ids` of a BERT embedding).
    PositionIds,
    /// Saved by its owner (qapi), not by serde.
    #[serde(skip)]
    Custom(Arc<dyn CustomOp>),
}

/// The kind of an op without its attributes, for matching and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum OpKind {
    Input,
    Linear,
    Conv2d,
    ConvTranspose2d,
    BatchNorm1d,
    BatchNorm2d,
    LayerNorm,
    Embedding,
    Relu,
    Relu6,
    Gelu,
    Silu,
    Hardswish,
    Sigmoid,
    Tanh,
    Softmax,
    MaxPool2d,
    AvgPool2d,
    AdaptiveAvgPool2d,
    Upsample,
    Add,
    Mul,
    Cat,
    Flatten,
    Reshape,
    Permute,
    MatMul,
    Dropout,
    Lstm,
    Gru,
    Identity,
    Attention,
    PositionIds,
    Custom,
}

impl OpKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpKind; 34] = [
        OpKind::Input,
        OpKind::Linear,
        OpKind::Conv2d,
        OpKind::ConvTranspose2d,
        OpKind::BatchNorm1d,
        OpKind::BatchNorm2d,
        OpKind::LayerNorm,
        OpKind::Embedding,
        OpKind::Relu,
        OpKind::Relu6,
        OpKind::Gelu,
        OpKind::Silu,
        OpKind::Hardswish,
        OpKind::Sigmoid,
        OpKind::Tanh,
        OpKind::Softmax,
        OpKind::MaxPool2d,
        OpKind::AvgPool2d,
        OpKind::AdaptiveAvgPool2d,
        OpKind::Upsample,
        OpKind::Add,
        OpKind::Mul,
        OpKind::Cat,
        OpKind::Flatten,
        OpKind::Reshape,
        OpKind::Permute,
        OpKind::MatMul,
        OpKind::Dropout,
        OpKind::Lstm,
        OpKind::Gru,
        OpKind::Identity,
        OpKind::Attention,
        OpKind::PositionIds,
        OpKind::Custom,
    ];
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input { .. } => OpKind::Input,
            Op::Linear(_) => OpKind::Linear,
            Op::Conv2d(_) => OpKind::Conv2d,
            Op::ConvTranspose2d(_) => OpKind::ConvTranspose2d,
            Op::BatchNorm(a) if a.dims == 1 => OpKind::BatchNorm1d,
            Op::BatchNorm(_) => OpKind::BatchNorm2d,
            Op::LayerNorm(_) => OpKind::LayerNorm,
            Op::Embedding { .. } => OpKind::Embedding,
            Op::Relu => OpKind::Relu,
            Op::Relu6 => OpKind::Relu6,
            Op::Gelu(_) => OpKind::Gelu,
            Op::Silu => OpKind::Silu,
            Op::Hardswish => OpKind::Hardswish,
            Op::Sigmoid => OpKind::Sigmoid,
            Op::Tanh => OpKind::Tanh,
            Op::Softmax { .. } => OpKind::Softmax,
            Op::MaxPool2d(_) => OpKind::MaxPool2d,
            Op::AvgPool2d(_) => OpKind::AvgPool2d,
            Op::AdaptiveAvgPool2d { .. } => OpKind::AdaptiveAvgPool2d,
            Op::Upsample { .. } => OpKind::Upsample,
            Op::Add => OpKind::Add,
            Op::Mul => OpKind::Mul,
            Op::Cat { .. } => OpKind::Cat,
            Op::Flatten { .. } => OpKind::Flatten,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Permute { .. } => OpKind::Permute,
            Op::MatMul => OpKind::MatMul,
            Op::Dropout { .. } => OpKind::Dropout,
            Op::Lstm(_) => OpKind::Lstm,
            Op::Gru(_) => OpKind::Gru,
            Op::Identity => OpKind::Identity,
            Op::Attention(_) => OpKind::Attention,
            Op::PositionIds => OpKind::PositionIds,
            Op::Custom(_) => OpKind::Custom,
        }
    }

    /// The PyTorch-style module name of the op, fused activations included (`ConvReLU2d`).
    pub fn display_name(&self) -> String {
        let relu = |a: FusedActivation, plain: &str, fused: &str| match a {
            FusedActivation::None => plain.to_string(),
            FusedActivation::Relu => fused.to_string(),
            FusedActivation::Relu6 => format!("{plain}+ReLU6"),
        };
        match self {
            Op::Linear(a) => relu(a.activation, "Linear", "LinearReLU"),
            Op::Conv2d(a) => relu(a.activation, "Conv2d", "ConvReLU2d"),
            Op::ConvTranspose2d(a) => relu(a.activation, "ConvTranspose2d", "ConvTransposeReLU2d"),
            Op::BatchNorm(a) if a.dims == 1 => relu(a.activation, "BatchNorm1d", "BNReLU1d"),
            Op::BatchNorm(a) => relu(a.activation, "BatchNorm2d", "BNReLU2d"),
            Op::Custom(c) => c.kind_name().to_string(),
            other => format!("{:?}", other.kind()),
        }
    }

    /// The parameters the op owns: (PyTorch local name, shape), in state_dict order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let p = |name: &str, shape: Vec<usize>| (name.to_string(), shape);
        match self {
            Op::Linear(a) => {
                let mut v = vec![p("weight", vec![a.out_features, a.in_features])];
                if a.bias {
                    v.push(p("bias", vec![a.out_features]));
                }
                v
            }
            Op::Conv2d(a) => {
                let mut v = vec![p(
                    "weight",
                    vec![
                        a.out_channels,
                        a.in_channels / a.groups.max(1),
                        a.kernel[0],
                        a.kernel[1],
                    ],
                )];
                if a.bias {
                    v.push(p("bias", vec![a.out_channels]));
                }
                v
            }
            Op::ConvTranspose2d(a) => {
                let mut v = vec![p(
                    "weight",
                    vec![
                        a.in_channels,
                        a.out_channels / a.groups.max(1),
                        a.kernel[0],
                        a.kernel[1],
                    ],
                )];
                if a.bias {
                    v.push(p("bias", vec![a.out_channels]));
                }
                v
            }
            Op::BatchNorm(a) => ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .map(|n| p(n, vec![a.num_features]))
                .collect(),
            Op::LayerNorm(a) if a.affine => vec![
                p("weight", a.normalized_shape.clone()),
                p("bias", a.normalized_shape.clone()),
            ],
            Op::Embedding {
                num_embeddings,
                embedding_dim,
            } => vec![p("weight", vec![*num_embeddings, *embedding_dim])],
            Op::Lstm(a) | Op::Gru(a) => {
                let gates = if matches!(self, Op::Lstm(_)) { 4 } else { 3 };
                let h = a.hidden_size;
                let mut v = Vec::new();
                for layer in 0..a.num_layers {
                    let input = if layer == 0 { a.input_size } else { h };
                    v.push(p(&format!("weight_ih_l{layer}"), vec![gates * h, input]));
                    v.push(p(&format!("weight_hh_l{layer}"), vec![gates * h, h]));
                    if a.bias {
                        v.push(p(&format!("bias_ih_l{layer}"), vec![gates * h]));
                        v.push(p(&format!("bias_hh_l{layer}"), vec![gates * h]));
                    }
                }
                v
            }
            _ => Vec::new(),
        }
    }

    /// Parameters PyTorch saves that the op does not need (BatchNorm's `num_batches_tracked`).
    pub fn ignored_params(&self) -> &'static [&'static str] {
        match self {
            Op::BatchNorm(_) => &["num_batches_tracked"],
            _ => &[],
        }
    }

    /// Sets the fused activation of ops that can carry one; false for the others.
    /// The fused activation of ops that carry one.
    pub fn activation(&self) -> Option<FusedActivation> {
        match self {
            Op::Linear(a) => Some(a.activation),
            Op::Conv2d(a) => Some(a.activation),
            Op::ConvTranspose2d(a) => Some(a.activation),
            Op::BatchNorm(a) => Some(a.activation),
            _ => None,
        }
    }

    pub(crate) fn set_activation(&mut self, act: FusedActivation) -> bool {
        match self {
            Op::Linear(a) => a.activation = act,
            Op::Conv2d(a) => a.activation = act,
            Op::ConvTranspose2d(a) => a.activation = act,
            Op::BatchNorm(a) => a.activation = act,
            _ => return false,
        }
        true
    }
}
