//! `Tensor`: a dense, contiguous, row-major f32 tensor, the float currency of every layer.

use half::{bf16, f16};

use crate::{QError, Result};

/// A dense row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`; the element counts must agree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Tensor> {
        let shape = shape.into();
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(QError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Vec<usize>>, value: f32) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; n],
        }
    }

    /// A 0-d tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: Vec::new(),
            data: vec![value],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Tensor::new(shape, self.data)
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    /// Errors with the first NaN or infinity, naming `what` in the message.
    pub fn check_finite(&self, what: &'static str) -> Result<()> {
        match crate::quantize::first_non_finite(&self.data) {
            Some((index, value)) => Err(QError::NonFinite { what, index, value }),
            None => Ok(()),
        }
    }

    /// (min, max) over all elements; errors on an empty or non-finite tensor.
    pub fn min_max(&self) -> Result<(f32, f32)> {
        if self.data.is_empty() {
            return Err(QError::Empty { what: "tensor" });
        }
        self.check_finite("tensor")?;
        Ok(min_max(&self.data))
    }

    /// Converts to IEEE half precision (round to nearest even).
    pub fn to_f16(&self) -> Vec<f16> {
        self.data.iter().map(|&x| f16::from_f32(x)).collect()
    }

    /// Converts to bfloat16 (round to nearest even).
    pub fn to_bf16(&self) -> Vec<bf16> {
        self.data.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    /// Builds from half-precision values.
    pub fn from_f16(shape: impl Into<Vec<usize>>, values: &[f16]) -> Result<Tensor> {
        Tensor::new(shape, values.iter().map(|v| v.to_f32()).collect())
    }

    /// Builds from bfloat16 values.
    pub fn from_bf16(shape: impl Into<Vec<usize>>, values: &[bf16]) -> Result<Tensor> {
        Tensor::new(shape, values.iter().map(|v| v.to_f32()).collect())
    }
}

/// Row-major strides of `shape`, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// (min, max) of a non-empty slice of finite values.
pub fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}
