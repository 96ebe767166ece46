//! Dynamic quantization of a whole graph, as PyTorch's `quantize_dynamic(model, {nn.Linear,
//! nn.LSTM, nn.GRU})`: every selected Linear, LSTM and GRU node is replaced by an
//! [`Op::Custom`] that holds quantized (or float16) weights and quantizes its activations on
//! every call; everything else stays fp32. The [`QuantReport`] says what happened to each node.
//!
//! Recurrent layers follow PyTorch's dynamic LSTM/GRU: `W_ih` and `W_hh` (with their biases)
//! become dynamic Linears, and the gate math runs in f32 through the same code as qgraph's fp32
//! LSTM/GRU ([`qgraph::ops::recurrent::lstm_with`]).
//!
//! Embedding tables, when selected, become 8-bit rowwise tables
//! ([`crate::dynamic_embedding`], PyTorch's `float_qparams_weight_only_qconfig`), and the
//! Linear projections that feed one attention node as query, key and value are fused into a
//! single Linear ([`crate::dynamic_fuse`]) so their shared input is quantized once.
use std::any::Any;
use std::sync::Arc;

use qgraph::ops::recurrent::{gru_with, lstm_with, RnnWeight};
use qgraph::{CustomOp, FusedActivation, Graph, GraphError, LinearAttrs, Node, Op, OpKind, RnnAttrs, Value};
use qtensor::Tensor;

use crate::dynamic::{ActivationGranularity, DynamicConfig, DynamicDType, DynamicLinear, WeightGranularity};
use crate::dynamic_embedding::DynamicEmbeddingOp;
use crate::report::{FloatReason, NodeReport, NodeStatus, QuantReport};
use crate::{ApiError, Result};

/// The op kinds qforge can quantize dynamically.
pub const DYNAMIC_KINDS: &[OpKind] = &[OpKind::Linear, OpKind::Lstm, OpKind::Gru, OpKind::Embedding];

/// Clones `graph` and replaces every node of the `kinds` asked for (a subset of
/// [`DYNAMIC_KINDS`]) by its dynamically quantized version under `config`.
///
/// Errors when `kinds` is empty or names a kind without a dynamic kernel, or when a selected
/// node's weights cannot be quantized (non-finite values, missing parameters).
/// Query/key/value projections that feed one attention node are then fused into one Linear
/// ([`crate::dynamic_fuse`]; the outputs are unchanged).
pub fn quantize_dynamic(graph: &Graph, kinds: &[OpKind], config: DynamicConfig) -> Result<(Graph, QuantReport)> {
    let (out, mut report) = quantize_dynamic_unfused(graph, kinds, config)?;
    let out = crate::dynamic_fuse::fuse_qkv(out, &mut report)?;
    Ok((out, report))
}

/// [`quantize_dynamic`] without the query/key/value fusion: one quantized node per original
/// node (same outputs, one activation quantization per projection).
pub fn quantize_dynamic_unfused(
    graph: &Graph,
    kinds: &[OpKind],
    config: DynamicConfig,
) -> Result<(Graph, QuantReport)> {
    let _span = tracing::info_span!("quantize_dynamic", ?kinds, ?config).entered();
    if kinds.is_empty() {
        return Err(ApiError::Config {
            detail: "no op kinds selected; pass e.g. [OpKind::Linear] (dynamic quantization covers Linear, LSTM, GRU, Embedding)"
                .into(),
        });
    }
    if let Some(bad) = kinds.iter().find(|k| !DYNAMIC_KINDS.contains(k)) {
        return Err(ApiError::Config {
            detail: format!(
                "{bad:?} has no dynamic int8 kernel; dynamic quantization covers {DYNAMIC_KINDS:?} (use static quantization for the others)"
            ),
        });
    }
    let mut out = graph.clone();
    let mut report = QuantReport::default();
    for (i, node) in graph.nodes().iter().enumerate() {
        let selected = kinds.contains(&node.op.kind());
        let replacement: Option<Arc<dyn CustomOp>> = match &node.op {
            Op::Linear(a) if selected => Some(Arc::new(DynamicLinearOp::from_node(node, a, config)?)),
            Op::Lstm(a) | Op::Gru(a) if selected => Some(Arc::new(DynamicRnnOp::from_node(node, a, config)?)),
            Op::Embedding { .. } if selected && config.dtype == DynamicDType::QInt8 => {
                Some(Arc::new(DynamicEmbeddingOp::from_node(node)?))
            }
            _ => None,
        };
        let status = match &replacement {
            Some(_) if node.op.kind() == OpKind::Embedding => NodeStatus::Quantized {
                detail: "quint8 rowwise weight-only table, float qparams (dynamic)".into(),
            },
            Some(_) => NodeStatus::Quantized {
                detail: describe(config),
            },
            None => match node.op.kind() {
                OpKind::Embedding if selected => NodeStatus::Float {
                    reason: FloatReason::Other("embedding tables are quantized with int8 configurations only".into()),
                },
                OpKind::Linear | OpKind::Lstm | OpKind::Gru | OpKind::Embedding => NodeStatus::Float {
                    reason: FloatReason::NotSelected,
                },
                OpKind::Input
                | OpKind::Flatten
                | OpKind::Reshape
                | OpKind::Permute
                | OpKind::Identity
                | OpKind::Dropout
                | OpKind::PositionIds => NodeStatus::NotApplicable,
                OpKind::Custom => NodeStatus::Float {
                    reason: FloatReason::Other("already a custom implementation; left as is".into()),
                },
                _ => NodeStatus::Float {
                    reason: FloatReason::NoKernel,
                },
            },
        };
        let op_name = match &replacement {
            Some(c) => c.kind_name().to_string(),
            None => node.op.display_name(),
        };
        if let Some(custom) = replacement {
            let id = qgraph::NodeId(i);
            out.replace_op(id, Op::Custom(custom))?;
            out.node_mut(id).params.clear();
        }
        report.nodes.push(NodeReport {
            name: node.name.clone(),
            op: op_name,
            status,
        });
    }
    Ok((out, report))
}

/// The report detail of a quantized node under `config`.
pub fn describe(config: DynamicConfig) -> String {
    match config.dtype {
        DynamicDType::Float16 => "float16 weights, f32 compute (dynamic)".into(),
        DynamicDType::QInt8 => {
            let w = match config.weights {
                WeightGranularity::PerChannel => "per-channel",
                WeightGranularity::PerTensor => "per-tensor",
            };
            let a = match config.activations {
                ActivationGranularity::PerRow => "per-row",
                ActivationGranularity::PerTensor => "per-tensor",
            };
            let range = if config.reduce_range { " (7-bit)" } else { "" };
            format!("qint8 {w} weights, quint8 {a} activations{range} (dynamic)")
        }
    }
}

fn f32_input<'a>(kind: &str, inputs: &[&'a Value]) -> qgraph::Result<&'a Tensor> {
    match inputs {
        [Value::F32(t)] => Ok(t),
        _ => Err(GraphError::Unsupported {
            node: kind.to_string(),
            what: format!(
                "inputs {:?} (expects one f32 tensor)",
                inputs.iter().map(|v| v.kind()).collect::<Vec<_>>()
            ),
        }),
    }
}

/// A qapi error surfacing inside graph execution, with the op named.
fn graph_error(op: &str, e: ApiError) -> GraphError {
    match e {
        ApiError::Graph(g) => g,
        ApiError::Quant(q) => GraphError::Quant(q),
        other => GraphError::Unsupported {
            node: op.to_string(),
            what: other.to_string(),
        },
    }
}

/// A dynamically quantized `Linear` node (PyTorch `nn.quantized.dynamic.Linear`, or
/// `LinearReLU` when the node carries a fused ReLU).
#[derive(Debug, Clone)]
pub struct DynamicLinearOp {
    attrs: LinearAttrs,
    linear: DynamicLinear,
}

impl DynamicLinearOp {
    /// Quantizes the `weight` / `bias` of a Linear node.
    pub fn from_node(node: &Node, attrs: &LinearAttrs, config: DynamicConfig) -> Result<DynamicLinearOp> {
        let bias = if attrs.bias { Some(node.param("bias")?) } else { None };
        let linear = DynamicLinear::new(node.param("weight")?, bias, config)?;
        DynamicLinearOp::new(attrs.clone(), linear)
    }

    /// Rebuilds the op from its parts (e.g. read back from a file); checks that they agree.
    pub fn new(attrs: LinearAttrs, linear: DynamicLinear) -> Result<DynamicLinearOp> {
        if linear.in_features() != attrs.in_features
            || linear.out_features() != attrs.out_features
            || linear.bias().is_some() != attrs.bias
        {
            return Err(ApiError::Config {
                detail: format!(
                    "Linear attributes {attrs:?} disagree with the quantized layer ({} -> {}, bias {})",
                    linear.in_features(),
                    linear.out_features(),
                    linear.bias().is_some()
                ),
            });
        }
        Ok(DynamicLinearOp { attrs, linear })
    }

    pub fn attrs(&self) -> &LinearAttrs {
        &self.attrs
    }

    /// The quantized layer: weights ([`DynamicLinear::quantized_weight`] or
    /// [`DynamicLinear::f16_weight`]), bias and config.
    pub fn linear(&self) -> &DynamicLinear {
        &self.linear
    }
}

impl CustomOp for DynamicLinearOp {
    fn kind_name(&self) -> &str {
        if self.attrs.activation == FusedActivation::Relu {
            "DynamicQuantizedLinearReLU"
        } else {
            "DynamicQuantizedLinear"
        }
    }

    fn infer_shape(&self, inputs: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        match inputs {
            [x] if x.last() == Some(&self.attrs.in_features) => {
                let mut s = x.to_vec();
                *s.last_mut().expect("non-empty") = self.attrs.out_features;
                Ok(s)
            }
            _ => Err(format!(
                "dynamic Linear expects one input [..., {}], got {inputs:?}",
                self.attrs.in_features
            )),
        }
    }

    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let x = f32_input(self.kind_name(), inputs)?;
        let relu = self.attrs.activation == FusedActivation::Relu;
        self.linear
            .forward_with(x, relu)
            .map(Value::F32)
            .map_err(|e| graph_error(self.kind_name(), e))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Which recurrent cell a [`DynamicRnnOp`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RnnCell {
    Lstm,
    Gru,
}

/// The two projections of one recurrent layer: `W_ih x + b_ih` and `W_hh h + b_hh`.
#[derive(Debug, Clone)]
pub struct RnnLayerWeights {
    pub input_hidden: DynamicLinear,
    pub hidden_hidden: DynamicLinear,
}

/// A dynamically quantized LSTM or GRU node (PyTorch `nn.quantized.dynamic.LSTM` / `GRU`).
#[derive(Debug, Clone)]
pub struct DynamicRnnOp {
    cell: RnnCell,
    attrs: RnnAttrs,
    layers: Vec<RnnLayerWeights>,
}

impl DynamicRnnOp {
    /// Quantizes `weight_ih_l{k}` / `weight_hh_l{k}` (biases kept in f32) of every layer.
    pub fn from_node(node: &Node, attrs: &RnnAttrs, config: DynamicConfig) -> Result<DynamicRnnOp> {
        let cell = if matches!(node.op, Op::Lstm(_)) {
            RnnCell::Lstm
        } else {
            RnnCell::Gru
        };
        let bias =
            |name: String| -> Result<Option<&Tensor>> { Ok(if attrs.bias { Some(node.param(&name)?) } else { None }) };
        let layers = (0..attrs.num_layers)
            .map(|l| {
                Ok(RnnLayerWeights {
                    input_hidden: DynamicLinear::new(
                        node.param(&format!("weight_ih_l{l}"))?,
                        bias(format!("bias_ih_l{l}"))?,
                        config,
                    )?,
                    hidden_hidden: DynamicLinear::new(
                        node.param(&format!("weight_hh_l{l}"))?,
                        bias(format!("bias_hh_l{l}"))?,
                        config,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        DynamicRnnOp::new(cell, attrs.clone(), layers)
    }

    /// Rebuilds the op from its parts; checks the layer count and every projection's shape.
    pub fn new(cell: RnnCell, attrs: RnnAttrs, layers: Vec<RnnLayerWeights>) -> Result<DynamicRnnOp> {
        let gates = match cell {
            RnnCell::Lstm => 4,
            RnnCell::Gru => 3,
        };
        let h = attrs.hidden_size;
        let ok = layers.len() == attrs.num_layers
            && layers.iter().enumerate().all(|(l, w)| {
                let input = if l == 0 { attrs.input_size } else { h };
                (w.input_hidden.in_features(), w.input_hidden.out_features()) == (input, gates * h)
                    && (w.hidden_hidden.in_features(), w.hidden_hidden.out_features()) == (h, gates * h)
                    && w.input_hidden.bias().is_some() == attrs.bias
                    && w.hidden_hidden.bias().is_some() == attrs.bias
            });
        if !ok {
            return Err(ApiError::Config {
                detail: format!(
                    "{cell:?} attributes {attrs:?} disagree with the {} quantized layers",
                    layers.len()
                ),
            });
        }
        Ok(DynamicRnnOp { cell, attrs, layers })
    }

    pub fn cell(&self) -> RnnCell {
        self.cell
    }

    pub fn attrs(&self) -> &RnnAttrs {
        &self.attrs
    }

    pub fn layers(&self) -> &[RnnLayerWeights] {
        &self.layers
    }

    fn project(&self, layer: usize, which: RnnWeight, x: &[f32], rows: usize) -> qgraph::Result<Vec<f32>> {
        let w = &self.layers[layer];
        let linear = match which {
            RnnWeight::InputHidden => &w.input_hidden,
            RnnWeight::HiddenHidden => &w.hidden_hidden,
        };
        let t = Tensor::new([rows, linear.in_features()], x.to_vec())?;
        let y = linear.forward(&t).map_err(|e| graph_error(self.kind_name(), e))?;
        Ok(y.into_data())
    }
}

impl CustomOp for DynamicRnnOp {
    fn kind_name(&self) -> &str {
        match self.cell {
            RnnCell::Lstm => "DynamicQuantizedLSTM",
            RnnCell::Gru => "DynamicQuantizedGRU",
        }
    }

    fn infer_shape(&self, inputs: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        match inputs {
            [x] => qgraph::ops::recurrent::rnn_shape(self.kind_name(), &self.attrs, x).map_err(|e| e.to_string()),
            _ => Err(format!("recurrent layer expects one input, got {}", inputs.len())),
        }
    }

    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let x = f32_input(self.kind_name(), inputs)?;
        let project = |l, w, data: &[f32], rows| self.project(l, w, data, rows);
        let y = match self.cell {
            RnnCell::Lstm => lstm_with(&self.attrs, x, project)?,
            RnnCell::Gru => gru_with(&self.attrs, x, project)?,
        };
        Ok(Value::F32(y))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Bytes of a graph's parameters as stored: f32 parameters at 4 bytes, dynamic custom ops at
/// their [`DynamicLinear::size_bytes`] (int8 weights + scales and zero points + f32 bias, or
/// float16 weights), rowwise embedding tables at one byte per value plus 8 per row. Other custom ops count 0 here.
pub fn stored_size_bytes(graph: &Graph) -> usize {
    graph
        .nodes()
        .iter()
        .map(|node| {
            let own: usize = node.params.values().map(|t| 4 * t.numel()).sum();
            let custom = match &node.op {
                Op::Custom(c) => {
                    if let Some(l) = c.as_any().downcast_ref::<DynamicLinearOp>() {
                        l.linear().size_bytes()
                    } else if let Some(r) = c.as_any().downcast_ref::<DynamicRnnOp>() {
                        r.layers()
                            .iter()
                            .map(|w| w.input_hidden.size_bytes() + w.hidden_hidden.size_bytes())
                            .sum()
                    } else if let Some(e) = c.as_any().downcast_ref::<DynamicEmbeddingOp>() {
                        e.table().size_bytes()
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            own + custom
        })
        .sum()
}
