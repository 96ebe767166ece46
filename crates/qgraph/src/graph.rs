//! The model graph: nodes in topological order, each with an op, its inputs, its parameters
//! (named as in a PyTorch `state_dict`: `<node name>.<local name>`) and a quantization config
//! slot; plus validation (dangling inputs, cycles, shape inference with errors naming the node).

use std::collections::{BTreeMap, HashMap};

use qtensor::Tensor;

use crate::observers::ObserverConfig;
use crate::op::Op;
use crate::value::ValueType;
use crate::{ops, GraphError, Result};

/// Index of a node in its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// How a node should be quantized; `None` on a node means "decide by the global config".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeQConfig {
    /// Observer for the node's output activation; `None` keeps it in float.
    pub activation: Option<ObserverConfig>,
    /// Observer for the node's weight; `None` keeps the weight in float.
    pub weight: Option<ObserverConfig>,
}

/// One operation in the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Module path, e.g. `encoder.layer.0.attention.self.query`; prefixes the parameter names.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// Parameters by local name (`weight`, `bias`, `running_mean`, ...).
    pub params: BTreeMap<String, Tensor>,
    pub qconfig: Option<NodeQConfig>,
}

impl Node {
    /// The parameter `local`, or an error naming its full name.
    pub fn param(&self, local: &str) -> Result<&Tensor> {
        self.params.get(local).ok_or_else(|| GraphError::MissingParameter {
            name: format!("{}.{local}", self.name),
        })
    }

    /// The full state_dict name of a local parameter name.
    pub fn param_name(&self, local: &str) -> String {
        format!("{}.{local}", self.name)
    }
}

/// A node given by name, for [`Graph::from_named`].
#[derive(Debug, Clone)]
pub struct NamedNode {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
}

/// A validated model graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<NodeId>,
}

impl Graph {
    /// Builds a graph from nodes that name their inputs, in any order: rejects duplicate names,
    /// inputs that name no node, and cycles; orders the nodes topologically, creates zeroed
    /// parameters (BatchNorm variances and scales at 1) and checks shapes.
    pub fn from_named(nodes: Vec<NamedNode>, outputs: &[&str]) -> Result<Graph> {
        let mut index = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if index.insert(n.name.clone(), i).is_some() {
                return Err(GraphError::DuplicateName { name: n.name.clone() });
            }
        }
        let mut deps = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let mut d = Vec::new();
            for input in &n.inputs {
                match index.get(input) {
                    Some(&j) => d.push(j),
                    None => {
                        return Err(GraphError::DanglingInput {
                            node: n.name.clone(),
                            input: input.clone(),
                        })
                    }
                }
            }
            deps.push(d);
        }
        // Kahn's algorithm, keeping the given order among ready nodes.
        let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut users = vec![Vec::new(); nodes.len()];
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                users[j].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != nodes.len() {
            let stuck = (0..nodes.len()).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(GraphError::Cycle {
                node: nodes[stuck].name.clone(),
            });
        }
        let mut new_id = vec![0; nodes.len()];
        for (pos, &i) in order.iter().enumerate() {
            new_id[i] = pos;
        }
        let mut slots: Vec<Option<NamedNode>> = nodes.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(slots.len());
        for &i in &order {
            let n = slots[i].take().expect("each node is placed once");
            ordered.push(Node {
                params: default_params(&n.op),
                name: n.name,
                op: n.op,
                inputs: deps[i].iter().map(|&j| NodeId(new_id[j])).collect(),
                qconfig: None,
            });
        }
        let outputs = outputs
            .iter()
            .map(|o| {
                index
                    .get(*o)
                    .map(|&i| NodeId(new_id[i]))
                    .ok_or_else(|| GraphError::UnknownNode { name: o.to_string() })
            })
            .collect::<Result<Vec<_>>>()?;
        Graph::from_nodes(ordered, outputs)
    }

    /// Wraps nodes already in topological order and validates them.
    pub fn from_nodes(nodes: Vec<Node>, outputs: Vec<NodeId>) -> Result<Graph> {
        let graph = Graph { nodes, outputs };
        graph.validate()?;
        Ok(graph)
    }

    /// Checks structure (unique names, inputs defined before use, outputs present) and shapes.
    pub fn validate(&self) -> Result<()> {
        let mut seen = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if seen.insert(n.name.as_str(), i).is_some() {
                return Err(GraphError::DuplicateName { name: n.name.clone() });
            }
            for input in &n.inputs {
                if input.0 >= i {
                    let input_name = self
                        .nodes
                        .get(input.0)
                        .map_or(format!("#{}", input.0), |m| m.name.clone());
                    return Err(if input.0 < self.nodes.len() {
                        GraphError::Cycle { node: n.name.clone() }
                    } else {
                        GraphError::DanglingInput {
                            node: n.name.clone(),
                            input: input_name,
                        }
                    });
                }
            }
        }
        if self.outputs.is_empty() {
            return Err(GraphError::NoOutputs);
        }
        if let Some(bad) = self.outputs.iter().find(|o| o.0 >= self.nodes.len()) {
            return Err(GraphError::UnknownNode {
                name: format!("#{}", bad.0),
            });
        }
        self.infer_shapes(None).map(|_| ())
    }

    /// Output shape of every node. `input_shapes` overrides the example shapes the inputs were
    /// declared with (e.g. another batch size).
    pub fn infer_shapes(&self, input_shapes: Option<&[Vec<usize>]>) -> Result<Vec<Vec<usize>>> {
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        let mut next_input = 0;
        for node in &self.nodes {
            let shape = match &node.op {
                Op::Input { shape, .. } => {
                    let s = match input_shapes {
                        Some(given) => given.get(next_input).cloned().ok_or(GraphError::InputCount {
                            expected: self.input_ids().len(),
                            got: given.len(),
                        })?,
                        None => shape.clone(),
                    };
                    next_input += 1;
                    s
                }
                _ => {
                    let ins: Vec<&[usize]> = node.inputs.iter().map(|i| shapes[i.0].as_slice()).collect();
                    ops::infer_shape(node, &ins)?
                }
            };
            shapes.push(shape);
        }
        Ok(shapes)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// Mutable access to a node; call [`Graph::validate`] after changing ops or inputs.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0]
    }

    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// The graph inputs, in declaration order.
    pub fn input_ids(&self) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].op, Op::Input { .. }))
            .map(NodeId)
            .collect()
    }

    /// The node named `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(NodeId)
    }

    /// For every node, the nodes that read it (graph outputs are not listed).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for input in &n.inputs {
                users[input.0].push(NodeId(i));
            }
        }
        users
    }

    /// Replaces a node's op (e.g. with a quantized [`crate::CustomOp`]), keeping its inputs and
    /// name, and re-validates shapes.
    pub fn replace_op(&mut self, id: NodeId, op: Op) -> Result<Op> {
        let old = std::mem::replace(&mut self.nodes[id.0].op, op);
        if let Err(e) = self.infer_shapes(None) {
            self.nodes[id.0].op = old;
            return Err(e);
        }
        Ok(old)
    }

    /// All parameters by full state_dict name.
    pub fn state_dict(&self) -> BTreeMap<String, &Tensor> {
        self.nodes
            .iter()
            .flat_map(|n| n.params.iter().map(move |(k, v)| (n.param_name(k), v)))
            .collect()
    }

    /// Removes the nodes in `remove`, rewiring every reader of a removed node `r` to
    /// `replacement[r]` (which must survive and precede its readers).
    pub(crate) fn remove_nodes(&mut self, replacement: &HashMap<usize, usize>) -> Result<()> {
        let resolve = |mut i: usize| {
            while let Some(&r) = replacement.get(&i) {
                i = r;
            }
            i
        };
        let mut new_index = vec![usize::MAX; self.nodes.len()];
        let mut next = 0;
        for (i, slot) in new_index.iter_mut().enumerate() {
            if !replacement.contains_key(&i) {
                *slot = next;
                next += 1;
            }
        }
        let nodes = std::mem::take(&mut self.nodes);
        for (i, mut node) in nodes.into_iter().enumerate() {
            if replacement.contains_key(&i) {
                continue;
            }
            for input in &mut node.inputs {
                *input = NodeId(new_index[resolve(input.0)]);
            }
            self.nodes.push(node);
        }
        for o in &mut self.outputs {
            *o = NodeId(new_index[resolve(o.0)]);
        }
        self.validate()
    }

    /// The element type of each graph input.
    pub fn input_types(&self) -> Vec<ValueType> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Input { ty, .. } => Some(*ty),
                _ => None,
            })
            .collect()
    }
}

/// Initial parameters of a new node: zeros, except BatchNorm's scale and variance (ones), so a
/// fresh BatchNorm is the identity as in PyTorch.
pub(crate) fn default_params(op: &Op) -> BTreeMap<String, Tensor> {
    op.param_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let one = matches!(op, Op::BatchNorm(_) | Op::LayerNorm(_)) && (name == "weight" || name == "running_var");
            let t = if one {
                Tensor::full(shape, 1.0)
            } else {
                Tensor::zeros(shape)
            };
            (name, t)
        })
        .collect()
}
