//! Embedding lookup: `y[..., :] = W[id, :]` (PyTorch `torch.nn.Embedding`).

use qtensor::Tensor;

use crate::error::shape_err;
use crate::graph::Node;
use crate::value::IdTensor;
use crate::Result;

pub fn embedding(node: &Node, ids: &IdTensor, out_shape: Vec<usize>) -> Result<Tensor> {
    let w = node.param("weight")?;
    let (rows, dim) = (w.shape()[0], w.shape()[1]);
    let mut y = Vec::with_capacity(ids.data().len() * dim);
    for (i, &id) in ids.data().iter().enumerate() {
        if id < 0 || id as usize >= rows {
            return Err(shape_err(
                &node.name,
                format!("token id {id} at position {i} is outside the embedding table of {rows} rows"),
            ));
        }
        y.extend_from_slice(&w.data()[id as usize * dim..(id as usize + 1) * dim]);
    }
    Ok(Tensor::new(out_shape, y)?)
}
