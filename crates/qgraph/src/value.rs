//! `Value`: what flows along graph edges. The fp32 executor produces `F32`; token ids enter as
//! `I64`; quantized implementations of nodes exchange `Quant` tensors.

use qtensor::{QTensor, Tensor};

/// A dense row-major tensor of integer ids (token ids for `Embedding`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdTensor {
    shape: Vec<usize>,
    data: Vec<i64>,
}

impl IdTensor {
    /// Wraps `data` with `shape`; `None` when the element counts disagree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<i64>) -> Option<IdTensor> {
        let shape = shape.into();
        (shape.iter().product::<usize>() == data.len()).then_some(IdTensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[i64] {
        &self.data
    }
}

/// The element type a graph input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ValueType {
    F32,
    I64,
}

/// A value on a graph edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    F32(Tensor),
    Quant(QTensor),
    I64(IdTensor),
}

impl Value {
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F32(t) => t.shape(),
            Value::Quant(q) => q.shape(),
            Value::I64(t) => t.shape(),
        }
    }

    /// Kind name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::F32(_) => "f32 tensor",
            Value::Quant(_) => "quantized tensor",
            Value::I64(_) => "i64 id tensor",
        }
    }

    /// The f32 tensor, if this is one.
    pub fn as_f32(&self) -> Option<&Tensor> {
        match self {
            Value::F32(t) => Some(t),
            _ => None,
        }
    }

    /// The f32 tensor, consuming the value.
    pub fn into_f32(self) -> Option<Tensor> {
        match self {
            Value::F32(t) => Some(t),
            _ => None,
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::F32(t)
    }
}

impl From<QTensor> for Value {
    fn from(q: QTensor) -> Value {
        Value::Quant(q)
    }
}

impl From<IdTensor> for Value {
    fn from(t: IdTensor) -> Value {
        Value::I64(t)
    }
}
