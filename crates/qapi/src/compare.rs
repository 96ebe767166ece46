//! Numeric comparison of a quantized graph with its float original: per-layer SQNR and cosine
//! of the activations, end to end and layer by layer.

use std::collections::HashMap;

use qgraph::{CustomOp, Graph, Op, Value};
use qkernels::conv::ActQuant;
use qtensor::{QParams, Tensor};

use crate::static_ptq::{Dequantize, Quantize};
use crate::Result;

/// How close one layer's quantized output is to the float one.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerComparison {
    pub name: String,
    /// Signal-to-quantization-noise ratio in dB: `10 log10(sum x^2 / sum (x - y)^2)`.
    pub sqnr_db: f32,
    /// Cosine similarity of the flattened activations.
    pub cosine: f32,
}

/// SQNR in dB of `approx` against `reference` (infinite when identical).
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> f32 {
    let signal: f64 = reference.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let noise: f64 = reference
        .iter()
        .zip(approx)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    if noise == 0.0 {
        f32::INFINITY
    } else {
        (10.0 * (signal / noise).log10()) as f32
    }
}

/// Cosine similarity of two vectors (1 for two zero vectors).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        (dot / (na * nb).max(f64::MIN_POSITIVE)) as f32
    }
}

/// An activation as an f32 tensor in the float graph's layout (quantized values dequantized).
fn as_float(v: &Value) -> Result<Option<Tensor>> {
    Ok(match v {
        Value::F32(t) => Some(t.clone()),
        Value::Quant(_) => Dequantize.forward(&[v])?.into_f32(),
        Value::I64(_) => None,
    })
}

/// Every node output of `graph` on `inputs`, by node name, as f32.
fn activations(graph: &Graph, inputs: Vec<Value>) -> Result<HashMap<String, Value>> {
    let mut seen = HashMap::new();
    for (id, v) in graph.input_ids().iter().zip(&inputs) {
        seen.insert(graph.nodes()[id.0].name.clone(), v.clone());
    }
    graph.run_with(inputs, |node, value| {
        seen.insert(node.name.clone(), value.clone());
        Ok(())
    })?;
    Ok(seen)
}

/// End-to-end comparison: both graphs run on `inputs`; every node present in both (by name)
/// is compared, in the float graph's order. Pass the fused float graph
/// ([`crate::Prepared::graph`]) so that fused nodes compare like with like.
pub fn compare_graphs(float: &Graph, quantized: &Graph, inputs: Vec<Value>) -> Result<Vec<LayerComparison>> {
    let reference = activations(float, inputs.clone())?;
    let ours = activations(quantized, inputs)?;
    let mut out = Vec::new();
    for node in float.nodes() {
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        if let (Some(r), Some(q)) = (reference.get(&node.name), ours.get(&node.name)) {
            if let (Some(r), Some(q)) = (as_float(r)?, as_float(q)?) {
                if r.shape() == q.shape() {
                    out.push(LayerComparison {
                        name: node.name.clone(),
                        sqnr_db: sqnr_db(r.data(), q.data()),
                        cosine: cosine(r.data(), q.data()),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Layer-local comparison: every quantized layer of `quantized` is fed the *float* activations
/// of `float` (quantized with the parameters that layer sees in the int8 graph), so each SQNR
/// measures the error that layer alone adds. Used to rank layers for accuracy fallback.
pub fn local_sensitivity(float: &Graph, quantized: &Graph, inputs: Vec<Value>) -> Result<Vec<LayerComparison>> {
    let reference = activations(float, inputs.clone())?;
    let ours = activations(quantized, inputs)?;
    let qnodes = quantized.nodes();
    let mut out = Vec::new();
    for node in qnodes {
        let Op::Custom(op) = &node.op else { continue };
        let kind = op.kind_name();
        if kind == "Quantize" || kind == "Dequantize" || !reference.contains_key(&node.name) {
            continue;
        }
        // Rebuild the layer's inputs from float activations with the int8 graph's parameters.
        let mut args = Vec::with_capacity(node.inputs.len());
        for id in &node.inputs {
            let producer = &qnodes[id.0];
            let original = producer.name.strip_suffix(".quantize").unwrap_or(&producer.name);
            let (Some(Value::Quant(seen)), Some(Value::F32(x))) = (ours.get(&producer.name), reference.get(original))
            else {
                args.clear();
                break;
            };
            let q = match seen.qparams() {
                QParams::PerTensor { scale, zero_point } => ActQuant::new(*scale, *zero_point)?,
                QParams::PerChannel { .. } => {
                    args.clear();
                    break;
                }
            };
            args.push(Quantize { q }.forward(&[&Value::F32(x.clone())])?);
        }
        if args.len() != node.inputs.len() || args.is_empty() {
            continue;
        }
        let refs: Vec<&Value> = args.iter().collect();
        let y = op.forward(&refs)?;
        if let (Some(y), Some(Value::F32(r))) = (as_float(&y)?, reference.get(&node.name)) {
            if y.shape() == r.shape() {
                out.push(LayerComparison {
                    name: node.name.clone(),
                    sqnr_db: sqnr_db(r.data(), y.data()),
                    cosine: cosine(r.data(), y.data()),
                });
            }
        }
    }
    Ok(out)
}
