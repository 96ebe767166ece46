//! `FakeQuantize` (PyTorch `torch.ao.quantization.FakeQuantize`): an observer watches the values
//! in training mode and gives the current scale and zero point; the forward pass fake-quantizes
//! with them ([`qtensor::fake_quant`], bit-exact with PyTorch) and the backward pass is the
//! straight-through estimator masked outside `[qmin, qmax]`. `disable_observer` freezes the
//! qparams, `disable_fake_quant` makes the module the identity.
//!
//! With `learnable` the scale and zero point are trained parameters (PyTorch
//! `_LearnableFakeQuantize`, LSQ): the forward uses `zp' = clamp(round_half_even(zp), qmin, qmax)`
//! and the kernel's gradients, per element with `q = zp' + round_half_even(x / s)`:
//! inside the range `dx = dy`, `ds = (fq(x) - x) / s * dy`, `dzp = 0`; below (above) it `dx = 0`,
//! `ds = (qmin - zp') dy` (`qmax`), `dzp = -s dy`; `ds` and `dzp` are summed (per channel) and
//! multiplied by `1 / sqrt(numel * qmax)` when gradient scaling is on. While the observer is
//! enabled it overwrites the learned values, as in PyTorch.
//!
//! One deliberate difference: observers update only in training mode (PyTorch also observes in
//! eval mode until `disable_observer`), so evaluating a model does not move its qparams.

use std::any::Any;

use qtensor::fake_quant::FakeQuant;
use qtensor::{QParams, Scheme, Tensor};

use super::layer::{saved, ForwardCtx, Layer, Param, ParamRef};
use crate::observers::{Observer, ObserverConfig, ObserverKind};
use crate::{GraphError, Result};

/// How a [`FakeQuantize`] is set up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuantizeConfig {
    pub observer: ObserverConfig,
    /// Train the scale and zero point (LSQ).
    pub learnable: bool,
    /// LSQ gradient scaling `1 / sqrt(numel * qmax)`.
    pub grad_scaling: bool,
}

impl FakeQuantizeConfig {
    pub fn new(observer: ObserverConfig) -> FakeQuantizeConfig {
        FakeQuantizeConfig {
            observer,
            learnable: false,
            grad_scaling: false,
        }
    }

    pub fn learnable(mut self, grad_scaling: bool) -> FakeQuantizeConfig {
        self.learnable = true;
        self.grad_scaling = grad_scaling;
        self
    }
}

#[derive(Debug, Clone)]
struct Saved {
    x: Tensor,
    mask: Vec<bool>,
    params: Vec<FakeQuant>,
    /// `None` when fake quantization was disabled for the forward.
    active: bool,
}

/// Fake quantization of a tensor with an observer (see the module docs).
#[derive(Debug)]
pub struct FakeQuantize {
    label: String,
    config: FakeQuantizeConfig,
    observer: Box<dyn Observer>,
    qmin: i32,
    qmax: i32,
    axis: Option<usize>,
    /// Per-tensor (one element) or per-channel scales and zero points (zero points as f32 so
    /// that LSQ can train them).
    scale: Param,
    zero_point: Param,
    has_qparams: bool,
    pub observer_enabled: bool,
    pub fake_quant_enabled: bool,
    saved: Option<Saved>,
}

impl FakeQuantize {
    pub fn new(label: &str, config: FakeQuantizeConfig) -> Result<FakeQuantize> {
        let (qmin, qmax) = config.observer.spec.quant_range()?;
        let axis = match config.observer.kind {
            ObserverKind::PerChannelMinMax { axis } | ObserverKind::MovingAveragePerChannelMinMax { axis, .. } => {
                Some(axis)
            }
            _ => None,
        };
        Ok(FakeQuantize {
            label: label.to_string(),
            observer: config.observer.build(label),
            config,
            qmin,
            qmax,
            axis,
            scale: Param::new(Tensor::full([1], 1.0)),
            zero_point: Param::new(Tensor::zeros([1])),
            has_qparams: false,
            observer_enabled: true,
            fake_quant_enabled: true,
            saved: None,
        })
    }

    /// Fixes the qparams (and disables the observer), e.g. to reproduce a reference.
    pub fn with_qparams(mut self, qparams: &QParams) -> Result<FakeQuantize> {
        self.set_qparams(qparams)?;
        self.observer_enabled = false;
        Ok(self)
    }

    pub fn disable_observer(&mut self) {
        self.observer_enabled = false;
    }

    pub fn enable_observer(&mut self) {
        self.observer_enabled = true;
    }

    pub fn disable_fake_quant(&mut self) {
        self.fake_quant_enabled = false;
    }

    pub fn enable_fake_quant(&mut self) {
        self.fake_quant_enabled = true;
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn quant_range(&self) -> (i32, i32) {
        (self.qmin, self.qmax)
    }

    fn set_qparams(&mut self, qparams: &QParams) -> Result<()> {
        let (scales, zps): (Vec<f32>, Vec<f32>) = match qparams {
            QParams::PerTensor { scale, zero_point } => (vec![*scale], vec![*zero_point as f32]),
            QParams::PerChannel {
                scales, zero_points, ..
            } => (scales.clone(), zero_points.iter().map(|&z| z as f32).collect()),
        };
        let n = scales.len();
        if self.scale.value.numel() != n {
            self.scale = Param::new(Tensor::zeros([n]));
            self.zero_point = Param::new(Tensor::zeros([n]));
        }
        self.scale.value.data_mut().copy_from_slice(&scales);
        self.zero_point.value.data_mut().copy_from_slice(&zps);
        self.has_qparams = true;
        Ok(())
    }

    /// The fake-quantize parameters in use: integer zero points, scales floored at eps.
    fn current(&self) -> Result<Vec<FakeQuant>> {
        let eps = self.config.observer.spec.eps;
        self.scale
            .value
            .data()
            .iter()
            .zip(self.zero_point.value.data())
            .map(|(&s, &z)| {
                let zp = (z.round_ties_even() as i64).clamp(self.qmin as i64, self.qmax as i64) as i32;
                Ok(FakeQuant::new(s.max(eps), zp, self.qmin, self.qmax)?)
            })
            .collect()
    }

    /// The qparams learned so far (what conversion uses).
    pub fn qparams(&self) -> Result<QParams> {
        if !self.has_qparams {
            return Err(GraphError::EmptyCalibration {
                node: self.label.clone(),
            });
        }
        let p = self.current()?;
        Ok(match self.axis {
            None => QParams::PerTensor {
                scale: p[0].scale,
                zero_point: p[0].zero_point,
            },
            Some(axis) => QParams::PerChannel {
                axis,
                scales: p.iter().map(|f| f.scale).collect(),
                zero_points: p.iter().map(|f| f.zero_point).collect(),
            },
        })
    }

    /// Fake-quantizes `x` with the current parameters; the mask marks in-range elements.
    fn apply(&self, x: &Tensor, params: &[FakeQuant]) -> Result<(Vec<f32>, Vec<bool>)> {
        let mut y = vec![0.0f32; x.numel()];
        let mut mask = vec![false; x.numel()];
        match self.axis {
            None => params[0].forward(x.data(), &mut y, &mut mask)?,
            Some(axis) => {
                qtensor::fake_quant::fake_quantize_per_channel(x.data(), x.shape(), axis, params, &mut y, &mut mask)?
            }
        }
        Ok((y, mask))
    }

    /// Channel of element `i` (0 per tensor).
    fn channel_of(&self, shape: &[usize]) -> impl Fn(usize) -> usize {
        let (inner, channels) = match self.axis {
            None => (usize::MAX, 1),
            Some(axis) => (shape[axis + 1..].iter().product::<usize>().max(1), shape[axis]),
        };
        move |i| if channels == 1 { 0 } else { (i / inner) % channels }
    }
}

impl Layer for FakeQuantize {
    fn kind_name(&self) -> String {
        if self.config.learnable {
            "LearnableFakeQuantize".into()
        } else {
            "FakeQuantize".into()
        }
    }

    fn forward(&mut self, inputs: &[&Tensor], ctx: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let x = inputs[0];
        if self.observer_enabled && ctx.training() {
            self.observer.observe(x)?;
            let q = self.observer.qparams()?;
            self.set_qparams(&q)?;
        } else if self.config.learnable {
            let eps = self.config.observer.spec.eps;
            self.scale.value.data_mut().iter_mut().for_each(|s| *s = s.max(eps));
        }
        if self.config.learnable && self.config.observer.spec.scheme == Scheme::Symmetric {
            self.zero_point.value.data_mut().fill(0.0);
        }
        if !self.fake_quant_enabled {
            self.saved = ctx.training().then(|| Saved {
                x: Tensor::zeros([0]),
                mask: Vec::new(),
                params: Vec::new(),
                active: false,
            });
            return Ok(x.clone());
        }
        if !self.has_qparams {
            return Err(GraphError::Observer {
                node: self.label.clone(),
                message:
                    "fake quantization has no qparams yet; run a training-mode forward with the observer enabled first"
                        .into(),
            });
        }
        let params = self.current()?;
        let (y, mask) = self.apply(x, &params)?;
        if ctx.training() {
            self.saved = Some(Saved {
                x: if self.config.learnable {
                    x.clone()
                } else {
                    Tensor::zeros([0])
                },
                mask,
                params,
                active: true,
            });
        }
        Ok(Tensor::new(x.shape().to_vec(), y)?)
    }

    fn backward(&mut self, grad_out: &Tensor) -> Result<Vec<Tensor>> {
        let s = saved(&self.saved, &self.label)?;
        if !s.active {
            return Ok(vec![grad_out.clone()]);
        }
        let dx = qtensor::fake_quant::straight_through(grad_out.data(), &s.mask);
        if self.config.learnable {
            let x = &s.x;
            let factor = if self.config.grad_scaling {
                1.0 / ((x.numel() as f32) * self.qmax as f32).sqrt()
            } else {
                1.0
            };
            let channel = self.channel_of(x.shape());
            let mut ds = vec![0.0f32; s.params.len()];
            let mut dz = vec![0.0f32; s.params.len()];
            for (i, (&v, &g)) in x.data().iter().zip(grad_out.data()).enumerate() {
                let c = channel(i);
                let p = &s.params[c];
                let inv = 1.0 / p.scale;
                let q = (v * inv).round_ties_even() as i64 + p.zero_point as i64;
                if q < p.qmin as i64 || q > p.qmax as i64 {
                    let bound = if q < p.qmin as i64 { p.qmin } else { p.qmax };
                    ds[c] += (bound - p.zero_point) as f32 * g * factor;
                    dz[c] += -p.scale * g * factor;
                } else {
                    let fq = (q - p.zero_point as i64) as f32 * p.scale;
                    ds[c] += (fq - v) * inv * g * factor;
                }
            }
            super::layer::accumulate(&mut self.scale.grad, &ds);
            super::layer::accumulate(&mut self.zero_point.grad, &dz);
        }
        Ok(vec![Tensor::new(grad_out.shape().to_vec(), dx)?])
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamRef<'_>)) {
        // Always visited when learnable, so optimizer state keeps its order; while the observer
        // is enabled it overwrites whatever the optimizer did.
        if self.config.learnable {
            f(self.scale.as_ref("scale"));
            f(self.zero_point.as_ref("zero_point"));
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
