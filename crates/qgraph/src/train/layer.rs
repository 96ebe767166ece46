//! The unit of training: a [`Layer`] runs forward (remembering what its backward pass needs),
//! then maps the gradient of its output to gradients of its inputs while accumulating the
//! gradients of its own parameters. Built-in graph ops, fake-quantize modules and the QAT
//! modules all implement it.

use std::any::Any;
use std::fmt;

use qtensor::Tensor;

use super::Rng;
use crate::Result;

/// Whether a forward pass trains (batch statistics, dropout, observers) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What a forward pass may use besides its inputs.
#[derive(Debug)]
pub struct ForwardCtx<'a> {
    pub mode: Mode,
    /// Randomness for dropout masks (seeded by the model).
    pub rng: &'a mut Rng,
}

impl ForwardCtx<'_> {
    pub fn training(&self) -> bool {
        self.mode == Mode::Train
    }
}

/// One trainable parameter as seen by optimizers: its value and its accumulated gradient.
#[derive(Debug)]
pub struct ParamRef<'a> {
    /// Local name (`weight`, `bias`, `scale`, ...).
    pub name: &'a str,
    pub value: &'a mut Tensor,
    pub grad: &'a mut Tensor,
}

/// A differentiable operation with its parameters.
pub trait Layer: Send + fmt::Debug {
    /// The PyTorch-style module name (`Conv2d`, `ConvBnReLU2d`, `FakeQuantize`, ...).
    fn kind_name(&self) -> String;
    /// Runs the layer; in training mode it keeps what [`Layer::backward`] needs.
    fn forward(&mut self, inputs: &[&Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor>;
    /// Gradient of every input from the gradient of the output; adds the parameters' gradients
    /// to their accumulators. Uses (and releases) the state of the last training-mode forward.
    fn backward(&mut self, grad_out: &Tensor) -> Result<Vec<Tensor>>;
    /// Visits every trainable parameter (buffers such as running statistics are not visited).
    fn visit_params(&mut self, f: &mut dyn FnMut(ParamRef<'_>));
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A parameter and its gradient accumulator, for layers that own theirs.
#[derive(Debug, Clone)]
pub struct Param {
    pub value: Tensor,
    pub grad: Tensor,
}

impl Param {
    pub fn new(value: Tensor) -> Param {
        let grad = Tensor::zeros(value.shape().to_vec());
        Param { value, grad }
    }

    pub fn as_ref<'a>(&'a mut self, name: &'a str) -> ParamRef<'a> {
        ParamRef {
            name,
            value: &mut self.value,
            grad: &mut self.grad,
        }
    }
}

/// Adds `src` into `dst` element-wise (gradient accumulation).
pub fn accumulate(dst: &mut Tensor, src: &[f32]) {
    for (d, s) in dst.data_mut().iter_mut().zip(src) {
        *d += s;
    }
}

/// Takes the training-mode state a layer kept for its backward pass (each forward serves one
/// backward), or an error saying to run forward.
pub(crate) fn take_saved<T>(state: &mut Option<T>, layer: &str) -> Result<T> {
    state.take().ok_or_else(|| crate::GraphError::Unsupported {
        node: layer.to_string(),
        what: "backward without a training-mode forward before it; run forward in Mode::Train first".into(),
    })
}

/// The training-mode state a layer needs before backward, or an error saying to run forward.
pub(crate) fn saved<'a, T>(state: &'a Option<T>, layer: &str) -> Result<&'a T> {
    state.as_ref().ok_or_else(|| crate::GraphError::Unsupported {
        node: layer.to_string(),
        what: "backward without a training-mode forward before it; run forward in Mode::Train first".into(),
    })
}
