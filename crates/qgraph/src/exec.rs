//! Graph execution: runs the nodes in order, frees each value after its last reader (or hands it
//! to that reader to overwrite, for element-wise ops), and lets a caller see every node output
//! (the hook that calibration uses to feed observers).

use crate::graph::{Graph, Node};
use crate::op::Op;
use crate::value::{Value, ValueType};
use crate::{ops, GraphError, Result};

impl Graph {
    /// Runs the graph on `inputs` (one per graph input, in declaration order) and returns the
    /// graph outputs.
    pub fn run(&self, inputs: Vec<Value>) -> Result<Vec<Value>> {
        self.run_with(inputs, |_, _| Ok(()))
    }

    /// Runs the graph, calling `hook(node, output)` after every non-input node.
    pub fn run_with<F>(&self, inputs: Vec<Value>, mut hook: F) -> Result<Vec<Value>>
    where
        F: FnMut(&Node, &Value) -> Result<()>,
    {
        let input_ids = self.input_ids();
        if inputs.len() != input_ids.len() {
            return Err(GraphError::InputCount {
                expected: input_ids.len(),
                got: inputs.len(),
            });
        }
        // Remaining reads of every value; graph outputs hold one extra read.
        let mut reads = vec![0usize; self.nodes.len()];
        for n in &self.nodes {
            for i in &n.inputs {
                reads[i.0] += 1;
            }
        }
        for o in &self.outputs {
            reads[o.0] += 1;
        }
        let mut values: Vec<Option<Value>> = vec![None; self.nodes.len()];
        let mut given = inputs.into_iter();
        for (i, node) in self.nodes.iter().enumerate() {
            let value = match &node.op {
                Op::Input { shape, ty } => {
                    let v = given.next().expect("input count checked above");
                    check_input(node, shape, *ty, &v)?;
                    v
                }
                _ => {
                    let _span = tracing::debug_span!("op", node = %node.name, kind = ?node.op.kind()).entered();
                    // An element-wise op that is the last reader of its first input takes that
                    // buffer and writes its result over it.
                    let owned = match node.inputs.first() {
                        Some(first) if reads[first.0] == 1 && ops::reuses_first_input(&node.op) => {
                            match values[first.0].take() {
                                Some(Value::F32(t)) => Some(t),
                                other => {
                                    values[first.0] = other;
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    let rest = if owned.is_some() {
                        &node.inputs[1..]
                    } else {
                        &node.inputs[..]
                    };
                    let args: Vec<&Value> = rest
                        .iter()
                        .map(|id| values[id.0].as_ref().expect("inputs precede their readers"))
                        .collect();
                    let out = match owned {
                        Some(x) => ops::forward_inplace(node, x, &args)?,
                        None => ops::forward(node, &args)?,
                    };
                    hook(node, &out)?;
                    out
                }
            };
            values[i] = Some(value);
            for id in &node.inputs {
                reads[id.0] -= 1;
                if reads[id.0] == 0 {
                    values[id.0] = None;
                }
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|o| values[o.0].clone().expect("outputs are kept alive"))
            .collect())
    }
}

fn check_input(node: &Node, declared: &[usize], ty: ValueType, v: &Value) -> Result<()> {
    let ok_type = matches!(
        (ty, v),
        (ValueType::F32, Value::F32(_)) | (ValueType::I64, Value::I64(_))
    );
    if !ok_type {
        return Err(GraphError::InputValue {
            input: node.name.clone(),
            message: format!("expected {ty:?} values, got a {}", v.kind()),
        });
    }
    // Sizes may differ from the example shape (batch, sequence length); each op checks the
    // sizes it depends on and names itself in the error.
    if v.shape().len() != declared.len() {
        return Err(GraphError::InputValue {
            input: node.name.clone(),
            message: format!(
                "got rank {} (shape {:?}), the graph declares rank {} ({declared:?})",
                v.shape().len(),
                v.shape(),
                declared.len()
            ),
        });
    }
    Ok(())
}
