//! Weights in safetensors files, by PyTorch `state_dict` name (`<node>.<param>`). Loading checks
//! every parameter: a missing name, an unexpected one (unless not strict), a wrong shape or a
//! non-f32 dtype is an error naming the parameter. BatchNorm's `num_batches_tracked` is accepted
//! and ignored.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use qtensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::graph::Graph;
use crate::{GraphError, Result};

fn st_err(e: impl std::fmt::Display) -> GraphError {
    GraphError::Safetensors(e.to_string())
}

fn io_err(path: &Path, e: std::io::Error) -> GraphError {
    GraphError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Graph {
    /// Loads every parameter from safetensors bytes. With `strict`, tensors the graph does not
    /// use are an error (as PyTorch's `load_state_dict(strict=True)`).
    pub fn load_safetensors(&mut self, bytes: &[u8], strict: bool) -> Result<()> {
        let file = SafeTensors::deserialize(bytes).map_err(st_err)?;
        let mut unused: BTreeSet<String> = file.names().into_iter().cloned().collect();
        let mut loaded = Vec::new();
        for (ni, node) in self.nodes.iter().enumerate() {
            for ignored in node.op.ignored_params() {
                unused.remove(&node.param_name(ignored));
            }
            for (local, shape) in node.op.param_shapes() {
                let name = node.param_name(&local);
                let view = file
                    .tensor(&name)
                    .map_err(|_| GraphError::MissingParameter { name: name.clone() })?;
                unused.remove(&name);
                if view.dtype() != Dtype::F32 {
                    return Err(GraphError::ParameterDType {
                        name,
                        dtype: format!("{:?}", view.dtype()),
                    });
                }
                if view.shape() != shape.as_slice() {
                    return Err(GraphError::ParameterShape {
                        name,
                        expected: shape,
                        got: view.shape().to_vec(),
                    });
                }
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                loaded.push((ni, local, Tensor::new(shape, data)?));
            }
        }
        if strict && !unused.is_empty() {
            return Err(GraphError::UnexpectedParameters {
                names: unused.into_iter().collect(),
            });
        }
        for (ni, local, t) in loaded {
            self.nodes[ni].params.insert(local, t);
        }
        Ok(())
    }

    /// Loads parameters from a safetensors file.
    pub fn load_safetensors_file(&mut self, path: impl AsRef<Path>, strict: bool) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        self.load_safetensors(&bytes, strict)
    }

    /// Serializes every parameter (f32, little-endian) by state_dict name.
    pub fn save_safetensors(&self) -> Result<Vec<u8>> {
        let dict = self.state_dict();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = dict
            .into_iter()
            .map(|(name, t)| {
                let raw = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, t.shape().to_vec(), raw)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, raw)| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), raw).map_err(st_err)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, &None::<HashMap<String, String>>).map_err(st_err)
    }

    /// Writes every parameter to a safetensors file.
    pub fn save_safetensors_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.save_safetensors()?;
        std::fs::write(path, bytes).map_err(|e| io_err(path, e))
    }
}
