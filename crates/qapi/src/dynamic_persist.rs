//! Saving and loading the dynamically quantized graph ops ([`DynamicLinearOp`],
//! [`DynamicRnnOp`], [`DynamicEmbeddingOp`]) for [`crate::serialize`]: int8 weights as quantized
//! tensors (float16 ones as F16), biases as F32, attributes and configuration as JSON.
//! A rowwise embedding table stores its u8 codes as a quint8 tensor with unit scale and zero
//! point 0 (the codes themselves), and its float per-row scales and zero points as F32 tensors.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use qgraph::{CustomOp, LinearAttrs, Node, RnnAttrs};
use qtensor::{DType, QData, QParams, QTensor};
use serde_json::{json, Value as Json};

use crate::dynamic::{DynamicConfig, DynamicLinear};
use crate::dynamic_embedding::{DynamicEmbeddingOp, RowwiseQuantizedTable};
use crate::dynamic_graph::{DynamicLinearOp, DynamicRnnOp, RnnCell, RnnLayerWeights};
use crate::serialize::LoadContext;
use crate::{ApiError, Result, StoredTensor};

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::Corrupt { detail: detail.into() }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Json> {
    serde_json::to_value(v).map_err(|e| bad(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(v: &Json, what: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| bad(format!("{what}: {e}")))
}

fn put_linear(tensors: &mut BTreeMap<String, StoredTensor>, node: &Node, weight: &str, bias: &str, l: &DynamicLinear) {
    let stored = match (l.quantized_weight(), l.f16_weight()) {
        (Some(q), _) => StoredTensor::Quantized(q.clone()),
        (None, Some(w)) => StoredTensor::F16 {
            shape: vec![l.out_features(), l.in_features()],
            data: w.to_vec(),
        },
        (None, None) => unreachable!("a dynamic Linear stores int8 or float16 weights"),
    };
    tensors.insert(node.param_name(weight), stored);
    if let Some(b) = l.bias() {
        tensors.insert(
            node.param_name(bias),
            StoredTensor::F32 {
                shape: vec![b.len()],
                data: b.to_vec(),
            },
        );
    }
}

fn load_linear(ctx: &LoadContext<'_>, weight: &str, bias: &str, config: DynamicConfig) -> Result<DynamicLinear> {
    let name = format!("{}.{weight}", ctx.name);
    let bias = ctx.f32_opt(bias)?;
    match ctx.file.tensor(&name)? {
        StoredTensor::Quantized(q) => DynamicLinear::from_quantized(q.clone(), bias, config),
        StoredTensor::F16 { shape, data } if shape.len() == 2 => {
            DynamicLinear::from_f16(data.clone(), shape[0], shape[1], bias, config)
        }
        _ => Err(ApiError::BadTensor {
            name,
            detail: "expected a quantized or float16 [out, in] weight".into(),
        }),
    }
}

/// Saves a dynamic op if `op` is one: `(kind, attrs)`, its tensors added to `tensors`.
pub(crate) fn save(
    node: &Node,
    op: &dyn Any,
    tensors: &mut BTreeMap<String, StoredTensor>,
) -> Result<Option<(&'static str, Json)>> {
    if let Some(l) = op.downcast_ref::<DynamicLinearOp>() {
        put_linear(tensors, node, "weight", "bias", l.linear());
        let attrs = json!({"linear": to_json(l.attrs())?, "config": to_json(l.linear().config())?});
        return Ok(Some(("DynamicLinear", attrs)));
    }
    if let Some(r) = op.downcast_ref::<DynamicRnnOp>() {
        for (k, layer) in r.layers().iter().enumerate() {
            put_linear(
                tensors,
                node,
                &format!("weight_ih_l{k}"),
                &format!("bias_ih_l{k}"),
                &layer.input_hidden,
            );
            put_linear(
                tensors,
                node,
                &format!("weight_hh_l{k}"),
                &format!("bias_hh_l{k}"),
                &layer.hidden_hidden,
            );
        }
        let config = r.layers().first().map(|l| *l.input_hidden.config()).unwrap_or_default();
        let cell = match r.cell() {
            RnnCell::Lstm => "lstm",
            RnnCell::Gru => "gru",
        };
        let attrs = json!({"cell": cell, "rnn": to_json(r.attrs())?, "config": to_json(&config)?});
        return Ok(Some(("DynamicRnn", attrs)));
    }
    if let Some(e) = op.downcast_ref::<DynamicEmbeddingOp>() {
        let t = e.table();
        let codes = QTensor::from_data(
            [t.rows(), t.dim()],
            DType::QUInt8,
            QParams::per_tensor(1.0, 0, DType::QUInt8)?,
            QData::U8(t.codes().to_vec()),
        )?;
        tensors.insert(node.param_name("weight"), StoredTensor::Quantized(codes));
        for (local, values) in [("weight_scales", t.scales()), ("weight_zero_points", t.zero_points())] {
            tensors.insert(
                node.param_name(local),
                StoredTensor::F32 {
                    shape: vec![values.len()],
                    data: values.to_vec(),
                },
            );
        }
        return Ok(Some((
            "QuantizedEmbedding",
            json!({"format": "quint8_rowwise_float_qparams"}),
        )));
    }
    Ok(None)
}

/// Rebuilds a dynamic op of `kind`, or `None` if the kind is not a dynamic op.
pub(crate) fn load(kind: &str, attrs: &Json, ctx: &LoadContext<'_>) -> Result<Option<Arc<dyn CustomOp>>> {
    Ok(match kind {
        "DynamicLinear" => {
            let linear_attrs: LinearAttrs = from_json(&attrs["linear"], "dynamic Linear attributes")?;
            let config: DynamicConfig = from_json(&attrs["config"], "dynamic configuration")?;
            let linear = load_linear(ctx, "weight", "bias", config)?;
            Some(Arc::new(DynamicLinearOp::new(linear_attrs, linear)?))
        }
        "DynamicRnn" => {
            let rnn: RnnAttrs = from_json(&attrs["rnn"], "dynamic RNN attributes")?;
            let config: DynamicConfig = from_json(&attrs["config"], "dynamic configuration")?;
            let cell = match attrs["cell"].as_str() {
                Some("lstm") => RnnCell::Lstm,
                Some("gru") => RnnCell::Gru,
                other => return Err(bad(format!("unknown recurrent cell {other:?}"))),
            };
            let layers = (0..rnn.num_layers)
                .map(|k| {
                    Ok(RnnLayerWeights {
                        input_hidden: load_linear(ctx, &format!("weight_ih_l{k}"), &format!("bias_ih_l{k}"), config)?,
                        hidden_hidden: load_linear(ctx, &format!("weight_hh_l{k}"), &format!("bias_hh_l{k}"), config)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Arc::new(DynamicRnnOp::new(cell, rnn, layers)?))
        }
        "QuantizedEmbedding" => {
            if attrs["format"].as_str() != Some("quint8_rowwise_float_qparams") {
                return Err(bad(format!("unknown embedding table format {}", attrs["format"])));
            }
            let codes = ctx.quantized("weight")?;
            let (QData::U8(data), [rows, dim]) = (codes.data(), codes.shape()) else {
                return Err(bad(format!("{}: embedding codes must be quint8 [rows, dim]", ctx.name)));
            };
            let missing = |what: &str| bad(format!("{}: embedding table has no {what}", ctx.name));
            let scales = ctx.f32_opt("weight_scales")?.ok_or_else(|| missing("weight_scales"))?;
            let zero_points = ctx
                .f32_opt("weight_zero_points")?
                .ok_or_else(|| missing("weight_zero_points"))?;
            let table = RowwiseQuantizedTable::from_parts(*rows, *dim, data.clone(), scales, zero_points)?;
            Some(Arc::new(DynamicEmbeddingOp::new(table)))
        }
        _ => None,
    })
}
