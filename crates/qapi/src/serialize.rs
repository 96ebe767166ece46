//! Whole graphs as qforge model files: float, dynamically and statically quantized alike.
//!
//! The graph's structure goes into the file's `graph` metadata entry as JSON: for each node its
//! name, input names and op. Standard ops are written with their attributes; quantized ops
//! (custom ops) by kind with their own attributes, their weights stored as int8 tensors with
//! scales and zero points. Float parameters are stored as F32 tensors under their PyTorch
//! `state_dict` names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use qgraph::{CustomOp, Graph, Node, NodeId, Op};
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvArithmetic, ConvTranspose2dGeometry, ConvWeightQuant, FusedActivation, PackedConv2d,
    PackedConvTranspose2d,
};
use qkernels::eltwise::{ActivationLut, Pool2d};
use qkernels::gemm::PackedWeights;
use qtensor::{QTensor, Tensor};
use serde_json::{json, Value as Json};

use crate::report::NodeStatus;
use crate::static_ptq::{
    Dequantize, FusedAdd, Passthrough, QBinary, QCat, QConv2d, QConvTranspose2d, QLinear, QLut, QPassthrough, Quantize,
};
use crate::{ApiError, ModelFile, QuantReport, Result, StoredTensor};

/// Writes `graph` (with its parameters and quantized weights) to `path`.
pub fn save_graph(graph: &Graph, path: impl AsRef<Path>) -> Result<()> {
    to_model_file(graph)?.save(path)
}

/// [`save_graph`], also keeping the quantization report in the file (read by [`inspect`]).
pub fn save_graph_with_report(graph: &Graph, report: &QuantReport, path: impl AsRef<Path>) -> Result<()> {
    let mut file = to_model_file(graph)?;
    let text = serde_json::to_string(report).map_err(|e| corrupt(e.to_string()))?;
    file.metadata.insert("report".into(), text);
    file.save(path)
}

/// One node of a saved model, as `qforge inspect` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedNode {
    pub name: String,
    /// Op name (`QuantizedConv2d`, `Linear`, ...).
    pub op: String,
    /// Stored parameters: (name, dtype and quantization summary, bytes).
    pub params: Vec<(String, String, usize)>,
    /// Output quantization of int8 ops, e.g. `quint8 scale 0.0236 zp 0`.
    pub output: Option<String>,
    /// Why the node stayed f32, when the file carries a report.
    pub status: Option<NodeStatus>,
}

/// Reads a model file and describes every node: stored dtypes, quantization parameters,
/// sizes, and (when saved with a report) why a node stayed f32.
pub fn inspect(path: impl AsRef<Path>) -> Result<Vec<InspectedNode>> {
    let file = ModelFile::load(path)?;
    let graph = from_model_file(&file)?;
    let report: Option<QuantReport> = file
        .metadata
        .get("report")
        .map(|t| serde_json::from_str(t))
        .transpose()
        .map_err(|e| corrupt(format!("report metadata: {e}")))?;
    let mut out = Vec::new();
    for node in graph.nodes() {
        let prefix = format!("{}.", node.name);
        let params = file
            .tensors
            .iter()
            .filter(|(k, _)| k.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('.')))
            .map(|(k, t)| {
                let (desc, bytes) = describe_tensor(t);
                (k.clone(), desc, bytes)
            })
            .collect();
        let output = match &node.op {
            Op::Custom(c) => {
                output_quant(c.as_ref()).map(|q| format!("quint8 scale {:.6e} zero point {}", q.scale, q.zero_point))
            }
            _ => None,
        };
        out.push(InspectedNode {
            name: node.name.clone(),
            op: node.op.display_name(),
            params,
            output,
            status: report
                .as_ref()
                .and_then(|r| r.node(&node.name))
                .map(|n| n.status.clone()),
        });
    }
    Ok(out)
}

fn describe_tensor(t: &StoredTensor) -> (String, usize) {
    match t {
        StoredTensor::F32 { shape, data } => (format!("f32 {shape:?}"), 4 * data.len()),
        StoredTensor::F16 { shape, data } => (format!("f16 {shape:?}"), 2 * data.len()),
        StoredTensor::I32 { shape, data } => (format!("i32 {shape:?}"), 4 * data.len()),
        StoredTensor::Quantized(q) => {
            let params = match q.qparams() {
                qtensor::QParams::PerTensor { scale, zero_point } => {
                    format!("per-tensor scale {scale:.6e} zero point {zero_point}")
                }
                qtensor::QParams::PerChannel { axis, scales, .. } => {
                    let (lo, hi) = qtensor::min_max(scales);
                    format!(
                        "per-channel axis {axis}, {} scales in [{lo:.3e}, {hi:.3e}]",
                        scales.len()
                    )
                }
            };
            (
                format!("{} {:?}, {params}", q.dtype(), q.shape()),
                q.storage_bytes() + 8 * q.qparams().channels(),
            )
        }
    }
}

/// The output parameters of a quantized custom op, when it has its own.
fn output_quant(op: &dyn CustomOp) -> Option<ActQuant> {
    let any = op.as_any();
    any.downcast_ref::<Quantize>()
        .map(|o| o.q)
        .or_else(|| {
            any.downcast_ref::<QConv2d>()
                .filter(|o| !o.dequantize)
                .map(|o| o.residual.map_or(o.output, |add| add.output))
        })
        .or_else(|| any.downcast_ref::<QConvTranspose2d>().map(|o| o.output))
        .or_else(|| any.downcast_ref::<QLinear>().map(|o| o.output))
        .or_else(|| any.downcast_ref::<QBinary>().map(|o| o.output))
        .or_else(|| any.downcast_ref::<QCat>().map(|o| o.output))
        .or_else(|| any.downcast_ref::<QLut>().map(|o| o.output))
}

/// Reads a graph written by [`save_graph`]; every error names what is wrong.
pub fn load_graph(path: impl AsRef<Path>) -> Result<Graph> {
    from_model_file(&ModelFile::load(path)?)
}

/// Bytes of the model file `graph` would be saved as.
pub fn file_size(graph: &Graph) -> Result<usize> {
    Ok(to_model_file(graph)?.to_bytes()?.len())
}

fn corrupt(detail: impl Into<String>) -> ApiError {
    ApiError::Corrupt { detail: detail.into() }
}

fn act_json(q: ActQuant) -> Json {
    json!({"scale": q.scale, "zero_point": q.zero_point})
}

fn act_from(v: &Json) -> Result<ActQuant> {
    let scale = v["scale"].as_f64().ok_or_else(|| corrupt("activation scale missing"))? as f32;
    let zero_point = v["zero_point"]
        .as_i64()
        .ok_or_else(|| corrupt("activation zero point missing"))? as i32;
    Ok(ActQuant::new(scale, zero_point)?)
}

fn fused_name(a: FusedActivation) -> &'static str {
    match a {
        FusedActivation::None => "none",
        FusedActivation::Relu => "relu",
        FusedActivation::Relu6 => "relu6",
    }
}

fn fused_from(v: &Json) -> Result<FusedActivation> {
    match v.as_str() {
        Some("none") => Ok(FusedActivation::None),
        Some("relu") => Ok(FusedActivation::Relu),
        Some("relu6") => Ok(FusedActivation::Relu6),
        other => Err(corrupt(format!("unknown fused activation {other:?}"))),
    }
}

fn pair(p: (usize, usize)) -> Json {
    json!([p.0, p.1])
}

fn pair_from(v: &Json, what: &str) -> Result<(usize, usize)> {
    match v.as_array().map(|a| a.iter().map(|x| x.as_u64()).collect::<Vec<_>>()) {
        Some(a) if a.len() == 2 && a.iter().all(Option::is_some) => {
            Ok((a[0].unwrap() as usize, a[1].unwrap() as usize))
        }
        _ => Err(corrupt(format!("`{what}` must be a pair of integers"))),
    }
}

fn usize_from(v: &Json, what: &str) -> Result<usize> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| corrupt(format!("`{what}` must be an integer")))
}

/// Serializes a graph into named tensors plus the `graph` metadata entry.
pub fn to_model_file(graph: &Graph) -> Result<ModelFile> {
    let mut file = ModelFile::default();
    let nodes = graph.nodes();
    let mut entries = Vec::with_capacity(nodes.len());
    for node in nodes {
        for (local, t) in &node.params {
            file.tensors.insert(node.param_name(local), f32_tensor(t));
        }
        let op = match &node.op {
            Op::Custom(c) => save_custom(node, c.as_ref(), &mut file.tensors)?,
            op => json!({"std": serde_json::to_value(op).map_err(|e| corrupt(e.to_string()))?}),
        };
        let inputs: Vec<&str> = node.inputs.iter().map(|i| nodes[i.0].name.as_str()).collect();
        entries.push(json!({"name": node.name, "inputs": inputs, "op": op}));
    }
    let outputs: Vec<&str> = graph.outputs().iter().map(|o| nodes[o.0].name.as_str()).collect();
    file.metadata.insert(
        "graph".into(),
        json!({"nodes": entries, "outputs": outputs}).to_string(),
    );
    Ok(file)
}

fn f32_tensor(t: &Tensor) -> StoredTensor {
    StoredTensor::F32 {
        shape: t.shape().to_vec(),
        data: t.data().to_vec(),
    }
}

fn put_weight(tensors: &mut BTreeMap<String, StoredTensor>, node: &Node, w: &QTensor, bias: &Option<Vec<f32>>) {
    tensors.insert(node.param_name("weight"), StoredTensor::Quantized(w.clone()));
    if let Some(b) = bias {
        tensors.insert(
            node.param_name("bias"),
            StoredTensor::F32 {
                shape: vec![b.len()],
                data: b.clone(),
            },
        );
    }
}

fn save_custom(node: &Node, op: &dyn CustomOp, tensors: &mut BTreeMap<String, StoredTensor>) -> Result<Json> {
    let any = op.as_any();
    let (kind, attrs) = if let Some(q) = any.downcast_ref::<Quantize>() {
        ("Quantize", json!({"q": act_json(q.q)}))
    } else if any.downcast_ref::<Dequantize>().is_some() {
        ("Dequantize", json!({}))
    } else if let Some(c) = any.downcast_ref::<QConv2d>() {
        let g = c.conv.geometry();
        put_weight(tensors, node, &c.weight, &c.bias);
        let geometry = json!({"c_in": g.c_in, "c_out": g.c_out, "kernel": pair(g.kernel), "stride": pair(g.stride),
            "padding": pair(g.padding), "dilation": pair(g.dilation), "groups": g.groups});
        (
            "QuantizedConv2d",
            json!({"geometry": geometry, "output": act_json(c.output), "activation": fused_name(c.activation),
                "exact": c.conv.arithmetic() == ConvArithmetic::Exact, "concat": c.concat.map(act_json),
                "dequantize": c.dequantize, "residual": c.residual.map(|add| json!({"output": act_json(add.output),
                    "relu": add.relu, "conv_first": add.conv_first})), "pool": c.pool.as_ref().map(pool_json)}),
        )
    } else if let Some(c) = any.downcast_ref::<QConvTranspose2d>() {
        let g = c.conv.geometry();
        put_weight(tensors, node, &c.weight, &c.bias);
        let geometry = json!({"c_in": g.c_in, "c_out": g.c_out, "kernel": pair(g.kernel), "stride": pair(g.stride),
            "padding": pair(g.padding), "output_padding": pair(g.output_padding), "dilation": pair(g.dilation), "groups": g.groups});
        (
            "QuantizedConvTranspose2d",
            json!({"geometry": geometry, "output": act_json(c.output), "activation": fused_name(c.activation)}),
        )
    } else if let Some(l) = any.downcast_ref::<QLinear>() {
        put_weight(tensors, node, &l.weight, &l.bias);
        ("QuantizedLinear", json!({"output": act_json(l.output), "relu": l.relu}))
    } else if let Some(b) = any.downcast_ref::<QBinary>() {
        (
            "QuantizedBinary",
            json!({"mul": b.mul, "relu": b.relu, "output": act_json(b.output)}),
        )
    } else if let Some(c) = any.downcast_ref::<QCat>() {
        ("QuantizedCat", json!({"output": act_json(c.output)}))
    } else if let Some(p) = any.downcast_ref::<QPassthrough>() {
        ("QuantizedPassthrough", passthrough_json(&p.op))
    } else if let Some(l) = any.downcast_ref::<QLut>() {
        tensors.insert(
            node.param_name("table"),
            StoredTensor::I32 {
                shape: vec![256],
                data: l.lut.table().iter().map(|&v| v as i32).collect(),
            },
        );
        ("QuantizedLut", json!({"name": l.name, "output": act_json(l.output)}))
    } else if let Some(saved) = crate::dynamic_persist::save(node, any, tensors)? {
        saved
    } else {
        return Err(ApiError::Config {
            detail: format!("node `{}`: custom op `{}` cannot be saved", node.name, op.kind_name()),
        });
    };
    Ok(json!({"custom": kind, "attrs": attrs}))
}

fn pool_json(p: &Pool2d) -> Json {
    json!({"kernel": pair(p.kernel), "stride": pair(p.stride), "padding": pair(p.padding),
        "dilation": pair(p.dilation), "ceil_mode": p.ceil_mode})
}

fn pool_from(v: &Json) -> Result<Pool2d> {
    let k = pair_from(&v["kernel"], "kernel")?;
    let s = pair_from(&v["stride"], "stride")?;
    let p = pair_from(&v["padding"], "padding")?;
    let d = pair_from(&v["dilation"], "dilation")?;
    Ok(Pool2d::new(k.0, k.1)
        .with_stride(s.0, s.1)
        .with_padding(p.0, p.1)
        .with_dilation(d.0, d.1)
        .with_ceil_mode(v["ceil_mode"].as_bool().unwrap_or(false)))
}

fn passthrough_json(p: &Passthrough) -> Json {
    match p {
        Passthrough::MaxPool(pool) => json!({"kind": "max_pool", "pool": pool_json(pool)}),
        Passthrough::AvgPool {
            pool,
            count_include_pad,
        } => {
            json!({"kind": "avg_pool", "pool": pool_json(pool), "count_include_pad": count_include_pad})
        }
        Passthrough::AdaptiveAvgPool { output } => json!({"kind": "adaptive_avg_pool", "output": pair(*output)}),
        Passthrough::Relu => json!({"kind": "relu"}),
        Passthrough::Relu6 => json!({"kind": "relu6"}),
        Passthrough::Flatten => json!({"kind": "flatten"}),
        Passthrough::UpsampleNearest { scale } => json!({"kind": "upsample_nearest", "scale": pair(*scale)}),
        Passthrough::UpsampleBilinear { scale } => json!({"kind": "upsample_bilinear", "scale": pair(*scale)}),
        Passthrough::Identity => json!({"kind": "identity"}),
    }
}

fn passthrough_from(v: &Json) -> Result<Passthrough> {
    Ok(match v["kind"].as_str() {
        Some("max_pool") => Passthrough::MaxPool(pool_from(&v["pool"])?),
        Some("avg_pool") => Passthrough::AvgPool {
            pool: pool_from(&v["pool"])?,
            count_include_pad: v["count_include_pad"].as_bool().unwrap_or(true),
        },
        Some("adaptive_avg_pool") => Passthrough::AdaptiveAvgPool {
            output: pair_from(&v["output"], "output")?,
        },
        Some("relu") => Passthrough::Relu,
        Some("relu6") => Passthrough::Relu6,
        Some("flatten") => Passthrough::Flatten,
        Some("upsample_nearest") => Passthrough::UpsampleNearest {
            scale: pair_from(&v["scale"], "scale")?,
        },
        Some("upsample_bilinear") => Passthrough::UpsampleBilinear {
            scale: pair_from(&v["scale"], "scale")?,
        },
        Some("identity") => Passthrough::Identity,
        other => return Err(corrupt(format!("unknown pass-through op {other:?}"))),
    })
}

/// Everything a custom op loader needs: the node's name and the file's tensors.
pub(crate) struct LoadContext<'a> {
    pub name: &'a str,
    pub file: &'a ModelFile,
}

impl LoadContext<'_> {
    pub fn quantized(&self, local: &str) -> Result<QTensor> {
        match self.file.tensor(&format!("{}.{local}", self.name))? {
            StoredTensor::Quantized(q) => Ok(q.clone()),
            _ => Err(ApiError::BadTensor {
                name: format!("{}.{local}", self.name),
                detail: "expected a quantized tensor".into(),
            }),
        }
    }

    pub fn f32_opt(&self, local: &str) -> Result<Option<Vec<f32>>> {
        match self.file.tensors.get(&format!("{}.{local}", self.name)) {
            None => Ok(None),
            Some(StoredTensor::F32 { data, .. }) => Ok(Some(data.clone())),
            Some(_) => Err(ApiError::BadTensor {
                name: format!("{}.{local}", self.name),
                detail: "expected an F32 tensor".into(),
            }),
        }
    }
}

fn int8_values(q: &QTensor) -> Vec<i8> {
    q.int_repr().into_iter().map(|v| v as i8).collect()
}

fn load_custom(kind: &str, attrs: &Json, ctx: &LoadContext<'_>) -> Result<Arc<dyn CustomOp>> {
    Ok(match kind {
        "Quantize" => Arc::new(Quantize {
            q: act_from(&attrs["q"])?,
        }),
        "Dequantize" => Arc::new(Dequantize),
        "QuantizedConv2d" => {
            let g = &attrs["geometry"];
            let (s, p, d) = (
                pair_from(&g["stride"], "stride")?,
                pair_from(&g["padding"], "padding")?,
                pair_from(&g["dilation"], "dilation")?,
            );
            let geometry = Conv2dGeometry::new(
                usize_from(&g["c_in"], "c_in")?,
                usize_from(&g["c_out"], "c_out")?,
                pair_from(&g["kernel"], "kernel")?,
            )
            .with_stride(s.0, s.1)
            .with_padding(p.0, p.1)
            .with_dilation(d.0, d.1)
            .with_groups(usize_from(&g["groups"], "groups")?);
            let weight = ctx.quantized("weight")?;
            let bias = ctx.f32_opt("bias")?;
            let arithmetic = if attrs["exact"].as_bool().unwrap_or(false) {
                ConvArithmetic::Exact
            } else {
                ConvArithmetic::FbgemmParity
            };
            let conv = PackedConv2d::new(
                geometry,
                &int8_values(&weight),
                ConvWeightQuant::from_qparams(weight.qparams())?,
                bias.clone(),
            )?
            .with_arithmetic(arithmetic)?;
            Arc::new(QConv2d {
                conv,
                weight,
                bias,
                output: act_from(&attrs["output"])?,
                activation: fused_from(&attrs["activation"])?,
                concat: match &attrs["concat"] {
                    Json::Null => None,
                    q => Some(act_from(q)?),
                },
                // Files written before the fusion existed have no flag.
                dequantize: attrs["dequantize"].as_bool().unwrap_or(false),
                residual: match &attrs["residual"] {
                    Json::Null => None,
                    add => Some(FusedAdd {
                        output: act_from(&add["output"])?,
                        relu: add["relu"]
                            .as_bool()
                            .ok_or_else(|| corrupt(format!("`{}`: residual add without `relu`", ctx.name)))?,
                        conv_first: add["conv_first"]
                            .as_bool()
                            .ok_or_else(|| corrupt(format!("`{}`: residual add without `conv_first`", ctx.name)))?,
                    }),
                },
                // Files written before the fusion existed have no pool.
                pool: match &attrs["pool"] {
                    Json::Null => None,
                    p => Some(pool_from(p)?),
                },
            })
        }
        "QuantizedConvTranspose2d" => {
            let g = &attrs["geometry"];
            let (s, p, d) = (
                pair_from(&g["stride"], "stride")?,
                pair_from(&g["padding"], "padding")?,
                pair_from(&g["dilation"], "dilation")?,
            );
            let op = pair_from(&g["output_padding"], "output_padding")?;
            let geometry = ConvTranspose2dGeometry::new(
                usize_from(&g["c_in"], "c_in")?,
                usize_from(&g["c_out"], "c_out")?,
                pair_from(&g["kernel"], "kernel")?,
            )
            .with_stride(s.0, s.1)
            .with_padding(p.0, p.1)
            .with_output_padding(op.0, op.1)
            .with_dilation(d.0, d.1)
            .with_groups(usize_from(&g["groups"], "groups")?);
            let weight = ctx.quantized("weight")?;
            let bias = ctx.f32_opt("bias")?;
            let conv = PackedConvTranspose2d::new(
                geometry,
                &int8_values(&weight),
                ConvWeightQuant::from_qparams(weight.qparams())?,
                bias.clone(),
            )?;
            Arc::new(QConvTranspose2d {
                conv,
                weight,
                bias,
                output: act_from(&attrs["output"])?,
                activation: fused_from(&attrs["activation"])?,
            })
        }
        "QuantizedLinear" => {
            let weight = ctx.quantized("weight")?;
            let [n, k] = weight.shape() else {
                return Err(corrupt(format!("`{}.weight` must be 2-d", ctx.name)));
            };
            let packed = PackedWeights::from_qparams(&int8_values(&weight), *n, *k, weight.qparams())?;
            Arc::new(QLinear {
                packed,
                weight,
                bias: ctx.f32_opt("bias")?,
                output: act_from(&attrs["output"])?,
                relu: attrs["relu"].as_bool().unwrap_or(false),
            })
        }
        "QuantizedBinary" => Arc::new(QBinary {
            mul: attrs["mul"].as_bool().unwrap_or(false),
            relu: attrs["relu"].as_bool().unwrap_or(false),
            output: act_from(&attrs["output"])?,
        }),
        "QuantizedCat" => Arc::new(QCat {
            output: act_from(&attrs["output"])?,
        }),
        "QuantizedPassthrough" => Arc::new(QPassthrough {
            op: passthrough_from(attrs)?,
        }),
        "QuantizedLut" => {
            let table = match ctx.file.tensor(&format!("{}.table", ctx.name))? {
                StoredTensor::I32 { data, .. } if data.len() == 256 && data.iter().all(|v| (0..=255).contains(v)) => {
                    let mut t = [0u8; 256];
                    for (d, &v) in t.iter_mut().zip(data) {
                        *d = v as u8;
                    }
                    t
                }
                _ => {
                    return Err(corrupt(format!(
                        "`{}.table` must hold 256 values in [0, 255]",
                        ctx.name
                    )))
                }
            };
            let name = match attrs["name"].as_str() {
                Some("QuantizedHardswish") => "QuantizedHardswish",
                Some("QuantizedSigmoid") => "QuantizedSigmoid",
                Some("QuantizedTanh") => "QuantizedTanh",
                Some("QuantizedSiLU") => "QuantizedSiLU",
                Some("QuantizedGELU") => "QuantizedGELU",
                _ => "QuantizedLut",
            };
            Arc::new(QLut {
                name,
                lut: ActivationLut::from_table(table),
                output: act_from(&attrs["output"])?,
            })
        }
        other => match crate::dynamic_persist::load(other, attrs, ctx)? {
            Some(op) => op,
            None => {
                return Err(corrupt(format!(
                    "unknown op kind `{other}` (written by a newer qforge?)"
                )))
            }
        },
    })
}

/// Rebuilds a graph from a model file.
pub fn from_model_file(file: &ModelFile) -> Result<Graph> {
    let text = file
        .metadata
        .get("graph")
        .ok_or_else(|| corrupt("no `graph` metadata entry"))?;
    let doc: Json = serde_json::from_str(text).map_err(|e| corrupt(format!("graph metadata: {e}")))?;
    let entries = doc["nodes"]
        .as_array()
        .ok_or_else(|| corrupt("graph metadata has no node list"))?;
    let mut index = BTreeMap::new();
    let mut nodes = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let name = e["name"]
            .as_str()
            .ok_or_else(|| corrupt(format!("node {i} has no name")))?;
        let inputs = e["inputs"]
            .as_array()
            .ok_or_else(|| corrupt(format!("node `{name}` has no input list")))?
            .iter()
            .map(|v| {
                let n = v.as_str().unwrap_or("");
                index
                    .get(n)
                    .copied()
                    .ok_or_else(|| corrupt(format!("node `{name}` reads unknown node `{n}`")))
            })
            .collect::<Result<Vec<NodeId>>>()?;
        let op = if let Some(std) = e["op"].get("std") {
            serde_json::from_value::<Op>(std.clone()).map_err(|err| corrupt(format!("node `{name}`: {err}")))?
        } else {
            let kind = e["op"]["custom"]
                .as_str()
                .ok_or_else(|| corrupt(format!("node `{name}` has no op")))?;
            let ctx = LoadContext { name, file };
            Op::Custom(load_custom(kind, &e["op"]["attrs"], &ctx)?)
        };
        let params = op
            .param_shapes()
            .into_iter()
            .map(|(local, _)| {
                let full = format!("{name}.{local}");
                match file.tensor(&full)? {
                    StoredTensor::F32 { shape, data } => Ok((local, Tensor::new(shape.clone(), data.clone())?)),
                    _ => Err(ApiError::BadTensor {
                        name: full,
                        detail: "expected an F32 parameter".into(),
                    }),
                }
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        index.insert(name.to_string(), NodeId(i));
        nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            params,
            qconfig: None,
        });
    }
    let outputs = doc["outputs"]
        .as_array()
        .ok_or_else(|| corrupt("graph metadata has no outputs"))?
        .iter()
        .map(|v| {
            let n = v.as_str().unwrap_or("");
            index
                .get(n)
                .copied()
                .ok_or_else(|| corrupt(format!("unknown output node `{n}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Graph::from_nodes(nodes, outputs)?)
}
