//! Quantization-aware training (PyTorch `prepare_qat` / `convert`): [`prepare_qat`] fuses the
//! graph as static quantization will (conv+bn(+relu), conv+relu, linear+relu, bn+relu) but
//! keeps BatchNorm alive inside QAT ConvBn modules, puts a weight [`FakeQuantize`] on every
//! Conv2d and Linear and an activation `FakeQuantize` on every output static quantization
//! gives its own parameters (graph inputs, conv/linear/add/mul/cat/hardswish outputs; for a
//! producer read only by a ReLU/ReLU6, after that activation), and none after pooling,
//! Flatten, Reshape or Dropout, which static conversion runs with their input's parameters.
//! [`convert`] gives back the float graph with BatchNorm folded (PyTorch
//! `fuse_conv_bn_weights` on the trained running statistics) and the qparams the fake-quant
//! modules learned, keyed by node name; [`convert_int8`] hands them to the static conversion
//! (`Prepared::convert_with`) for the real int8 graph.
//!
//! [`simulate_quantized`] runs such a graph with `dequantize(quantize(.))` on every weight and
//! every quantized activation, the int8 numerics up to the kernels' accumulation order.

use std::collections::{BTreeMap, HashMap};

use qgraph::observers::Observer;
use qgraph::train::qat_modules::{QatConv2d, QatLinear};
use qgraph::train::{FakeQuantize, FakeQuantizeConfig, Layer, Mode, OpLayer, TrainModel, TrainNode};
use qgraph::{Graph, Node, NodeId, Op, OpKind, Value};
use qtensor::fake_quant::{fake_quantize_per_channel, FakeQuant};
use qtensor::{QParams, Tensor};

use crate::{ApiError, QConfigMap, QuantReport, Result};

/// The qparams of one node of the converted graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeQParams {
    /// The node's output (for a graph input: the input itself); `None` keeps its input's qparams.
    pub activation: Option<QParams>,
    /// The weight of a Conv2d or Linear.
    pub weight: Option<QParams>,
}

/// Qparams by node name.
pub type GraphQParams = BTreeMap<String, NodeQParams>;

/// Options of [`prepare_qat_with`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QatOptions {
    /// LSQ: learn activation scales and zero points (PyTorch `_LearnableFakeQuantize`).
    pub learnable_activations: bool,
    /// Seed of the dropout stream.
    pub seed: u64,
}

/// A model prepared for quantization-aware training.
#[derive(Debug)]
pub struct QatModel {
    /// The trainable model (train it with `qgraph::train::fit`).
    pub model: TrainModel,
    /// The graph it was prepared from (structure for [`convert`]).
    source: Graph,
    /// Fused chains, by original node names.
    groups: Vec<Vec<String>>,
    /// Activation fake-quant node name -> the node of the converted graph it belongs to.
    activation_owner: Vec<(String, String)>,
}

/// Ops whose output static quantization gives its own qparams (its anchors, plus BatchNorm,
/// which the fused graph folds away). Pass-through ops (pooling, Flatten, Dropout, ...) keep
/// their input's; ReLU and ReLU6 are decided in [`output_quantized`].
fn quantizes_output(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Input
            | OpKind::Conv2d
            | OpKind::ConvTranspose2d
            | OpKind::Linear
            | OpKind::BatchNorm2d
            | OpKind::BatchNorm1d
            | OpKind::Add
            | OpKind::Mul
            | OpKind::Cat
            | OpKind::Hardswish
    )
}

/// The fusion chains static quantization will apply, by node name (computed on a copy).
fn fusion_groups(graph: &Graph) -> Result<Vec<Vec<String>>> {
    let mut copy = graph.clone();
    Ok(copy.fuse_auto()?.groups.into_iter().map(|g| g.nodes).collect())
}

/// For each node name, whether its output is quantized in the fused graph. An output read only
/// by a ReLU/ReLU6 is quantized after that activation instead (the activation's observer sees
/// the clamped range): static conversion gives the producer those parameters and runs the
/// activation as a pass-through with them, which is the same arithmetic since the range starts
/// at 0 and ends at most at 6 (see [`static_qparams`]). A ReLU/ReLU6 after anything else keeps
/// its input's parameters, as the static pass-through does.
fn output_quantized(graph: &Graph, groups: &[Vec<String>], map: &QConfigMap) -> HashMap<String, bool> {
    let absorbed: HashMap<&str, &str> = groups
        .iter()
        .flat_map(|g| g[1..].iter().map(move |n| (n.as_str(), g[0].as_str())))
        .collect();
    let readers = graph.consumers();
    let mut out = HashMap::new();
    // Original node index of the last node of a chain -> whether its ReLU reader takes over.
    let mut deferred = vec![false; graph.nodes().len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        if absorbed.contains_key(node.name.as_str()) {
            continue;
        }
        let chain = groups.iter().find(|g| g[0] == node.name);
        let last = chain.map_or(i, |g| {
            graph.find(g.last().expect("non-empty")).expect("fused node exists").0
        });
        let (config, _) = map.resolve(&node.name, node.op.kind());
        let kind = node.op.kind();
        let quantized = match kind {
            OpKind::Relu | OpKind::Relu6 => node.inputs.len() == 1 && deferred[node.inputs[0].0],
            _ => quantizes_output(kind),
        };
        let quantized = config.is_some() && quantized;
        // A ReLU/ReLU6 reading this output alone takes over its quantization.
        let fused_next = quantized
            && readers[last].len() == 1
            && !graph.outputs().contains(&NodeId(last))
            && matches!(graph.node(readers[last][0]).op, Op::Relu | Op::Relu6)
            && matches!(
                kind,
                OpKind::Conv2d | OpKind::Linear | OpKind::Add | OpKind::BatchNorm2d | OpKind::BatchNorm1d
            );
        deferred[last] = fused_next;
        out.insert(node.name.clone(), quantized && !fused_next);
    }
    out
}

/// [`prepare_qat_with`] with the default options.
pub fn prepare_qat(graph: &Graph, map: &QConfigMap) -> Result<QatModel> {
    prepare_qat_with(graph, map, QatOptions::default())
}

/// Fuses, swaps in QAT modules and inserts fake quantization (see the module docs).
pub fn prepare_qat_with(graph: &Graph, map: &QConfigMap, options: QatOptions) -> Result<QatModel> {
    let _span = tracing::info_span!("prepare_qat", nodes = graph.nodes().len()).entered();
    let groups = fusion_groups(graph)?;
    let quantized = output_quantized(graph, &groups, map);
    let absorbed: HashMap<String, String> = groups
        .iter()
        .flat_map(|g| g[1..].iter().map(move |n| (n.clone(), g[0].clone())))
        .collect();
    // Original node index -> train node index carrying its (final) value.
    let mut value_of: Vec<usize> = vec![usize::MAX; graph.nodes().len()];
    let mut nodes: Vec<TrainNode> = Vec::new();
    let mut activation_owner = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        if let Some(head) = absorbed.get(&node.name) {
            let h = graph.find(head).expect("head exists").0;
            value_of[i] = value_of[h];
            continue;
        }
        let inputs: Vec<usize> = node.inputs.iter().map(|id| value_of[id.0]).collect();
        let (config, _) = map.resolve(&node.name, node.op.kind());
        let chain: Vec<&Node> = groups
            .iter()
            .find(|g| g[0] == node.name)
            .map(|g| g.iter().map(|n| graph.node(graph.find(n).expect("exists"))).collect())
            .unwrap_or_else(|| vec![node]);
        let relu = chain.iter().any(|n| matches!(n.op, Op::Relu));
        let bn = chain.iter().skip(1).find(|n| matches!(n.op, Op::BatchNorm(_))).copied();
        let layer: Option<Box<dyn Layer>> = match (&node.op, config) {
            (Op::Input { .. }, _) => None,
            (Op::Conv2d(_), Some(c)) => {
                let wfq = FakeQuantize::new(
                    &format!("{}.weight_fake_quant", node.name),
                    FakeQuantizeConfig::new(c.weight),
                )?;
                Some(Box::new(QatConv2d::new(node, bn, relu, wfq)?))
            }
            (Op::Linear(_), Some(c)) if bn.is_none() => {
                let wfq = FakeQuantize::new(
                    &format!("{}.weight_fake_quant", node.name),
                    FakeQuantizeConfig::new(c.weight),
                )?;
                Some(Box::new(QatLinear::new(node, relu, wfq)?))
            }
            _ => {
                // Without a QAT module the chain trains as fused float ops.
                let mut n = node.clone();
                if chain.len() > 1 {
                    let mut fused = graph.clone();
                    let names: Vec<&str> = chain.iter().map(|n| n.name.as_str()).collect();
                    fused.fuse(&[&names])?;
                    n = fused.node(fused.find(&node.name).expect("head survives")).clone();
                }
                Some(Box::new(OpLayer::new(n)?))
            }
        };
        nodes.push(TrainNode {
            name: node.name.clone(),
            inputs,
            layer,
        });
        let mut at = nodes.len() - 1;
        if quantized.get(&node.name).copied().unwrap_or(false) {
            let c = config.expect("quantized outputs have a config");
            let mut fq_config = FakeQuantizeConfig::new(c.activation);
            if options.learnable_activations {
                fq_config = fq_config.learnable(true);
            }
            let name = format!("{}.activation_post_process", node.name);
            nodes.push(TrainNode {
                name: name.clone(),
                inputs: vec![at],
                layer: Some(Box::new(FakeQuantize::new(&name, fq_config)?)),
            });
            activation_owner.push((name, node.name.clone()));
            at = nodes.len() - 1;
        }
        value_of[i] = at;
    }
    let outputs = graph.outputs().iter().map(|o| value_of[o.0]).collect();
    let model = TrainModel::new(nodes, outputs, options.seed)?;
    tracing::info!(
        groups = groups.len(),
        fake_quant = activation_owner.len(),
        "prepared for QAT"
    );
    Ok(QatModel {
        model,
        source: graph.clone(),
        groups,
        activation_owner,
    })
}

impl QatModel {
    /// PyTorch `freeze_bn_stats` on every ConvBn module.
    pub fn freeze_bn_stats(&mut self) {
        freeze_bn_stats(&mut self.model);
    }

    /// PyTorch `disable_observer` on every fake-quant module (weights and activations).
    pub fn disable_observers(&mut self) {
        self.for_each_fake_quant(&mut |f| f.disable_observer());
    }

    /// Turns fake quantization off (`false`) or on everywhere, e.g. to compare with float.
    pub fn set_fake_quant(&mut self, enabled: bool) {
        self.for_each_fake_quant(&mut |f| {
            if enabled {
                f.enable_fake_quant()
            } else {
                f.disable_fake_quant()
            }
        });
    }

    fn for_each_fake_quant(&mut self, f: &mut dyn FnMut(&mut FakeQuantize)) {
        for_each_fake_quant(&mut self.model, f);
    }

    pub fn set_mode(&mut self, mode: Mode) {
        self.model.set_mode(mode);
    }
}

/// PyTorch `freeze_bn_stats` on every ConvBn module of a prepared model (usable from a
/// training-loop callback, which sees the [`TrainModel`]).
pub fn freeze_bn_stats(model: &mut TrainModel) {
    for n in &mut model.nodes {
        if let Some(c) = n
            .layer
            .as_mut()
            .and_then(|l| l.as_any_mut().downcast_mut::<QatConv2d>())
        {
            c.freeze_bn_stats();
        }
    }
}

/// PyTorch `disable_observer` on every fake-quant module of a prepared model (usable from a
/// training-loop callback): the qparams stay where the observers left them.
pub fn disable_observers(model: &mut TrainModel) {
    for_each_fake_quant(model, &mut |f| f.disable_observer());
}

fn for_each_fake_quant(model: &mut TrainModel, f: &mut dyn FnMut(&mut FakeQuantize)) {
    for n in &mut model.nodes {
        let Some(layer) = n.layer.as_mut() else { continue };
        let any = layer.as_any_mut();
        if let Some(q) = any.downcast_mut::<FakeQuantize>() {
            f(q);
        } else if let Some(c) = any.downcast_mut::<QatConv2d>() {
            f(&mut c.weight_fake_quant);
        } else if let Some(l) = any.downcast_mut::<QatLinear>() {
            f(&mut l.weight_fake_quant);
        }
    }
}

/// The float graph with BatchNorm folded and the learned qparams (see the module docs).
pub fn convert(qat: &QatModel) -> Result<(Graph, GraphQParams)> {
    let _span = tracing::info_span!("qat_convert").entered();
    let mut graph = qat.source.clone();
    let mut qparams = GraphQParams::new();
    for n in &qat.model.nodes {
        let Some(layer) = n.layer.as_ref() else { continue };
        let any = layer.as_any();
        if let Some(op) = any.downcast_ref::<OpLayer>() {
            // The head of a chain trained as a fused float op holds fused parameters; they are
            // put back after the chain is fused below.
            let id = find(&graph, &n.name)?;
            graph.node_mut(id).params = op.node().params.clone();
        } else if let Some(c) = any.downcast_ref::<QatConv2d>() {
            let id = find(&graph, &c.name)?;
            let p = &mut graph.node_mut(id).params;
            p.insert("weight".into(), c.weight.value.clone());
            if let Some(b) = &c.bias {
                p.insert("bias".into(), b.value.clone());
            }
            if let Some(bn) = &c.bn {
                let group = qat
                    .groups
                    .iter()
                    .find(|g| g[0] == c.name)
                    .expect("ConvBn comes from a group");
                let bn_id = find(&graph, &group[1])?;
                let ch = bn.running_mean.len();
                let p = &mut graph.node_mut(bn_id).params;
                p.insert("weight".into(), bn.gamma.value.clone());
                p.insert("bias".into(), bn.beta.value.clone());
                p.insert("running_mean".into(), Tensor::new([ch], bn.running_mean.clone())?);
                p.insert("running_var".into(), Tensor::new([ch], bn.running_var.clone())?);
            }
            qparams.entry(c.name.clone()).or_default().weight = Some(c.weight_qparams()?);
        } else if let Some(l) = any.downcast_ref::<QatLinear>() {
            let id = find(&graph, &l.name)?;
            graph.node_mut(id).params = l.to_float_node().params;
            qparams.entry(l.name.clone()).or_default().weight = Some(l.weight_qparams()?);
        } else if let Some(f) = any.downcast_ref::<FakeQuantize>() {
            let owner = qat
                .activation_owner
                .iter()
                .find(|(fq, _)| fq == &n.name)
                .map(|(_, o)| o.clone())
                .ok_or_else(|| ApiError::Config {
                    detail: format!("fake-quant node `{}` has no owner", n.name),
                })?;
            qparams.entry(owner).or_default().activation = Some(f.qparams()?);
        }
    }
    // OpLayers of fused float chains hold fused parameters already; fuse the rest as static
    // quantization does (BatchNorm folded with the trained running statistics).
    let fused_float: Vec<String> = qat
        .model
        .nodes
        .iter()
        .filter(|n| n.layer.as_ref().is_some_and(|l| l.as_any().is::<OpLayer>()))
        .map(|n| n.name.clone())
        .collect();
    let groups: Vec<Vec<&str>> = qat
        .groups
        .iter()
        .filter(|g| !fused_float.contains(&g[0]))
        .map(|g| g.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = groups.iter().map(Vec::as_slice).collect();
    for g in qat.groups.iter().filter(|g| fused_float.contains(&g[0])) {
        // Already fused: take the fused op and drop the absorbed nodes.
        let names: Vec<&str> = g.iter().map(String::as_str).collect();
        let fused_params = graph.node(find(&graph, g[0].as_str())?).params.clone();
        graph.fuse(&[&names]).map_err(ApiError::from)?;
        let id = find(&graph, &g[0])?;
        graph.node_mut(id).params = fused_params;
    }
    graph.fuse(&refs)?;
    Ok((graph, qparams))
}

/// The qparams of [`convert`] (or [`calibrate`]) keyed as [`crate::Prepared::convert_with`]
/// reads them: activations by the node whose output they quantize, weights by Conv/Linear
/// node. A producer whose only reader is a ReLU/ReLU6 takes that activation's parameters
/// (quantization-aware training observes after the activation; static conversion quantizes the
/// producer and runs the activation as a pass-through with the same parameters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticQParams {
    pub activations: BTreeMap<String, QParams>,
    pub weights: BTreeMap<String, QParams>,
}

/// See [`StaticQParams`]; `graph` is the converted (fused) float graph.
pub fn static_qparams(graph: &Graph, qparams: &GraphQParams) -> StaticQParams {
    let mut out = StaticQParams::default();
    for (name, q) in qparams {
        if let Some(a) = &q.activation {
            out.activations.insert(name.clone(), a.clone());
        }
        if let Some(w) = &q.weight {
            out.weights.insert(name.clone(), w.clone());
        }
    }
    let readers = graph.consumers();
    for (i, node) in graph.nodes().iter().enumerate() {
        if out.activations.contains_key(&node.name) || readers[i].len() != 1 {
            continue;
        }
        let reader = graph.node(readers[i][0]);
        if matches!(reader.op, Op::Relu | Op::Relu6) {
            if let Some(q) = qparams.get(&reader.name).and_then(|q| q.activation.clone()) {
                out.activations.insert(node.name.clone(), q);
            }
        }
    }
    out
}

/// Real int8 conversion of a converted QAT graph: static [`crate::prepare`] under `map` (the
/// graph is fused already, so it only plans and attaches observers), then
/// [`crate::Prepared::convert_with`] the learned parameters (see [`static_qparams`]).
pub fn convert_int8(graph: &Graph, qparams: &GraphQParams, map: &QConfigMap) -> Result<(Graph, QuantReport)> {
    let _span = tracing::info_span!("qat_convert_int8").entered();
    let prepared = crate::prepare(graph, map)?;
    let handoff = static_qparams(graph, qparams);
    prepared.convert_with(&handoff.activations, &handoff.weights)
}

fn find(graph: &Graph, name: &str) -> Result<NodeId> {
    graph.find(name).ok_or_else(|| ApiError::Config {
        detail: format!("node `{name}` is missing from the source graph"),
    })
}

/// `dequantize(quantize(x))` with `qparams` (per tensor, or per channel along its axis).
pub fn fake_quantize(x: &Tensor, qparams: &QParams, qmin: i32, qmax: i32) -> Result<Tensor> {
    let mut y = vec![0.0f32; x.numel()];
    let mut mask = vec![false; x.numel()];
    match qparams {
        QParams::PerTensor { scale, zero_point } => {
            FakeQuant::new(*scale, *zero_point, qmin, qmax)?.forward(x.data(), &mut y, &mut mask)?
        }
        QParams::PerChannel {
            axis,
            scales,
            zero_points,
        } => {
            let params = scales
                .iter()
                .zip(zero_points)
                .map(|(&s, &z)| FakeQuant::new(s, z, qmin, qmax))
                .collect::<qtensor::Result<Vec<_>>>()?;
            fake_quantize_per_channel(x.data(), x.shape(), *axis, &params, &mut y, &mut mask)?
        }
    }
    Ok(Tensor::new(x.shape().to_vec(), y)?)
}

/// Integer ranges used by [`simulate_quantized`]: activations and weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedRanges {
    pub activation: (i32, i32),
    pub weight: (i32, i32),
}

impl SimulatedRanges {
    /// The ranges of a QConfig's specs.
    pub fn of(config: &crate::QConfig) -> Result<SimulatedRanges> {
        Ok(SimulatedRanges {
            activation: config.activation.spec.quant_range()?,
            weight: config.weight.spec.quant_range()?,
        })
    }
}

/// Runs `graph` with every weight and quantized activation passed through
/// `dequantize(quantize(.))` with `qparams`.
pub fn simulate_quantized(
    graph: &Graph,
    qparams: &GraphQParams,
    ranges: SimulatedRanges,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let (amin, amax) = ranges.activation;
    let (wmin, wmax) = ranges.weight;
    let mut values: Vec<Option<Tensor>> = vec![None; graph.nodes().len()];
    let mut given = inputs.into_iter();
    for (i, node) in graph.nodes().iter().enumerate() {
        let q = qparams.get(&node.name);
        let mut y = match &node.op {
            Op::Input { .. } => given.next().ok_or(ApiError::Config {
                detail: "fewer inputs than the graph declares".into(),
            })?,
            _ => {
                let mut n = node.clone();
                if let Some(wq) = q.and_then(|q| q.weight.as_ref()) {
                    let w = fake_quantize(node.param("weight")?, wq, wmin, wmax)?;
                    n.params.insert("weight".into(), w);
                }
                let args: Vec<Value> = node
                    .inputs
                    .iter()
                    .map(|id| Value::F32(values[id.0].clone().expect("inputs precede readers")))
                    .collect();
                let refs: Vec<&Value> = args.iter().collect();
                qgraph::ops::forward(&n, &refs)?.into_f32().expect("fp32 graph")
            }
        };
        if let Some(aq) = q.and_then(|q| q.activation.as_ref()) {
            y = fake_quantize(&y, aq, amin, amax)?;
        }
        values[i] = Some(y);
    }
    Ok(graph
        .outputs()
        .iter()
        .map(|o| values[o.0].clone().expect("outputs computed"))
        .collect())
}

/// Post-training calibration of a float graph (fused, BatchNorm folded) into the same qparams
/// layout as [`convert`]: activation observers on every output static quantization quantizes,
/// weight observers on every Conv2d and Linear weight. Used to compare PTQ with QAT.
pub fn calibrate(graph: &Graph, map: &QConfigMap, batches: &[Tensor]) -> Result<GraphQParams> {
    let _span = tracing::info_span!("calibrate", batches = batches.len()).entered();
    let quantized = output_quantized(graph, &[], map);
    let mut observers: HashMap<String, Box<dyn Observer>> = HashMap::new();
    let mut qparams = GraphQParams::new();
    for node in graph.nodes() {
        let (config, _) = map.resolve(&node.name, node.op.kind());
        let Some(config) = config else { continue };
        if quantized.get(&node.name).copied().unwrap_or(false) {
            observers.insert(node.name.clone(), config.activation.build(&node.name));
        }
        if matches!(node.op, Op::Conv2d(_) | Op::Linear(_)) {
            let mut w = config.weight.build(&node.param_name("weight"));
            w.observe(node.param("weight")?)?;
            qparams.entry(node.name.clone()).or_default().weight = Some(w.qparams()?);
        }
    }
    let input_names: Vec<String> = graph
        .input_ids()
        .iter()
        .map(|id| graph.node(*id).name.clone())
        .collect();
    for batch in batches {
        if let Some(o) = observers.get_mut(&input_names[0]) {
            o.observe(batch)?;
        }
        graph.run_with(vec![Value::F32(batch.clone())], |node, value| {
            if let (Some(o), Some(t)) = (observers.get_mut(&node.name), value.as_f32()) {
                o.observe(t)?;
            }
            Ok(())
        })?;
    }
    for (name, o) in observers {
        qparams.entry(name).or_default().activation = Some(o.qparams()?);
    }
    Ok(qparams)
}
