//! [`TrainModel`]: a graph as a list of [`Layer`]s in topological order. Forward runs every
//! layer (keeping what backward needs in training mode); backward walks the layers in reverse,
//! summing the gradients of values read by several layers. Parameters are visited by their
//! full state_dict name (`<node>.<local>`), in node order, which is what optimizers key on.

use qtensor::Tensor;

use super::layer::{ForwardCtx, Layer, Mode, ParamRef};
use super::op_layer::OpLayer;
use super::Rng;
use crate::graph::Graph;
use crate::op::Op;
use crate::{GraphError, Result};

/// One node of a [`TrainModel`]: a graph input (`layer` is `None`) or a layer on earlier nodes.
#[derive(Debug)]
pub struct TrainNode {
    pub name: String,
    pub inputs: Vec<usize>,
    pub layer: Option<Box<dyn Layer>>,
}

/// A trainable model.
#[derive(Debug)]
pub struct TrainModel {
    pub nodes: Vec<TrainNode>,
    pub outputs: Vec<usize>,
    mode: Mode,
    rng: Rng,
}

impl TrainModel {
    /// Nodes in topological order (inputs before readers) and the indices of the outputs.
    pub fn new(nodes: Vec<TrainNode>, outputs: Vec<usize>, seed: u64) -> Result<TrainModel> {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(&bad) = n.inputs.iter().find(|&&j| j >= i) {
                return Err(GraphError::DanglingInput {
                    node: n.name.clone(),
                    input: format!("#{bad}"),
                });
            }
        }
        if outputs.is_empty() {
            return Err(GraphError::NoOutputs);
        }
        Ok(TrainModel {
            nodes,
            outputs,
            mode: Mode::Train,
            rng: Rng::new(seed),
        })
    }

    /// Every node of `graph` as an [`OpLayer`]; an error names the first op without a backward.
    pub fn from_graph(graph: &Graph, seed: u64) -> Result<TrainModel> {
        let nodes = graph
            .nodes()
            .iter()
            .map(|n| {
                let layer: Option<Box<dyn Layer>> = match n.op {
                    Op::Input { .. } => None,
                    _ => Some(Box::new(OpLayer::new(n.clone())?)),
                };
                Ok(TrainNode {
                    name: n.name.clone(),
                    inputs: n.inputs.iter().map(|i| i.0).collect(),
                    layer,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        TrainModel::new(nodes, graph.outputs().iter().map(|o| o.0).collect(), seed)
    }

    /// Copies the parameters and running statistics of every [`OpLayer`] back into the graph
    /// node of the same name.
    pub fn write_back(&self, graph: &mut Graph) -> Result<()> {
        for n in &self.nodes {
            let Some(layer) = n.layer.as_ref().and_then(|l| l.as_any().downcast_ref::<OpLayer>()) else {
                continue;
            };
            let id = graph
                .find(&n.name)
                .ok_or_else(|| GraphError::UnknownNode { name: n.name.clone() })?;
            graph.node_mut(id).params = layer.node().params.clone();
        }
        Ok(())
    }

    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Reseeds the dropout stream.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    pub fn input_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.layer.is_none()).count()
    }

    /// Runs the model on one tensor per graph input.
    pub fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.input_count() {
            return Err(GraphError::InputCount {
                expected: self.input_count(),
                got: inputs.len(),
            });
        }
        let mut reads = vec![0usize; self.nodes.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                reads[i] += 1;
            }
        }
        for &o in &self.outputs {
            reads[o] += 1;
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        let mut given = inputs.iter();
        let mut ctx = ForwardCtx {
            mode: self.mode,
            rng: &mut self.rng,
        };
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let value = match node.layer.as_mut() {
                None => given.next().expect("input count checked above").clone(),
                Some(layer) => {
                    let _span = tracing::trace_span!("train_forward", node = %node.name).entered();
                    let args: Vec<&Tensor> = node
                        .inputs
                        .iter()
                        .map(|&j| values[j].as_ref().expect("inputs precede their readers"))
                        .collect();
                    layer.forward(&args, &mut ctx)?
                }
            };
            values[i] = Some(value);
            for &j in &self.nodes[i].inputs {
                reads[j] -= 1;
                if reads[j] == 0 {
                    values[j] = None;
                }
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|&o| values[o].clone().expect("outputs are kept alive"))
            .collect())
    }

    /// Backpropagates one gradient per output (from the last training-mode forward), adding
    /// to the parameter gradients. Returns the gradients of the graph inputs.
    pub fn backward(&mut self, grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if grad_outputs.len() != self.outputs.len() {
            return Err(GraphError::InputCount {
                expected: self.outputs.len(),
                got: grad_outputs.len(),
            });
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for (&o, g) in self.outputs.iter().zip(grad_outputs) {
            add_grad(&mut grads[o], g);
        }
        for i in (0..self.nodes.len()).rev() {
            let node = &mut self.nodes[i];
            let Some(layer) = node.layer.as_mut() else {
                continue;
            };
            let Some(g) = grads[i].take() else {
                continue;
            };
            let _span = tracing::trace_span!("train_backward", node = %node.name).entered();
            let input_grads = layer.backward(&g)?;
            for (&j, gj) in self.nodes[i].inputs.iter().zip(&input_grads) {
                add_grad(&mut grads[j], gj);
            }
        }
        Ok(self
            .nodes
            .iter()
            .zip(grads)
            .filter(|(n, _)| n.layer.is_none())
            .map(|(_, g)| g)
            .collect())
    }

    /// Visits every trainable parameter with its full name.
    pub fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamRef<'_>)) {
        for n in &mut self.nodes {
            if let Some(layer) = n.layer.as_mut() {
                let prefix = &n.name;
                layer.visit_params(&mut |p| {
                    let full = format!("{prefix}.{}", p.name);
                    f(&full, p);
                });
            }
        }
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&mut self) {
        self.visit_params(&mut |_, p| p.grad.data_mut().fill(0.0));
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, p| n += p.value.numel());
        n
    }

    /// The layer of the node called `name`.
    pub fn layer_mut(&mut self, name: &str) -> Option<&mut Box<dyn Layer>> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .and_then(|n| n.layer.as_mut())
    }
}

fn add_grad(slot: &mut Option<Tensor>, g: &Tensor) {
    match slot {
        Some(acc) => super::layer::accumulate(acc, g.data()),
        None => *slot = Some(g.clone()),
    }
}
