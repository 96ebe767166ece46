//! Static (post-training) quantization: [`prepare`] fuses the graph and attaches observers,
//! [`Prepared::calibrate`] runs representative batches through it, [`Prepared::convert`]
//! quantizes the weights, packs them, and rebuilds the graph with int8 kernels, inserting
//! quantize/dequantize nodes at every float/int8 boundary by itself.
//!
//! Which nodes run int8: a node whose configuration (from the [`QConfigMap`]) is not `None`
//! and whose op has an int8 kernel. Two families:
//! - *anchors* compute new output parameters from their own output observer: Conv2d,
//!   ConvTranspose2d, Linear, Add, Mul, channel Cat, and the table activations (Hardswish,
//!   Sigmoid, Tanh, SiLU, GELU);
//! - *pass-through* ops keep their input's parameters and are quantized only when their input
//!   is: max/avg/adaptive-avg pooling, ReLU, ReLU6, Flatten, Upsample, Dropout, Identity (as
//!   PyTorch's quantized pooling and ReLU do).
//!
//! A ReLU that is the only reader of a quantized Add is fused into it, as PyTorch's
//! `add` + `relu` pattern becomes `quantized::add_relu`: the pair's observer watches the ReLU's
//! output (so the output range starts at 0, as PyTorch's observer after the fused op sees it),
//! is keyed by the Add's name (the name [`Prepared::convert_with`] and quantization-aware
//! training use), and one node named after the ReLU computes `quantize(max(dq(a) + dq(b), 0))`.
//!
//! A channel Cat whose only reader is a quantized Conv2d (UNet's skip connections) is fused
//! into it at conversion: the convolution takes the Cat's inputs and requantizes them to the
//! Cat's observed parameters while it copies its padded input rows, so the concatenated tensor
//! is never stored. The integers are those of the separate Cat and Conv2d.
//!
//! Likewise a MaxPool2d whose only reader is a quantized Conv2d that absorbs nothing else (the
//! pooling between UNet's encoder blocks) is fused into it: the convolution takes the pooling's
//! input and makes each pooled row as it copies its padded input rows (`QConv2d::pool`,
//! `PackedConv2d::forward_pooled`), so the pooling's reads overlap the convolution's arithmetic
//! and the pooled tensor is never stored. A max pool keeps its input's parameters, so the
//! integers are those of the separate MaxPool2d and Conv2d.
//!
//! A quantized Conv2d that is a graph output and read by no node (a segmentation head) absorbs
//! the dequantize node its output would get: it hands back NCHW f32 itself
//! (`QConv2d::dequantize`), through a kernel that dequantizes from its accumulators where the
//! geometry allows (`PackedConv2d::forward_dequantized`). The floats are the bits of the
//! separate convolution and dequantization.
//!
//! A quantized Add (or add_relu) with an operand produced by a quantized Conv2d that only the
//! Add reads (a residual block's last convolution, MobileNetV2's projection) is fused into that
//! convolution at conversion: one node, named after the Add (or its ReLU), takes the
//! convolution's input and the Add's other operand, and the convolution adds each output row
//! as it writes it (`QConv2d::residual`, `PackedConv2d::forward_add`). The convolution keeps
//! its own observed output parameters, so the integers are those of the separate Conv2d and
//! Add. [`Prepared::fuse_residual_adds`] turns this off.
//!
//! Everything else stays f32 and the [`QuantReport`] says why.

mod qops;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;

use qgraph::{
    fuse::FusionReport, CustomOp, FusedActivation as GraphActivation, Graph, Node, NodeId, Observer, ObserverKind, Op,
    OpKind, UpsampleMode, Value, ValueType,
};
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvArithmetic, ConvTranspose2dGeometry, ConvWeightQuant, FusedActivation, PackedConv2d,
    PackedConvTranspose2d,
};
use qkernels::eltwise::{ActivationLut, FloatRule, Pool2d};
use qkernels::gemm::PackedWeights;
use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};

pub use qops::{
    Dequantize, FusedAdd, Passthrough, QBinary, QCat, QConv2d, QConvTranspose2d, QLinear, QLut, QPassthrough, Quantize,
};

use crate::qconfig::ConfigSource;
use crate::report::{FloatReason, NodeReport, NodeStatus, QuantReport};
use crate::{ApiError, QConfig, QConfigMap, Result};

/// What convert will do with a node.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Input,
    Float(FloatReason),
    /// Computes its own output parameters (observed).
    Anchor(QConfig),
    /// Keeps its input's parameters.
    Pass,
    /// A ReLU computed by the Add at this index (`add_relu`).
    FusedInto(usize),
}

impl Plan {
    fn is_quantized(&self) -> bool {
        matches!(self, Plan::Anchor(_) | Plan::Pass | Plan::FusedInto(_))
    }
}

/// A fused graph with observers attached, ready for calibration.
#[derive(Debug)]
pub struct Prepared {
    graph: Graph,
    plans: Vec<Plan>,
    /// Activation observers, by the index of the node whose output they watch.
    observers: BTreeMap<usize, Box<dyn Observer>>,
    /// Add index -> index of the ReLU fused into it (whose output the Add's observer watches).
    fused_relu: BTreeMap<usize, usize>,
    batches: usize,
    fusion: FusionReport,
    /// Whether convert fuses an Add into the Conv2d that feeds it (on by default).
    residual_fusion: bool,
}

fn describe(source: &ConfigSource) -> String {
    match source {
        ConfigSource::Name(n) => format!("node name `{n}`"),
        ConfigSource::Pattern(p) => format!("name pattern `{p}`"),
        ConfigSource::Kind(k) => format!("op kind {k:?}"),
        ConfigSource::Global => "global default".into(),
    }
}

/// Normalizes a possibly negative dimension against `rank`.
fn norm_dim(dim: isize, rank: usize) -> Option<usize> {
    let d = if dim < 0 { dim + rank as isize } else { dim };
    (0..rank as isize).contains(&d).then_some(d as usize)
}

/// Checks that a configuration can drive the int8 kernels.
fn check_config(name: &str, c: &QConfig) -> Result<()> {
    let a = &c.activation;
    if a.spec.dtype != DType::QUInt8 {
        return Err(ApiError::Config {
            detail: format!("node `{name}`: static activations must be quint8, got {}", a.spec.dtype),
        });
    }
    if matches!(
        a.kind,
        ObserverKind::PerChannelMinMax { .. } | ObserverKind::MovingAveragePerChannelMinMax { .. }
    ) {
        return Err(ApiError::Config {
            detail: format!("node `{name}`: activations need a per-tensor observer"),
        });
    }
    if c.weight.spec.dtype != DType::QInt8 {
        return Err(ApiError::Config {
            detail: format!("node `{name}`: weights must be qint8, got {}", c.weight.spec.dtype),
        });
    }
    Ok(())
}

/// Fuses `graph` (conv+bn(+relu), linear+relu, ...), decides which nodes will run int8 under
/// `config`, and attaches the observers calibration needs.
pub fn prepare(graph: &Graph, config: &QConfigMap) -> Result<Prepared> {
    let _span = tracing::info_span!("prepare").entered();
    let mut graph = graph.clone();
    let mut fusion = graph.fuse_auto()?;
    fusion.groups.extend(graph.fuse_relu6()?.groups);
    let shapes = graph.infer_shapes(None)?;
    let nodes = graph.nodes();
    let mut plans: Vec<Plan> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let plan = match &node.op {
            Op::Input { .. } => Plan::Input,
            op => {
                let (cfg, source) = config.resolve(&node.name, op.kind());
                match cfg {
                    None => Plan::Float(FloatReason::OptedOut {
                        rule: describe(&source),
                    }),
                    Some(cfg) => {
                        check_config(&node.name, &cfg)?;
                        plan_node(&graph, node, &shapes, i, &plans, cfg)
                    }
                }
            }
        };
        plans.push(plan);
    }
    let fused_relu = fuse_add_relu(&graph, &mut plans);

    let mut observers: BTreeMap<usize, Box<dyn Observer>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        // Pass-through nodes only follow quantized inputs, so only anchors open a region.
        if let Plan::Anchor(cfg) = &plans[i] {
            observers.insert(i, cfg.activation.build(&node.name));
            // Float values entering the int8 region need parameters for their quantize node.
            for input in &node.inputs {
                if !plans[input.0].is_quantized() && !observers.contains_key(&input.0) {
                    observers.insert(input.0, cfg.activation.build(&nodes[input.0].name));
                }
            }
        }
    }
    tracing::info!(
        nodes = nodes.len(),
        quantized = plans.iter().filter(|p| p.is_quantized()).count(),
        observers = observers.len(),
        "prepared"
    );
    Ok(Prepared {
        graph,
        plans,
        observers,
        fused_relu,
        batches: 0,
        fusion,
        residual_fusion: true,
    })
}

/// `(producer, reader)` index pairs where `reader` is the only node that reads `producer`,
/// and `producer` is not a graph output: the pairs a fusion may merge.
fn sole_readers(graph: &Graph) -> impl Iterator<Item = (usize, usize)> + '_ {
    let readers = graph.consumers();
    (0..graph.nodes().len()).filter_map(move |i| match readers[i].as_slice() {
        [reader] if !graph.outputs().contains(&NodeId(i)) => Some((i, reader.0)),
        _ => None,
    })
}

/// Marks each ReLU that alone reads a quantized Add (not a graph output) as fused into it;
/// returns Add index -> ReLU index.
fn fuse_add_relu(graph: &Graph, plans: &mut [Plan]) -> BTreeMap<usize, usize> {
    let nodes = graph.nodes();
    let mut fused = BTreeMap::new();
    for (i, r) in sole_readers(graph) {
        if matches!(nodes[i].op, Op::Add)
            && matches!(plans[i], Plan::Anchor(_))
            && matches!(nodes[r].op, Op::Relu)
            && plans[r] == Plan::Pass
        {
            plans[r] = Plan::FusedInto(i);
            fused.insert(i, r);
        }
    }
    fused
}

/// Each quantized Conv2d whose only input is a channel `cat` that it alone reads (and that is
/// not a graph output): conv index -> cat index. The convolution then concatenates the cat's
/// inputs itself (`QConv2d::concat`), with the same integers as the separate cat.
fn fuse_cat_conv(graph: &Graph, plans: &[Plan]) -> BTreeMap<usize, usize> {
    let nodes = graph.nodes();
    sole_readers(graph)
        .filter(|&(i, r)| {
            matches!(nodes[i].op, Op::Cat { .. })
                && matches!(plans[i], Plan::Anchor(_))
                && matches!(nodes[r].op, Op::Conv2d(_))
                && matches!(plans[r], Plan::Anchor(_))
                && nodes[r].inputs == [NodeId(i)]
        })
        .map(|(i, r)| (r, i))
        .collect()
}

/// Each quantized MaxPool2d that a quantized Conv2d alone reads (not a graph output), when that
/// convolution absorbs nothing else: conv index -> pool index. The convolution then pools the
/// pool's input itself (`QConv2d::pool`), with the same integers as the separate pooling.
fn fuse_pool_conv(graph: &Graph, plans: &[Plan], taken: &BTreeSet<usize>) -> BTreeMap<usize, usize> {
    let nodes = graph.nodes();
    sole_readers(graph)
        .filter(|&(i, r)| {
            matches!(nodes[i].op, Op::MaxPool2d(_))
                && matches!(plans[i], Plan::Pass)
                && matches!(nodes[r].op, Op::Conv2d(_))
                && matches!(plans[r], Plan::Anchor(_))
                && nodes[r].inputs == [NodeId(i)]
                && !taken.contains(&r)
        })
        .map(|(i, r)| (r, i))
        .collect()
}

/// Each quantized Add with an operand produced by a quantized Conv2d that the Add alone reads
/// (not a graph output, not reading a fused cat): Add index -> (Conv2d index, whether the
/// convolution is the first operand). With two such operands the first is fused.
fn fuse_conv_add(graph: &Graph, plans: &[Plan], fused_cat: &BTreeMap<usize, usize>) -> BTreeMap<usize, (usize, bool)> {
    let nodes = graph.nodes();
    let sole: BTreeMap<usize, usize> = sole_readers(graph).collect();
    let fusable = |c: NodeId, add: usize| {
        matches!(nodes[c.0].op, Op::Conv2d(_))
            && matches!(plans[c.0], Plan::Anchor(_))
            && sole.get(&c.0) == Some(&add)
            && !fused_cat.contains_key(&c.0)
    };
    let mut fused = BTreeMap::new();
    for (a, node) in nodes.iter().enumerate() {
        if !matches!(node.op, Op::Add) || !matches!(plans[a], Plan::Anchor(_)) {
            continue;
        }
        let [x, y] = node.inputs[..] else { continue };
        if x == y {
            continue;
        }
        if fusable(x, a) {
            fused.insert(a, (x.0, true));
        } else if fusable(y, a) {
            fused.insert(a, (y.0, false));
        }
    }
    fused
}

/// Quantized Conv2d nodes that are graph outputs (listed once) and read by no node: their
/// output's dequantize node is fused into them (`QConv2d::dequantize`).
fn fuse_conv_dequantize(graph: &Graph, plans: &[Plan]) -> Vec<usize> {
    let readers = graph.consumers();
    let outputs = graph.outputs();
    (0..graph.nodes().len())
        .filter(|&i| {
            matches!(graph.nodes()[i].op, Op::Conv2d(_))
                && matches!(plans[i], Plan::Anchor(_))
                && readers[i].is_empty()
                && outputs.iter().filter(|o| o.0 == i).count() == 1
        })
        .collect()
}

/// Whether (and how) one node can run int8, given the plans of the nodes before it.
fn plan_node(graph: &Graph, node: &Node, shapes: &[Vec<usize>], i: usize, plans: &[Plan], cfg: QConfig) -> Plan {
    let nodes = graph.nodes();
    let float_input = node.inputs.iter().any(|j| match &nodes[j.0].op {
        Op::Input { ty, .. } => *ty != ValueType::F32,
        _ => false,
    });
    if float_input {
        return Plan::Float(FloatReason::Other("its input is not a float tensor".into()));
    }
    let in_shapes: Vec<&Vec<usize>> = node.inputs.iter().map(|j| &shapes[j.0]).collect();
    let inputs_quantized = node.inputs.iter().all(|j| plans[j.0].is_quantized());
    let pass = || {
        if inputs_quantized {
            Plan::Pass
        } else {
            Plan::Float(FloatReason::Other(
                "its input stays f32 (pass-through ops follow their input)".into(),
            ))
        }
    };
    let no_kernel = |why: &str| Plan::Float(FloatReason::Other(format!("no int8 kernel for {why}")));
    match &node.op {
        Op::Conv2d(_) | Op::ConvTranspose2d(_) => Plan::Anchor(cfg),
        Op::Linear(_) => {
            if in_shapes.first().is_some_and(|s| s.len() == 4) {
                no_kernel("Linear on a 4-d input")
            } else {
                Plan::Anchor(cfg)
            }
        }
        Op::Add | Op::Mul => {
            if in_shapes.len() == 2 && in_shapes[0] == in_shapes[1] {
                Plan::Anchor(cfg)
            } else {
                no_kernel("broadcasting Add/Mul")
            }
        }
        Op::Cat { dim } => {
            let rank = shapes[i].len();
            if norm_dim(*dim, rank) == Some(1) && (rank == 4 || rank == 2) {
                Plan::Anchor(cfg)
            } else {
                no_kernel("Cat outside the channel dimension")
            }
        }
        Op::Hardswish | Op::Sigmoid | Op::Tanh | Op::Silu | Op::Gelu(_) => Plan::Anchor(cfg),
        Op::MaxPool2d(_) | Op::AvgPool2d(_) | Op::AdaptiveAvgPool2d { .. } | Op::Relu | Op::Relu6 => pass(),
        Op::Dropout { .. } | Op::Identity => pass(),
        Op::Flatten { start_dim, end_dim } => {
            let rank = in_shapes.first().map_or(0, |s| s.len());
            if norm_dim(*start_dim, rank) == Some(1) && norm_dim(*end_dim, rank) == Some(rank.saturating_sub(1)) {
                pass()
            } else {
                no_kernel("Flatten other than flatten(1)")
            }
        }
        Op::Upsample { mode, .. } => match mode {
            UpsampleMode::Nearest | UpsampleMode::Bilinear { align_corners: false } => pass(),
            _ => no_kernel("Upsample with align_corners"),
        },
        _ => Plan::Float(FloatReason::NoKernel),
    }
}

impl Prepared {
    /// The fused float graph being calibrated.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// What fusion did.
    pub fn fusion(&self) -> &FusionReport {
        &self.fusion
    }

    /// Names of the nodes whose outputs are observed.
    pub fn observed(&self) -> Vec<&str> {
        self.observers
            .keys()
            .map(|&i| self.graph.nodes()[i].name.as_str())
            .collect()
    }

    /// Batches seen so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Whether convert fuses each quantized Add into the Conv2d that alone feeds one of its
    /// operands (the default). The fused and separate graphs compute the same bytes; turning it
    /// off gives the separate nodes (to compare them, or to look at the convolution's output).
    pub fn fuse_residual_adds(&mut self, on: bool) -> &mut Prepared {
        self.residual_fusion = on;
        self
    }

    /// Runs every batch (one `Vec<Value>` of graph inputs each) through the float graph and
    /// feeds the observers. Shows progress on a terminal. Returns the number of batches.
    pub fn calibrate<I>(&mut self, batches: I) -> Result<usize>
    where
        I: IntoIterator<Item = Vec<Value>>,
    {
        let _span = tracing::info_span!("calibrate").entered();
        // Node name -> key of the observer watching that node's output (an Add fused with a
        // ReLU is watched at the ReLU).
        let nodes = self.graph.nodes();
        let index: HashMap<String, usize> = self
            .observers
            .keys()
            .map(|&k| (nodes[*self.fused_relu.get(&k).unwrap_or(&k)].name.clone(), k))
            .collect();
        let input_ids = self.graph.input_ids();
        let tty = std::io::stderr().is_terminal();
        let mut seen = 0;
        for inputs in batches {
            for (id, value) in input_ids.iter().zip(&inputs) {
                if let (Some(obs), Value::F32(t)) = (self.observers.get_mut(&id.0), value) {
                    obs.observe(t)?;
                }
            }
            let observers = &mut self.observers;
            self.graph.run_with(inputs, |node, value| {
                if let (Some(obs), Value::F32(t)) = (index.get(&node.name).and_then(|k| observers.get_mut(k)), value) {
                    obs.observe(t)?;
                }
                Ok(())
            })?;
            seen += 1;
            if tty {
                eprint!("\rcalibrating: {seen} batches");
            }
        }
        if tty && seen > 0 {
            eprintln!();
        }
        self.batches += seen;
        Ok(seen)
    }

    /// The activation parameters chosen so far, by node name.
    pub fn activation_qparams(&self) -> Result<BTreeMap<String, QParams>> {
        self.observers
            .iter()
            .map(|(&i, o)| Ok((self.graph.nodes()[i].name.clone(), o.qparams()?)))
            .collect()
    }

    /// Quantizes weights, packs them and rebuilds the graph with int8 kernels and boundary
    /// quantize/dequantize nodes. Errors if no batch was calibrated.
    pub fn convert(&self) -> Result<(Graph, QuantReport)> {
        let _span = tracing::info_span!("convert").entered();
        if self.batches == 0 && !self.observers.is_empty() {
            return Err(ApiError::Config {
                detail: "no calibration data: call calibrate() with at least one batch before convert()".into(),
            });
        }
        let act: BTreeMap<usize, ActQuant> = self
            .observers
            .iter()
            .map(|(&i, o)| Ok((i, qops::act_quant(&o.qparams()?)?)))
            .collect::<Result<_>>()?;
        Converter::new(self, act, BTreeMap::new()).run()
    }

    /// Converts with parameters fixed in advance instead of observed ones: `activations` by the
    /// name of the node whose output they quantize (graph inputs included), `weights` by the
    /// name of the Conv/Linear node. This is how quantization-aware training hands its learned
    /// parameters to the same conversion; every observed value must have an entry.
    pub fn convert_with(
        &self,
        activations: &BTreeMap<String, QParams>,
        weights: &BTreeMap<String, QParams>,
    ) -> Result<(Graph, QuantReport)> {
        let _span = tracing::info_span!("convert_with").entered();
        let act: BTreeMap<usize, ActQuant> = self
            .observers
            .keys()
            .map(|&i| {
                let name = &self.graph.nodes()[i].name;
                let q = activations.get(name).ok_or_else(|| ApiError::Config {
                    detail: format!("no activation parameters given for `{name}`, whose output is quantized"),
                })?;
                Ok((i, qops::act_quant(q)?))
            })
            .collect::<Result<_>>()?;
        Converter::new(self, act, weights.clone()).run()
    }
}

/// Builds the converted graph node by node.
struct Converter<'a> {
    prepared: &'a Prepared,
    act: BTreeMap<usize, ActQuant>,
    /// Weight parameters fixed in advance (quantization-aware training), by node name.
    weights: BTreeMap<String, QParams>,
    out_q: Vec<Option<ActQuant>>,
    nodes: Vec<Node>,
    float_id: Vec<Option<NodeId>>,
    quant_id: Vec<Option<NodeId>>,
    report: Vec<NodeReport>,
}

impl<'a> Converter<'a> {
    fn new(
        prepared: &'a Prepared,
        act: BTreeMap<usize, ActQuant>,
        weights: BTreeMap<String, QParams>,
    ) -> Converter<'a> {
        let n = prepared.graph.nodes().len();
        Converter {
            prepared,
            act,
            weights,
            out_q: vec![None; n],
            nodes: Vec::new(),
            float_id: vec![None; n],
            quant_id: vec![None; n],
            report: Vec::new(),
        }
    }

    fn push(&mut self, name: String, op: Op, inputs: Vec<NodeId>, params: BTreeMap<String, Tensor>) -> NodeId {
        self.nodes.push(Node {
            name,
            op,
            inputs,
            params,
            qconfig: None,
        });
        NodeId(self.nodes.len() - 1)
    }

    /// The quantized version of original node `j`'s output, adding a quantize node if needed.
    fn quantized(&mut self, j: usize) -> Result<(NodeId, ActQuant)> {
        if let (Some(id), Some(q)) = (self.quant_id[j], self.out_q[j]) {
            return Ok((id, q));
        }
        let name = &self.prepared.graph.nodes()[j].name;
        let q = *self.act.get(&j).ok_or_else(|| ApiError::Config {
            detail: format!("internal: no observer on `{name}` for its quantize node"),
        })?;
        let float = self.float_id[j].expect("float producers are built before their readers");
        let id = self.push(
            format!("{name}.quantize"),
            Op::Custom(Arc::new(Quantize { q })),
            vec![float],
            BTreeMap::new(),
        );
        self.quant_id[j] = Some(id);
        self.out_q[j] = Some(q);
        Ok((id, q))
    }

    /// The float version of original node `j`'s output, adding a dequantize node if needed.
    fn float(&mut self, j: usize) -> NodeId {
        if let Some(id) = self.float_id[j] {
            return id;
        }
        let name = self.prepared.graph.nodes()[j].name.clone();
        let q = self.quant_id[j].expect("quantized producers are built before their readers");
        let id = self.push(
            format!("{name}.dequantize"),
            Op::Custom(Arc::new(Dequantize)),
            vec![q],
            BTreeMap::new(),
        );
        self.float_id[j] = Some(id);
        id
    }

    fn run(mut self) -> Result<(Graph, QuantReport)> {
        let graph = &self.prepared.graph;
        let fused_cat = fuse_cat_conv(graph, &self.prepared.plans);
        let cat_reader: BTreeMap<usize, usize> = fused_cat.iter().map(|(&conv, &cat)| (cat, conv)).collect();
        let fused_dequantize = fuse_conv_dequantize(graph, &self.prepared.plans);
        let fused_add = if self.prepared.residual_fusion {
            fuse_conv_add(graph, &self.prepared.plans, &fused_cat)
        } else {
            BTreeMap::new()
        };
        let add_reader: BTreeMap<usize, usize> = fused_add.iter().map(|(&add, &(conv, _))| (conv, add)).collect();
        // Convolutions that already absorb a neighbour keep it alone.
        let taken: BTreeSet<usize> = fused_cat
            .keys()
            .chain(add_reader.keys())
            .chain(&fused_dequantize)
            .copied()
            .collect();
        let fused_pool = fuse_pool_conv(graph, &self.prepared.plans, &taken);
        let pool_reader: BTreeMap<usize, usize> = fused_pool.iter().map(|(&conv, &pool)| (pool, conv)).collect();
        // Fused convolutions waiting for their Add (whose other operand may come later): the op
        // and the convolution's inputs, by Add index.
        let mut pending: BTreeMap<usize, (Arc<dyn CustomOp>, Vec<NodeId>)> = BTreeMap::new();
        for (i, node) in graph.nodes().iter().enumerate() {
            let display = node.op.display_name();
            if let Some((op, mut inputs)) = pending.remove(&i) {
                // This Add runs inside the convolution that feeds it; the node is placed here,
                // after both operands, and produces the Add's (or its ReLU's) value.
                let (conv, conv_first) = fused_add[&i];
                let skip = node.inputs[usize::from(conv_first)];
                inputs.push(self.quantized(skip.0)?.0);
                let fused_relu = self.prepared.fused_relu.get(&i).copied();
                let name = fused_relu.map_or(&node.name, |r| &graph.nodes()[r].name).clone();
                let id = self.push(name, Op::Custom(op), inputs, BTreeMap::new());
                let q = self.act[&i];
                self.quant_id[i] = Some(id);
                self.out_q[i] = Some(q);
                let kind = if fused_relu.is_some() { "add_relu" } else { "add" };
                self.report.push(NodeReport {
                    name: node.name.clone(),
                    op: display,
                    status: NodeStatus::Quantized {
                        detail: format!(
                            "fused into `{}`, which adds its output rows to the other operand as it writes them \
                             ({kind}); out scale {:.6e}, zero point {}",
                            graph.nodes()[conv].name,
                            q.scale,
                            q.zero_point
                        ),
                    },
                });
                continue;
            }
            if let Some(&conv) = pool_reader.get(&i) {
                // The convolution reading this pooling takes its input and pools it.
                let q = self.quantized(node.inputs[0].0)?.1;
                self.report.push(NodeReport {
                    name: node.name.clone(),
                    op: display,
                    status: NodeStatus::Quantized {
                        detail: format!(
                            "fused into `{}`, which pools its input rows as it reads them; scale {:.6e}, zero point \
                             {} (its input's)",
                            graph.nodes()[conv].name,
                            q.scale,
                            q.zero_point
                        ),
                    },
                });
                continue;
            }
            if let Some(&conv) = cat_reader.get(&i) {
                // The convolution reading this cat takes its inputs and concatenates them.
                self.report.push(NodeReport {
                    name: node.name.clone(),
                    op: display,
                    status: NodeStatus::Quantized {
                        detail: format!(
                            "fused into `{}`, which concatenates its inputs as it reads them; out scale {:.6e}, \
                             zero point {}",
                            graph.nodes()[conv].name,
                            self.act[&i].scale,
                            self.act[&i].zero_point
                        ),
                    },
                });
                continue;
            }
            match self.prepared.plans[i].clone() {
                Plan::Input | Plan::Float(_) => {
                    let inputs: Vec<NodeId> = node.inputs.iter().map(|j| self.float(j.0)).collect();
                    let id = self.push(node.name.clone(), node.op.clone(), inputs, node.params.clone());
                    self.float_id[i] = Some(id);
                    let status = match &self.prepared.plans[i] {
                        Plan::Float(reason) => NodeStatus::Float { reason: reason.clone() },
                        _ => NodeStatus::NotApplicable,
                    };
                    self.report.push(NodeReport {
                        name: node.name.clone(),
                        op: display,
                        status,
                    });
                }
                Plan::FusedInto(add) => {
                    // The Add node already computes this ReLU's value.
                    self.quant_id[i] = self.quant_id[add];
                    self.out_q[i] = self.out_q[add];
                    self.report.push(NodeReport {
                        name: node.name.clone(),
                        op: display,
                        status: NodeStatus::Quantized {
                            detail: format!("fused into `{}` (add_relu)", graph.nodes()[add].name),
                        },
                    });
                }
                plan @ (Plan::Anchor(_) | Plan::Pass) => {
                    let concat = fused_cat.get(&i).map(|&cat| self.act[&cat]);
                    let read = match (fused_cat.get(&i), fused_pool.get(&i)) {
                        (Some(&cat), _) => &graph.nodes()[cat].inputs,
                        (None, Some(&pool)) => &graph.nodes()[pool].inputs,
                        (None, None) => &node.inputs,
                    };
                    let pool = fused_pool.get(&i).and_then(|&p| pool_of(&graph.nodes()[p]));
                    let mut inputs = Vec::with_capacity(read.len());
                    let mut in_q = Vec::with_capacity(read.len());
                    for j in read {
                        let (id, q) = self.quantized(j.0)?;
                        inputs.push(id);
                        in_q.push(q);
                    }
                    let fused_relu = self.prepared.fused_relu.get(&i).copied();
                    let dequantize = fused_dequantize.contains(&i);
                    let residual = add_reader.get(&i).map(|&add| {
                        (
                            add,
                            FusedAdd {
                                output: self.act[&add],
                                relu: self.prepared.fused_relu.contains_key(&add),
                                conv_first: fused_add[&add].1,
                            },
                        )
                    });
                    let (op, q, detail): (Arc<dyn CustomOp>, ActQuant, String) = match plan {
                        Plan::Anchor(cfg) => {
                            let out = self.act[&i];
                            let fusion = AnchorFusion {
                                relu: fused_relu.is_some(),
                                concat,
                                dequantize,
                                residual: residual.map(|(_, r)| r),
                                pool,
                            };
                            let (op, detail) =
                                build_anchor(node, &cfg, &in_q, out, self.weights.get(&node.name), fusion)?;
                            (op, out, detail)
                        }
                        _ => {
                            let q = in_q[0];
                            (build_pass(node)?, q, "quint8 with its input's parameters".to_string())
                        }
                    };
                    if let Some((add, _)) = residual {
                        // The node is built where the Add is (its other operand may come later).
                        pending.insert(add, (op, inputs));
                        self.out_q[i] = Some(q);
                        self.report.push(NodeReport {
                            name: node.name.clone(),
                            op: display,
                            status: NodeStatus::Quantized {
                                detail: format!(
                                    "{detail}; out scale {:.6e}, zero point {} (its output is only added, inside it)",
                                    q.scale, q.zero_point
                                ),
                            },
                        });
                        continue;
                    }
                    // A fused add_relu produces the ReLU's value and takes its name.
                    let name = fused_relu.map_or(&node.name, |r| &graph.nodes()[r].name).clone();
                    let id = self.push(name, Op::Custom(op), inputs, BTreeMap::new());
                    if dequantize {
                        // The node's value is already the float output (read by no node).
                        self.float_id[i] = Some(id);
                    } else {
                        self.quant_id[i] = Some(id);
                    }
                    self.out_q[i] = Some(q);
                    self.report.push(NodeReport {
                        name: node.name.clone(),
                        op: display,
                        status: NodeStatus::Quantized {
                            detail: format!("{detail}; out scale {:.6e}, zero point {}", q.scale, q.zero_point),
                        },
                    });
                }
            }
        }
        let outputs: Vec<NodeId> = graph.outputs().iter().map(|o| self.float(o.0)).collect();
        let converted = Graph::from_nodes(self.nodes, outputs)?;
        Ok((converted, QuantReport { nodes: self.report }))
    }
}

/// Quantizes a weight with the configured observer (after fusion, so BN is already folded).
fn quantize_weight(
    node: &Node,
    cfg: &QConfig,
    axis: usize,
    per_channel_ok: bool,
    given: Option<&QParams>,
) -> Result<(QTensor, String)> {
    let weight = node.param("weight")?;
    if let Some(qparams) = given {
        let detail = match qparams {
            QParams::PerTensor { .. } => "qint8 per-tensor weights (given)",
            QParams::PerChannel { .. } => "qint8 per-channel weights (given)",
        };
        return Ok((
            QTensor::quantize(weight, DType::QInt8, qparams.clone())?,
            detail.to_string(),
        ));
    }
    let mut wcfg = cfg.weight;
    let per_channel = matches!(
        wcfg.kind,
        ObserverKind::PerChannelMinMax { .. } | ObserverKind::MovingAveragePerChannelMinMax { .. }
    );
    if per_channel && !per_channel_ok {
        // One scale per group-local output channel is not expressible; fall back to one scale.
        wcfg.kind = ObserverKind::MinMax;
        wcfg.spec = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    }
    match &mut wcfg.kind {
        ObserverKind::PerChannelMinMax { axis: a } | ObserverKind::MovingAveragePerChannelMinMax { axis: a, .. } => {
            *a = axis
        }
        _ => {}
    }
    let mut obs = wcfg.build(&node.param_name("weight"));
    obs.observe(weight)?;
    let qparams = obs.qparams()?;
    let detail = match &qparams {
        QParams::PerTensor { .. } => "qint8 per-tensor weights",
        QParams::PerChannel { .. } => "qint8 per-channel weights",
    };
    Ok((QTensor::quantize(weight, DType::QInt8, qparams)?, detail.to_string()))
}

fn int8_values(q: &QTensor) -> Vec<i8> {
    q.int_repr().into_iter().map(|v| v as i8).collect()
}

fn bias_of(node: &Node) -> Option<Vec<f32>> {
    node.params.get("bias").map(|b| b.data().to_vec())
}

fn fused(a: GraphActivation) -> FusedActivation {
    match a {
        GraphActivation::None => FusedActivation::None,
        GraphActivation::Relu => FusedActivation::Relu,
        GraphActivation::Relu6 => FusedActivation::Relu6,
    }
}

/// What an anchor absorbs from its neighbours.
#[derive(Debug, Clone, Copy)]
struct AnchorFusion {
    /// The ReLU after an Add (`add_relu`).
    relu: bool,
    /// A Conv2d reads a cat's inputs, requantized to these parameters.
    concat: Option<ActQuant>,
    /// A Conv2d hands back the dequantized float output.
    dequantize: bool,
    /// A Conv2d applies the Add that alone reads its output.
    residual: Option<FusedAdd>,
    /// A Conv2d reads the max pooling that alone feeds it, pooling its input rows itself.
    pool: Option<Pool2d>,
}

fn build_anchor(
    node: &Node,
    cfg: &QConfig,
    in_q: &[ActQuant],
    out: ActQuant,
    weight: Option<&QParams>,
    fusion: AnchorFusion,
) -> Result<(Arc<dyn CustomOp>, String)> {
    let AnchorFusion {
        relu: fused_relu,
        concat,
        dequantize,
        residual,
        pool,
    } = fusion;
    Ok(match &node.op {
        Op::Conv2d(a) => {
            let (w, detail) = quantize_weight(node, cfg, 0, true, weight)?;
            let geometry = Conv2dGeometry::new(a.in_channels, a.out_channels, (a.kernel[0], a.kernel[1]))
                .with_stride(a.stride[0], a.stride[1])
                .with_padding(a.padding[0], a.padding[1])
                .with_dilation(a.dilation[0], a.dilation[1])
                .with_groups(a.groups);
            let bias = bias_of(node);
            let arithmetic = if cfg.pytorch_parity {
                ConvArithmetic::FbgemmParity
            } else {
                ConvArithmetic::Exact
            };
            let conv = PackedConv2d::new(
                geometry,
                &int8_values(&w),
                ConvWeightQuant::from_qparams(w.qparams())?,
                bias.clone(),
            )?
            .with_arithmetic(arithmetic)?;
            let op = QConv2d {
                conv,
                weight: w,
                bias,
                output: out,
                activation: fused(a.activation),
                concat,
                dequantize,
                residual,
                pool,
            };
            let detail = match concat {
                Some(_) => format!("{detail}; reads the concatenation of its inputs (fused cat)"),
                None => detail,
            };
            let detail = match (&pool, op.conv.fuses_concat()) {
                (Some(_), true) => format!("{detail}; reads the max pooling of its input, made row by row as it copies its input rows (fused max_pool2d)"),
                (Some(_), false) => format!("{detail}; pools its input first (fused max_pool2d, stored on this path)"),
                (None, _) => detail,
            };
            let detail = if dequantize {
                let how = if op.conv.dequantizes_in_kernel() {
                    "f32 NCHW straight from the accumulators"
                } else {
                    "f32 NCHW"
                };
                format!("{detail}; output dequantize fused ({how})")
            } else {
                detail
            };
            let detail = match residual {
                Some(add) => {
                    let (kind, operand) = (
                        if add.relu { "add_relu" } else { "add" },
                        if add.conv_first { "first" } else { "second" },
                    );
                    let how = if op.conv.adds_in_rows() {
                        "on each output row as the kernel writes it"
                    } else {
                        "over its output"
                    };
                    format!("{detail}; the residual {kind} reading it as {operand} operand is fused ({how})")
                }
                None => detail,
            };
            (Arc::new(op), detail)
        }
        Op::ConvTranspose2d(a) => {
            let (w, detail) = quantize_weight(node, cfg, 1, a.groups == 1, weight)?;
            let geometry = ConvTranspose2dGeometry::new(a.in_channels, a.out_channels, (a.kernel[0], a.kernel[1]))
                .with_stride(a.stride[0], a.stride[1])
                .with_padding(a.padding[0], a.padding[1])
                .with_output_padding(a.output_padding[0], a.output_padding[1])
                .with_dilation(a.dilation[0], a.dilation[1])
                .with_groups(a.groups);
            let bias = bias_of(node);
            let conv = PackedConvTranspose2d::new(
                geometry,
                &int8_values(&w),
                ConvWeightQuant::from_qparams(w.qparams())?,
                bias.clone(),
            )?;
            let op = QConvTranspose2d {
                conv,
                weight: w,
                bias,
                output: out,
                activation: fused(a.activation),
            };
            (Arc::new(op), detail)
        }
        Op::Linear(a) => {
            let (w, detail) = quantize_weight(node, cfg, 0, true, weight)?;
            let packed = PackedWeights::from_qparams(&int8_values(&w), a.out_features, a.in_features, w.qparams())?;
            let op = QLinear {
                packed,
                weight: w,
                bias: bias_of(node),
                output: out,
                relu: a.activation == GraphActivation::Relu,
            };
            (Arc::new(op), detail)
        }
        Op::Add | Op::Mul => {
            let mul = matches!(node.op, Op::Mul);
            (
                Arc::new(QBinary {
                    mul,
                    relu: fused_relu,
                    output: out,
                }),
                if fused_relu {
                    "requantized to the observed output of the ReLU fused into it (add_relu)".into()
                } else {
                    "requantized to observed output".into()
                },
            )
        }
        Op::Cat { .. } => (
            Arc::new(QCat { output: out }),
            "inputs requantized to observed output".into(),
        ),
        op @ (Op::Hardswish | Op::Sigmoid | Op::Tanh | Op::Silu | Op::Gelu(_)) => {
            let (name, lut) = match op {
                Op::Hardswish => (
                    "QuantizedHardswish",
                    ActivationLut::hardswish(in_q[0], out, FloatRule::Vectorized)?,
                ),
                Op::Sigmoid => (
                    "QuantizedSigmoid",
                    ActivationLut::sigmoid(in_q[0], out, FloatRule::Vectorized)?,
                ),
                Op::Tanh => (
                    "QuantizedTanh",
                    ActivationLut::tanh(in_q[0], out, FloatRule::Vectorized)?,
                ),
                Op::Silu => (
                    "QuantizedSiLU",
                    ActivationLut::silu(in_q[0], out, FloatRule::Vectorized)?,
                ),
                _ => (
                    "QuantizedGELU",
                    ActivationLut::gelu(in_q[0], out, FloatRule::Vectorized)?,
                ),
            };
            (
                Arc::new(QLut { name, lut, output: out }),
                "256-entry lookup table".into(),
            )
        }
        other => {
            return Err(ApiError::Config {
                detail: format!("internal: {:?} is not an anchor op", other.kind()),
            })
        }
    })
}

/// The window of a pooling node's attributes.
fn pool_window(p: &qgraph::Pool2dAttrs) -> Pool2d {
    Pool2d::new(p.kernel[0], p.kernel[1])
        .with_stride(p.stride[0], p.stride[1])
        .with_padding(p.padding[0], p.padding[1])
}

/// The window of a MaxPool2d node (`None` for other ops).
fn pool_of(node: &Node) -> Option<Pool2d> {
    match &node.op {
        Op::MaxPool2d(p) => Some(pool_window(p)),
        _ => None,
    }
}

fn build_pass(node: &Node) -> Result<Arc<dyn CustomOp>> {
    let op = match &node.op {
        Op::MaxPool2d(p) => Passthrough::MaxPool(pool_window(p)),
        Op::AvgPool2d(p) => Passthrough::AvgPool {
            pool: pool_window(p),
            count_include_pad: p.count_include_pad,
        },
        Op::AdaptiveAvgPool2d { output } => Passthrough::AdaptiveAvgPool {
            output: (output[0], output[1]),
        },
        Op::Relu => Passthrough::Relu,
        Op::Relu6 => Passthrough::Relu6,
        Op::Flatten { .. } => Passthrough::Flatten,
        Op::Upsample { scale, mode } => match mode {
            UpsampleMode::Nearest => Passthrough::UpsampleNearest {
                scale: (scale[0], scale[1]),
            },
            _ => Passthrough::UpsampleBilinear {
                scale: (scale[0], scale[1]),
            },
        },
        _ => Passthrough::Identity,
    };
    Ok(Arc::new(QPassthrough { op }))
}

/// The op kinds static quantization can run in int8 (anchors and pass-through ops).
pub fn supported_ops() -> Vec<(OpKind, &'static str)> {
    use OpKind::*;
    vec![
        (Conv2d, "int8 conv (im2col / 1x1 GEMM / direct depthwise), fused ReLU"),
        (
            ConvTranspose2d,
            "int8 transposed conv, per-tensor or per-channel weights",
        ),
        (Linear, "int8 GEMM with requantize epilogue, fused ReLU"),
        (
            Add,
            "requantized element-wise add, a following ReLU fused (add_relu); fused into a Conv2d whose output only it reads",
        ),
        (Mul, "requantized element-wise multiply"),
        (
            Cat,
            "channel concatenation with requantization; fused into a Conv2d that alone reads it",
        ),
        (Hardswish, "256-entry lookup table"),
        (Sigmoid, "256-entry lookup table"),
        (Tanh, "256-entry lookup table"),
        (Silu, "256-entry lookup table"),
        (Gelu, "256-entry lookup table"),
        (MaxPool2d, "int8, keeps input parameters; fused into a Conv2d that alone reads it"),
        (AvgPool2d, "int8, keeps input parameters"),
        (AdaptiveAvgPool2d, "int8, keeps input parameters"),
        (Relu, "int8 clamp, keeps input parameters"),
        (Relu6, "int8 clamp, keeps input parameters"),
        (Flatten, "int8 reorder, keeps input parameters"),
        (Upsample, "nearest / bilinear, keeps input parameters"),
        (Dropout, "identity"),
        (Identity, "identity"),
    ]
}
