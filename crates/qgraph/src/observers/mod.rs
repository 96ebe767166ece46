//! Observers: they watch the values that flow through a node during calibration and turn what
//! they saw into quantization parameters. PyTorch's `torch.ao.quantization` observers (MinMax,
//! moving average, per-channel, Histogram) and ONNX Runtime's Percentile and Entropy
//! calibrators; the final range -> (scale, zero point) step is always
//! [`qtensor::QuantSpec::qparams_from_range`] (PyTorch `_calculate_qparams`).

mod entropy;
pub mod histogram;
mod minmax;
mod moving_average;
mod moving_average_per_channel;
mod per_channel;
mod percentile;
mod range_histogram;

pub use entropy::EntropyCalibrator;
pub use histogram::HistogramObserver;
pub use minmax::MinMaxObserver;
pub use moving_average::MovingAverageMinMaxObserver;
pub use moving_average_per_channel::MovingAveragePerChannelMinMaxObserver;
pub use per_channel::PerChannelMinMaxObserver;
pub use percentile::PercentileCalibrator;

use std::fmt;

use qtensor::{QParams, QuantSpec, Tensor};

use crate::{GraphError, Result};

/// PyTorch's default `averaging_constant` for the moving-average observers.
pub const DEFAULT_AVERAGING_CONSTANT: f32 = 0.01;

/// Something that watches tensors and produces quantization parameters.
pub trait Observer: Send + fmt::Debug {
    /// Records one batch. Empty tensors are ignored; NaN or infinity is an error naming the
    /// observer's node.
    fn observe(&mut self, x: &Tensor) -> Result<()>;
    /// Scale(s) and zero point(s) for what was observed; an error before any batch.
    fn qparams(&self) -> Result<QParams>;
    /// What the parameters are computed for.
    fn spec(&self) -> &QuantSpec;
    /// The node the observer watches (used in errors).
    fn label(&self) -> &str;
}

/// Which observer to attach, with its options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverKind {
    MinMax,
    MovingAverageMinMax {
        averaging_constant: f32,
    },
    PerChannelMinMax {
        axis: usize,
    },
    MovingAveragePerChannelMinMax {
        axis: usize,
        averaging_constant: f32,
    },
    /// PyTorch's HistogramObserver (`bins` 2048 by default).
    Histogram {
        bins: usize,
    },
    /// ONNX Runtime's percentile calibrator (`bins` 2048, `percentile` 99.999 by default).
    Percentile {
        bins: usize,
        percentile: f64,
    },
    /// ONNX Runtime's entropy (KL) calibrator (`bins` 128, `quantized_bins` 128 by default).
    Entropy {
        bins: usize,
        quantized_bins: usize,
    },
}

/// An observer choice plus the quantization spec it computes parameters for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObserverConfig {
    pub kind: ObserverKind,
    pub spec: QuantSpec,
}

impl ObserverConfig {
    pub fn new(kind: ObserverKind, spec: QuantSpec) -> ObserverConfig {
        ObserverConfig { kind, spec }
    }

    /// A fresh observer for the node `label`.
    pub fn build(&self, label: &str) -> Box<dyn Observer> {
        let spec = self.spec;
        match self.kind {
            ObserverKind::MinMax => Box::new(MinMaxObserver::new(spec).labeled(label)),
            ObserverKind::MovingAverageMinMax { averaging_constant } => {
                Box::new(MovingAverageMinMaxObserver::new(spec, averaging_constant).labeled(label))
            }
            ObserverKind::PerChannelMinMax { axis } => {
                Box::new(PerChannelMinMaxObserver::new(spec, axis).labeled(label))
            }
            ObserverKind::MovingAveragePerChannelMinMax {
                axis,
                averaging_constant,
            } => Box::new(MovingAveragePerChannelMinMaxObserver::new(spec, axis, averaging_constant).labeled(label)),
            ObserverKind::Histogram { bins } => Box::new(HistogramObserver::with_bins(spec, bins).labeled(label)),
            ObserverKind::Percentile { bins, percentile } => {
                Box::new(PercentileCalibrator::new(spec, bins, percentile).labeled(label))
            }
            ObserverKind::Entropy { bins, quantized_bins } => {
                Box::new(EntropyCalibrator::new(spec, bins, quantized_bins).labeled(label))
            }
        }
    }
}

/// Rejects non-finite values with an error naming `label`; `Ok(false)` for an empty batch.
pub(crate) fn check_batch(label: &str, x: &Tensor) -> Result<bool> {
    if x.numel() == 0 {
        return Ok(false);
    }
    if let Some((index, value)) = qtensor::quantize::first_non_finite(x.data()) {
        return Err(GraphError::NonFiniteObservation {
            node: label.to_string(),
            index,
            value,
        });
    }
    Ok(true)
}

pub(crate) fn empty(label: &str) -> GraphError {
    GraphError::EmptyCalibration {
        node: label.to_string(),
    }
}

/// Per-tensor qparams from an observed range.
pub(crate) fn per_tensor(spec: &QuantSpec, min: f32, max: f32) -> Result<QParams> {
    let (scale, zero_point) = spec.qparams_from_range(min, max)?;
    Ok(QParams::PerTensor { scale, zero_point })
}

/// Per-channel (min, max) of `x` along `axis`, in f32 as `torch.aminmax` computes them.
pub(crate) fn channel_min_max(label: &str, x: &Tensor, axis: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if axis >= x.rank() {
        return Err(GraphError::Observer {
            node: label.to_string(),
            message: format!(
                "channel axis {axis} is out of range for a tensor of shape {:?}",
                x.shape()
            ),
        });
    }
    let c = x.shape()[axis];
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let mut mins = vec![f32::INFINITY; c];
    let mut maxs = vec![f32::NEG_INFINITY; c];
    for (i, block) in x.data().chunks_exact(inner.max(1)).enumerate() {
        let ch = i % c;
        let (lo, hi) = qtensor::min_max(block);
        mins[ch] = mins[ch].min(lo);
        maxs[ch] = maxs[ch].max(hi);
    }
    Ok((mins, maxs))
}

/// Per-channel qparams from observed ranges.
pub(crate) fn per_channel(spec: &QuantSpec, axis: usize, mins: &[f32], maxs: &[f32]) -> Result<QParams> {
    let (scales, zero_points) = spec.qparams_from_ranges(mins, maxs)?;
    Ok(QParams::PerChannel {
        axis,
        scales,
        zero_points,
    })
}
