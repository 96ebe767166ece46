//! Query/key/value fusion for dynamically quantized graphs: when three dynamic Linears read the
//! same input and feed one attention node as its query, key and value (and nothing else), they
//! become one Linear with the weights stacked `[3 hidden, in]` whose packed `[.., 3 hidden]`
//! output the attention reads in place. The shared input is then range-scanned and quantized
//! once instead of three times, and the GEMM runs with N = 3 hidden.
//!
//! The rewrite changes no value: with per-channel weights every output column keeps its own
//! weight scale and zero point, the activation quantization of a row depends only on that row,
//! int32 accumulation is exact, and the dequantizing epilogue works column by column, so each
//! output element is computed by the same operations as in the separate layers. Per-tensor
//! weights (the PyTorch-parity preset) are left unfused, since stacking them would mix three
//! weight scales into one tensor.

use qgraph::{FusedActivation, Graph, LinearAttrs, Node, NodeId, Op};
use qtensor::{DType, QParams, QTensor};
use std::sync::Arc;

use crate::dynamic::{DynamicDType, DynamicLinear, WeightGranularity};
use crate::dynamic_graph::DynamicLinearOp;
use crate::report::{NodeStatus, QuantReport};
use crate::{ApiError, Result};

/// Fuses every query/key/value triple of `graph` (see the module docs), updating the report
/// entries of the fused nodes. Returns the rewritten graph.
pub fn fuse_qkv(graph: Graph, report: &mut QuantReport) -> Result<Graph> {
    let consumers = graph.consumers();
    let mut nodes: Vec<Option<Node>> = graph.nodes().iter().cloned().map(Some).collect();
    let outputs = graph.outputs().to_vec();
    for (a, node) in graph.nodes().iter().enumerate() {
        let Op::Attention(_) = node.op else { continue };
        let [q, k, v, mask] = node.inputs[..] else { continue };
        let Some(fused) = fusable(&graph, &consumers, &outputs, NodeId(a), [q, k, v]) else {
            continue;
        };
        let name = format!("{}.qkv", node.name);
        let parts = [q, k, v].map(|id| graph.node(id).name.clone());
        for entry in report.nodes.iter_mut().filter(|n| parts.contains(&n.name)) {
            if let NodeStatus::Quantized { detail } = &mut entry.status {
                detail.push_str(&format!("; fused with the other projections into `{name}`"));
            }
        }
        let input = graph.node(q).inputs.clone();
        nodes[q.0] = Some(Node {
            name,
            op: Op::Custom(Arc::new(fused)),
            inputs: input,
            params: Default::default(),
            qconfig: None,
        });
        nodes[k.0] = None;
        nodes[v.0] = None;
        nodes[a].as_mut().expect("attention node kept").inputs = vec![q, mask];
    }
    // Renumber the surviving nodes (order unchanged, so still topological).
    let mut new_id = vec![usize::MAX; nodes.len()];
    let mut kept = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.into_iter().enumerate() {
        if let Some(mut n) = n {
            n.inputs.iter_mut().for_each(|id| *id = NodeId(new_id[id.0]));
            new_id[i] = kept.len();
            kept.push(n);
        }
    }
    let outputs = outputs.iter().map(|o| NodeId(new_id[o.0])).collect();
    Ok(Graph::from_nodes(kept, outputs)?)
}

/// The fused Linear for a query/key/value triple feeding attention node `a`, or `None` when the
/// triple does not qualify (not per-channel int8 dynamic Linears on one input, read elsewhere,
/// with a fused activation, or with differing bias presence or configuration).
fn fusable(
    graph: &Graph,
    consumers: &[Vec<NodeId>],
    outputs: &[NodeId],
    a: NodeId,
    ids: [NodeId; 3],
) -> Option<DynamicLinearOp> {
    let ops = ids
        .iter()
        .map(|&id| match &graph.node(id).op {
            Op::Custom(c) => c.as_any().downcast_ref::<DynamicLinearOp>(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let first = ops[0];
    let input = &graph.node(ids[0]).inputs;
    let distinct = ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2];
    let ok = distinct
        && ids.iter().all(|id| {
            consumers[id.0] == [a] && !outputs.contains(id) && &graph.node(*id).inputs == input && input.len() == 1
        })
        && ops.iter().all(|op| {
            let c = op.linear().config();
            op.attrs().activation == FusedActivation::None
                && op.attrs().in_features == first.attrs().in_features
                && op.attrs().bias == first.attrs().bias
                && c == first.linear().config()
                && c.dtype == DynamicDType::QInt8
                && c.weights == WeightGranularity::PerChannel
        });
    if !ok {
        return None;
    }
    stack(&ops).ok()
}

/// One Linear whose output columns are those of `ops` side by side.
pub fn stack(ops: &[&DynamicLinearOp]) -> Result<DynamicLinearOp> {
    let k = ops[0].attrs().in_features;
    let (mut ints, mut scales, mut zero_points, mut bias) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for op in ops {
        let w = op.linear().quantized_weight().ok_or_else(|| ApiError::Config {
            detail: "only int8 dynamic Linears can be stacked".into(),
        })?;
        let QParams::PerChannel {
            axis: 0,
            scales: s,
            zero_points: z,
        } = w.qparams()
        else {
            return Err(ApiError::Config {
                detail: "only per-output-channel int8 weights can be stacked".into(),
            });
        };
        ints.extend(w.int_repr());
        scales.extend_from_slice(s);
        zero_points.extend_from_slice(z);
        bias.extend_from_slice(op.linear().bias().unwrap_or(&[]));
    }
    let n = scales.len();
    let qparams = QParams::per_channel(0, scales, zero_points, DType::QInt8)?;
    let weight = QTensor::from_int_repr([n, k], DType::QInt8, qparams, &ints)?;
    let has_bias = ops[0].attrs().bias;
    let linear = DynamicLinear::from_quantized(weight, has_bias.then_some(bias), *ops[0].linear().config())?;
    DynamicLinearOp::new(
        LinearAttrs {
            in_features: k,
            out_features: n,
            bias: has_bias,
            activation: FusedActivation::None,
        },
        linear,
    )
}
